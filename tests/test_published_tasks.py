"""The four published benchmarks parse by the protocol's schemas, prompts and clean-up rules.

The hub is out of reach in tests, so each test writes a small dataset in the published schema
into tmp_path, laid out like the hub repository (a README with one configuration per
language), and the task reads it with the same ``load_dataset(dataset_id, language, ...)``
call it makes for the hub. ``data_dir`` and ``data_files`` are checked to read the same.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml

from donors.tasks import get_task
from donors.tasks.data import DataError
from donors.tasks.item import Item
from donors.tasks.prompts import lettered_prompt
from donors.tasks.published import BENCHMARKS, PublishedTask, clean_hellaswag

LANGUAGES = ("en", "de", "zh")
Rows = list[dict[str, Any]]
Splits = dict[str, Rows]


@pytest.fixture(autouse=True)
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ``datasets`` off the network and out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def write_hub_layout(root: Path, configs: dict[str, Splits]) -> str:
    """A dataset folder as the hub holds it: JSON Lines per config and split, declared in the README."""
    declared = []
    for language, splits in configs.items():
        for split, rows in splits.items():
            path = root / language / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        files = [{"split": split, "path": f"{language}/{split}.jsonl"} for split in splits]
        declared.append({"config_name": language, "data_files": files})
    (root / "README.md").write_text(f"---\n{yaml.safe_dump({'configs': declared})}---\n", encoding="utf-8")
    return str(root)


def arc_row(number: int, language: str, answer: str = "B") -> dict[str, Any]:
    return {
        "id": f"Mercury_{number}",
        "instruction": f"[{language}] Which gas do plants take in? ({number})",
        "option_a": "oxygen",
        "option_b": "carbon dioxide",
        "option_c": "helium",
        "option_d": "neon",
        "answer": answer,
    }


def mmlu_row(number: int, language: str, answer: Any) -> dict[str, Any]:
    return {
        "sample_id": f"astronomy/test/{number}",
        "question": f"[{language}] Which planet is largest? ({number})",
        "option_a": "Mars",
        "option_b": "Jupiter",
        "option_c": "Venus",
        "option_d": "Mercury",
        "answer": answer,
    }


def hellaswag_row(number: int, language: str, label: Any = 1) -> dict[str, Any]:
    return {
        "id": number,
        "activity_label": "Health",
        "ctx_a": f"[header] How to wash your hands ({language}) [title] Wet your hands.",
        "ctx_b": "then apply  soap [step] scrub.",
        "endings": ["[substeps] Dry them.", "Rinse them.", "Eat soap.", "Sing [title] loudly."],
        "label": label,
    }


def truthfulqa_row(number: int, language: str, labels: list[int] | None = None) -> dict[str, Any]:
    choices = ["Nothing happens.", "You get sick.", "You grow a watermelon.", "You die.", "You digest them.", "They sprout."]
    return {
        "truth_id": f"tqa-{number}",
        "question": f"[{language}] What happens if you eat watermelon seeds? ({number})",
        "mc1_targets_choices": choices,
        "mc1_targets_labels": labels or [1, 0, 0, 0, 0, 0],
    }


def parallel(make_row, **row_options: Any) -> dict[str, Splits]:
    """The same train ids (1-3) and test ids (10-11) in every language."""
    return {
        language: {
            "train": [make_row(n, language, **row_options) for n in range(1, 4)],
            "test": [make_row(n, language, **row_options) for n in range(10, 12)],
        }
        for language in LANGUAGES
    }


FIXTURES = {
    "arc_challenge": lambda: parallel(arc_row),
    "global_mmlu": lambda: parallel(mmlu_row, answer="B"),
    "hellaswag": lambda: parallel(hellaswag_row),
    "truthfulqa": lambda: parallel(truthfulqa_row),
}


def published(name: str, root: Path, configs: dict[str, Splits], **options: Any) -> PublishedTask:
    options = {"dataset_id": write_hub_layout(root, configs), "languages": list(configs), **options}
    return get_task(name, **options)  # type: ignore[return-value]


def message_of(task: PublishedTask, language: str, split: str) -> str:
    with pytest.raises(DataError) as error:
        task.load(language, split)  # type: ignore[arg-type]
    return str(error.value)


def test_the_benchmarks_default_to_the_published_datasets() -> None:
    assert {name: get_task(name).dataset_id for name in BENCHMARKS} == {  # type: ignore[attr-defined]
        "arc_challenge": "Dr4kl3s/arc_challenge_core_grid_seed42",
        "global_mmlu": "Dr4kl3s/global_mmlu_lite_core_grid_seed42",
        "hellaswag": "Dr4kl3s/hellaswag_coregrid_seed42",
        "truthfulqa": "Dr4kl3s/truthfulqa_coregrid_seed42",
    }


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_item_ids_are_the_dataset_ids_and_parallel_across_languages(tmp_path: Path, name: str) -> None:
    task = published(name, tmp_path, FIXTURES[name]())
    for split, size in (("train", 3), ("test", 2)):
        ids = {language: [item.id for item in task.load(language, split)] for language in LANGUAGES}
        assert ids["en"] == ids["de"] == ids["zh"] and len(ids["en"]) == size
        assert all(isinstance(item_id, str) for item_id in ids["en"])
    assert {(item.task, item.language) for item in task.load("zh", "test")} == {(name, "zh")}


def test_arc_reads_as_the_protocol_prompt_and_skips_bad_answers_with_a_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    configs = parallel(arc_row)
    configs["en"]["train"][1]["answer"] = "E"
    task = published("arc_challenge", tmp_path, configs)
    with caplog.at_level(logging.WARNING, logger="donors.tasks.files"):
        items = task.load("en", "train")
    assert [item.id for item in items] == ["Mercury_1", "Mercury_3"]
    assert task.skipped[("en", "train")] == 1
    assert "skipped 1 of 3 rows" in caplog.text and "row 2 (id 'Mercury_2'): answer 'E' is not a letter A-D" in caplog.text
    assert "config 'en', split 'train'" in caplog.text
    assert lettered_prompt(items[0]) == (
        "Question: [en] Which gas do plants take in? (1)\nA) oxygen\nB) carbon dioxide\nC) helium\nD) neon\nAnswer:"
    )
    assert items[0].answer_index == 1 and items[0].target_text is None
    assert task.load("de", "train") and task.skipped[("de", "train")] == 0


def test_global_mmlu_reads_letter_and_index_answers(tmp_path: Path) -> None:
    configs = {"en": parallel(mmlu_row, answer="B")["en"], "de": parallel(mmlu_row, answer=1)["de"]}
    task = published("global_mmlu", tmp_path, configs)
    english, german = task.load("en", "test")[0], task.load("de", "test")[0]
    assert english.id == german.id == "astronomy/test/10"
    assert english.answer_index == german.answer_index == 1 and german.choices[1] == "Jupiter"
    assert english.question == "[en] Which planet is largest? (10)"


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("Health: [header] How to wash [title] Wet them.", "Health: How to wash. Wet them."),
        ("  Baking: [step] Mix  the flour. [substeps] Add eggs.  ", "Baking: Mix the flour. Add eggs."),
        ("No tags here.", "No tags here."),
    ],
)
def test_hellaswag_clean_up_follows_the_protocol(raw: str, cleaned: str) -> None:
    assert clean_hellaswag(raw) == cleaned


def test_hellaswag_context_endings_and_string_labels(tmp_path: Path) -> None:
    configs = {"en": parallel(hellaswag_row)["en"], "de": parallel(hellaswag_row, label="2")["de"]}
    task = published("hellaswag", tmp_path, configs)
    english, german = task.load("en", "test")[0], task.load("de", "test")[0]
    assert english.id == german.id == "10"
    assert english.question == "Health: How to wash your hands (en). Wet your hands. Then apply soap scrub."
    assert english.choices == (" Dry them.", "Rinse them.", "Eat soap.", "Sing. loudly.")
    assert (english.answer_index, german.answer_index) == (1, 2)


def test_truthfulqa_trains_on_question_and_answer_and_keeps_every_choice(tmp_path: Path) -> None:
    configs = {"en": parallel(truthfulqa_row, labels=[0, 0, 0, 0, 1, 0])["en"]}
    task = published("truthfulqa", tmp_path, configs)
    item = task.load("en", "train")[0]
    question = "[en] What happens if you eat watermelon seeds? (1)"
    assert len(item.choices) == 6 and item.answer_index == 4
    assert item.target_text == f"Question: {question}\nAnswer: You digest them."
    assert lettered_prompt(item).startswith(
        f"Question: {question}\nA) Nothing happens.\n"
    ) and "F) They sprout.\nAnswer:" in lettered_prompt(item)


def test_truthfulqa_without_exactly_one_correct_choice_names_the_row(tmp_path: Path) -> None:
    configs = {"en": parallel(truthfulqa_row)["en"]}
    configs["en"]["test"][1]["mc1_targets_labels"] = [1, 1, 0, 0, 0, 0]
    message = message_of(published("truthfulqa", tmp_path, configs), "en", "test")
    assert "config 'en', split 'test'), row 2 (id 'tqa-11')" in message and "exactly one 1" in message


@pytest.mark.parametrize(
    "name, column, value, expected",
    [
        ("global_mmlu", "answer", "F", "answer 'F' is not among the choices"),
        ("hellaswag", "label", "7", "label '7' is not among the choices"),
        ("hellaswag", "label", "", "label '' is not among the choices"),
    ],
)
def test_an_answer_outside_the_choices_names_the_row_id(tmp_path: Path, name: str, column: str, value: str, expected: str) -> None:
    configs = {"en": FIXTURES[name]()["en"]}
    for row in configs["en"]["train"]:
        row[column] = str(row[column])
    configs["en"]["train"][2][column] = value
    message = message_of(published(name, tmp_path, configs), "en", "train")
    row_id = configs["en"]["train"][2][BENCHMARKS[name].id_column]
    assert f"row 3 (id '{row_id}')" in message and expected in message and "skip_bad_rows" in message


def test_skip_bad_rows_drops_and_counts_rows_without_an_answer(tmp_path: Path) -> None:
    configs = {"en": parallel(mmlu_row, answer="B")["en"]}
    configs["en"]["train"][0]["answer"] = "F"
    task = published("global_mmlu", tmp_path, configs, skip_bad_rows=True)
    assert len(task.load("en", "train")) == 2 and task.skipped[("en", "train")] == 1


def test_a_missing_column_names_dataset_config_split_and_column(tmp_path: Path) -> None:
    configs = {"de": parallel(hellaswag_row)["de"]}
    for split_rows in configs["de"].values():
        for row in split_rows:
            del row["ctx_b"]
    dataset_id = write_hub_layout(tmp_path, configs)
    message = message_of(get_task("hellaswag", dataset_id=dataset_id, languages=["de"]), "de", "test")  # type: ignore[arg-type]
    assert f"dataset {dataset_id!r} (config 'de', split 'test')" in message and "missing column 'ctx_b'" in message


def test_a_dataset_that_cannot_be_loaded_names_it(tmp_path: Path) -> None:
    task = published("arc_challenge", tmp_path, {"en": parallel(arc_row)["en"]}, languages=["en", "de"])
    message = message_of(task, "de", "test")
    assert f"dataset {str(tmp_path)!r} (config 'de', split 'test'): cannot load it" in message


def _fingerprints(items: list[Item]) -> list[tuple]:
    return [(i.id, i.question, i.choices, i.answer_index, i.target_text) for i in items]


def test_data_dir_and_data_files_read_like_the_hub_layout(tmp_path: Path) -> None:
    configs = parallel(truthfulqa_row)
    hub = published("truthfulqa", tmp_path / "hub", configs)
    for language, splits in configs.items():
        datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in splits.items()}).save_to_disk(
            tmp_path / "saved" / language
        )
        for split, rows in splits.items():
            (tmp_path / "parquet" / language).mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows).to_parquet(tmp_path / "parquet" / language / f"{split}.parquet")
    saved = get_task("truthfulqa", data_dir=str(tmp_path / "saved"), languages=list(LANGUAGES))
    files = get_task("truthfulqa", data_files=str(tmp_path / "parquet" / "{language}" / "{split}.parquet"), languages=list(LANGUAGES))
    for language in LANGUAGES:
        for split in ("train", "test"):
            expected = _fingerprints(hub.load(language, split))
            assert _fingerprints(saved.load(language, split)) == expected == _fingerprints(files.load(language, split))


def test_a_benchmark_can_run_under_another_name_and_rejects_unknown_options(tmp_path: Path) -> None:
    dataset_id = write_hub_layout(tmp_path, {"en": parallel(arc_row)["en"]})
    renamed = get_task("arc_local", source="arc_challenge", dataset_id=dataset_id, languages=["en"])
    assert renamed.name == "arc_local" and {item.task for item in renamed.load("en", "test")} == {"arc_local"}
    with pytest.raises(DataError, match=r"task 'arc_challenge': unknown options \['datasetid'\]"):
        get_task("arc_challenge", datasetid=dataset_id)
