"""All tables for one study: the published analyses, the transfer matrix per model and, for a study directory, the item-level statistics."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from donors.analysis.paired import item_level_tables, regime_summary_by_model
from donors.analysis.published import run_published_analyses
from donors.analysis.transfer import TransferMatrix


def transfer_matrices(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One sources x targets table (pp) per model, the first column naming the source."""
    out = {}
    for model in sorted(results["model_name"].unique()):
        matrix = TransferMatrix.from_results(results, model).values
        out[f"transfer_matrix__{model.replace('/', '__')}"] = matrix.rename_axis("source").rename_axis(None, axis=1)
    return out


def study_tables(results: pd.DataFrame, study_dir: Path | None = None) -> dict[str, pd.DataFrame]:
    """Every table the report shows, keyed by a stable name (also the CSV file name)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = run_published_analyses(results)
    tables.update(transfer_matrices(results))
    tables["regime_summary_by_model"] = regime_summary_by_model(results)
    if study_dir is not None:
        tables.update(stored_item_level_tables(Path(study_dir)))
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
