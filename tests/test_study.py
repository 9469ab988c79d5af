"""End to end on the real embedded model and real embedded data: run, rerun, kill and resume."""

from __future__ import annotations

import io
import os
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

from donors import api
from donors.grid import Cell, Regime

pytestmark = pytest.mark.slow  # trains or scores a real model

TINY = {
    "name": "tiny <study>",
    "models": ["smollm2-135m"],
    "tasks": ["number_words", "cldr_continent"],
    "languages": ["en", "de"],
    "seeds": [17],
    "lora": {"r": 8, "alpha": 16},
    "train": {"epochs": 1, "batch_size": 4, "max_items": 12, "learning_rate": 1e-3},
    "eval": {"max_items": 6, "chat_template": False},
}
N_STATES = 1 + 4  # the base model and one adapter per source
N_TARGETS = 4


def write_config(directory: Path, **overrides) -> Path:
    config = {**TINY, "output_dir": str(directory / "study"), **overrides}
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_logged(config: Path, **kwargs) -> tuple[Path, str]:
    """``api.run_study`` with what it prints captured."""
    buffer = io.StringIO()
    path = api.run_study(config, console=Console(file=buffer, width=400), **kwargs)
    return path, buffer.getvalue()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """The tiny study in the published lettered format, on which SmolLM2 answers one letter for everything."""
    directory = tmp_path_factory.mktemp("tiny")
    config = write_config(directory)
    report, log = run_logged(config)
    return config, report, log


@pytest.fixture(scope="module")
def finished_study(finished_run) -> tuple[Path, Path]:
    return finished_run[:2]


def donors_command(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it (its bin folder first on the import path)."""
    return subprocess.run([str(Path(sys.executable).parent / "donors"), *args], capture_output=True, text=True, timeout=600)


def test_a_collapsed_base_is_named_before_training_and_in_the_findings(finished_run):
    _, report, log = finished_run
    warning = log.index("answers one option for >= 80% of the items")
    assert warning < log.index("adapter(s) to train"), "the collapse must be said before any training"
    assert "eval.prompt_format: continuation" in log[warning:]
    assert "WARNING:" in log[log.index("analyse") :] and "pairs are collapsed" in log
    page = report.read_text()
    assert page.index("Validity") < page.index("Summary") and "pairs are collapsed" in page
    command = donors_command("analyze", str(report.parent), "--metric", "acc_debiased")
    assert command.returncode == 0, command.stderr
    assert "pairs are collapsed" in command.stderr and "tables written" in command.stdout
    pairs = pd.read_csv(report.parent / "analysis" / "transfer_pairs.csv")
    diagnostics = pd.read_csv(report.parent / "analysis" / "option_diagnostics.csv")
    assert diagnostics["collapsed"].any() and len(pairs) == 4 * N_TARGETS
    refused = donors_command("analyze", str(report.parent), "--metric", "nonsense")
    assert refused.returncode == 2 and "unknown metric 'nonsense'" in refused.stderr


def test_a_continuation_study_trains_on_option_texts_and_is_not_collapsed(tmp_path):
    config = write_config(tmp_path, eval={"max_items": 8, "chat_template": False, "prompt_format": "continuation"})
    report, log = run_logged(config)
    assert "answers one option" not in log
    assert "No (model state, target) pair is collapsed" in log
    diagnostics = pd.read_csv(report.parent / "analysis" / "option_diagnostics.csv")
    assert not diagnostics["collapsed"].any()
    # 8 items per target, two at each gold position, the same ids in both languages.
    gold = diagnostics["gold"].unique().tolist()
    assert gold == ["A 2 / B 2 / C 2 / D 2"]


def store_rows(study_dir: Path, table: str) -> pd.DataFrame:
    with sqlite3.connect(study_dir / "results.sqlite") as db:
        return pd.read_sql_query(f"SELECT * FROM {table}", db)


def test_study_scores_every_state_on_every_target(finished_study):
    config, report = finished_study
    study_dir = report.parent
    scores = store_rows(study_dir, "scores")
    assert len(scores) == N_STATES * N_TARGETS
    assert set(scores["dtype"]) == {"float32"}  # every state computed in one dtype (the CPU's float32), recorded
    assert len(store_rows(study_dir, "predictions")) == N_STATES * N_TARGETS * 6
    adapters = store_rows(study_dir, "adapters")
    assert len(adapters) == 4
    assert all(len(eval(ids)) == 10 for ids in adapters["train_ids"])  # 12 items, 2 validate
    for path in adapters["path"]:
        files = {p.name for p in (study_dir / path).iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "donors_adapter.json"} <= files
        assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)


def test_results_table_has_the_published_schema_and_regimes(finished_study):
    _, report = finished_study
    results = pd.read_csv(report.parent / "transfer_results.csv")
    for column in (
        "model_name",
        "model_size",
        "fine_tuned_dataset",
        "fine_tuned_language",
        "eval_dataset",
        "eval_language",
        "regime",
        "score_mean",
        "score_base_mean",
        "delta_score_norm_mean",
        "n_seeds",
    ):
        assert column in results.columns
    assert len(results) == 4 * N_TARGETS
    assert results["model_size"].eq(0.135).all()
    for row in results.itertuples():
        expected = Regime.of(Cell(row.fine_tuned_dataset, row.fine_tuned_language), Cell(row.eval_dataset, row.eval_language))
        assert row.regime == expected.value
        assert row.delta_score_norm_mean == pytest.approx(100 * (row.score_norm_mean - row.score_norm_base_mean))
    assert results["regime"].value_counts().to_dict() == {"MT-ML": 4, "MT-CL": 4, "CT-ML": 4, "CT-CL": 4}


def test_report_is_self_contained_and_escaped(finished_study):
    _, report = finished_study
    page = report.read_text()
    assert "tiny &lt;study&gt;" in page and "tiny <study>" not in page
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page
    for regime in ("MT-CL", "CT-ML", "CT-CL"):
        assert regime in page


def test_rerun_is_a_no_op(finished_study):
    config, report = finished_study
    study_dir = report.parent
    before = {t: store_rows(study_dir, t) for t in ("adapters", "scores", "predictions")}
    adapter_files = sorted(study_dir.glob("adapters/**/adapter_model.safetensors"))
    mtimes = [p.stat().st_mtime_ns for p in adapter_files]
    api.run_study(config)
    for table, frame in before.items():
        pd.testing.assert_frame_equal(store_rows(study_dir, table), frame)
    assert [p.stat().st_mtime_ns for p in adapter_files] == mtimes


def test_killed_study_resumes_to_the_same_numbers(finished_study, tmp_path):
    _, report = finished_study
    reference = store_rows(report.parent, "scores").drop(columns=[]).sort_values(["state_id", "target_task", "target_language"])
    config = write_config(tmp_path)
    study_dir = tmp_path / "study"
    process = subprocess.Popen(
        [sys.executable, "-m", "donors.cli", "run", str(config), "--no-report"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if (study_dir / "results.sqlite").exists() and len(store_rows(study_dir, "adapters")) >= 2:
            break
        time.sleep(0.5)
    assert process.poll() is None, "the study finished before it could be killed; make it larger"
    # While it runs, status sees the adapter in training (polled: it may be between two jobs).
    assert any(api.study_status(config).train_running == 1 or time.sleep(0.2) for _ in range(25))
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = len(store_rows(study_dir, "adapters"))
    assert 2 <= partial < 4
    # Once the driver is dead nothing is running: what it had in flight is pending again.
    status = api.study_status(config)
    assert (status.train_done, status.train_running, status.train_pending) == (partial, 0, 4 - partial)
    api.run_study(config, report=False)
    resumed = store_rows(study_dir, "scores").sort_values(["state_id", "target_task", "target_language"])
    pd.testing.assert_frame_equal(resumed.reset_index(drop=True), reference.reset_index(drop=True))
    assert len(store_rows(study_dir, "predictions")) == N_STATES * N_TARGETS * 6
    assert not list(study_dir.glob("adapters/**/*.partial"))


def test_changed_recipe_is_refused_with_the_changed_field(finished_study, tmp_path):
    from donors.config import ConfigError, load_config

    config, report = finished_study
    changed = load_config(config).model_copy(update={"output_dir": report.parent})
    changed = changed.model_copy(update={"train": changed.train.model_copy(update={"epochs": 2})})
    written = (report.parent / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"train\.epochs: 1 -> 2"):
        api.run_study(changed)
    assert (report.parent / "config.json").read_text() == written  # nothing is written until every check passed


def test_status_counts_finished_work(finished_study):
    config, _ = finished_study
    status = api.study_status(config)
    assert (status.train_done, status.train_failed, status.train_running, status.train_pending) == (4, 0, 0, 0)
    assert (status.eval_done, status.eval_failed, status.eval_running, status.eval_pending) == (N_STATES * N_TARGETS, 0, 0, 0)


def test_status_counts_running_jobs_only_while_a_driver_holds_the_study(tmp_path):
    from donors.config import load_config
    from donors.jobs import eval_jobs, train_jobs
    from donors.store import ResultsStore
    from donors.store.lock import study_lock

    config = load_config(write_config(tmp_path))
    first_train, first_eval = train_jobs(config)[0], eval_jobs(config)[0]
    with ResultsStore(tmp_path / "study" / "results.sqlite") as store:
        store.mark_running([first_train.job_id], "train")
        store.mark_running([first_eval.job_id], "eval")
    with study_lock(config.output_dir):
        status = api.study_status(config)
        assert (status.train_running, status.train_pending) == (1, 3)
        assert (status.eval_running, status.eval_pending) == (1, N_STATES * N_TARGETS - 1)
    status = api.study_status(config)
    assert (status.train_running, status.train_pending, status.eval_running) == (0, 4, 0)
