"""Tasks turn data into aligned :class:`Item` lists: embedded packs, published benchmarks, local files."""

from donors.tasks.item import LETTERS, Item, Split
from donors.tasks.registry import Task, get_task, register_task, task_names

__all__ = ["LETTERS", "Item", "Split", "Task", "get_task", "register_task", "task_names"]
