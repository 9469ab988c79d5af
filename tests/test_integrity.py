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
from donors.execute.pending import DataChanged, digest_older_adapters, reconcile_data
from donors.grid import Cell
from donors.jobs import StateWork, TrainJob
from donors.records import AdapterRecord, ModelState
from donors.store import ResultsStore
from donors.tasks.data import fingerprint
from donors.tasks.item import Item
from donors.train.lora import AdapterChanged, AdapterFilesError, adapter_digest, verify_adapter

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


def test_an_adapter_is_verified_against_its_stored_digest_where_it_is_loaded(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    save_file({"w": torch.ones(2)}, tmp_path / "adapter_model.safetensors")
    stored = adapter_digest(tmp_path)
    assert verify_adapter(tmp_path, stored) == tmp_path
    assert verify_adapter(tmp_path, None) == tmp_path  # stored before digests: its files must still be there
    save_file({"w": torch.full((2,), 9.0)}, tmp_path / "adapter_model.safetensors")  # header intact, values changed
    with pytest.raises(AdapterChanged, match="its files changed since it was stored"):
        verify_adapter(tmp_path, stored)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterChanged, match="adapter_model.safetensors missing"):
        verify_adapter(tmp_path, None)


def test_a_restart_reads_only_adapters_stored_before_digests(tmp_path):
    config = StudyConfig(models=["m"], tasks=["number_words"], languages=["en", "de"], seeds=[1, 2, 3], output_dir=tmp_path)
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for seed in (1, 2, 3):
            folder = tmp_path / f"a{seed}"
            folder.mkdir()
            (folder / "adapter_config.json").write_text("{}")
            save_file({"w": torch.full((2,), float(seed))}, folder / "adapter_model.safetensors")
            digest = adapter_digest(folder) if seed == 1 else None
            store.add_adapter(
                AdapterRecord(
                    f"m|number_words/en|seed{seed}",
                    "m",
                    "number_words",
                    "en",
                    seed,
                    f"a{seed}",
                    "r",
                    (),
                    (),
                    None,
                    (),
                    None,
                    {},
                    sha256=digest,
                )
            )
        digests = {seed: adapter_digest(tmp_path / f"a{seed}") for seed in (1, 2)}
        (tmp_path / "a1" / "adapter_model.safetensors").unlink()  # it has a digest: the process that loads it finds out
        (tmp_path / "a3" / "adapter_model.safetensors").unlink()
        (line,) = digest_older_adapters(config, store)
        assert "a3: adapter_model.safetensors missing" in line and "trained again" in line
        assert store.adapter_ids() == {"m|number_words/en|seed1", "m|number_words/en|seed2"}
        assert store.adapter("m|number_words/en|seed2").sha256 == digests[2]
        assert "missing" in store.failures().set_index("job_id").loc["m|number_words/en|seed3", "error"]


def test_a_changed_adapter_is_not_scored_and_the_base_still_is(tmp_path, monkeypatch):
    """The check runs in evaluate_states, before the adapter reaches any engine: the vLLM path, with a stand-in engine."""
    import donors.evaluate.vllm_backend as vllm_backend
    from donors.execute.work import evaluate_states

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    save_file({"w": torch.ones(2)}, folder / "adapter_model.safetensors")
    config = StudyConfig(models=["m"], tasks=["number_words"], languages=["en"], output_dir=tmp_path, eval={"backend": "vllm"})
    state, other = ModelState("m", QA, 17), Cell("qa", "de")
    engine_saw = []

    class Engine:
        def __init__(self, *args, **kwargs):
            pass

        def score_adapters(self, states, on_items=None):
            engine_saw.extend(states)
            return iter(())

    monkeypatch.setattr(vllm_backend, "VllmScorer", Engine)
    failures = []
    work = [StateWork(ModelState("m"), [QA]), StateWork(state, [QA, other], str(folder), "0" * 64)]
    evaluate_states(config, "m", work, {QA: [], other: []}, lambda s, r: None, lambda s, t, e: failures.append((s, t, e)))
    assert [s for s, _, _ in engine_saw] == [ModelState("m")]
    assert [(s, t) for s, t, _ in failures] == [(state, QA), (state, other)]
    assert all(isinstance(e, AdapterChanged) and "changed since it was stored" in str(e) for _, _, e in failures)


def test_a_changed_recipe_is_refused_naming_each_setting_that_changed(tmp_path):
    from donors.api import _check_same_recipe

    def config(path: str, r: int) -> StudyConfig:
        task = {"name": "qa", "options": {"source": "files", "path": path, "columns": {"id": "id"}}}
        return StudyConfig(models=["m"], tasks=[task], languages=["en"], output_dir=tmp_path, lora={"r": r, "alpha": 2 * r})

    with ResultsStore(tmp_path / "results.sqlite") as store:
        _check_same_recipe(store, config("data/{language}.jsonl", 8))
        _check_same_recipe(store, config("data/{language}.jsonl", 8))  # the same recipe resumes
        with pytest.raises(ConfigError) as refused:
            _check_same_recipe(store, config("moved/{language}.jsonl", 16))
    message = str(refused.value)
    assert "(lora.alpha: 16 -> 32; lora.r: 8 -> 16; tasks[0].options.path: 'data/{language}.jsonl' -> 'moved/{language}.jsonl')" in message
    assert "columns" not in message and "keep its old path" in message


def test_an_adapter_that_keeps_changing_is_trained_again_a_bounded_number_of_times_then_named(tmp_path, monkeypatch):
    from donors.execute import local

    config = StudyConfig(models=["m"], tasks=["number_words"], languages=["en"], seeds=[1], output_dir=tmp_path)
    state = ModelState("m", Cell("number_words", "en"), 1)
    calls, log = [], io.StringIO()
    with ResultsStore(tmp_path / "results.sqlite") as store:
        executor = local.LocalExecutor(config, store, None, Console(file=log, width=400))

        def evaluate(model, base_only=False, states=None, last_round=False):
            calls.append(("evaluate", states, last_round))
            return set() if base_only else {state}  # its files change every time it is stored

        monkeypatch.setattr(executor, "evaluate", evaluate)
        monkeypatch.setattr(executor, "train", lambda model, only=None: calls.append(("train", only)))
        monkeypatch.setattr(executor, "warn_if_collapsed", lambda model: None)
        executor.run()
    again = [("train", {state.state_id}), ("evaluate", [state], False)] * (local.RETRAIN_ROUNDS - 1)
    last = [("train", {state.state_id}), ("evaluate", [state], True)]  # its discard says it is not trained again
    assert calls == [("evaluate", None, False), ("train", None), ("evaluate", None, False), *again, *last]
    assert f"m|number_words/en|seed1 changed after being trained again {local.RETRAIN_ROUNDS} times in this run" in log.getvalue()


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
        StateWork(ModelState("smollm2-135m"), [QA]),
        StateWork(adapted, [QA], str(bad)),
        StateWork(adapted, [QA], str(good)),
        StateWork(adapted, [QA], str(renamed)),
        StateWork(adapted, [QA], str(good), adapter_sha256="0" * 64),  # not the files that were stored
        StateWork(adapted, [QA], str(good), adapter_sha256=adapter_digest(good)),
    ]
    results, failures = [], []
    evaluate_states(config, "smollm2-135m", work, data.test, lambda s, r: results.append(r), lambda s, t, e: failures.append((s, e)))
    assert len(results) == 3 and results[1].score == results[2].score, "the good adapter scores the same before and after"
    assert [str(error) for _, error in failures][0].startswith("Error while deserializing header")
    assert "does not fit this model: 420 saved tensor(s) match no module" in str(failures[1][1])
    assert isinstance(failures[2][1], AdapterChanged) and "changed since it was stored" in str(failures[2][1])


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
