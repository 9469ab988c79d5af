"""Bad configs and bad data stop before any compute, with the file, the field and the fix."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from donors.cli import app

runner = CliRunner()


def run_cli(tmp_path, config: dict):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "study"), **config}))
    return path, runner.invoke(app, ["run", str(path)])


def test_bad_config_exits_with_the_field_and_nothing_is_created(tmp_path):
    path, result = run_cli(tmp_path, {"models": ["smollm2-135m"], "tasks": ["number_words"], "lora": {"r": -4}})
    assert result.exit_code == 2
    assert str(path) in result.output and "lora.r" in result.output and "-4" in result.output
    assert not (tmp_path / "study").exists()


def test_unknown_task_lists_the_registered_ones(tmp_path):
    _, result = run_cli(tmp_path, {"models": ["smollm2-135m"], "tasks": ["numbr_words"], "languages": ["en"]})
    assert result.exit_code == 2
    assert "unknown task 'numbr_words'" in result.output and "number_words" in result.output


def test_a_language_the_task_lacks_is_named_before_any_training(tmp_path):
    data = tmp_path / "data"
    for language in ("en", "de"):
        (data / language).mkdir(parents=True)
        for split, ids in (("train", range(0, 6)), ("test", range(6, 10))):
            rows = [{"id": str(i), "text": f"sentence {i}", "label": "yes" if i % 2 else "no"} for i in ids]
            (data / language / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = {
        "name": "yesno",
        "options": {
            "source": "files",
            "path": str(data / "{language}" / "{split}.jsonl"),
            "columns": {"id": "id", "question": "text", "answer": "label"},
            "labels": ["yes", "no"],
            "answer_type": "label",
            "languages": ["en", "de"],
        },
    }
    _, result = run_cli(tmp_path, {"models": ["smollm2-135m"], "tasks": [task], "languages": ["en", "fr"]})
    assert result.exit_code == 2
    assert "yesno" in result.output and "fr" in result.output
    assert not list((tmp_path / "study").glob("adapters/**/*"))


def test_a_missing_data_file_names_the_file(tmp_path):
    task = {
        "name": "yesno",
        "options": {
            "source": "files",
            "path": str(tmp_path / "nowhere" / "{language}-{split}.csv"),
            "columns": {"id": "id", "question": "text", "answer": "label"},
            "labels": ["yes", "no"],
            "answer_type": "label",
            "languages": ["en"],
        },
    }
    _, result = run_cli(tmp_path, {"models": ["smollm2-135m"], "tasks": [task], "languages": ["en"]})
    assert result.exit_code == 2
    assert "nowhere" in result.output and "en-" in result.output
