"""Task registry: a name maps to a factory that builds a :class:`Task`.

Like lm-evaluation-harness's registry, a task is found by name; the factory receives the
options written under that task in the study config (a local task's paths, say).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol, runtime_checkable

from donors.errors import DonorsError
from donors.tasks.item import Item, Split


@runtime_checkable
class Task(Protocol):
    """Anything that yields aligned items per language and split."""

    name: str
    languages: tuple[str, ...]

    def load(self, language: str, split: Split) -> list[Item]:
        """Items of one language and split, in a deterministic order."""
        ...


TaskFactory = Callable[..., Task]
_REGISTRY: dict[str, TaskFactory] = {}


class UnknownTaskError(DonorsError, ValueError):
    """A task name nobody registered; the message lists the names that are."""


class TaskOptionsError(DonorsError, TypeError):
    """Options a task's factory does not take (a misspelt or missing one); the message lists those it takes."""


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Register ``factory`` under ``name`` (a decorator)."""

    def decorate(factory: TaskFactory) -> TaskFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"task {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def _load_builtin_tasks() -> None:
    # Importing the packs runs their @register_task decorators.
    import donors.tasks.embedded  # noqa: F401
    import donors.tasks.files  # noqa: E401, F401


def task_names() -> list[str]:
    _load_builtin_tasks()
    return sorted(_REGISTRY)


def get_task(name: str, **options: Any) -> Task:
    """Build the task registered as ``name`` with the config's ``options``.

    With a ``source`` option, the factory registered under the source builds the task and
    names it ``name``: ``{name: sib200, options: {source: files, ...}}``.
    """
    _load_builtin_tasks()
    source = options.pop("source", None)
    try:
        factory = _REGISTRY[source or name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {source or name!r}; registered tasks: {', '.join(sorted(_REGISTRY))}") from None
    arguments = {"name": name, **options} if source else options
    try:
        inspect.signature(factory).bind(**arguments)
    except TypeError as error:
        accepted = [p for p in inspect.signature(factory).parameters if p != "name"]
        raise TaskOptionsError(
            f"task {name!r} ({source or name}) cannot take these options: {error}; it takes "
            f"{', '.join(accepted) or 'none'} (docs/local-tasks.md, `donors tasks`)"
        ) from None
    return factory(**arguments)
