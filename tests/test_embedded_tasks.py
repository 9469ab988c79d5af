"""The embedded task pack keeps its promises: aligned, disjoint, deterministic, balanced items."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest
from babel.core import get_global

from donors.grid import STUDY_LANGUAGES as LANGUAGES
from donors.tasks import Task, get_task, task_names
from donors.tasks.embedded import TASK_NAMES
from donors.tasks.embedded.cldr import CONTINENT_OF_TZ_AREA, locale
from donors.tasks.embedded.number_words import LARGEST, near_misses
from donors.tasks.item import LETTERS, Item

SPLITS = ("train", "test")
GRID_LANGUAGES = ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "pt", "zh")
SCRIPT_OF_LANGUAGE = {
    "ar": re.compile("[\u0600-\u06ff]"),
    "bn": re.compile("[\u0980-\u09ff]"),
    "hi": re.compile("[\u0900-\u097f]"),
    "zh": re.compile("[\u4e00-\u9fff]"),
}
ASCII_LETTER = re.compile("[A-Za-z]")


@pytest.fixture(scope="module")
def items() -> dict[tuple[str, str, str], list[Item]]:
    """Every (task, language, split) of the pack, built once."""
    tasks = {name: get_task(name) for name in TASK_NAMES}
    return {(name, language, split): tasks[name].load(language, split) for name in TASK_NAMES for language in LANGUAGES for split in SPLITS}


def _fingerprint(item: Item) -> tuple:
    return (item.id, item.question, item.choices, item.answer_index, json.dumps(item.meta, sort_keys=True))


def _pack_digest(items_by_cell: dict[tuple[str, str, str], list[Item]]) -> str:
    text = json.dumps(
        [[list(cell), [list(map(str, _fingerprint(item))) for item in cell_items]] for cell, cell_items in sorted(items_by_cell.items())],
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_pack_covers_the_grid_languages() -> None:
    assert LANGUAGES == GRID_LANGUAGES
    assert len(TASK_NAMES) >= 4


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_is_registered_under_a_short_snake_case_name(name: str) -> None:
    assert name in task_names()
    assert re.fullmatch(r"[a-z][a-z0-9_]{2,23}", name)
    task = get_task(name)
    assert isinstance(task, Task)
    assert task.name == name
    assert task.languages == GRID_LANGUAGES


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", TASK_NAMES)
def test_items_are_aligned_across_languages(items, name: str, split: str) -> None:
    reference = items[(name, "en", split)]
    for language in LANGUAGES:
        cell = items[(name, language, split)]
        assert [item.id for item in cell] == [item.id for item in reference], language
        assert [item.meta["answer_code"] for item in cell] == [item.meta["answer_code"] for item in reference], language
        assert [item.meta["choice_codes"] for item in cell] == [item.meta["choice_codes"] for item in reference], language
        assert [item.answer_index for item in cell] == [item.answer_index for item in reference], language
        assert all(item.language == language and item.task == name for item in cell)
    assert len({item.id for item in reference}) == len(reference)


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("language", LANGUAGES)
def test_train_and_test_share_no_fact(items, name: str, language: str) -> None:
    train = {item.meta["subject_code"] for item in items[(name, language, "train")]}
    test = {item.meta["subject_code"] for item in items[(name, language, "test")]}
    assert train and test
    assert not train & test


@pytest.mark.parametrize("name", TASK_NAMES)
def test_loading_twice_gives_identical_items(items, name: str) -> None:
    fresh = get_task(name)
    for language in ("en", "zh"):
        for split in SPLITS:
            again = fresh.load(language, split)
            assert list(map(_fingerprint, again)) == list(map(_fingerprint, items[(name, language, split)]))


def test_items_do_not_depend_on_the_hash_seed(items) -> None:
    """Fresh interpreters with other hash seeds build the same pack (build times are printed, not asserted)."""
    script = (
        "import json, time, sys\n"
        "from donors.tasks import get_task\n"
        "from donors.grid import STUDY_LANGUAGES as LANGUAGES\n"
        "from donors.tasks.embedded import TASK_NAMES\n"
        "seconds, tasks = {}, {}\n"
        "for name in TASK_NAMES:\n"
        "    start = time.perf_counter(); tasks[name] = get_task(name); tasks[name].load('en', 'test')\n"
        "    seconds[name] = time.perf_counter() - start\n"
        "cells = {(n, l, s): tasks[n].load(l, s) for n in TASK_NAMES for l in LANGUAGES for s in ('train', 'test')}\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_embedded_tasks import _pack_digest\n"
        "print(json.dumps({'digest': _pack_digest(cells), 'seconds': seconds}))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    expected = _pack_digest(items)
    for seed in ("1", "271828"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, check=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["digest"] == expected, f"PYTHONHASHSEED={seed}"
        print(f"PYTHONHASHSEED={seed}: cold build seconds per task {report['seconds']}")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_a_built_task_serves_each_language_fast(name: str) -> None:
    task = get_task(name)
    task.load("en", "test")
    start = time.perf_counter()
    for language in LANGUAGES:
        task.load(language, "test")
    assert (time.perf_counter() - start) / len(LANGUAGES) < 0.1


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", TASK_NAMES)
def test_answer_letters_are_balanced(items, name: str, split: str) -> None:
    for language in LANGUAGES:
        cell = items[(name, language, split)]
        counts = Counter(item.answer_letter for item in cell)
        for letter in LETTERS[:4]:
            assert 0.20 <= counts[letter] / len(cell) <= 0.30, (language, letter, counts)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_split_sizes(items, name: str) -> None:
    test = len(items[(name, "en", "test")])
    train = len(items[(name, "en", "train")])
    assert test >= 200
    assert train >= 200 or test == 200, "train gets every fact beyond the minimal test split"
    assert train >= 40


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("language", LANGUAGES)
def test_items_are_well_formed(items, name: str, language: str) -> None:
    for split in SPLITS:
        for item in items[(name, language, split)]:
            assert len(item.choices) == 4
            shown = [" ".join(choice.casefold().split()) for choice in item.choices]
            assert len(set(shown)) == 4, item
            assert all(choice.strip() for choice in item.choices)
            assert item.meta["choice_codes"][item.answer_index] == item.meta["answer_code"]
            assert len(set(item.meta["choice_codes"])) == 4
            assert "\n" not in item.question and "{" not in item.question
            assert len(item.question) <= 100, item.question


def _currency_codes() -> set[str]:
    return set(get_global("all_currencies"))


KIND_OF_OPTION = {
    "number_words": lambda code: code.isdigit() and 1 <= int(code) <= LARGEST,
    "cldr_currency": lambda code: code in _currency_codes(),
    "cldr_language": lambda code: code in locale("en").languages and "_" not in code,
    "cldr_continent": lambda code: code in set(CONTINENT_OF_TZ_AREA.values()),
}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_distractors_are_of_the_answers_kind(items, name: str) -> None:
    is_option = KIND_OF_OPTION[name]
    for split in SPLITS:
        for item in items[(name, "en", split)]:
            assert all(is_option(code) for code in item.meta["choice_codes"]), item


def test_number_distractors_are_near_misses(items) -> None:
    for split in SPLITS:
        for item in items[("number_words", "en", split)]:
            answer = int(item.meta["answer_code"])
            wrong = [int(code) for code in item.meta["choice_codes"] if int(code) != answer]
            assert set(wrong) <= set(near_misses(answer)), item


def test_currency_distractors_are_not_tender_in_the_territory(items) -> None:
    for split in SPLITS:
        for item in items[("cldr_currency", "en", split)]:
            history = get_global("territory_currencies")[item.meta["subject_code"]]
            current = {code for code, _start, end, tender in history if end is None and tender}
            assert item.meta["answer_code"] in current
            assert not current & (set(item.meta["choice_codes"]) - {item.meta["answer_code"]}), item


def test_language_distractors_are_not_spoken_in_the_territory(items) -> None:
    spoken = get_global("territory_languages")
    for split in SPLITS:
        for item in items[("cldr_language", "en", split)]:
            there = {code.split("_")[0] for code in spoken[item.meta["subject_code"]]}
            assert item.meta["answer_code"] in there
            assert not there & (set(item.meta["choice_codes"]) - {item.meta["answer_code"]}), item


@pytest.mark.parametrize("name", TASK_NAMES)
def test_questions_are_written_in_the_items_language(items, name: str) -> None:
    for split in SPLITS:
        by_language = {language: items[(name, language, split)] for language in LANGUAGES}
        for index, english in enumerate(by_language["en"]):
            questions = {language: cell[index].question for language, cell in by_language.items()}
            assert len(set(questions.values())) == len(LANGUAGES), questions
            for language, script in SCRIPT_OF_LANGUAGE.items():
                assert script.search(questions[language]), questions[language]
                assert not ASCII_LETTER.search(questions[language]), questions[language]


@pytest.mark.parametrize("name", ["cldr_currency", "cldr_language", "cldr_continent"])
def test_option_names_are_localized(items, name: str) -> None:
    for language, script in SCRIPT_OF_LANGUAGE.items():
        for item in items[(name, language, "test")]:
            assert all(script.search(choice) for choice in item.choices), item
