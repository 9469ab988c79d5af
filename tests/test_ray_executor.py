"""The Ray executor on a local 2-CPU cluster: same numbers as local, retries, a killed driver resumes."""

from __future__ import annotations

import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from rich.console import Console
from safetensors.torch import load_file, save_file

ray = pytest.importorskip("ray")

from donors import api  # noqa: E402
from donors.execute.ray import FAULT_ENV  # noqa: E402

pytestmark = pytest.mark.slow  # trains or scores a real model

GRID = {
    "name": "ray",
    "models": ["smollm2-135m"],
    "tasks": ["number_words"],
    "languages": ["en", "de"],
    "seeds": [17],
    "lora": {"r": 4, "alpha": 8},
    "train": {"epochs": 1, "batch_size": 4, "max_items": 8, "learning_rate": 1e-3},
    "eval": {"max_items": 4, "chat_template": False},
}


def write(directory: Path, executor: str) -> Path:
    config = {**GRID, "output_dir": str(directory / "study"), "executor": executor, "ray": {"num_cpus": 2, "max_retries": 2}}
    path = directory / f"{executor}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def scores(study: Path) -> pd.DataFrame:
    with sqlite3.connect(study / "results.sqlite") as db:
        frame = pd.read_sql_query("SELECT * FROM scores ORDER BY state_id, target_task, target_language", db)
    return frame.reset_index(drop=True)


@pytest.fixture(scope="module")
def local_study(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("local")
    api.run_study(write(directory, "local"), report=False)
    return directory / "study"


@pytest.fixture(scope="module")
def local_scores(local_study) -> pd.DataFrame:
    return scores(local_study)


@pytest.fixture()
def ray_cluster():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_ray_gives_the_same_scores_as_local_and_retries_a_failed_job(local_scores, tmp_path, monkeypatch, ray_cluster):
    marker = tmp_path / "fault-marker"
    monkeypatch.setenv(FAULT_ENV, f"smollm2-135m|number_words/de|seed17={marker}")
    api.run_study(write(tmp_path, "ray"), report=False)
    assert marker.exists(), "the injected fault never fired"
    pd.testing.assert_frame_equal(scores(tmp_path / "study"), local_scores)
    status = api.study_status(write(tmp_path, "ray"))
    assert (status.train_done, status.train_failed, status.eval_pending) == (2, 0, 0)


def test_a_job_that_keeps_failing_is_recorded_and_the_rest_go_on(tmp_path, monkeypatch, ray_cluster):
    config = yaml.safe_load(write(tmp_path, "ray").read_text())
    config["ray"]["max_retries"] = 0
    path = tmp_path / "no-retry.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv(FAULT_ENV, f"smollm2-135m|number_words/en|seed17={tmp_path / 'marker'}")
    api.run_study(path, report=False)
    status = api.study_status(path)
    assert (status.train_done, status.train_failed) == (1, 1)
    assert "injected fault" in status.failures.iloc[0]["error"]
    assert status.eval_done == 2 * 2  # the base and the surviving adapter, on both targets


def test_a_killed_driver_resumes_from_the_store(local_scores, tmp_path, ray_cluster):
    path = write(tmp_path, "ray")
    study = tmp_path / "study"
    driver = subprocess.Popen(
        [sys.executable, "-m", "donors.cli", "run", str(path), "--no-report"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if (study / "results.sqlite").exists():
            with sqlite3.connect(study / "results.sqlite") as db:
                if db.execute("SELECT COUNT(*) FROM adapters").fetchone()[0] >= 1:
                    break
        time.sleep(0.5)
    assert driver.poll() is None, "the study finished before the driver could be killed"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    with sqlite3.connect(study / "results.sqlite") as db:
        finished = db.execute("SELECT adapter_id, created, train_seconds FROM adapters").fetchall()
    status = api.study_status(path)
    assert (status.train_done, status.train_running, status.train_pending) == (len(finished), 0, 2 - len(finished))
    api.run_study(path, report=False)
    pd.testing.assert_frame_equal(scores(study), local_scores)
    with sqlite3.connect(study / "results.sqlite") as db:
        after = set(db.execute("SELECT adapter_id, created, train_seconds FROM adapters").fetchall())
    assert set(finished) <= after and len(after) == 2  # what was finished before the kill was not trained again


def test_an_adapter_changed_under_the_study_is_trained_again_on_ray_not_scored(local_study, local_scores, tmp_path, ray_cluster):
    """The worker that loads an adapter checks its digest; the driver discards it, trains it again, then scores it."""
    study = tmp_path / "study"
    shutil.copytree(local_study, study)
    with sqlite3.connect(study / "results.sqlite") as db:
        (path,) = db.execute("SELECT path FROM adapters WHERE adapter_id = 'smollm2-135m|number_words/de|seed17'").fetchone()
        db.execute("DELETE FROM scores WHERE state_id = 'smollm2-135m|number_words/de|seed17'")
        db.execute("DELETE FROM predictions WHERE state_id = 'smollm2-135m|number_words/de|seed17'")
    weights = study / path / "adapter_model.safetensors"
    original = weights.read_bytes()
    save_file({k: v * 0 + 0.5 if "lora_B" in k else v for k, v in load_file(weights).items()}, weights)
    log = io.StringIO()
    api.run_study(write(tmp_path, "ray"), console=Console(file=log, width=400), report=False)
    assert "its files changed since it was stored" in log.getvalue()
    assert "discarded with its scores; it is trained again" in log.getvalue()
    pd.testing.assert_frame_equal(scores(study), local_scores)  # the retrained adapter's scores, not the tampered one's
    assert weights.read_bytes() == original
    status = api.study_status(write(tmp_path, "ray"))
    assert (status.train_done, status.train_failed, status.eval_done, status.eval_running) == (2, 0, 3 * 2, 0)
