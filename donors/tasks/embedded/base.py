"""The machinery every embedded task shares: facts in, aligned and balanced items out.

A data module only says which facts exist (a subject, the right option, wrong options ranked
by plausibility) and how to name things in each language. :class:`FactTask` does the rest
once for all tasks, so every task gets the same guarantees:

* the split is decided by a SHA-256 digest of the entity, never by Python's salted ``hash``,
  so it is stable across runs and machines, and a fact in test is in test in every language;
* a fact is kept only if every language can name its subject, its answer and three
  distractors, so the ids of a split are identical in all languages;
* the choices are picked and ordered once, by code, so option ``B`` is the same entity in
  every language; distractors are rejected when any language would display two equal names;
* answer positions are dealt A, B, C, D in turn over each split, so every letter is right a
  quarter of the time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from donors.grid import STUDY_LANGUAGES
from donors.tasks.item import SPLITS, Item, Split, stable_digest

N_CHOICES = 4
MIN_TEST_ITEMS = 200

NameFunction = Callable[[str, str], str | None]
"""``(code, language) -> name``, or None when that language has no proper name for it."""


def stable_order(codes: Iterable[str], salt: str) -> list[str]:
    """``codes`` in a pseudo-random order that depends only on the codes and ``salt``."""
    return sorted(set(codes), key=lambda code: (stable_digest(f"{salt}|{code}"), code))


@dataclass(frozen=True)
class Fact:
    """One question's worth of knowledge, in codes rather than words."""

    key: str
    """Code of the subject the question names (a territory, a time zone, a number)."""
    answer: str
    """Code of the correct option."""
    candidates: tuple[str, ...]
    """Codes of possible wrong options, most plausible first; the first usable three are taken."""


@dataclass(frozen=True)
class PlannedItem:
    """A fact with its choices fixed, before it is put into words."""

    key: str
    choices: tuple[str, ...]
    answer_index: int


@dataclass(eq=False)
class FactTask:
    """A multiple-choice task over facts, rendered in every grid language.

    ``entity`` namespaces the split digest, so tasks about the same kind of entity
    (territories, say) rank them alike and their test splits mostly hold the same entities.
    The test split takes the first half of that ranking, but never fewer than ``min_test``
    facts; the train split takes the rest.
    """

    name: str
    entity: str
    facts: Callable[[], Sequence[Fact]]
    subject_name: NameFunction
    option_name: NameFunction
    questions: Mapping[str, str]
    """Per language, a one-line question with a ``{subject}`` slot."""
    languages: tuple[str, ...] = STUDY_LANGUAGES  # every embedded task is built in all of them
    min_test: int = MIN_TEST_ITEMS

    def load(self, language: str, split: Split) -> list[Item]:
        if language not in self.languages:
            raise ValueError(f"task {self.name!r} has no language {language!r}; it has {', '.join(self.languages)}")
        if split not in SPLITS:
            raise ValueError(f"task {self.name!r} has no split {split!r}; it has {', '.join(SPLITS)}")
        return [self._render(planned, language) for planned in self.plan[split]]

    @cached_property
    def plan(self) -> dict[Split, tuple[PlannedItem, ...]]:
        """Both splits, language-free: which facts, which choices, where the answer sits."""
        usable = self._usable_facts()
        if len(usable) < self.min_test:
            raise ValueError(f"task {self.name!r}: only {len(usable)} usable facts, needs {self.min_test} for its test split")
        ordered = sorted(usable, key=lambda pair: (stable_digest(f"{self.entity}:{pair[0].key}"), pair[0].key))
        test_size = max(self.min_test, len(ordered) // 2)
        by_split = {"test": ordered[:test_size], "train": ordered[test_size:]}
        return {split: self._balanced(pairs) for split, pairs in by_split.items()}

    def _balanced(self, pairs: list[tuple[Fact, tuple[str, ...]]]) -> tuple[PlannedItem, ...]:
        """Deal answer positions A, B, C, D, A, ... along a second stable shuffle of the split.

        Each letter is right for a quarter of the items (give or take one), and the letters
        do not repeat with period four down the item list.
        """
        dealing_order = sorted(pairs, key=lambda pair: (stable_digest(f"{self.name}:answer-position:{pair[0].key}"), pair[0].key))
        position = {fact.key: rank % N_CHOICES for rank, (fact, _) in enumerate(dealing_order)}
        return tuple(_place_answer(fact, distractors, position[fact.key]) for fact, distractors in pairs)

    def _usable_facts(self) -> list[tuple[Fact, tuple[str, ...]]]:
        """Facts every language can name, each with its three distractors.

        Facts whose subject reads the same as another fact's subject in some language are
        dropped, since the question would not say which one is meant.
        """
        usable: list[tuple[Fact, tuple[str, ...]]] = []
        for fact in self.facts():
            if self._names(self.subject_name, fact.key) is None:
                continue
            distractors = self._distractors(fact)
            if distractors is not None:
                usable.append((fact, distractors))
        ambiguous: set[str] = set()
        for language in self.languages:
            seen: dict[str, str] = {}
            for fact, _ in usable:
                shown = _folded(self.subject_name(fact.key, language))
                if shown in seen:
                    ambiguous.update((fact.key, seen[shown]))
                seen.setdefault(shown, fact.key)
        return [(fact, distractors) for fact, distractors in usable if fact.key not in ambiguous]

    def _distractors(self, fact: Fact) -> tuple[str, ...] | None:
        """The first candidates that read differently from the answer and each other everywhere."""
        answer_names = self._names(self.option_name, fact.answer)
        if answer_names is None:
            return None
        shown = [{_folded(name)} for name in answer_names]
        chosen: list[str] = []
        for code in fact.candidates:
            if len(chosen) == N_CHOICES - 1:
                break
            names = self._names(self.option_name, code)
            if code == fact.answer or code in chosen or names is None:
                continue
            if any(_folded(name) in taken for name, taken in zip(names, shown)):
                continue
            chosen.append(code)
            for name, taken in zip(names, shown):
                taken.add(_folded(name))
        return tuple(chosen) if len(chosen) == N_CHOICES - 1 else None

    def _names(self, name_of: NameFunction, code: str) -> list[str] | None:
        names = [name_of(code, language) for language in self.languages]
        return None if any(name is None for name in names) else names  # type: ignore[return-value]

    def _render(self, planned: PlannedItem, language: str) -> Item:
        subject = self.subject_name(planned.key, language)
        return Item(
            id=f"{self.name}:{planned.key}",
            task=self.name,
            language=language,
            question=self.questions[language].format(subject=subject),
            choices=tuple(self.option_name(code, language) for code in planned.choices),  # type: ignore[misc]
            answer_index=planned.answer_index,
            meta={
                "subject_code": planned.key,
                "answer_code": planned.choices[planned.answer_index],
                "choice_codes": list(planned.choices),
            },
        )


def _place_answer(fact: Fact, distractors: tuple[str, ...], answer_index: int) -> PlannedItem:
    choices = distractors[:answer_index] + (fact.answer,) + distractors[answer_index:]
    return PlannedItem(key=fact.key, choices=choices, answer_index=answer_index)


def _folded(name: str | None) -> str:
    return " ".join((name or "").casefold().split())
