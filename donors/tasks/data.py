"""Load and check every item a study needs, before any compute.

Checks that make a study's numbers meaningful: no empty split, no duplicate ids, train and
test disjoint, and test sets parallel across languages (the same ids everywhere).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from donors.config import StudyConfig
from donors.grid import Cell
from donors.tasks.item import Item, Split
from donors.tasks.registry import Task, get_task


class DataError(ValueError):
    """Items a study cannot use; the message names the task, language, ids and the fix."""


def _stable_order(item_id: str) -> str:
    return hashlib.sha256(item_id.encode()).hexdigest()


def subsample(items: list[Item], limit: int | None) -> list[Item]:
    """The same ``limit`` ids in every language: the first by a hash of the id, a stable sample."""
    if limit is None or len(items) <= limit:
        return list(items)
    return sorted(items, key=lambda item: _stable_order(item.id))[:limit]


def check_split(task: str, language: str, split: Split, items: list[Item]) -> None:
    where = f"task {task!r}, language {language!r}, split {split!r}"
    if not items:
        raise DataError(f"{where}: no items; check the task's data for this language or drop it from the study")
    seen: set[str] = set()
    duplicates = sorted({i.id for i in items if i.id in seen or seen.add(i.id)})
    if duplicates:
        raise DataError(f"{where}: duplicate item ids {duplicates[:5]}; every item needs a unique id")
    wrong = [i.id for i in items if i.task != task or i.language != language]
    if wrong:
        raise DataError(f"{where}: items {wrong[:5]} are labelled with another task or language")


@dataclass
class StudyData:
    """Training items per source and test items per target, already checked."""

    train: dict[Cell, list[Item]] = field(default_factory=dict)
    test: dict[Cell, list[Item]] = field(default_factory=dict)


def load_study_data(config: StudyConfig, tasks: dict[str, Task] | None = None) -> StudyData:
    tasks = tasks or {spec.name: get_task(spec.name, **spec.options) for spec in config.tasks}
    data = StudyData()
    for name, task in tasks.items():
        missing = [lang for lang in config.languages if lang not in task.languages]
        if missing:
            raise DataError(
                f"task {name!r} has no data for {', '.join(missing)}; it covers {', '.join(task.languages)}. "
                "Remove those languages from the study or use a task that covers them"
            )
        test_ids: dict[str, frozenset[str]] = {}
        for language in config.languages:
            cell = Cell(name, language)
            train, test = task.load(language, "train"), task.load(language, "test")
            check_split(name, language, "train", train)
            check_split(name, language, "test", test)
            overlap = sorted({i.id for i in train} & {i.id for i in test})
            if overlap:
                raise DataError(f"task {name!r}, language {language!r}: ids {overlap[:5]} are in both train and test; train and test must be disjoint")
            data.train[cell] = subsample(train, config.train.max_items)
            data.test[cell] = subsample(test, config.eval.max_items)
            test_ids[language] = frozenset(i.id for i in data.test[cell])
        reference_language, reference = next(iter(test_ids.items()))
        for language, ids in test_ids.items():
            if ids != reference:
                only_here = sorted(ids - reference)[:3]
                only_there = sorted(reference - ids)[:3]
                raise DataError(
                    f"task {name!r}: test ids of {language!r} differ from {reference_language!r} "
                    f"(only in {language}: {only_here}; only in {reference_language}: {only_there}); "
                    "test sets must be parallel: the same ids in every language"
                )
    return data
