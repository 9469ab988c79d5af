"""Local-file tasks: the column mapping reads every format alike, and bad data stops with a message
that names the file, the row and the fix.

SIB-200 (``/work/shared/data/sib200``, read in place, never copied) is the real-data case.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet
import pytest

from donors.config import load_config
from donors.tasks import get_task
from donors.tasks.data import DataError, load_study_data
from donors.tasks.files import FileTask
from donors.tasks.prompts import lettered_prompt

REPO = Path(__file__).resolve().parents[1]
SIB200 = REPO.parent / "shared" / "data" / "sib200"
SIB200_CODES = {
    "ar": "arb_Arab",
    "bn": "ben_Beng",
    "de": "deu_Latn",
    "en": "eng_Latn",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "hi": "hin_Deva",
    "id": "ind_Latn",
    "it": "ita_Latn",
    "pt": "por_Latn",
    "zh": "zho_Hans",
}
SIB200_LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")
needs_sib200 = pytest.mark.skipif(not SIB200.is_dir(), reason="the shared SIB-200 data is not on this machine")

Rows = list[dict[str, Any]]


def write_rows(path: Path, rows: Rows) -> Path:
    """``rows`` in the format the suffix names; CSV and TSV cells hold lists as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    else:
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["id"], delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    return path


def quiz_rows(language: str, ids: range) -> Rows:
    """Arithmetic questions with four option columns and a letter answer."""
    return [
        {
            "qid": f"q{n}",
            "stem": f"[{language}] {n} + 1 =",
            "a": str(n + 1),
            "b": str(n + 2),
            "c": str(n),
            "d": str(n - 1),
            "letter": "A",
            "options": [str(n + 1), str(n + 2), str(n), str(n - 1)],
            "position": 0,
        }
        for n in ids
    ]


def write_quiz(root: Path, languages: tuple[str, ...] = ("en", "de", "fr"), suffix: str = ".jsonl") -> str:
    for language in languages:
        write_rows(root / language / f"train{suffix}", quiz_rows(language, range(1, 5)))
        write_rows(root / language / f"test{suffix}", quiz_rows(language, range(10, 13)))
    return str(root / "{language}" / f"{{split}}{suffix}")


def quiz_task(path: str, **options: Any) -> FileTask:
    options = {
        "source": "files",
        "path": path,
        "languages": ["en", "de", "fr"],
        "columns": {"id": "qid", "question": "stem", "choices": ["a", "b", "c", "d"], "answer": "letter"},
        "answer_type": "letter",
        **options,
    }
    return get_task("quiz", **options)  # type: ignore[return-value]


def raised(task: FileTask, *loads: tuple[str, str]) -> str:
    with pytest.raises(DataError) as error:
        for language, split in loads:
            task.load(language, split)
    return str(error.value)


# --- SIB-200, the real data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sib200() -> FileTask:
    return get_task(
        "sib200",
        source="files",
        path=str(SIB200 / "{language}" / "{split}.tsv"),
        language_codes=SIB200_CODES,
        columns={"id": "index_id", "question": "text", "answer": "category"},
        labels=str(SIB200 / "eng_Latn" / "labels.txt"),
        question_template="What is the topic of this sentence? {text}",
    )  # type: ignore[return-value]


@needs_sib200
def test_sib200_items_are_aligned_across_languages(sib200: FileTask) -> None:
    assert sib200.name == "sib200" and sib200.languages == tuple(SIB200_CODES)
    for split, size in (("train", 701), ("test", 204)):
        ids = {language: [item.id for item in sib200.load(language, split)] for language in sib200.languages}
        assert all(len(language_ids) == size for language_ids in ids.values())
        assert all(set(language_ids) == set(ids["en"]) for language_ids in ids.values())
    assert not {i.id for i in sib200.load("en", "train")} & {i.id for i in sib200.load("en", "test")}
    assert set(sib200.skipped.values()) == {0}


@needs_sib200
def test_sib200_items_have_seven_labels_and_the_right_answer(sib200: FileTask) -> None:
    first = {language: sib200.load(language, "train")[0] for language in ("en", "de", "zh")}
    for language, item in first.items():
        assert (item.id, item.task, item.language) == ("431", "sib200", language)
        assert item.choices == SIB200_LABELS
        assert item.choices[item.answer_index] == "geography"
    assert lettered_prompt(first["en"]) == (
        "What is the topic of this sentence? Turkey is encircled by seas on three sides: the Aegean Sea to the west, "
        "the Black Sea to the north and the Mediterranean Sea to the south.\n"
        "A) science/technology\nB) travel\nC) politics\nD) sports\nE) health\nF) entertainment\nG) geography\nAnswer:"
    )
    assert first["de"].question.startswith("What is the topic of this sentence? Die Türkei")
    answers = {item.choices[item.answer_index] for item in sib200.load("zh", "test")}
    assert answers == set(SIB200_LABELS)


@needs_sib200
def test_sib200_study_config_loads_and_passes_the_study_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "sib200.yaml")
    assert config.task_names == ("sib200", "number_words") and config.languages == ("en", "de", "zh")
    data = load_study_data(config)
    sib_tests = {cell.language: [item.id for item in items] for cell, items in data.test.items() if cell.task == "sib200"}
    assert sib_tests["en"] == sib_tests["de"] == sib_tests["zh"] and len(sib_tests["en"]) == config.eval.max_items


# --- the column mapping ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_every_format_reads_to_the_same_items(tmp_path: Path, suffix: str) -> None:
    task = quiz_task(write_quiz(tmp_path, suffix=suffix))
    item = task.load("de", "test")[0]
    assert (item.id, item.task, item.question, item.choices, item.answer_index) == (
        "q10",
        "quiz",
        "[de] 10 + 1 =",
        ("11", "12", "10", "9"),
        0,
    )
    assert [i.id for i in task.load("en", "test")] == ["q10", "q11", "q12"]


def test_a_list_column_of_choices_with_an_index_answer(tmp_path: Path) -> None:
    columns = {"id": "qid", "question": "stem", "choices": "options", "answer": "position"}
    for suffix in (".jsonl", ".tsv"):
        task = quiz_task(write_quiz(tmp_path / suffix[1:], suffix=suffix), columns=columns, answer_type="index")
        item = task.load("fr", "train")[0]
        assert item.choices == ("2", "3", "1", "0") and item.answer_index == 0


def test_a_label_answer_matches_the_choice_text(tmp_path: Path) -> None:
    for language in ("en", "de", "fr"):
        for split, ids in (("train", range(1, 3)), ("test", range(10, 12))):
            rows = quiz_rows(language, ids)
            write_rows(tmp_path / language / f"{split}.jsonl", [{**row, "letter": row["c"]} for row in rows])
    task = quiz_task(str(tmp_path / "{language}" / "{split}.jsonl"), answer_type="label")
    assert [item.answer_index for item in task.load("en", "test")] == [2, 2]


def test_question_columns_are_joined_into_the_template(tmp_path: Path) -> None:
    rows = [{"id": 1, "premise": "It rained.", "hypothesis": "The street is wet.", "label": "entailment"}]
    write_rows(tmp_path / "en" / "train.jsonl", rows)
    task = get_task(
        "nli",
        source="files",
        path=str(tmp_path / "{language}" / "{split}.jsonl"),
        languages=["en"],
        columns={"id": "id", "question": ["premise", "hypothesis"], "answer": "label"},
        question_separator=" / ",
        question_template="Does it follow? {question} ({label})",
        labels=["entailment", "neutral", "contradiction"],
    )
    item = task.load("en", "train")[0]
    assert item.id == "1" and item.question == "Does it follow? It rained. / The street is wet. (entailment)"
    assert item.choices == ("entailment", "neutral", "contradiction") and item.answer_index == 0


def test_labels_from_a_file_with_per_language_names(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("sports\nhealth\n\n", encoding="utf-8")
    for code, text in (("eng", "A goal."), ("deu", "Ein Tor.")):
        write_rows(tmp_path / code / "train.tsv", [{"index_id": "7", "category": "sports", "text": text}])
    task = get_task(
        "topics",
        source="files",
        path=str(tmp_path / "{language}" / "{split}.tsv"),
        language_codes={"en": "eng", "de": "deu"},
        columns={"id": "index_id", "question": "text", "answer": "category"},
        labels=str(tmp_path / "labels.txt"),
        label_names={"de": {"sports": "Sport", "health": "Gesundheit"}},
    )
    english, german = task.load("en", "train")[0], task.load("de", "train")[0]
    assert english.choices == ("sports", "health") and german.choices == ("Sport", "Gesundheit")
    assert english.answer_index == german.answer_index == 0 and german.question == "Ein Tor."


def test_splits_map_our_split_names_to_the_files(tmp_path: Path) -> None:
    path = write_quiz(tmp_path, languages=("en",))
    (tmp_path / "en" / "test.jsonl").rename(tmp_path / "en" / "dev.jsonl")
    task = quiz_task(path, languages=["en"], splits={"test": "dev"})
    assert len(task.load("en", "test")) == 3 and len(task.load("en", "train")) == 4


# --- bad data --------------------------------------------------------------------------------


def test_a_missing_file_names_its_path_and_the_options_to_fix(tmp_path: Path) -> None:
    task = quiz_task(write_quiz(tmp_path), language_codes={"de": "deu"})
    message = raised(task, ("de", "train"))
    assert str(tmp_path / "deu" / "train.jsonl") in message and "no such file" in message and "language_codes" in message


def test_a_missing_column_names_the_file_and_the_column(tmp_path: Path) -> None:
    task = quiz_task(
        write_quiz(tmp_path, suffix=".csv"), columns={"id": "qid", "question": "query", "choices": ["a", "b"], "answer": "letter"}
    )
    message = raised(task, ("en", "train"))
    assert str(tmp_path / "en" / "train.csv") in message and "missing column 'query'" in message and "'stem'" in message


def test_an_answer_not_among_the_choices_names_the_file_line_and_id(tmp_path: Path) -> None:
    path = write_quiz(tmp_path, suffix=".tsv")
    rows = quiz_rows("en", range(1, 5))
    rows[2]["letter"] = "E"
    write_rows(tmp_path / "en" / "train.tsv", rows)
    message = raised(quiz_task(path), ("en", "train"))
    assert f"{tmp_path / 'en' / 'train.tsv'}, line 4 (id 'q3')" in message
    assert "'E'" in message and "A-D" in message and "skip_bad_rows: true" in message


def test_skip_bad_rows_skips_counts_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_quiz(tmp_path)
    rows = quiz_rows("en", range(1, 5))
    rows[0]["letter"], rows[3]["stem"] = "Z", "  "
    write_rows(tmp_path / "en" / "train.jsonl", rows)
    task = quiz_task(path, skip_bad_rows=True)
    with caplog.at_level(logging.WARNING, logger="donors.tasks.files"):
        items = task.load("en", "train")
    assert [item.id for item in items] == ["q2", "q3"]
    assert task.skipped[("en", "train")] == 2
    warning = caplog.text
    assert "skipped 2 of 4 rows" in warning and str(tmp_path / "en" / "train.jsonl") in warning
    assert "line 1 (id 'q1')" in warning and "line 4 (id 'q4')" in warning


def test_test_ids_not_aligned_across_languages_name_both_files_and_the_ids(tmp_path: Path) -> None:
    path = write_quiz(tmp_path)
    write_rows(tmp_path / "de" / "test.jsonl", quiz_rows("de", range(10, 12)) + quiz_rows("de", range(20, 21)))
    message = raised(quiz_task(path), ("en", "test"), ("de", "test"))
    assert f"only in {tmp_path / 'de' / 'test.jsonl'}: 'q20' (line 3)" in message
    assert f"only in {tmp_path / 'en' / 'test.jsonl'}: 'q12' (line 3)" in message
    assert "parallel" in message


def test_duplicate_ids_name_the_file_and_both_lines(tmp_path: Path) -> None:
    path = write_quiz(tmp_path, suffix=".csv")
    rows = quiz_rows("fr", range(1, 5))
    rows[3]["qid"] = "q2"
    write_rows(tmp_path / "fr" / "train.csv", rows)
    message = raised(quiz_task(path), ("fr", "train"))
    assert f"{tmp_path / 'fr' / 'train.csv'}: id 'q2' is on both line 3 and line 5" in message


def test_an_empty_split_names_the_file(tmp_path: Path) -> None:
    path = write_quiz(tmp_path)
    (tmp_path / "en" / "test.jsonl").write_text("\n", encoding="utf-8")
    message = raised(quiz_task(path), ("en", "test"))
    assert f"{tmp_path / 'en' / 'test.jsonl'}: no items" in message and "no rows" in message


def test_all_rows_skipped_is_an_empty_split_too(tmp_path: Path) -> None:
    path = write_quiz(tmp_path)
    write_rows(tmp_path / "en" / "test.jsonl", [{**row, "letter": "?"} for row in quiz_rows("en", range(10, 12))])
    message = raised(quiz_task(path, skip_bad_rows=True), ("en", "test"))
    assert "all 2 rows were skipped" in message


def test_train_test_overlap_names_both_files_and_the_id(tmp_path: Path) -> None:
    path = write_quiz(tmp_path)
    write_rows(tmp_path / "en" / "test.jsonl", quiz_rows("en", range(3, 6)))
    message = raised(quiz_task(path), ("en", "train"), ("en", "test"))
    assert f"'q3' (line 3), 'q4' (line 4) of {tmp_path / 'en' / 'train.jsonl'}" in message
    assert f"'q3' (line 1), 'q4' (line 2) of {tmp_path / 'en' / 'test.jsonl'}" in message and "disjoint" in message


def test_a_broken_jsonl_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_quiz(tmp_path)
    with (tmp_path / "en" / "train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"qid": "q9", \n')
    message = raised(quiz_task(path), ("en", "train"))
    assert f"{tmp_path / 'en' / 'train.jsonl'}, line 5: not valid JSON" in message


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"colums": {}}, "colums: unknown option"),
        ({"labels": ["x", "y"]}, "give the choices one way"),
        ({"answer_type": None}, "set answer_type"),
        ({"path": "data/{lang}/{split}.jsonl"}, "unknown placeholders ['lang']"),
        ({"path": "data/{language}/all.jsonl"}, "needs a {split} placeholder"),
        ({"path": "data/{language}/{split}.xml"}, "set format"),
        ({"languages": None}, "list its languages"),
    ],
)
def test_bad_options_name_the_task_and_the_fix(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(DataError) as error:
        quiz_task(**{"path": "data/{language}/{split}.jsonl", **options})
    assert "task 'quiz'" in str(error.value) and expected in str(error.value)


def test_a_task_entry_that_cannot_be_built_or_lacks_a_language_names_the_config_file(tmp_path: Path) -> None:
    from donors import api

    path = write_quiz(tmp_path / "data", languages=("en", "de"))
    task = {"name": "quiz", "options": {"source": "files", "path": path, "languages": ["en", "de"]}}
    task["options"]["columns"] = {"id": "qid", "question": "stem", "choices": ["a", "b", "c", "d"], "answer": "letter"}
    task["options"]["answer_type"] = "letter"
    study = {"models": ["smollm2-135m"], "output_dir": str(tmp_path / "study"), "tasks": [task]}
    (tmp_path / "typo.yaml").write_text(
        json.dumps({**study, "languages": ["en", "de"], "tasks": [{**task, "options": {**task["options"], "answer_type": "indx"}}]})
    )
    (tmp_path / "french.yaml").write_text(json.dumps({**study, "languages": ["en", "de", "fr"]}))
    for plan_or_load in (lambda c: api.plan_study(c), lambda c: load_study_data(load_config(c))):
        with pytest.raises(DataError, match=r"typo\.yaml, tasks\[0\]: task 'quiz': invalid options(.|\n)*answer_type"):
            plan_or_load(tmp_path / "typo.yaml")
        with pytest.raises(DataError, match=r"french\.yaml: task 'quiz' has no data for fr; it covers en, de"):
            plan_or_load(tmp_path / "french.yaml")


def test_an_option_a_task_does_not_take_is_named_with_the_config_file(tmp_path: Path) -> None:
    from donors import api
    from donors.tasks.registry import TaskOptionsError

    study = {"models": ["smollm2-135m"], "languages": ["en"], "output_dir": str(tmp_path / "study")}
    (tmp_path / "bogus.yaml").write_text(json.dumps({**study, "tasks": [{"name": "number_words", "options": {"bogus": 1}}]}))
    with pytest.raises(TaskOptionsError, match=r"bogus\.yaml, tasks\[0\]: task 'number_words' .*unexpected keyword argument 'bogus'"):
        api.plan_study(tmp_path / "bogus.yaml")


# --- hostile files (issue 17, item 12): every bad file is named with its row, within documented limits -------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path: Path, suffix: str) -> None:
    path = write_quiz(tmp_path, suffix=suffix)
    target = tmp_path / "en" / f"train{suffix}"
    lines = target.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"[en]", "[en] café".encode("latin-1"))  # what a spreadsheet's plain "CSV" saves
    target.write_bytes(b"".join(lines))
    message = raised(quiz_task(path), ("en", "train"))
    assert f"{target}, line 3: not UTF-8 text (byte 0xe9" in message and "save the file as UTF-8" in message


def test_a_labels_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"sport\nsant\xe9\n")
    with pytest.raises(DataError, match=rf"{labels}, line 2: not UTF-8 text"):
        quiz_task(write_quiz(tmp_path), labels=str(labels), columns={"id": "qid", "question": "stem", "answer": "letter"})


def test_more_choices_than_letters_is_a_bad_row_not_an_index_error(tmp_path: Path) -> None:
    path = write_quiz(tmp_path)
    rows = quiz_rows("en", range(1, 5))
    rows[1]["options"] = [str(n) for n in range(12)]
    write_rows(tmp_path / "en" / "train.jsonl", rows)
    columns = {"id": "qid", "question": "stem", "choices": "options", "answer": "letter"}
    message = raised(quiz_task(path, columns=columns), ("en", "train"))
    assert f"{tmp_path / 'en' / 'train.jsonl'}, line 2 (id 'q2'): 12 choices; an item has 2 to 10" in message
    rows[1]["options"] = ["only one"]
    write_rows(tmp_path / "en" / "train.jsonl", rows)
    assert "line 2 (id 'q2'): 1 choices; an item has 2 to 10" in raised(quiz_task(path, columns=columns), ("en", "train"))
    with pytest.raises(DataError, match=r"task 'quiz': columns.choices lists 11 columns; an item has at most 10 choices"):
        quiz_task(path, columns={**columns, "choices": [f"c{n}" for n in range(11)]})


def test_duplicate_choices_within_an_item_are_a_bad_row(tmp_path: Path) -> None:
    path = write_quiz(tmp_path, suffix=".csv")
    rows = quiz_rows("de", range(1, 5))
    rows[3]["d"] = rows[3]["b"]
    write_rows(tmp_path / "de" / "train.csv", rows)
    message = raised(quiz_task(path), ("de", "train"))
    assert f"{tmp_path / 'de' / 'train.csv'}, line 5 (id 'q4'): choices B and D are both '6'" in message
    assert "ambiguous" in message and "skip_bad_rows" in message


@pytest.mark.parametrize(
    "choice, said",
    [
        ({"text": "4"}, "choice 2 of column 'options' is a dict"),
        (["4"], "choice 2 of column 'options' is a list"),
        (0.5, "choice 2 of column 'options' is a float (0.5), not text; write each choice as a string"),
        (True, "choice 2 of column 'options' is a bool"),
        (None, "a choice is empty: ['1', '', '3']"),
    ],
)
def test_a_choice_that_is_not_text_is_a_bad_row(tmp_path: Path, choice: Any, said: str) -> None:
    path = write_quiz(tmp_path)
    rows = quiz_rows("en", range(1, 5))
    rows[0]["options"] = ["1", choice, "3"]
    write_rows(tmp_path / "en" / "train.jsonl", rows)
    columns = {"id": "qid", "question": "stem", "choices": "options", "answer": "position"}
    message = raised(quiz_task(path, columns=columns, answer_type="index"), ("en", "train"))
    assert f"line 1 (id 'q1'): {said}" in message


def test_non_text_in_choice_or_question_columns_is_a_bad_row(tmp_path: Path) -> None:
    path = write_quiz(tmp_path)
    rows = quiz_rows("en", range(1, 5))
    rows[2]["c"] = {"nested": True}
    write_rows(tmp_path / "en" / "train.jsonl", rows)
    assert "line 3 (id 'q3'): choice column 'c' is a dict" in raised(quiz_task(path), ("en", "train"))
    rows = quiz_rows("en", range(1, 5))
    rows[2]["stem"] = ["a", "list"]
    write_rows(tmp_path / "en" / "train.jsonl", rows)
    assert "line 3 (id 'q3'): question column 'stem' holds a list" in raised(quiz_task(path), ("en", "train"))
    # Integers are text enough: a choice 4 reads as "4", as before.
    rows = quiz_rows("en", range(1, 5))
    rows[0]["a"] = 2
    write_rows(tmp_path / "en" / "train.jsonl", rows)
    assert quiz_task(path).load("en", "train")[0].choices[0] == "2"


def test_ragged_csv_rows_are_bad_rows_a_trailing_delimiter_is_not(tmp_path: Path) -> None:
    path = write_quiz(tmp_path, suffix=".csv")
    target = tmp_path / "en" / "train.csv"
    lines = target.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace("[en] 2 + 1 =", "[en] 2, + 1 =")  # an unquoted comma: one field too many
    lines[3] = ",".join(lines[3].split(",")[:3])  # fields missing
    lines[4] += ","  # a trailing delimiter: an empty extra field, harmless
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    header = len(lines[0].split(","))
    message = raised(quiz_task(path), ("en", "train"))
    assert f"{target}, line 3 (id 'q2'): {header + 1} fields where the header has {header}" in message
    assert "must be in double quotes" in message
    items = quiz_task(path, skip_bad_rows=True).load("en", "train")
    assert [item.id for item in items] == ["q1", "q4"]


def test_over_long_items_are_refused_or_skipped_and_counted_never_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from donors.tasks.files import MAX_CHOICE_CHARS, MAX_ITEM_CHARS, MAX_LINE_CHARS, MAX_QUESTION_CHARS

    path = write_quiz(tmp_path)
    rows = quiz_rows("en", range(1, 7))
    rows[0]["stem"] = "q" * (MAX_QUESTION_CHARS + 1)
    rows[1]["b"] = "c" * (MAX_CHOICE_CHARS + 1)
    rows[2]["stem"] = "q" * MAX_QUESTION_CHARS
    rows[2]["b"] = "c" * MAX_CHOICE_CHARS  # each within its limit, the whole item over
    rows[3]["stem"] = "q" * MAX_QUESTION_CHARS  # within every limit: kept whole
    write_rows(tmp_path / "en" / "train.jsonl", rows)
    with (tmp_path / "en" / "train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({**quiz_rows("en", range(9, 10))[0], "stem": "x" * MAX_LINE_CHARS}) + "\n")
    message = raised(quiz_task(path), ("en", "train"))
    assert f"line 1 (id 'q1'): the question is {MAX_QUESTION_CHARS + 1:,} characters; at most {MAX_QUESTION_CHARS:,}" in message
    task = quiz_task(path, skip_bad_rows=True)
    with caplog.at_level(logging.WARNING, logger="donors.tasks.files"):
        items = task.load("en", "train")
    assert [item.id for item in items] == ["q4", "q5", "q6"] and task.skipped[("en", "train")] == 4
    assert len(items[0].question) == MAX_QUESTION_CHARS
    assert "skipped 4 of 7 rows" in caplog.text
    assert f"line 2 (id 'q2'): choice B is {MAX_CHOICE_CHARS + 1:,} characters" in caplog.text
    assert f"line 3 (id 'q3'): the item (question and choices) is {MAX_QUESTION_CHARS + MAX_CHOICE_CHARS + 3:,} characters" in caplog.text
    assert MAX_ITEM_CHARS <= MAX_QUESTION_CHARS + MAX_CHOICE_CHARS  # the case above is possible
    write_rows(tmp_path / "en" / "train.jsonl", quiz_rows("en", range(1, 3)))
    huge = json.dumps({"qid": "q9", "stem": "x" * MAX_LINE_CHARS}) + "\n"
    with (tmp_path / "en" / "train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(huge)
    message = raised(quiz_task(path), ("en", "train"))
    assert f"line 3: the line is {len(huge):,} characters; at most {MAX_LINE_CHARS:,}, left unread" in message


def test_a_huge_csv_field_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_quiz(tmp_path, suffix=".csv")
    target = tmp_path / "en" / "train.csv"
    with target.open("a", encoding="utf-8") as handle:
        handle.write('q99,"' + "x" * 200_000 + '",1,2,3,4,A,"[]",0\n')
    message = raised(quiz_task(path), ("en", "train"))
    assert f"{target}, line 6: cannot be read as CSV (field larger than field limit" in message


def test_a_test_id_with_another_number_of_options_in_one_language_is_refused(tmp_path: Path) -> None:
    """Same ids are not enough: an item that offers 3 options in German and 4 in English is not the same item."""
    path = write_quiz(tmp_path / "data", languages=("en", "de"))
    rows = quiz_rows("de", range(10, 13))
    rows[1]["options"] = rows[1]["options"][:3]
    write_rows(tmp_path / "data" / "de" / "test.jsonl", rows)
    columns = {"id": "qid", "question": "stem", "choices": "options", "answer": "position"}
    task = {"name": "quiz", "options": {"source": "files", "path": path, "languages": ["en", "de"], "columns": columns}}
    task["options"]["answer_type"] = "index"
    study = {"models": ["smollm2-135m"], "languages": ["en", "de"], "output_dir": str(tmp_path / "study"), "tasks": [task]}
    (tmp_path / "study.yaml").write_text(json.dumps(study))
    with pytest.raises(DataError) as error:
        load_study_data(load_config(tmp_path / "study.yaml"))
    message = str(error.value)
    assert (
        f"{tmp_path / 'study.yaml'}: task 'quiz': 1 test ids of 'de'" in message
        and "'q11' (3 options, 4 in en)" in message
        and "parallel" in message
    )
    rows[1]["options"] = quiz_rows("de", range(11, 12))[0]["options"]
    write_rows(tmp_path / "data" / "de" / "test.jsonl", rows)
    assert len(load_study_data(load_config(tmp_path / "study.yaml")).test) == 2


class _ItemsTask:
    """A task handed to load_study_data as it is: its items per (language, split), no file checks of its own."""

    name, languages = "quiz", ("en", "de")

    def __init__(self, items: dict[tuple[str, str], list]) -> None:
        self.items = items

    def load(self, language: str, split: str) -> list:
        return self.items[(language, split)]


def test_the_study_refuses_test_ids_that_differ_between_languages_of_any_task(tmp_path: Path) -> None:
    """The study's own check, for tasks that do not check themselves (a FileTask does, earlier)."""
    from donors.tasks.item import Item

    def items(language: str, split: str, ids) -> list:
        return [Item(f"{split}{n}", "quiz", language, f"{n} + 1 =", (str(n + 1), str(n)), 0) for n in ids]

    task = _ItemsTask(
        {
            ("en", "train"): items("en", "train", range(3)),
            ("de", "train"): items("de", "train", range(3)),
            ("en", "test"): items("en", "test", [1, 2, 3]),
            ("de", "test"): items("de", "test", [1, 2, 4]),
        }
    )
    study = {"models": ["smollm2-135m"], "languages": ["en", "de"], "output_dir": str(tmp_path / "study"), "tasks": ["number_words"]}
    (tmp_path / "study.yaml").write_text(json.dumps(study))
    with pytest.raises(DataError, match=r"test ids of 'de' differ from 'en' \(only in de: \['test4'\]; only in en: \['test3'\]\)"):
        load_study_data(load_config(tmp_path / "study.yaml"), tasks={"quiz": task})
