"""The published results table: loading, regimes, subsets, shared statistics, saving.

Protocol section 0 fixes the conventions every analysis shares; they live here so the
analyses themselves read as the protocol does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from donors.analysis.constants import (
    CT_CL,
    CT_ML,
    DELTA,
    FAMILY_SUBSTRINGS,
    HARM,
    HARM_THRESHOLD,
    MEAN,
    MEDIAN,
    MISSING_SOURCE,
    MODEL,
    MT_CL,
    MT_ML,
    OTHER_FAMILY,
    POSITIVE,
    PUBLISHED_ROWS,
    REGIME,
    REQUIRED_COLUMNS,
    SIZE,
    SIZE_LARGE_MIN,
    SIZE_SMALL_MAX,
    SOURCE_LANGUAGE,
    SOURCE_TASK,
    TARGET_LANGUAGE,
    TARGET_TASK,
    N,
)


class ResultsTableError(ValueError):
    """A results table does not follow the published schema (protocol section 8)."""


def load_results_table(
    path_or_df: str | os.PathLike | pd.DataFrame, *, expect_full_grid: bool = False
) -> pd.DataFrame:
    """Read and check a results table in the published schema (protocol section 0).

    The published loader insists on the nine columns the analyses read and, for the
    release, on exactly 17,424 rows; ``expect_full_grid`` restores that second check,
    which our own, smaller studies do not pass. As in the release, ``n/a`` reads as
    missing (pandas' default), Δ and model_size are made numeric, and nothing is
    recomputed.
    """
    if isinstance(path_or_df, pd.DataFrame):
        origin = "the results DataFrame"
        frame = path_or_df.copy()
    else:
        path = Path(path_or_df)
        origin = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"results table {origin} does not exist")
        text_columns = (MODEL, SOURCE_TASK, SOURCE_LANGUAGE, TARGET_TASK, TARGET_LANGUAGE, REGIME)
        frame = pd.read_csv(path, dtype={c: str for c in text_columns})
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsTableError(
            f"{origin} is not a results table in the published schema: "
            f"missing column(s) {', '.join(missing)}"
        )
    if expect_full_grid and len(frame) != PUBLISHED_ROWS:
        raise ResultsTableError(
            f"{origin} has {len(frame):,} rows; the published grid has exactly "
            f"{PUBLISHED_ROWS:,} (9 models x 44 sources x 44 targets)"
        )
    frame[DELTA] = pd.to_numeric(frame[DELTA], errors="coerce")
    frame[SIZE] = pd.to_numeric(frame[SIZE], errors="coerce")
    return frame


def has_source(df: pd.DataFrame) -> pd.Series:
    """Rows that name a fine-tuning source (neither field missing nor ``n/a``)."""
    present = pd.Series(True, index=df.index)
    for column in (SOURCE_TASK, SOURCE_LANGUAGE):
        values = df[column]
        present &= values.notna() & (values.astype(str) != MISSING_SOURCE)
    return present


def same_task(df: pd.DataFrame) -> pd.Series:
    return (df[SOURCE_TASK] == df[TARGET_TASK]).fillna(False).astype(bool)


def same_language(df: pd.DataFrame) -> pd.Series:
    return (df[SOURCE_LANGUAGE] == df[TARGET_LANGUAGE]).fillna(False).astype(bool)


def derive_regime(df: pd.DataFrame) -> pd.Series:
    """The regime re-derived from the four key columns by string equality (section 0).

    Rows without a source (base-model rows) stay unlabelled (NaN), as the published
    bucketer refuses them the MT-ML label.
    """
    code = 2 * same_task(df).to_numpy(int) + same_language(df).to_numpy(int)
    labels = np.array([CT_CL, CT_ML, MT_CL, MT_ML], dtype=object)[code]
    regime = pd.Series(labels, index=df.index, name=REGIME)
    return regime.where(has_source(df))


def on_source_set(df: pd.DataFrame) -> pd.DataFrame:
    """O: the trained cells themselves, ``regime == "MT-ML"`` (section 0)."""
    return df[df[REGIME] == MT_ML]


def transfer_set(df: pd.DataFrame) -> pd.DataFrame:
    """T: every row but the trained cells, ``regime != "MT-ML"`` (section 0).

    Idempotent, so an analysis that receives T may also be handed the full table.
    """
    return df[df[REGIME] != MT_ML]


def with_regime(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose ``regime`` column is re-derived from the keys (the bucketer)."""
    return df.assign(**{REGIME: derive_regime(df)})


def delta_values(df: pd.DataFrame) -> pd.Series:
    """Δ as numbers, NaN dropped: the stored value, never recomputed (section 0)."""
    return pd.to_numeric(df[DELTA], errors="coerce").dropna()


def positive_rate(delta: pd.Series) -> float:
    """100 x share of Δ > 0 (strict) among non-missing values."""
    delta = delta.dropna()
    return 100.0 * float((delta > 0).mean()) if len(delta) else np.nan


def harm_rate(delta: pd.Series) -> float:
    """100 x share of Δ <= -1 (inclusive) among non-missing values."""
    delta = delta.dropna()
    return 100.0 * float((delta <= HARM_THRESHOLD).mean()) if len(delta) else np.nan


def transfer_statistics(delta: pd.Series) -> dict[str, float]:
    """n, mean, median, positive and harm rate of Δ with NaN dropped (A1-A4)."""
    delta = pd.to_numeric(delta, errors="coerce").dropna()
    return {
        N: len(delta),
        MEAN: delta.mean() if len(delta) else np.nan,
        MEDIAN: delta.median() if len(delta) else np.nan,
        POSITIVE: positive_rate(delta),
        HARM: harm_rate(delta),
    }


def model_family(name: str) -> str:
    """Family by lowercase substring: Llama, Qwen, Gemma or Other (A3, A6)."""
    lowered = str(name).lower()
    for needle, family in FAMILY_SUBSTRINGS.items():
        if needle in lowered:
            return family
    return OTHER_FAMILY


def size_bucket(size: float) -> str | float:
    """S for <= 1.5B, M for < 7B, L otherwise; NaN when the size is unknown (A3, A6)."""
    if pd.isna(size):
        return np.nan
    if size <= SIZE_SMALL_MAX:
        return "S"
    return "M" if size < SIZE_LARGE_MIN else "L"


def ordered_names(names: Iterable[str], preferred: Iterable[str]) -> list[str]:
    """The names in ``preferred`` order first, then any others sorted (A13, A14)."""
    present = {n for n in names if pd.notna(n)}
    head = [n for n in preferred if n in present]
    return head + sorted(present.difference(head))


def two_stage_mean(rows: pd.DataFrame, key: str) -> pd.Series:
    """Mean over models of each model's mean Δ per key (A9, A12): models weigh equally.

    A model contributes to a key when it has at least one non-missing Δ there.
    """
    per_model = rows.groupby([key, MODEL])[DELTA].mean().dropna()
    return per_model.groupby(level=key).mean()


def role_scores(rows: pd.DataFrame, donor_key: str, recipient_key: str, name: str) -> pd.DataFrame:
    """Donor and recipient two-stage means, outer-merged on the key (A9, A11, A12)."""
    donor = two_stage_mean(rows, donor_key).rename_axis(name).rename("donor")
    recipient = two_stage_mean(rows, recipient_key).rename_axis(name).rename("recipient")
    merged = pd.concat([donor, recipient], axis=1).sort_index()
    return merged.rename_axis(name).reset_index()


def table_for_csv(table: pd.DataFrame) -> pd.DataFrame:
    """The saving rule of section 0: index levels become columns unless it is a RangeIndex.

    A MultiIndex is written out as its named columns; a plain index becomes a column
    named after the index, or ``row`` if it has no name.
    """
    if isinstance(table.index, pd.MultiIndex):
        return table.reset_index()
    if isinstance(table.index, pd.RangeIndex):
        return table
    return table.rename_axis(table.index.name or "row").reset_index()


def save_tables(tables: Mapping[str, pd.DataFrame], directory: str | os.PathLike) -> list[Path]:
    """Write each table as ``<directory>/<name>.csv`` following section 0; return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        path = directory / f"{name}.csv"
        table_for_csv(table).to_csv(path, index=False)
        paths.append(path)
    return paths
