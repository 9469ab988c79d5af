"""All tables for one study: the published analyses, the transfer matrix per model and, for a
study's stored predictions, the validity check and the item-level statistics.

Pure: every input is a table handed in (the API reads the store once and passes it here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import pandas as pd

from donors.analysis.constants import (
    CURATED_DATASETS,
    DELTA,
    MODEL,
    PUBLISHED_NAMES,
    SOURCE_LANGUAGE,
    SOURCE_TASK,
    TARGET_LANGUAGE,
    TARGET_TASK,
)
from donors.analysis.metrics import BIAS_FREE_METRIC, item_scores, target_scores
from donors.analysis.paired import PairedBootstrap, paired_statistics, paired_tables, regime_summary_by_model
from donors.analysis.predict import DELTA_SE, prediction_tables
from donors.analysis.published import SKIPPED_ANALYSES, run_analysis, run_published_analyses, skipped_table
from donors.analysis.transfer import TransferMatrix, results_table
from donors.analysis.validity import (
    collapse_summary,
    option_diagnostics,
    own_cell_gains,
    pooled_regime_intervals,
    regime_means,
    validity_findings,
)
from donors.grid import path_component


@dataclass(frozen=True)
class StoredOutcomes:
    """What a study's store holds for analysis: per-target scores and per-item predictions.

    ``scores`` is :meth:`~donors.store.ResultsStore.scores`, ``predictions``
    :meth:`~donors.store.ResultsStore.item_predictions`.
    """

    scores: pd.DataFrame
    predictions: pd.DataFrame
    _paired: dict = field(default_factory=dict, repr=False, compare=False)

    def target_scores(self, metric: str) -> pd.DataFrame:
        return target_scores(self.scores, self.predictions, metric)

    def item_scores(self, metric: str) -> pd.DataFrame:
        return item_scores(self.predictions, metric)

    def paired(self, metric: str) -> tuple[PairedBootstrap, pd.DataFrame]:
        """The paired bootstrap and tests under ``metric``, computed once: the validity check and the item-level tables share them."""
        if metric not in self._paired:
            self._paired[metric] = paired_statistics(self.item_scores(metric))
        return self._paired[metric]


PAIR_KEYS = ["model", "source_task", "source_language", "target_task", "target_language"]
"""A (model, source, target) pair in the store's column names."""
_BASE_KEYS = ["model", "target_task", "target_language"]
GRID_COVERAGE = "grid_coverage"
"""The table (one column, ``finding``) that says how much of the grid the analyses had."""


def with_base_scores(stored: StoredOutcomes) -> tuple[StoredOutcomes, pd.DataFrame]:
    """The outcomes a Δ can be computed from, and what was set aside.

    An adapted state's score on a target the base model has not been scored on yet (a study
    still running, or a base evaluation that failed) has no Δ; it is left out rather than
    stopping the analysis. The second value lists those targets: model, target_task,
    target_language and ``scores`` (how many adapted scores were set aside there).
    """
    scores, predictions = stored.scores, stored.predictions
    base = set(map(tuple, scores.loc[scores["source_task"].isna(), _BASE_KEYS].itertuples(index=False, name=None)))

    def kept(frame: pd.DataFrame) -> pd.Series:
        keys = frame[_BASE_KEYS].itertuples(index=False, name=None)
        return frame["source_task"].isna() | pd.Series([key in base for key in keys], index=frame.index, dtype=bool)

    keep = kept(scores)
    left_out = scores.loc[~keep].groupby(_BASE_KEYS).size().rename("scores").reset_index()
    if keep.all():
        return stored, left_out
    return StoredOutcomes(scores[keep].reset_index(drop=True), predictions[kept(predictions)].reset_index(drop=True)), left_out


@dataclass(frozen=True)
class ExpectedGrid:
    """What a study's config asks for: its (model, source, target) pairs and its adapters (state ids).

    ``pairs`` has the columns :data:`PAIR_KEYS`; a row without a source is a base model's target.
    """

    pairs: pd.DataFrame
    adapters: frozenset[str]


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def table_coverage(results: pd.DataFrame) -> list[str]:
    """What a results table holds, when no config says what it should: its models, sources and targets."""
    adapted = results[results[SOURCE_TASK].notna()]
    with_delta = adapted[pd.to_numeric(adapted[DELTA], errors="coerce").notna()]
    models = with_delta[MODEL].nunique()
    sources = with_delta[[SOURCE_TASK, SOURCE_LANGUAGE]].drop_duplicates()
    targets = with_delta[[TARGET_TASK, TARGET_LANGUAGE]].drop_duplicates()
    span = models * len(sources) * len(targets)
    line = (
        f"The table holds {_plural(len(with_delta), '(model, source, target) row')} with a Δ: {_plural(models, 'model')}, "
        f"{_plural(len(sources), 'source')} and {_plural(len(targets), 'target')} (task/language)"
    )
    if len(with_delta) < span:
        line += f"; {len(with_delta):,} of the {span:,} combinations of these are present"
    missing = len(adapted) - len(with_delta)
    return [line + (f"; {_plural(missing, 'row')} without a Δ are left out." if missing else ".")]


def study_coverage(
    results: pd.DataFrame,
    scores: pd.DataFrame,
    expected: ExpectedGrid | None,
    trained: frozenset[str] | set[str],
    left_out: pd.DataFrame,
    *,
    running: bool = False,
) -> list[str]:
    """How much of a study's grid the analyses had, as finding lines; a ``WARNING:`` when the study is not complete.

    ``results`` is the transfer table, ``scores`` the store's scores, ``expected`` the grid
    its config asks for (None without a config.json), ``trained`` the stored adapters' ids,
    ``left_out`` what :func:`with_base_scores` set aside, ``running`` whether a ``donors run``
    holds the study now.
    """
    measured_rows = results[results[SOURCE_TASK].notna() & pd.to_numeric(results[DELTA], errors="coerce").notna()]
    renamed = {MODEL: "model", SOURCE_TASK: "source_task", SOURCE_LANGUAGE: "source_language"}
    renamed |= {TARGET_TASK: "target_task", TARGET_LANGUAGE: "target_language"}
    measured = set(measured_rows.rename(columns=renamed)[PAIR_KEYS].itertuples(index=False, name=None))
    now = " (a donors run is working on it now)" if running else ""
    if expected is None:
        models = scores["model"].nunique()
        return [
            f"The store holds {_plural(len(measured), '(source, target) pair')} with a Δ of {_plural(models, 'model')} and "
            f"{_plural(len(trained), 'adapter')}{now}; without the study's config.json the planned grid is unknown."
        ]
    adapted = expected.pairs[expected.pairs["source_task"].notna()]
    wanted = set(adapted[PAIR_KEYS].itertuples(index=False, name=None))
    models = expected.pairs["model"].nunique()
    got, adapters = len(measured & wanted), len(set(trained) & expected.adapters)
    base = expected.pairs[_BASE_KEYS].drop_duplicates()
    scored_base = set(scores.loc[scores["source_task"].isna(), _BASE_KEYS].itertuples(index=False, name=None))
    base_got = sum(key in scored_base for key in base.itertuples(index=False, name=None))
    counts = (
        f"{got:,} of {len(wanted):,} (source, target) pairs of {_plural(models, 'model')} measured; "
        f"{adapters:,} of {len(expected.adapters):,} adapters trained; base model scored on {base_got:,} of {len(base):,} "
        "(model, target) cells"
    )
    if got == len(wanted) and adapters == len(expected.adapters) and base_got == len(base):
        return [f"The study's grid is complete: {counts}."]
    line = f"WARNING: the study is not complete{now}: {counts}. Every table covers the measured pairs only"
    if len(left_out):
        line += (
            f"; {_plural(int(left_out['scores'].sum()), 'adapted score')} on {_plural(len(left_out), 'target')} "
            "without a base-model score yet are left out"
        )
    return [line + "; analyses without enough data are listed in skipped_analyses. Finish it with `donors run`, then analyse again."]


def dtype_findings(scores: pd.DataFrame, adapters: pd.DataFrame | None = None) -> list[str]:
    """A ``WARNING:`` per model whose states were trained or scored in more than one dtype.

    ``scores``: the store's scores; ``adapters``: (model, dtype) per stored adapter. A study
    resumed on another kind of device, or a cluster of two kinds of GPU, can resolve
    ``dtype: auto`` differently; a Δ between a state computed in float32 and one in bfloat16
    then mixes rounding with transfer. Work stored before dtypes were recorded is not counted.
    """
    parts = []
    if "dtype" in scores:
        parts.append(scores.dropna(subset=["dtype"]).assign(what="scored (model state, target) pair")[["model", "dtype", "what"]])
    if adapters is not None and len(adapters):
        parts.append(adapters.assign(what="trained adapter")[["model", "dtype", "what"]])
    if not parts:
        return []
    work = pd.concat(parts, ignore_index=True)
    lines = []
    for model, group in work.groupby("model", sort=True):
        if group["dtype"].nunique() > 1:
            counts = group.groupby(["dtype", "what"], sort=True).size()
            spread = "; ".join(f"{dtype}: {_plural(int(n), what)}" for (dtype, what), n in counts.items())
            lines.append(
                f"WARNING: {model} was computed in more than one dtype ({spread}), so its Δ mixes rounding with transfer. "
                "Resume it on the kind of device that computed the rest, or set `dtype:` and run it in a new output_dir."
            )
    return lines


def coverage_table(lines: list[str]) -> pd.DataFrame:
    """The ``grid_coverage`` table: one finding per row."""
    return pd.DataFrame({"finding": lines})


def _transfer_matrix(results: pd.DataFrame, model: str) -> pd.DataFrame:
    """The sources x targets table (pp) of one model, the first column naming the source.

    Its key names the model as a file name may; ``attrs["model"]`` keeps the name as given, for titles.
    """
    matrix = TransferMatrix.from_results(results, model).values.rename_axis("source").rename_axis(None, axis=1)
    matrix.attrs["model"] = model
    return matrix


def transfer_matrices(results: pd.DataFrame, prefix: str = "transfer_matrix") -> dict[str, pd.DataFrame]:
    """One sources x targets table (pp) per model, the first column naming the source."""
    return {f"{prefix}__{path_component(model)}": _transfer_matrix(results, model) for model in sorted(results["model_name"].unique())}


def study_tables(
    results: pd.DataFrame,
    *,
    stored: StoredOutcomes | None = None,
    metric: str | None = None,
    published_metric: str = "acc_norm",
    bias_free_metric: str = BIAS_FREE_METRIC,
    partial: bool = False,
    curated: Collection[str] = CURATED_DATASETS,
) -> dict[str, pd.DataFrame]:
    """Every table the report shows, keyed by a stable name (also the CSV file name).

    ``results`` is the published-schema table under ``metric``. With ``stored`` (a study's own
    predictions) come the validity tables (option diagnostics, the published metric beside
    the bias-free one, ``validity_findings``) and the item-level statistics under ``metric``.

    Each analysis runs on its own: one that raises is left out and listed, with its reason,
    in the last table ``skipped_analyses`` (columns analysis, reason), which is there only
    when something was skipped (see :func:`run_published_analyses`). A published analysis
    whose table comes out empty is listed there too, not written blank; with ``partial`` (a
    study not yet complete) every such analysis is, for the reason :data:`NO_ROWS`. ``curated``: the human-translated tasks (A4, A11, A15).
    """
    tables = run_published_analyses(results, curated=curated, no_rows=NO_ROWS if partial else None)
    skipped = list(tables.pop(SKIPPED_ANALYSES, skipped_table([])).itertuples(index=False, name=None))

    def run(name: str, compute: Callable[[], pd.DataFrame]) -> None:
        table = run_analysis(name, compute, skipped)
        if table is not None:
            tables[name] = table

    for model in sorted(results["model_name"].unique()):
        run(f"transfer_matrix__{path_component(model)}", functools.partial(_transfer_matrix, results, model))
    run("regime_summary_by_model", functools.partial(regime_summary_by_model, results))
    if stored is not None:
        tables.update(run_analysis("validity", lambda: validity_tables(stored, published_metric, bias_free_metric), skipped) or {})
        tables.update(run_analysis("item_level_tables", lambda: paired_tables(*stored.paired(metric or published_metric)), skipped) or {})
    measured = _with_item_level_se(results, tables.get("transfer_pairs"))
    tables.update(run_analysis("transfer_prediction", functools.partial(prediction_tables, measured), skipped) or {})
    for name in [name for name, table in tables.items() if table.empty] if partial else []:
        # On part of the grid an empty table says nothing: listed, with why, rather than written blank.
        del tables[name]
        skipped.append((name, NO_ROWS))
    if skipped:
        tables[SKIPPED_ANALYSES] = skipped_table(skipped)
    return tables


def _with_item_level_se(results: pd.DataFrame, pairs: pd.DataFrame | None) -> pd.DataFrame:
    """``results`` with a Δ's standard error from the paired item bootstrap where the seeds give none (one seed).

    A measured cell's interval in the prediction is then its sampling error over test items,
    not a point: se = width of the 95% bootstrap interval / (2 x 1.96).
    """
    if pairs is None or pairs.empty:
        return results
    keys = list(PUBLISHED_NAMES.values())
    bootstrap = pairs.rename(columns=PUBLISHED_NAMES).assign(item_se=(pairs["ci_high"] - pairs["ci_low"]) / (2 * 1.959964))
    merged = results.merge(bootstrap[[*keys, "item_se"]], on=keys, how="left")
    item_se = merged.pop("item_se")
    merged[DELTA_SE] = pd.to_numeric(merged[DELTA_SE], errors="coerce").fillna(item_se) if DELTA_SE in merged else item_se
    return merged


NO_ROWS = "no data yet: the measured part of the grid holds none of the rows it reads, or too few for its minimums"
"""The reason ``skipped_analyses`` gives for an analysis whose table came out empty."""


def validity_tables(stored: StoredOutcomes, published: str, bias_free: str) -> dict[str, pd.DataFrame]:
    """Is the transfer about content? Option diagnostics, and each metric's story per regime.

    ``metric_comparison``: mean Δ per regime under the published metric, the bias-free one and
    gold_prob; ``pooled_regime_intervals`` and ``own_cell_gains`` under the first two;
    ``published_matrix__<model>`` and ``bias_free_matrix__<model>`` side by side;
    ``validity_findings``: the sentences the report opens with.
    """
    diagnostics = option_diagnostics(stored.scores)
    collapse = collapse_summary(diagnostics)
    tables = {"option_diagnostics": diagnostics, "collapse_summary": collapse}
    adapted = stored.scores["source_task"].notna().any()
    if not adapted:
        tables["validity_findings"] = pd.DataFrame({"finding": validity_findings(collapse, pd.DataFrame(), published, bias_free)})
        return tables
    metrics = list(dict.fromkeys([published, bias_free, "gold_prob"]))
    results = {m: results_table(stored.target_scores(m)) for m in metrics}
    means = regime_means(results)
    pooled, own = {}, {}
    for m in (published, bias_free):
        bootstrap, tested = stored.paired(m)
        pooled[m] = pooled_regime_intervals(bootstrap.pairs, bootstrap.replicates)
        own[m] = own_cell_gains(tested)
    tables["metric_comparison"] = means
    tables["pooled_regime_intervals"] = pd.concat(pooled, names=["metric", None]).reset_index(level=0).reset_index(drop=True)
    tables["own_cell_gains"] = pd.concat(own, names=["metric", None]).reset_index(level=0).reset_index(drop=True)
    tables.update(transfer_matrices(results[published], "published_matrix"))
    tables.update(transfer_matrices(results[bias_free], "bias_free_matrix"))
    findings = validity_findings(collapse, means, published, bias_free, pooled, own)
    tables["validity_findings"] = pd.DataFrame({"finding": findings})
    return tables
