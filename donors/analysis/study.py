"""All tables for one study: the published analyses, the transfer matrix per model and, for a
study's stored predictions, the validity check and the item-level statistics.

Pure: every input is a table handed in (the API reads the store once and passes it here).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from donors.analysis.metrics import BIAS_FREE_METRIC, item_scores, target_scores
from donors.analysis.paired import PairedBootstrap, paired_statistics, paired_tables, regime_summary_by_model
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


def _transfer_matrix(results: pd.DataFrame, model: str) -> pd.DataFrame:
    """The sources x targets table (pp) of one model, the first column naming the source."""
    matrix = TransferMatrix.from_results(results, model).values
    return matrix.rename_axis("source").rename_axis(None, axis=1)


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
) -> dict[str, pd.DataFrame]:
    """Every table the report shows, keyed by a stable name (also the CSV file name).

    ``results`` is the published-schema table under ``metric``. With ``stored`` (a study's own
    predictions) come the validity tables (option diagnostics, the published metric beside
    the bias-free one, ``validity_findings``) and the item-level statistics under ``metric``.

    Each analysis runs on its own: one that raises is left out and listed, with its reason,
    in the last table ``skipped_analyses`` (columns analysis, reason), which is there only
    when something was skipped (see :func:`run_published_analyses`).
    """
    tables = run_published_analyses(results)
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
    if skipped:
        tables[SKIPPED_ANALYSES] = skipped_table(skipped)
    return tables


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
