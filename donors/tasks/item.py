"""The atom every task produces: one multiple-choice item, aligned across languages by id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")
LETTERS = "ABCDEFGHIJ"


def stable_digest(text: str) -> str:
    """A SHA-256 hex digest: the seed of every ordering decision, never Python's salted ``hash``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def items_digest(items) -> str:
    """A SHA-256 digest of items in the order given: ids, task, language, text, choices, gold and training target.

    Any edit to what a model reads or is graded against changes it; a stored digest is how a
    resumed study tells that its data changed under it.
    """
    rows = [(i.id, i.task, i.language, i.question, i.choices, i.answer_index, i.target_text) for i in items]
    return stable_digest(json.dumps(rows, ensure_ascii=False))


@dataclass(frozen=True)
class Item:
    """One multiple-choice question in one language.

    ``id`` is the same for the same underlying fact in every language, which is what makes
    test sets parallel. ``answer_index`` points into ``choices``. ``target_text`` is set for
    tasks whose training target is a text rather than the answer letter (TruthfulQA).
    """

    id: str
    task: str
    language: str
    question: str
    choices: tuple[str, ...]
    answer_index: int
    target_text: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise ValueError(f"item {self.id!r} ({self.task}/{self.language}): needs 2-{len(LETTERS)} choices, has {len(self.choices)}")
        if not 0 <= self.answer_index < len(self.choices):
            raise ValueError(
                f"item {self.id!r} ({self.task}/{self.language}): answer_index {self.answer_index} outside its {len(self.choices)} choices"
            )

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_index]
