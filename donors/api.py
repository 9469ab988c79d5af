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
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from rich.console import Console

from donors import plan as planning
from donors.config import ConfigError, StudyConfig, load_config
from donors.errors import InputNotFound, _quoted, writing_to
from donors.jobs import cells as cells_of
from donors.jobs import eval_jobs, train_jobs
from donors.models import check_models
from donors.plan import StudyPlan
from donors.store import STORE_NAME, ResultsStore, store_path
from donors.store.lock import study_in_use, study_lock

__all__ = [
    "StudyConfig",
    "StudyPlan",
    "Analysis",
    "load_config",
    "run_study",
    "study_status",
    "plan_study",
    "probe_study",
    "results_of",
    "analysis_of",
    "analyze",
    "write_report",
]


STUDY_FILES = frozenset({STORE_NAME, "config.json", "donors.lock", "donors.lock.pid"})


def _check_is_a_study_or_empty(study_dir: Path) -> None:
    """An output_dir is a new folder, an empty one, or a study: never someone's other files."""
    if not study_dir.is_dir() or (study_dir / STORE_NAME).exists():
        return
    others = sorted(p.name for p in study_dir.iterdir() if p.name not in STUDY_FILES)
    if others:
        raise ConfigError(
            f"output_dir {study_dir} already holds files that are not a study's ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}); point output_dir at a new or empty folder"
        )


def _check_same_recipe(store: ResultsStore, config: StudyConfig) -> None:
    """A study directory belongs to one recipe; a changed setting would mix incomparable runs."""
    stored = store.get_meta("recipe_hash")
    if stored is None:
        store.set_meta("recipe_hash", config.recipe_hash())
        store.set_meta("recipe", json.dumps(config.recipe(), sort_keys=True))
        return
    if stored != config.recipe_hash():
        changed = _differences(json.loads(store.get_meta("recipe") or "{}"), config.recipe())
        shown = "; ".join(changed[:8]) + ("; ..." if len(changed) > 8 else "")
        raise ConfigError(
            f"{config.output_dir} holds results made with other settings ({shown or 'settings changed'}). "
            "Use a new output_dir for the new settings, or restore the old ones to resume (data moved elsewhere: "
            "keep its old path, e.g. with a link). The grid (models, tasks' languages, seeds) may grow freely."
        )


def _differences(old, new, where: str = "") -> list[str]:
    """Each setting that differs between two recipes, by its path (``tasks[0].options.path: 'a' -> 'b'``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line for key in dict.fromkeys([*old, *new]) for line in _differences(old.get(key), new.get(key), f"{where}.{key}".lstrip("."))
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new)) for line in _differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {_quoted(old)} -> {_quoted(new)}"]


def run_study(
    config: StudyConfig | str | Path, *, console: Console | None = None, report: bool = True, redo_changed_data: bool = False
) -> Path:
    """Train and evaluate whatever the store lacks, then analyse and write the report.

    Safe to rerun: finished adapters and scores are skipped. Stored adapters whose files
    changed are trained again; data that changed under stored work stops the run
    (``redo_changed_data``: that work is discarded and redone instead). Returns the report's
    path (or the study directory when ``report`` is false).
    """
    from donors.execute.local import LocalExecutor
    from donors.execute.pending import digest_older_adapters, reconcile_data
    from donors.tasks.data import load_study_data

    config = load_config(config) if not isinstance(config, StudyConfig) else config
    console = console or Console(stderr=True)
    study_dir = Path(config.output_dir)
    started = time.perf_counter()
    check_models(config)  # a bad model entry stops here, before any data is loaded or anything written
    console.print(f"[bold]data[/bold] loading {len(config.tasks)} task(s) x {len(config.languages)} language(s)")
    data = load_study_data(config)  # bad data stops here, before anything is written
    if config.eval.backend == "vllm":
        from donors.evaluate.vllm_backend import import_vllm

        import_vllm()  # a missing vLLM stops here too, not after training
    _check_is_a_study_or_empty(study_dir)
    with study_lock(study_dir):
        with ResultsStore(store_path(study_dir)) as store:
            _check_same_recipe(store, config)
            redone = reconcile_data(store, data.fingerprints(), redo=redo_changed_data)
            # Only now, every check passed: the report must never show settings the results were not made with.
            (study_dir / "config.json").write_text(config.model_dump_json(indent=1))
            for line in redone + digest_older_adapters(config, store):
                console.print(f"[yellow]warning:[/yellow] {line}", soft_wrap=True)
            store.clear_running()  # whatever an earlier, stopped driver had in flight is pending again
            executor = LocalExecutor if config.executor == "local" else _ray_executor()
            executor(config, store, data, console).run()
            failures = store.failures()
        if len(failures):
            console.print(f"[yellow]{len(failures)} job(s) failed[/yellow]; see `donors status` for the errors")
        if not report:
            return study_dir
        console.print("[bold]analyse[/bold] tables, figures and report")
        path, analysis = _write_report(study_dir)
        print_findings(analysis, console)
    console.print(f"[bold]done[/bold] in {time.perf_counter() - started:.0f} s")
    return path


def print_findings(analysis: Analysis, console: Console) -> None:
    """The validity findings, warnings in colour, and any analysis that could not run."""
    from rich.text import Text

    for line in analysis.findings:
        warning = line.startswith("WARNING:")
        console.print(Text(line, style="yellow" if warning else "green"), soft_wrap=True)
    skipped = analysis.tables.get("skipped_analyses")
    by_reason: dict[str, list[str]] = {}
    for row in [] if skipped is None else skipped.itertuples(index=False):
        by_reason.setdefault(row.reason, []).append(row.analysis)
    for reason, names in by_reason.items():
        console.print(Text.assemble(("warning:", "yellow"), f" {', '.join(names)} skipped: {reason}"), soft_wrap=True)


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
    check_models(config, weights=False)
    return planning.plan(config, tflops=tflops, mfu=mfu, chars_per_token=chars_per_token)


@dataclass(frozen=True)
class Analysis:
    """Every table of one study (or results CSV), and what they were computed from.

    ``tables`` maps a stable name (also its CSV file name) to a table; ``results`` is the
    published-schema results table under ``metric``, ``published_results`` the same table
    with the stored acc and acc_norm where the schema puts them; ``findings`` are the validity
    sentences (warnings start with ``WARNING:``); ``settings`` the study's config, if any.
    """

    tables: dict[str, pd.DataFrame]
    results: pd.DataFrame
    published_results: pd.DataFrame
    metric: str
    published_metric: str
    findings: list[str]
    settings: dict | None

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.findings if line.startswith("WARNING:")]


def _study_settings(study_dir: Path) -> dict | None:
    """The settings ``donors run`` wrote beside the store, or None for a directory without them."""
    path = study_dir / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"{path}: not the JSON `donors run` writes ({error}); restore it, or run the study's config again to rewrite it"
        ) from None


def _published_metric(settings: dict | None) -> str:
    """The metric a study reports by default: its config's ``eval.metric`` (acc when it has none)."""
    return (settings or {}).get("eval", {}).get("metric", "acc")


class _StoredStudy(NamedTuple):
    """What the analyses read from a study's store, in one pass: scores, per-item predictions, adapters' ids and dtypes."""

    scores: pd.DataFrame
    predictions: pd.DataFrame
    adapter_ids: set[str]
    adapter_dtypes: pd.DataFrame


def _read_store(study_dir: Path) -> _StoredStudy:
    path = store_path(study_dir)
    if not path.exists():
        raise InputNotFound(f"{study_dir}: no {STORE_NAME} here; run the study first, or point at its output_dir")
    with ResultsStore(path) as store:
        return _StoredStudy(store.scores(), store.item_predictions(), store.adapter_ids(), store.adapter_dtypes())


def analysis_of(source: str | Path, *, metric: str | None = None, curated: Collection[str] | None = None) -> Analysis:
    """Analyse a study directory (from its store) or a results CSV in the published schema.

    ``metric``: the score transfer is computed from (:data:`donors.analysis.metrics.METRICS`);
    default, a study's ``eval.metric`` (a CSV's table is used as it is). A study directory
    also gets the validity check: option diagnostics, and the published metric beside the
    bias-free one. ``curated``: the human-translated tasks the A4, A11 and A15 analyses set
    apart (default: the published study's, ``global_mmlu``).
    """
    from donors.analysis.constants import CURATED_DATASETS
    from donors.analysis.metrics import check_metric
    from donors.analysis.results import load_results_table
    from donors.analysis.study import (
        GRID_COVERAGE,
        StoredOutcomes,
        coverage_table,
        dtype_findings,
        study_coverage,
        study_tables,
        table_coverage,
        with_base_scores,
    )
    from donors.analysis.transfer import results_table

    source = Path(source)
    if not source.is_dir():
        curated = CURATED_DATASETS if curated is None else frozenset(curated)
        if metric is not None:
            raise ConfigError(f"--metric needs a study directory with stored predictions; {source} is a results table")
        results = load_results_table(source)
        coverage = table_coverage(results)
        tables = {GRID_COVERAGE: coverage_table(coverage), **study_tables(results, curated=curated)}
        return Analysis(tables, results, results, "delta_score_norm", "delta_score_norm", coverage, None)
    settings = _study_settings(source)
    if curated is None:  # the study's own (config `curated:`), unless --curated says otherwise
        curated = (settings or {}).get("curated", CURATED_DATASETS)
    curated = frozenset(curated)
    published = _published_metric(settings)
    metric = check_metric(metric or published)
    scores, predictions, adapter_ids, adapter_dtypes = _read_store(source)
    # A study still running may hold adapted scores whose base is not scored yet: they have no Δ, and are set aside.
    stored, left_out = with_base_scores(StoredOutcomes(scores, predictions))
    results = results_table(stored.target_scores(metric))
    published_results = results if metric == "acc_norm" else results_table(stored.target_scores("acc_norm"))
    coverage = study_coverage(results, scores, _expected_grid(source, settings), adapter_ids, left_out, running=study_in_use(source))
    partial = any(line.startswith("WARNING:") for line in coverage)  # the grid is not complete
    coverage += dtype_findings(scores, adapter_dtypes)
    tables = study_tables(results, stored=stored, metric=metric, published_metric=published, partial=partial, curated=curated)
    tables = {GRID_COVERAGE: coverage_table(coverage), **tables}
    findings = coverage + (tables["validity_findings"]["finding"].tolist() if "validity_findings" in tables else [])
    return Analysis(tables, results, published_results, metric, published, findings, settings)


def _expected_grid(study_dir: Path, settings: dict | None):
    """The (model, source, target) pairs and adapters the study's config.json asks for; None without a usable one."""
    from donors.analysis.study import PAIR_KEYS, ExpectedGrid
    from donors.config import config_from_dict
    from donors.errors import DonorsError

    if settings is None:
        return None
    try:
        config = config_from_dict(settings, source=str(study_dir / "config.json"))
    except DonorsError:  # written by another version, say: the coverage line then says what is present
        return None
    pairs = {
        (job.state.model, job.state.source_task, job.state.source_language, job.target.task, job.target.language)
        for job in eval_jobs(config)
        if not job.state.is_base
    }
    base = [(model, None, None, cell.task, cell.language) for model in config.models for cell in cells_of(config)]
    frame = pd.DataFrame(sorted(pairs) + base, columns=PAIR_KEYS)
    return ExpectedGrid(frame, frozenset(job.job_id for job in train_jobs(config)))


def probe_study(config: StudyConfig | str | Path, n_items: int, *, on_items=None) -> pd.DataFrame:
    """Score ``n_items`` gold-balanced items per target with each base model, in each format (:mod:`donors.probe`)."""
    from donors.probe import probe_base_models
    from donors.tasks.data import load_study_data

    config = load_config(config) if not isinstance(config, StudyConfig) else config
    check_models(config)
    return probe_base_models(config, load_study_data(config), n_items, on_items=on_items)


def results_of(source: str | Path, *, metric: str | None = None) -> pd.DataFrame:
    """The published-schema results table of a study directory, or read from a CSV."""
    source = Path(source)
    if source.is_dir():
        from donors.analysis.study import StoredOutcomes
        from donors.analysis.transfer import results_table

        # acc_norm leaves both stored scores where the published schema puts them (score: acc, score_norm: acc_norm).
        stored = _read_store(source)
        return results_table(StoredOutcomes(stored.scores, stored.predictions).target_scores(metric or "acc_norm"))
    from donors.analysis.results import load_results_table

    return load_results_table(source)


def _default_out(source: Path, suffix: str) -> Path:
    return source / suffix if source.is_dir() else source.with_name(f"{source.stem}_{suffix}")


def analyze(
    source: str | Path, out_dir: str | Path | None = None, *, metric: str | None = None, curated: Collection[str] | None = None
) -> Analysis:
    """Every analysis of a study (or published-schema CSV); tables saved as CSV under ``out_dir``."""
    from donors.analysis.results import save_tables

    source = Path(source)
    result = analysis_of(source, metric=metric, curated=curated)
    out = Path(out_dir) if out_dir else _default_out(source, "analysis")
    with writing_to(out, "the analysis tables"):
        save_tables(result.tables, out)
    return result


def write_report(
    source: str | Path, out: str | Path | None = None, *, metric: str | None = None, curated: Collection[str] | None = None
) -> Path:
    """Analyse and write one self-contained HTML report; returns its path.

    A study directory also gets ``transfer_results.csv``: the published schema, acc in the
    ``score`` columns and acc_norm in ``score_norm``, whatever ``metric`` the report reads.
    """
    return _write_report(source, out, metric=metric, curated=curated)[0]


def _write_report(
    source: str | Path, out: str | Path | None = None, *, metric: str | None = None, curated: Collection[str] | None = None
) -> tuple[Path, Analysis]:
    from donors.analysis.metrics import BIAS_FREE_METRIC
    from donors.analysis.results import write_csv
    from donors.report.html import build_report

    source = Path(source)
    # With --out, everything the report is made of goes beside it (the source may be read-only),
    # its tables in a folder of its own: two reports written to one folder keep theirs apart.
    tables = Path(out).with_name(f"{Path(out).stem}_analysis") if out else None
    result = analyze(source, tables, metric=metric, curated=curated)
    out = Path(out) if out else (source / "report.html" if source.is_dir() else source.with_suffix(".html"))
    with writing_to(out.parent, "the report and its figures"):
        page = build_report(
            result.tables,
            settings=result.settings,
            title=(result.settings or {}).get("name", source.stem),
            figures_dir=out.parent / "figures",
            metric=result.metric,
            published_metric=result.published_metric,
            bias_free_metric=BIAS_FREE_METRIC,
        )
        out.write_text(page, encoding="utf-8")
        if source.is_dir():
            write_csv(result.published_results, out.with_name("transfer_results.csv"))
        else:
            write_csv(result.results, out.with_suffix(".results.csv"))
    return out, result


# -- predicting the matrix, choosing sources, recommending one (docs/predict.md) ---------------


@dataclass(frozen=True)
class Prediction:
    """Every (model, source, target) cell of a grid, measured or predicted, and how well prediction did.

    ``cells``: ``predicted_transfer.csv`` (measured cells keep their Δ; ``measured`` says which);
    ``cross_validation``: with ``cv``, the held-out-source scores of our model and the two
    baselines, sources held out for every model at once and per model; ``out_dir``: where both
    were written (never into a study's store or its ``transfer_results.csv``).
    """

    cells: pd.DataFrame
    cross_validation: pd.DataFrame | None
    out_dir: Path


def _measured_results(source: str | Path, metric: str | None) -> pd.DataFrame:
    """The measured transfer table of a study (its published metric unless ``metric``) or of a results CSV.

    ``attrs["metric"]`` says what its Δ is a difference of, for the titles that show it.
    """
    source = Path(source)
    if source.is_dir():
        from donors.analysis.metrics import check_metric

        chosen = check_metric(metric or _published_metric(_study_settings(source)))
        results = results_of(source, metric=chosen)
        results.attrs["metric"] = chosen if metric else f"{chosen}, the study's eval.metric"
        return results
    if metric is not None:
        raise ConfigError(f"--metric needs a study directory with stored predictions; {source} is a results table")
    results = results_of(source)
    results.attrs["metric"] = "the table's delta_score_norm_mean"
    return results


def predict(
    source: str | Path, out_dir: str | Path | None = None, *, cv: int | None = None, metric: str | None = None, seed: int = 0
) -> Prediction:
    """Fit the transfer model to a study's (or a CSV's) measured cells and predict every other cell of the grid.

    The grid's sources are the (task, language) cells that appear as targets. Writes
    ``<out_dir>/predicted_transfer.csv`` (default: ``<study>/prediction`` or
    ``<csv stem>_prediction``) and, with ``cv`` = K folds, ``predict_cv.csv``.
    """
    from donors.analysis.predict import cross_validate, predict_transfer
    from donors.analysis.results import write_csv
    from donors.errors import InsufficientData

    if cv is not None and cv < 2:
        raise ConfigError(f"--cv must be at least 2 folds, got {cv}")
    source = Path(source)
    results = _measured_results(source, metric)
    cells = predict_transfer(results, seed=seed)
    out = Path(out_dir) if out_dir else _default_out(source, "prediction")
    with writing_to(out, "the prediction"):
        out.mkdir(parents=True, exist_ok=True)
        write_csv(cells, out / "predicted_transfer.csv")
    scores = None
    if cv is not None:
        try:
            scores = pd.concat(
                [cross_validate(results, k=cv, per_model=per_model, seed=seed) for per_model in (False, True)], ignore_index=True
            )
        except InsufficientData as error:
            raise InsufficientData(
                f"--cv {cv}: a fold holds out about 1/{cv} of each model's measured sources, and what is left must still "
                f"be fitted: {error}. Use more folds (at most the number of measured sources), or measure more sources; "
                f"the prediction itself is written to {out / 'predicted_transfer.csv'}"
            ) from None
        with writing_to(out, "the cross-validation scores"):
            write_csv(scores, out / "predict_cv.csv")
    return Prediction(cells, scores, out)


def recommend(
    source: str | Path,
    targets: list[str],
    *,
    model: str | None = None,
    top: int = 10,
    max_harm: float | None = None,
    metric: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Sources ranked by expected mean gain over the targets matching ``targets`` ('truthfulqa/*', '*/hi', 'hi').

    Measured and predicted sources alike, per model (or ``model`` only), ``top`` each; with
    each one's 90% interval, its probability of harming any chosen target by 1 pp or more, and
    whether it was measured. ``max_harm`` drops sources above that probability.
    ``attrs["metric"]`` names the score the gains are measured in.
    """
    from donors.analysis.predict import recommend_sources

    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    if max_harm is not None and not 0 <= max_harm <= 1:
        raise ConfigError(f"--max-harm is a probability in 0..1, got {max_harm}")
    results = _measured_results(source, metric)
    ranked = recommend_sources(results, targets, model=model, top=top, max_harm=max_harm, seed=seed)
    ranked.attrs["metric"] = results.attrs["metric"]
    return ranked


@dataclass(frozen=True)
class SourcePlan:
    """The next sources to train, and the config's ``sources:`` with them added, as YAML to paste."""

    choices: pd.DataFrame
    sources_yaml: str


def choose_next_sources(
    config: StudyConfig | str | Path, budget: int, *, measured: str | Path | None = None, shared: bool = False
) -> SourcePlan:
    """Propose ``budget`` sources per model (``shared``: for all models at once) that most reduce the predictive error.

    The grid is the config's (models x tasks x languages). Already taken: the config's own
    ``sources:`` (asked for, trained or not) and the sources with scores in ``measured`` (a
    study directory or results CSV, else the config's own study directory if it has run); a
    taken source is never proposed, and the YAML lists the taken ones before the new ones.
    """
    import yaml

    from donors.analysis.constants import MODEL, SOURCE_LANGUAGE, SOURCE_TASK, TARGET_LANGUAGE, TARGET_TASK
    from donors.analysis.predict import choose_sources
    from donors.jobs import cells

    if budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {budget}")
    config = load_config(config) if not isinstance(config, StudyConfig) else config
    grid = pd.DataFrame(
        [(model, cell.task, cell.language) for model in config.models for cell in cells(config)],
        columns=[MODEL, TARGET_TASK, TARGET_LANGUAGE],
    )
    if measured is None and store_path(config.output_dir).exists():
        measured = config.output_dir
    done = pd.DataFrame(columns=[MODEL, SOURCE_TASK, SOURCE_LANGUAGE])
    if measured is not None:
        results = results_of(measured)
        done = results.loc[results[SOURCE_TASK].notna(), [MODEL, SOURCE_TASK, SOURCE_LANGUAGE]]
    if config.sources is not None:
        asked = [(model, cell.task, cell.language) for model in config.models for cell in config.source_cells(model)]
        done = pd.concat([pd.DataFrame(asked, columns=done.columns), done], ignore_index=True)
    done = done[done[MODEL].isin(config.models)].drop_duplicates(ignore_index=True)
    picked = choose_sources(grid, budget, measured=done if len(done) else None, per_model=not shared)
    choices = pd.DataFrame(picked, columns=["model", "task", "language"])
    names = [f"{c.task}/{c.language}" for c in picked]
    if shared:
        before = list(dict.fromkeys(f"{r[1]}/{r[2]}" for r in done.itertuples(index=False)))
        sources: object = before + [n for n in names if n not in before]
    else:
        sources = {
            model: [f"{r[1]}/{r[2]}" for r in done.itertuples(index=False) if r[0] == model]
            + [n for n, c in zip(names, picked) if c.model == model]
            for model in config.models
        }
    return SourcePlan(choices, yaml.safe_dump({"sources": sources}, sort_keys=False, allow_unicode=True))
