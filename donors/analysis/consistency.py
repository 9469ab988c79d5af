"""A16: the Consistency Index, how alike different models rank the targets of a source.

For each source and regime, every pair of model units ranks the shared recipients;
the index is the mean Kendall tau-b over the pairs. Units are single models, model
families, or model sizes (several models averaged first, each weighing equally).
"""

from __future__ import annotations

import itertools
import re
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from donors.analysis.constants import (
    CONSISTENCY_LLAMA3_FAMILY,
    CONSISTENCY_LLAMA3_PATTERN,
    CONSISTENCY_MIN_RECIPIENTS,
    CONSISTENCY_MIN_SHARED,
    CONSISTENCY_MIN_UNITS,
    CONSISTENCY_PREFIX_PATTERN,
    CONSISTENCY_RECIPIENT_SEPARATOR,
    CT_ML,
    DELTA,
    MODEL,
    MT_CL,
    SIZE,
    SOURCE_LANGUAGE,
    SOURCE_TASK,
    TARGET_LANGUAGE,
    TARGET_TASK,
    TRANSFER_REGIMES,
)
from donors.analysis.results import derive_regime, same_language, same_task, transfer_set

SUMMARY_COLUMNS = ["regime", "median", "q1", "q3", "n_sources"]
UNITS = ("model", "family", "size")
_LLAMA3 = re.compile(CONSISTENCY_LLAMA3_PATTERN, re.IGNORECASE)
_PREFIX = re.compile(CONSISTENCY_PREFIX_PATTERN, re.IGNORECASE)


def consistency_family(name: str) -> str:
    """The A16 family of a model name: ``Llama-3``, else the prefix before ``-<N>B``.

    Qwen2.5-7B-Instruct -> Qwen2.5, gemma-3-4b-it -> gemma-3; a name matching neither
    rule is its own family.
    """
    if _LLAMA3.search(name):
        return CONSISTENCY_LLAMA3_FAMILY
    match = _PREFIX.match(name)
    return match.group(1) if match else name


def _recipient(rows: pd.DataFrame, regime: pd.Series) -> pd.Series:
    """The recipient key per regime: language (MT-CL), dataset (CT-ML), both (CT-CL)."""
    both = rows[TARGET_TASK].astype(str) + CONSISTENCY_RECIPIENT_SEPARATOR + rows[TARGET_LANGUAGE].astype(str)
    recipient = pd.Series(both, index=rows.index, dtype=object)
    recipient[regime == MT_CL] = rows.loc[regime == MT_CL, TARGET_LANGUAGE]
    recipient[regime == CT_ML] = rows.loc[regime == CT_ML, TARGET_TASK]
    return recipient


def _unit_cells(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Mean Δ per (regime, source, recipient, unit), models weighing equally in a unit."""
    if by not in UNITS:
        raise ValueError(f"unknown consistency unit {by!r}; expected one of {', '.join(UNITS)}")
    rows = transfer_set(df)
    rows = rows.assign(**{DELTA: pd.to_numeric(rows[DELTA], errors="coerce")}).dropna(subset=[DELTA])
    rows = rows[~(same_task(rows) & same_language(rows))]
    regime = derive_regime(rows)
    cells = pd.DataFrame(
        {
            "regime": regime,
            SOURCE_TASK: rows[SOURCE_TASK],
            SOURCE_LANGUAGE: rows[SOURCE_LANGUAGE],
            "recipient": _recipient(rows, regime),
            MODEL: rows[MODEL],
            DELTA: rows[DELTA],
        }
    ).dropna(subset=["regime"])
    keys = ["regime", SOURCE_TASK, SOURCE_LANGUAGE, "recipient"]
    per_model = cells.groupby([*keys, MODEL])[DELTA].mean().reset_index()
    units = {
        "model": per_model[MODEL],
        "family": per_model[MODEL].map(consistency_family),
        "size": per_model[MODEL].map(rows.drop_duplicates(MODEL).set_index(MODEL)[SIZE]),
    }[by]
    return per_model.assign(unit=units).groupby([*keys, "unit"])[DELTA].mean().reset_index()


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall tau-b of two rankings (NaN for a constant vector), as scipy computes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(x, y, variant="b").statistic)


def source_consistency(ranking: pd.DataFrame) -> tuple[float, int]:
    """Mean tau-b over pairs of units of a recipients x units table, and the pair count.

    Each pair uses the recipients both units score and needs at least three of them;
    only finite tau enter the mean (A16 steps 3-6).
    """
    values = ranking.to_numpy(float)
    taus = []
    for a, b in itertools.combinations(range(values.shape[1]), 2):
        shared = ~np.isnan(values[:, a]) & ~np.isnan(values[:, b])
        if shared.sum() >= CONSISTENCY_MIN_SHARED:
            tau = kendall_tau_b(values[shared, a], values[shared, b])
            if np.isfinite(tau):
                taus.append(tau)
    return (float(np.mean(taus)) if taus else np.nan), len(taus)


def consistency_index(df: pd.DataFrame, *, by: str = "model") -> pd.DataFrame:
    """A16: the Consistency Index of every (regime, source) for units ``by`` model, family or size.

    Columns regime, fine_tuned_dataset, fine_tuned_language, ci, n_pairs; a source with
    fewer than three recipients or two units has ci NaN.
    """
    cells = _unit_cells(df, by)
    wide = cells.set_index(["regime", SOURCE_TASK, SOURCE_LANGUAGE, "recipient", "unit"])[DELTA]
    wide = wide.unstack("unit").sort_index(axis=1)
    records = []
    for source, ranking in wide.groupby(level=["regime", SOURCE_TASK, SOURCE_LANGUAGE]):
        ranking = ranking.dropna(axis=1, how="all")
        ci, n_pairs = np.nan, 0
        if ranking.shape[0] >= CONSISTENCY_MIN_RECIPIENTS and ranking.shape[1] >= CONSISTENCY_MIN_UNITS:
            ci, n_pairs = source_consistency(ranking)
        records.append((*source, ci, n_pairs))
    columns = ["regime", SOURCE_TASK, SOURCE_LANGUAGE, "ci", "n_pairs"]
    return pd.DataFrame(records, columns=columns)


def consistency_summary(index: pd.DataFrame) -> pd.DataFrame:
    """Median and linear quartiles of the per-source index per regime (A16).

    Rows MT-CL, CT-ML, CT-CL; n_sources counts the sources with a finite index.
    """
    records = []
    for regime in TRANSFER_REGIMES:
        ci = index.loc[index["regime"] == regime, "ci"].dropna()
        quartiles = ci.quantile([0.5, 0.25, 0.75]).to_numpy() if len(ci) else [np.nan] * 3
        records.append((regime, *quartiles, len(ci)))
    return pd.DataFrame(records, columns=SUMMARY_COLUMNS)


def consistency_by_model(df: pd.DataFrame) -> pd.DataFrame:
    """A16 summary with each model as a unit."""
    return consistency_summary(consistency_index(df, by="model"))


def consistency_by_family(df: pd.DataFrame) -> pd.DataFrame:
    """A16 summary with model families (Llama-3, Qwen2.5, gemma-3, ...) as units."""
    return consistency_summary(consistency_index(df, by="family"))


def consistency_by_size(df: pd.DataFrame) -> pd.DataFrame:
    """A16 summary with model sizes as units (models of equal size averaged)."""
    return consistency_summary(consistency_index(df, by="size"))
