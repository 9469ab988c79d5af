"""Load and check every item a study needs, before any compute.

Checks that make a study's numbers meaningful: no empty split, no duplicate ids, train and
test disjoint, and test sets parallel across languages (the same ids, with as many options, everywhere).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import zip_longest

from donors.config import StudyConfig, TaskSpec
from donors.errors import DonorsError
from donors.grid import Cell
from donors.tasks.item import SPLITS, Item, Split, items_digest, stable_digest
from donors.tasks.registry import Task, get_task


class DataError(DonorsError, ValueError):
    """Items a study cannot use; the message names the task, language, ids and the fix."""


def fingerprint(items: list[Item]) -> str:
    """The digest of a cell's items in id order: what its scores, or the adapters trained on it, depend on."""
    return items_digest(sorted(items, key=lambda item: item.id))


def balanced_ids(items: list[Item], limit: int) -> list[str]:
    """``limit`` ids whose gold positions are as even as the items allow, chosen reproducibly.

    Items with the same number of options are dealt by gold position (A, B, C, ...) in turn,
    each position's items in the order of a SHA-256 digest of their id; a position that runs
    out leaves the rest to the others. So each position is within one item of equal wherever
    the split has enough of it, and a model that always answers one letter scores chance, not
    whatever a lopsided cut gives it. Items with different numbers of options (ARC has 3 to 5)
    keep the split's mix: each count gets its share of ``limit`` (largest remainders) and is
    balanced on its own, as position E exists only on 5-option items.
    """
    by_width: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_width[len(item.choices)].append(item)
    chosen = []
    for width, quota in _shares(limit, {w: len(group) for w, group in by_width.items()}).items():
        by_position: dict[int, list[Item]] = defaultdict(list)
        for item in sorted(by_width[width], key=lambda item: (stable_digest(item.id), item.id)):
            by_position[item.answer_index].append(item)
        dealt = [item for turn in zip_longest(*(by_position[p] for p in sorted(by_position))) for item in turn if item is not None]
        chosen += [item.id for item in dealt[:quota]]
    return chosen


def _shares(limit: int, sizes: dict[int, int]) -> dict[int, int]:
    """``limit`` split over groups in proportion to their sizes, by largest remainders (ties: the smaller key first)."""
    total = sum(sizes.values())
    exact = {key: limit * size / total for key, size in sizes.items()}
    shares = {key: int(value) for key, value in exact.items()}
    for key in sorted(exact, key=lambda k: (shares[k] - exact[k], k))[: limit - sum(shares.values())]:
        shares[key] += 1
    return dict(sorted(shares.items()))


def subsample(items: list[Item], limit: int | None, ids: list[str] | None = None) -> list[Item]:
    """The items a cap keeps: all below it, else :func:`balanced_ids` (or the ``ids`` given, chosen in another language)."""
    if limit is None or len(items) <= limit:
        return list(items)
    keep = set(ids if ids is not None else balanced_ids(items, limit))
    return [item for item in items if item.id in keep]


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


def _cut(items: list[Item], limit: int | None, ids: list[str] | None) -> list[Item]:
    """Training items under a cap: the first language's ids where this language has them all
    (aligned data), else this language's own balanced choice (training sets need not be parallel)."""
    if ids is not None and {item.id for item in items} >= set(ids):
        return subsample(items, limit, ids)
    return subsample(items, limit)


@dataclass
class StudyData:
    """Training items per source and test items per target, already checked."""

    train: dict[Cell, list[Item]] = field(default_factory=dict)
    test: dict[Cell, list[Item]] = field(default_factory=dict)

    def fingerprints(self) -> dict[tuple[Split, Cell], str]:
        """A digest per (split, cell) of the items a study uses, in id order (file order changes nothing)."""
        return {(split, cell): fingerprint(items) for split in SPLITS for cell, items in getattr(self, split).items()}


def study_task(config: StudyConfig, spec: TaskSpec) -> Task:
    """The task of one of ``config.tasks``; an error in its options names the config file and the entry."""
    try:
        return get_task(spec.name, **spec.options)
    except DonorsError as error:
        raise type(error)(f"{config.source}, tasks[{config.tasks.index(spec)}]: {error}") from None


def check_languages(config: StudyConfig, name: str, task: Task) -> None:
    """Refuse a study language the task has no data for, naming the config file, what it covers and the fix."""
    missing = [lang for lang in config.languages if lang not in task.languages]
    if missing:
        raise DataError(
            f"{config.source}: task {name!r} has no data for {', '.join(missing)}; it covers {', '.join(task.languages)}. "
            "Remove those languages from the study's languages, or give the task data for them"
        )


def load_study_data(config: StudyConfig, tasks: dict[str, Task] | None = None) -> StudyData:
    tasks = tasks or {spec.name: study_task(config, spec) for spec in config.tasks}
    data = StudyData()
    for name, task in tasks.items():
        check_languages(config, name, task)
        widths: dict[str, dict[str, int]] = {}  # language -> test id -> its number of options
        # A cut keeps the same ids in every language: those balanced in the first language.
        chosen: dict[str, list[str] | None] = {"train": None, "test": None}
        for language in config.languages:
            cell = Cell(name, language)
            train, test = task.load(language, "train"), task.load(language, "test")
            check_split(name, language, "train", train)
            check_split(name, language, "test", test)
            overlap = sorted({i.id for i in train} & {i.id for i in test})
            if overlap:
                raise DataError(
                    f"task {name!r}, language {language!r}: ids {overlap[:5]} are in both train and test; train and test must be disjoint"
                )
            for split, items, limit in (("train", train, config.train.max_items), ("test", test, config.eval.max_items)):
                if chosen[split] is None and limit is not None and len(items) > limit:
                    chosen[split] = balanced_ids(items, limit)
            data.train[cell] = _cut(train, config.train.max_items, chosen["train"])
            data.test[cell] = subsample(test, config.eval.max_items, chosen["test"])
            widths[language] = {i.id: len(i.choices) for i in data.test[cell]}
        _check_parallel(config.source, name, widths)
    return data


def _check_parallel(source: str, task: str, widths: dict[str, dict[str, int]]) -> None:
    """Test sets must be parallel: the same ids in every language, each offering as many options as in the first
    language (else it is not the same item: its chance level, and the balanced cut made in the first language, differ)."""
    reference_language, reference = next(iter(widths.items()))
    for language, here in widths.items():
        if here.keys() != reference.keys():
            only_here = sorted(here.keys() - reference.keys())[:3]
            only_there = sorted(reference.keys() - here.keys())[:3]
            raise DataError(
                f"{source}: task {task!r}: test ids of {language!r} differ from {reference_language!r} "
                f"(only in {language}: {only_here}; only in {reference_language}: {only_there}); "
                "test sets must be parallel: the same ids in every language"
            )
        differing = sorted(item_id for item_id, width in here.items() if width != reference[item_id])
        if differing:
            shown = ", ".join(f"{i!r} ({here[i]} options, {reference[i]} in {reference_language})" for i in differing[:3])
            raise DataError(
                f"{source}: task {task!r}: {len(differing)} test ids of {language!r} have another number of options than in "
                f"{reference_language!r}: {shown}{' ...' if len(differing) > 3 else ''}. Test sets must be parallel: give each id "
                "the same options, translated, in every language, or remove those ids from every language"
            )
