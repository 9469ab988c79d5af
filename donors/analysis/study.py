"""All tables for one study: the published analyses plus the full transfer matrix per model."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

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
    return tables
