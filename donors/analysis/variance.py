"""A15: how much of the variance of Δ is due to the model, the source and the target.

The published fit is statsmodels' MixedLM with a random intercept per model and the
source and target variance components drawn within each model, i.e. the nested model

    y = mu + a_m + b_(m,s) + c_(m,t) + e        (lme4: (1|model) + (1|model:source) + (1|model:target))

and *not* a crossed one (protocol A15 and section 6.3).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from statsmodels.regression.mixed_linear_model import MixedLM
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from donors.analysis.blas import one_blas_thread
from donors.analysis.constants import (
    DELTA,
    MODEL,
    OVERALL,
    SOURCE_LANGUAGE,
    SOURCE_TASK,
    TARGET_LANGUAGE,
    TARGET_TASK,
    TRANSFER_REGIMES,
    VARIANCE_MIN_ROWS,
    VARIANCE_ROWS,
    VARIANCE_SEPARATOR,
)
from donors.analysis.results import derive_regime, transfer_set
from donors.errors import InsufficientData

MIXED_MODEL = {
    "formula": "delta ~ 1",
    "groups": "model_id",
    "re_formula": "1",
    "vc_formula": {"source": "0 + C(source_id)", "target": "0 + C(target_id)"},
}
MIXED_FIT = {"reml": True, "method": "lbfgs", "maxiter": 1000}
MIXED_PARAMETERS = 5
"""The nested model's parameters: the mean and four variances (model, source, target, residual)."""
MIXED_MIN_ROWS = MIXED_PARAMETERS + 1
"""Rows with Δ a fit needs at the least: more than it has parameters (one row once raised an IndexError in statsmodels)."""


def _design(df: pd.DataFrame) -> pd.DataFrame:
    """Δ and the three categorical ids, NaN Δ dropped (A15 preparation)."""
    data = pd.DataFrame(
        {
            "delta": pd.to_numeric(df[DELTA], errors="coerce"),
            "model_id": df[MODEL].astype(str),
            "source_id": df[SOURCE_TASK].astype(str) + VARIANCE_SEPARATOR + df[SOURCE_LANGUAGE].astype(str),
            "target_id": df[TARGET_TASK].astype(str) + VARIANCE_SEPARATOR + df[TARGET_LANGUAGE].astype(str),
        }
    )
    return data.dropna(subset=["delta"]).reset_index(drop=True)


@one_blas_thread
def variance_components(df: pd.DataFrame, *, use_sparse: bool = False) -> dict[str, float]:
    """REML estimates of the model, source, target and residual variances (A15).

    ``use_sparse=False`` solves the same likelihood with dense per-model blocks, which is
    several times faster here than the published ``use_sparse=True`` and agrees with it
    to about 1e-10; pass ``True`` for the published code path. Fewer than
    :data:`MIXED_MIN_ROWS` rows with Δ, or a fit that fails (with a warning), give NaN for
    every component.
    """
    data = _design(df)
    if len(data) < MIXED_MIN_ROWS:
        return dict.fromkeys(VARIANCE_ROWS, np.nan)
    failure = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            model = MixedLM.from_formula(data=data, use_sparse=use_sparse, **MIXED_MODEL)
            fit = model.fit(**MIXED_FIT)
        except (np.linalg.LinAlgError, ValueError, IndexError) as error:  # statsmodels' own errors on a degenerate design
            failure = error
    if failure is not None:
        warnings.warn(f"variance decomposition fit failed ({failure}); reporting NaN", stacklevel=2)
        return dict.fromkeys(VARIANCE_ROWS, np.nan)
    vcomp = dict(zip(model.exog_vc.names, fit.vcomp))
    return {
        "Model": float(np.asarray(fit.cov_re)[0, 0]),
        "Source": float(vcomp["source"]),
        "Target": float(vcomp["target"]),
        "Residual": float(fit.scale),
    }


def variance_shares(components: dict[str, float]) -> pd.Series:
    """Percent of the retained variance per component (A15).

    Non-finite or negative components are dropped and reported as 0; a non-positive
    total makes every share NaN.
    """
    retained = {k: v for k, v in components.items() if np.isfinite(v) and v >= 0}
    total = sum(retained.values())
    if not retained or total <= 0:
        return pd.Series(np.nan, index=list(VARIANCE_ROWS))
    return pd.Series({k: 100.0 * retained.get(k, 0.0) / total for k in VARIANCE_ROWS})


def variance_decomposition(df: pd.DataFrame, *, min_rows: int = VARIANCE_MIN_ROWS, use_sparse: bool = False) -> pd.DataFrame:
    """A15: variance shares (%) of Model, Source, Target and Residual over T.

    One ``Overall`` fit, then one per transfer regime with at least ``min_rows`` rows
    with Δ (a regime with fewer is left out). Rows Model, Source, Target, Residual; the
    unnamed index is saved as ``row``.
    """
    rows = transfer_set(df)
    rows = rows[pd.to_numeric(rows[DELTA], errors="coerce").notna()]
    if len(rows) < MIXED_MIN_ROWS:
        raise InsufficientData(
            f"the mixed model (model, and source and target nested in model) has {MIXED_PARAMETERS} parameters; "
            f"{len(rows)} transfer pair(s) with a Δ cannot fit it, at least {MIXED_MIN_ROWS} are needed"
        )
    regime = derive_regime(rows)
    columns = {OVERALL: variance_shares(variance_components(rows, use_sparse=use_sparse))}
    if columns[OVERALL].isna().all():
        raise InsufficientData(
            f"the mixed model (model, and source and target nested in model) could not be fitted on {len(rows)} transfer "
            "pairs, or left no variance to share; it needs more sources, targets and models"
        )
    for name in TRANSFER_REGIMES:
        subset = rows[regime == name]
        if len(subset) >= min_rows:
            columns[name] = variance_shares(variance_components(subset, use_sparse=use_sparse))
    return pd.DataFrame(columns, index=list(VARIANCE_ROWS))
