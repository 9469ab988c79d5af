"""All tables for one study: the published analyses, the transfer matrix per model and, for a study directory, the item-level statistics."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

from donors.analysis.paired import item_level_tables, regime_summary_by_model
from donors.analysis.published import (
    SKIPPED_ANALYSES,
    run_analysis,
    run_published_analyses,
    skipped_table,
)
from donors.analysis.transfer import TransferMatrix


def _transfer_matrix_name(model: str) -> str:
    return f"transfer_matrix__{model.replace('/', '__')}"


def _transfer_matrix(results: pd.DataFrame, model: str) -> pd.DataFrame:
    """The sources x targets table (pp) of one model, the first column naming the source."""
    matrix = TransferMatrix.from_results(results, model).values
    return matrix.rename_axis("source").rename_axis(None, axis=1)


def transfer_matrices(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One sources x targets table (pp) per model, the first column naming the source."""
    return {
        _transfer_matrix_name(model): _transfer_matrix(results, model)
        for model in sorted(results["model_name"].unique())
    }


def study_tables(results: pd.DataFrame, study_dir: Path | None = None) -> dict[str, pd.DataFrame]:
    """Every table the report shows, keyed by a stable name (also the CSV file name).

    Each analysis runs on its own: one that raises is left out and listed, with its reason,
    in the last table ``skipped_analyses`` (columns analysis, reason), which is there only
    when something was skipped (see :func:`run_published_analyses`).
    """
    tables = run_published_analyses(results)
    skipped = tables.pop(SKIPPED_ANALYSES, skipped_table([]))
    skipped = list(skipped.itertuples(index=False, name=None))
    extra = {
        _transfer_matrix_name(model): functools.partial(_transfer_matrix, results, model)
        for model in sorted(results["model_name"].unique())
    }
    extra["regime_summary_by_model"] = functools.partial(regime_summary_by_model, results)
    for name, compute in extra.items():
        table = run_analysis(name, compute, skipped)
        if table is not None:
            tables[name] = table
    if study_dir is not None:
        read = functools.partial(stored_item_level_tables, Path(study_dir))
        item_level = run_analysis("item_level_tables", read, skipped)
        tables.update(item_level or {})
    if skipped:
        tables[SKIPPED_ANALYSES] = skipped_table(skipped)
    return tables


def stored_item_level_tables(study_dir: Path) -> dict[str, pd.DataFrame]:
    """The item-level tables of a study directory's store; none when it has no store.

    Only read: the store is opened for its item outcomes and closed again.
    """
    from donors.api import STORE_NAME
    from donors.store import ResultsStore

    path = study_dir / STORE_NAME
    if not path.exists():
        return {}
    with ResultsStore(path) as store:
        outcomes = store.item_outcomes()
    return item_level_tables(outcomes)
