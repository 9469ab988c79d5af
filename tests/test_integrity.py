"""Stored work is what it claims to be: adapters are checked before they are scored, data edited
between runs is caught, and studies sharing adapter storage never read each other's adapters.

The model-free cases run on a store alone; the rest run a one-cell study on the embedded
SmolLM2 with a local-file task small enough to train in seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file, save_file

from donors import api
from donors.config import ConfigError, StudyConfig
from donors.execute.pending import DataChanged, discard_broken_adapters, reconcile_data
from donors.grid import Cell
from donors.jobs import TrainJob
from donors.records import AdapterRecord
from donors.store import ResultsStore
from donors.tasks.data import fingerprint
from donors.tasks.item import Item
from donors.train.lora import AdapterFilesError, adapter_digest

QA = Cell("qa", "en")


def qa_rows(n: int, offset: int = 0) -> list[dict]:
    """``n`` four-choice questions with gold spread over the positions: 'Which number is k?'."""
    rows = []
    for k in range(offset, offset + n):
        choices = [str(k + d) for d in (0, 1, 2, 3)]
        gold = k % 4
        choices[0], choices[gold] = choices[gold], choices[0]
        rows.append({"id": f"q{k}", "question": f"Which of these is the number {k}?", "choices": choices, "answer": gold})
    return rows


def qa_task(directory: Path) -> dict:
    """The task entry of the data under ``directory``, written there first unless it exists (tests edit it)."""
    for split, rows in (("train", qa_rows(12)), ("test", qa_rows(6, offset=100))):
        path = directory / "data" / "en" / f"{split}.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    options = {
        "source": "files",
        "path": "data/{language}/{split}.jsonl",  # relative to the working directory: the study's folder
        "columns": {"id": "id", "question": "question", "choices": "choices", "answer": "answer"},
        "answer_type": "index",
        "languages": ["en"],
    }
    return {"name": "qa", "options": options}


def study_config(directory: Path, **overrides) -> Path:
    config = {
        "name": "integrity",
        "output_dir": "study",
        "models": ["smollm2-135m"],
        "tasks": [qa_task(directory)],
        "languages": ["en"],
        "seeds": [17],
        "lora": {"r": 4, "alpha": 8},
        "train": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3},
        "eval": {"chat_template": False},
        **overrides,
    }
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_logged(config: Path, **kwargs) -> str:
    """Run the study from the config's folder (its paths are relative, so a copied study is the same study)."""
    buffer = io.StringIO()
    with contextlib.chdir(config.parent):
        api.run_study(config, console=Console(file=buffer, width=400), report=False, **kwargs)
    return buffer.getvalue()


def rows(study_dir: Path, table: str) -> pd.DataFrame:
    with sqlite3.connect(study_dir / "results.sqlite") as db:
        return pd.read_sql_query(f"SELECT * FROM {table}", db)


def scores(study_dir: Path) -> pd.DataFrame:
    frame = rows(study_dir, "scores").sort_values(["state_id", "target_task", "target_language"])
    return frame.reset_index(drop=True)


# -- model-free -----------------------------------------------------------------------------


def item(k: int, gold: int = 0) -> Item:
    return Item(f"q{k}", "qa", "en", f"question {k}", ("a", "b", "c"), gold)


def test_a_data_fingerprint_ignores_file_order_and_sees_every_edit():
    items = [item(1), item(2, gold=1)]
    assert fingerprint(items) == fingerprint(items[::-1])
    assert fingerprint(items) != fingerprint([item(1), item(2, gold=2)])
    assert fingerprint(items) != fingerprint([item(1), Item("q2", "qa", "en", "question 2 ", ("a", "b", "c"), 1)])


def test_changed_data_is_refused_only_where_stored_work_used_it(tmp_path):
    train, test = ("train", QA), ("test", QA)
    with ResultsStore(tmp_path / "results.sqlite") as store:
        assert reconcile_data(store, {train: "t1", test: "s1"}) == []
        # Nothing made from the items yet: an edit is simply recorded.
        assert reconcile_data(store, {train: "t2", test: "s1"}) == []
        assert store.data_fingerprints() == {train: "t2", test: "s1"}
        store.add_adapter(AdapterRecord("m|qa/en|seed1", "m", "qa", "en", 1, "adapters/x", "r", ("a",), (), None, (), None, {}))
        with pytest.raises(DataChanged, match=r"task 'qa', language 'en', split 'train' \(1 adapter\(s\) trained on them"):
            reconcile_data(store, {train: "t3", test: "s1"})
        assert store.data_fingerprints()[train] == "t2", "a refused run records nothing"
        assert store.adapter_ids() == {"m|qa/en|seed1"}
        (line,) = reconcile_data(store, {train: "t3", test: "s1"}, redo=True)
        assert "qa/en train items changed" in line
        assert store.adapter_ids() == set() and store.data_fingerprints()[train] == "t3"


def test_adapter_paths_name_what_made_them_and_stay_inside_storage(tmp_path):
    job = TrainJob("org/model", QA, 17)
    assert job.adapter_dir(tmp_path, "k1") != job.adapter_dir(tmp_path, "k2")
    assert job.adapter_dir(tmp_path, "k1").is_relative_to(tmp_path)
    with pytest.raises(ConfigError, match="outside"):
        TrainJob("m", Cell("../../../escaped", "en"), 17).adapter_dir(tmp_path, "k")


def test_an_adapter_without_safetensors_is_refused_not_loaded_from_a_pickle(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, tmp_path / "adapter_model.bin")
    with pytest.raises(AdapterFilesError, match="adapter_model.safetensors missing"):
        adapter_digest(tmp_path)


def test_broken_adapters_are_discarded_with_their_scores_and_older_ones_get_a_digest(tmp_path):
    config = StudyConfig(models=["m"], tasks=["number_words"], languages=["en", "de"], seeds=[1, 2], output_dir=tmp_path)
    with ResultsStore(tmp_path / "results.sqlite") as store:
        digests = {}
        for seed in (1, 2):
            folder = tmp_path / f"a{seed}"
            folder.mkdir()
            (folder / "adapter_config.json").write_text("{}")
            save_file({"w": torch.full((2,), float(seed))}, folder / "adapter_model.safetensors")
            digests[seed] = adapter_digest(folder)
            record = AdapterRecord(
                f"m|number_words/en|seed{seed}", "m", "number_words", "en", seed, f"a{seed}", "r", (), (), None, (), None, {}
            )
            store.add_adapter(record if seed == 1 else AdapterRecord(**{**record.__dict__, "sha256": digests[seed]}))
        # An adapter stored before digests gets one; an intact one is kept.
        assert discard_broken_adapters(config, store) == []
        assert store.adapter("m|number_words/en|seed1").sha256 == digests[1]
        # Overwrite the weights (header intact, values changed): discarded, and said.
        save_file({"w": torch.full((2,), 9.0)}, tmp_path / "a2" / "adapter_model.safetensors")
        (line,) = discard_broken_adapters(config, store)
        assert "a2: its files changed since it was stored" in line
        assert store.adapter_ids() == {"m|number_words/en|seed1"}
        assert "changed since it was stored" in store.failures().set_index("job_id").loc["m|number_words/en|seed2", "error"]
        # A truncated or missing file likewise.
        (tmp_path / "a1" / "adapter_model.safetensors").unlink()
        (line,) = discard_broken_adapters(config, store)
        assert "adapter_model.safetensors missing" in line and store.adapter_ids() == set()


# -- on the embedded model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A one-cell study, run to the end: the base and one adapter, each scored on six items."""
    directory = tmp_path_factory.mktemp("integrity")
    run_logged(study_config(directory))
    return directory


def copy_study(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The finished study and its data in a folder of its own, with a config pointing there."""
    shutil.copytree(finished / "data", tmp_path / "data")
    shutil.copytree(finished / "study", tmp_path / "study")
    return study_config(tmp_path), tmp_path / "study"


def the_adapter(study_dir: Path) -> Path:
    (path,) = rows(study_dir, "adapters")["path"]
    return study_dir / path


def forget_adapter_scores(study_dir: Path) -> None:
    with sqlite3.connect(study_dir / "results.sqlite") as db:
        for table in ("scores", "predictions"):
            db.execute(f"DELETE FROM {table} WHERE state_id LIKE '%seed17'")


@pytest.mark.slow
def test_a_tampered_adapter_is_trained_again_not_scored(finished, tmp_path):
    config, study_dir = copy_study(finished, tmp_path)
    reference = scores(study_dir)
    weights = the_adapter(study_dir) / "adapter_model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    save_file({k: (v * 0 + 0.5 if "lora_B" in k else v) for k, v in tensors.items()}, weights)
    forget_adapter_scores(study_dir)
    log = run_logged(config)
    assert "its files changed since it was stored" in log
    pd.testing.assert_frame_equal(scores(study_dir), reference)  # the retrained adapter's, not the tampered one's
    assert weights.read_bytes() == original


@pytest.mark.slow
def test_a_pickled_adapter_is_never_loaded(finished, tmp_path):
    config, study_dir = copy_study(finished, tmp_path)
    reference = scores(study_dir)
    weights = the_adapter(study_dir) / "adapter_model.safetensors"
    torch.save(load_file(weights), weights.with_name("adapter_model.bin"))
    weights.unlink()
    forget_adapter_scores(study_dir)
    log = run_logged(config)
    assert "adapter_model.safetensors missing" in log
    pd.testing.assert_frame_equal(scores(study_dir), reference)


@pytest.mark.slow
def test_an_unloadable_adapter_fails_its_own_state_and_the_rest_are_scored(finished, tmp_path):
    from donors.config import load_config
    from donors.execute.work import evaluate_states
    from donors.records import ModelState
    from donors.tasks.data import load_study_data

    config_path, study_dir = copy_study(finished, tmp_path)
    with contextlib.chdir(tmp_path):
        config = load_config(config_path)
        data = load_study_data(config)
    good = the_adapter(study_dir)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    (bad / "adapter_model.safetensors").write_bytes(b"not safetensors")
    # Another layout: the tensors name modules this model does not have (PEFT would only warn, and score the base).
    renamed = tmp_path / "renamed"
    shutil.copytree(good, renamed)
    tensors = load_file(good / "adapter_model.safetensors")
    save_file({k.replace("layers.", "blocks."): v for k, v in tensors.items()}, renamed / "adapter_model.safetensors")
    adapted = ModelState("smollm2-135m", QA, 17)
    work = [
        (ModelState("smollm2-135m"), None, [QA]),
        (adapted, str(bad), [QA]),
        (adapted, str(good), [QA]),
        (adapted, str(renamed), [QA]),
        (adapted, str(good), [QA]),
    ]
    results, failures = [], []
    evaluate_states(config, "smollm2-135m", work, data.test, lambda s, r: results.append(r), lambda s, t, e: failures.append((s, e)))
    assert len(results) == 3 and results[1].score == results[2].score, "the good adapter scores the same before and after"
    assert [str(error) for _, error in failures][0].startswith("Error while deserializing header")
    assert "does not fit this model: 420 saved tensor(s) match no module" in str(failures[1][1])


@pytest.mark.slow
def test_data_edited_between_runs_is_refused_or_redone_on_request(finished, tmp_path):
    config, study_dir = copy_study(finished, tmp_path)
    before = scores(study_dir)
    written = (study_dir / "config.json").read_text()
    test_file = tmp_path / "data" / "en" / "test.jsonl"
    edited = [json.loads(line) for line in test_file.read_text().splitlines()]
    edited[0]["answer"] = (edited[0]["answer"] + 1) % 4
    test_file.write_text("".join(json.dumps(row) + "\n" for row in edited))
    with pytest.raises(DataChanged, match=r"task 'qa', language 'en', split 'test' \(2 scored"):
        run_logged(config)
    pd.testing.assert_frame_equal(scores(study_dir), before)
    assert (study_dir / "config.json").read_text() == written
    log = run_logged(config, redo_changed_data=True)
    assert "qa/en test items changed: 2 scored (state, target) pair(s) discarded" in log
    after = scores(study_dir)
    assert len(after) == len(before)
    gold_counts = after["gold_counts"].map(json.loads)
    assert (gold_counts != before["gold_counts"].map(json.loads)).all(), "rescored on the edited items"
    # The same edit again is no change: the run is a no-op.
    assert "changed" not in run_logged(config)


@pytest.mark.slow
def test_studies_sharing_adapter_storage_keep_their_own_adapters(finished, tmp_path):
    config_a, study_a = copy_study(finished, tmp_path)
    reference = scores(study_a)
    shared = study_a  # study A's adapters live in its own folder; B, with another learning rate, writes beside them
    config_b = study_config(
        tmp_path,
        output_dir="study_b",
        storage_dir="study",
        train={"epochs": 1, "batch_size": 4, "learning_rate": 5e-3},
    )
    run_logged(config_b)
    path_a, path_b = rows(study_a, "adapters")["path"].item(), rows(tmp_path / "study_b", "adapters")["path"].item()
    assert path_a != path_b and (shared / path_a).is_dir() and (shared / path_b).is_dir()
    assert not scores(tmp_path / "study_b").drop(columns=["state_id"]).equals(reference.drop(columns=["state_id"]))
    forget_adapter_scores(study_a)
    config_a = study_config(tmp_path)  # A's own config again (study_config rewrote the file for B)
    log = run_logged(config_a)
    assert "changed" not in log
    pd.testing.assert_frame_equal(scores(study_a), reference)


@pytest.mark.slow
def test_each_adapter_records_the_dtype_it_was_trained_in(finished):
    (versions,) = rows(finished / "study", "adapters")["versions"].map(json.loads)
    assert versions["dtype"] == "float32" and versions["deterministic"] == "true"
