"""The Python API: everything the CLI does, as plain calls.

    >>> import donors.api as donors
    >>> config = donors.load_config("configs/demo.yaml")
    >>> report = donors.run_study(config)        # train, evaluate, analyse, report; resumable
    >>> tables = donors.analyze("studies/demo")   # or a results CSV in the published schema
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console

from donors.config import ConfigError, StudyConfig, load_config
from donors import plan as planning
from donors.jobs import eval_jobs, train_jobs
from donors.plan import StudyPlan
from donors.store import ResultsStore
from donors.store.lock import study_in_use, study_lock

STORE_NAME = "results.sqlite"

__all__ = ["StudyConfig", "StudyPlan", "load_config", "run_study", "study_status", "plan_study", "results_of", "analyze", "write_report"]


def store_path(study_dir: str | Path) -> Path:
    return Path(study_dir) / STORE_NAME


def _check_same_recipe(store: ResultsStore, config: StudyConfig) -> None:
    """A study directory belongs to one recipe; a changed setting would mix incomparable runs."""
    stored = store.get_meta("recipe_hash")
    if stored is None:
        store.set_meta("recipe_hash", config.recipe_hash())
        store.set_meta("recipe", json.dumps(config.recipe(), sort_keys=True))
        return
    if stored != config.recipe_hash():
        old = json.loads(store.get_meta("recipe") or "{}")
        new = config.recipe()
        changed = [f"{section}.{key}: {old.get(section, {}).get(key)!r} -> {value!r}"
                   for section, fields in new.items() if isinstance(fields, dict)
                   for key, value in fields.items() if old.get(section, {}).get(key) != value]
        changed += [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if not isinstance(v, dict) and old.get(k) != v]
        raise ConfigError(
            f"{config.output_dir} holds results made with other settings ({'; '.join(changed) or 'tasks changed'}). "
            "Use a new output_dir for the new settings, or restore the old ones to resume. "
            "The grid (models, tasks' languages, seeds) may grow freely."
        )


def run_study(config: StudyConfig | str | Path, *, console: Console | None = None, report: bool = True) -> Path:
    """Train and evaluate whatever the store lacks, then analyse and write the report.

    Safe to rerun: finished adapters and scores are skipped. Returns the report's path
    (or the study directory when ``report`` is false).
    """
    from donors.execute.local import LocalExecutor
    from donors.tasks.data import load_study_data

    config = load_config(config) if not isinstance(config, StudyConfig) else config
    console = console or Console(stderr=True)
    study_dir = Path(config.output_dir)
    started = time.perf_counter()
    console.print(f"[bold]data[/bold] loading {len(config.tasks)} task(s) x {len(config.languages)} language(s)")
    data = load_study_data(config)  # bad data stops here, before anything is written
    if config.eval.backend == "vllm":
        from donors.evaluate.vllm_backend import import_vllm

        import_vllm()  # a missing vLLM stops here too, not after training
    with study_lock(study_dir):
        (study_dir / "config.json").write_text(config.model_dump_json(indent=1))
        with ResultsStore(store_path(study_dir)) as store:
            _check_same_recipe(store, config)
            store.clear_running()  # whatever an earlier, stopped driver had in flight is pending again
            executor = LocalExecutor if config.executor == "local" else _ray_executor()
            executor(config, store, data, console).run()
            failures = store.failures()
        if len(failures):
            console.print(f"[yellow]{len(failures)} job(s) failed[/yellow]; see `donors status` for the errors")
        if not report:
            return study_dir
        console.print("[bold]analyse[/bold] tables, figures and report")
        path = write_report(study_dir)
    console.print(f"[bold]done[/bold] in {time.perf_counter() - started:.0f} s")
    return path


def _ray_executor():
    try:
        from donors.execute.ray import RayExecutor
    except ImportError as error:
        raise ConfigError(f"executor: ray needs Ray installed (pip install 'donors[ray]'): {error}") from None
    return RayExecutor


@dataclass(frozen=True)
class StudyStatus:
    """Job counts by state. ``running``: handed to a worker by a live ``donors run`` and not yet back."""

    train_done: int
    train_failed: int
    train_running: int
    train_pending: int
    eval_done: int
    eval_failed: int
    eval_running: int
    eval_pending: int
    failures: pd.DataFrame


def study_status(config: StudyConfig | str | Path) -> StudyStatus:
    """Counts of done, failed, running and pending jobs, read from the store (no lock needed)."""
    config = load_config(config) if not isinstance(config, StudyConfig) else config
    path = store_path(config.output_dir)
    t_jobs, e_jobs = train_jobs(config), eval_jobs(config)
    if not path.exists():
        return StudyStatus(0, 0, 0, len(t_jobs), 0, 0, 0, len(e_jobs), pd.DataFrame(columns=["job_id", "kind", "error", "attempts"]))
    with ResultsStore(path) as store:
        adapters = store.adapter_ids()
        scored = store.scores()
        failures = store.failures()
        # Rows left by a driver that was killed describe nothing in flight now.
        running = store.running() if study_in_use(config.output_dir) else set()
    done_pairs = set(zip(scored["state_id"], scored["target_task"], scored["target_language"]))
    failed_ids = set(failures["job_id"])

    def state_of(job_id: str, done: bool) -> str:
        if done:
            return "done"
        return "running" if job_id in running else "failed" if job_id in failed_ids else "pending"

    t_states = Counter(state_of(j.job_id, j.job_id in adapters) for j in t_jobs)
    e_states = Counter(state_of(j.job_id, (j.state.state_id, j.target.task, j.target.language) in done_pairs) for j in e_jobs)
    return StudyStatus(
        *(t_states[s] for s in ("done", "failed", "running", "pending")),
        *(e_states[s] for s in ("done", "failed", "running", "pending")),
        failures,
    )


def plan_study(
    config: StudyConfig | str | Path,
    *,
    tflops: float = planning.DEFAULT_TFLOPS,
    mfu: float = planning.DEFAULT_MFU,
    chars_per_token: float = planning.CHARS_PER_TOKEN,
) -> StudyPlan:
    """Jobs, tokens and GPU-hours per model, without loading a model or fetching data (:mod:`donors.plan`)."""
    config = load_config(config) if not isinstance(config, StudyConfig) else config
    return planning.plan(config, tflops=tflops, mfu=mfu, chars_per_token=chars_per_token)


def results_of(source: str | Path) -> pd.DataFrame:
    """The published-schema results table of a study directory, or read from a CSV."""
    from donors.analysis.transfer import results_table

    source = Path(source)
    if source.is_dir():
        path = store_path(source)
        if not path.exists():
            raise FileNotFoundError(f"{source}: no {STORE_NAME} here; run the study first")
        with ResultsStore(path) as store:
            return results_table(store.scores())
    from donors.analysis.results import load_results_table

    return load_results_table(source)


def analyze(source: str | Path, out_dir: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Every analysis of a study (or published-schema CSV); tables saved as CSV under ``out_dir``."""
    from donors.analysis.study import study_tables

    source = Path(source)
    results = results_of(source)
    tables = study_tables(results, study_dir=source if source.is_dir() else None)
    out = Path(out_dir) if out_dir else (source / "analysis" if source.is_dir() else source.with_suffix("") .with_name(source.stem + "_analysis"))
    from donors.analysis.results import save_tables

    save_tables(tables, out)
    return tables


def write_report(source: str | Path, out: str | Path | None = None) -> Path:
    """Analyse and write one self-contained HTML report; returns its path."""
    from donors.report.html import build_report

    source = Path(source)
    tables = analyze(source)
    out = Path(out) if out else (source / "report.html" if source.is_dir() else source.with_suffix(".html"))
    config_path = source / "config.json" if source.is_dir() else None
    settings = json.loads(config_path.read_text()) if config_path and config_path.exists() else None
    figures_dir = out.parent / "figures"
    out.write_text(build_report(tables, settings=settings, title=(settings or {}).get("name", source.stem), figures_dir=figures_dir), encoding="utf-8")
    results = results_of(source)
    results.to_csv(out.with_name("transfer_results.csv") if source.is_dir() else out.with_suffix(".results.csv"), index=False)
    return out
