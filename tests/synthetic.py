"""Synthetic results tables in the published schema, with planted structure.

The published table (protocol section 8) has one row per (model, source, target). These
generators produce the same columns for any grid, with

    delta = intercept + regime effect + model effect + source effect + target effect + noise

so that analyses can be checked against what was planted. ``published_statistics_table``
builds a full-size grid whose transfer statistics equal the ones the release validator
asserts (protocol section 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

PUBLISHED_MODELS: dict[str, float] = {
    "Llama-3.2-1B-Instruct": 1.0,
    "Llama-3.2-3B-Instruct": 3.0,
    "Llama-3.1-8B-Instruct": 8.0,
    "Qwen2.5-0.5B-Instruct": 0.5,
    "Qwen2.5-1.5B-Instruct": 1.5,
    "Qwen2.5-3B-Instruct": 3.0,
    "Qwen2.5-7B-Instruct": 7.0,
    "gemma-3-1b-it": 1.0,
    "gemma-3-4b-it": 4.0,
}
PUBLISHED_TASKS = ("arc_challenge", "global_mmlu", "hellaswag", "truthfulqa")
PUBLISHED_LANGUAGES = ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "pt", "zh")

KEYS = ["model_name", "fine_tuned_dataset", "fine_tuned_language", "eval_dataset", "eval_language"]
SCHEMA = [
    "model_name",
    "model_size",
    "fine_tuned_dataset",
    "fine_tuned_language",
    "eval_dataset",
    "eval_language",
    "regime",
    "score_mean",
    "score_std",
    "score_base_mean",
    "score_base_std",
    "score_norm_mean",
    "score_norm_std",
    "score_norm_base_mean",
    "score_norm_base_std",
    "delta_score_mean",
    "delta_score_std",
    "delta_score_norm_mean",
    "delta_score_norm_std",
    "n_seeds",
    "score_se",
    "score_base_se",
    "score_norm_se",
    "score_norm_base_se",
    "delta_score_se",
    "delta_score_norm_se",
]


def regime_of(same_task, same_language) -> np.ndarray:
    """The protocol's label 2*same_task + same_lang, as strings."""
    code = 2 * np.asarray(same_task, dtype=int) + np.asarray(same_language, dtype=int)
    return np.array(["CT-CL", "CT-ML", "MT-CL", "MT-ML"])[code]


def grid(
    models: Mapping[str, float] | None = None,
    tasks: Sequence[str] = PUBLISHED_TASKS,
    languages: Sequence[str] = PUBLISHED_LANGUAGES,
) -> pd.DataFrame:
    """Every (model, source, target) key of a full grid, with model_size and regime."""
    models = dict(PUBLISHED_MODELS if models is None else models)
    cells = [(t, lang) for t in tasks for lang in languages]
    index = pd.MultiIndex.from_tuples([(m, *s, *t) for m in models for s in cells for t in cells], names=KEYS)
    frame = index.to_frame(index=False)
    frame.insert(1, "model_size", frame["model_name"].map(models).astype(float))
    frame["regime"] = regime_of(
        frame["fine_tuned_dataset"] == frame["eval_dataset"],
        frame["fine_tuned_language"] == frame["eval_language"],
    )
    return frame


def with_scores(frame: pd.DataFrame, delta: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Fill the score columns of the schema around a given delta (pp)."""
    rng = np.random.default_rng(seed)
    n = len(frame)
    out = frame.copy()
    base = rng.uniform(0.3, 0.7, n)
    out["score_base_mean"] = base
    out["score_norm_base_mean"] = base
    out["score_mean"] = base + delta / 100
    out["score_norm_mean"] = base + delta / 100
    out["delta_score_mean"] = delta
    out["delta_score_norm_mean"] = delta
    for name in ("score", "score_base", "score_norm", "score_norm_base"):
        out[f"{name}_std"] = rng.uniform(0.0, 0.02, n)
    for name in ("delta_score", "delta_score_norm"):
        out[f"{name}_std"] = rng.uniform(0.0, 2.0, n)
    out["n_seeds"] = 3
    for name in ("score", "score_base", "score_norm", "score_norm_base", "delta_score", "delta_score_norm"):
        out[f"{name}_se"] = out[f"{name}_std"] / np.sqrt(3)
    return out[SCHEMA]


def results_table(
    models: Mapping[str, float] | None = None,
    tasks: Sequence[str] = PUBLISHED_TASKS,
    languages: Sequence[str] = PUBLISHED_LANGUAGES,
    *,
    intercept: float = 0.0,
    regime_effects: Mapping[str, float] | None = None,
    model_sd: float = 1.0,
    source_sd: float = 1.0,
    target_sd: float = 1.0,
    noise_sd: float = 1.0,
    seed: int = 0,
    return_effects: bool = False,
):
    """A results table with delta = intercept + regime + model + source + target + noise.

    With ``return_effects`` the planted model, source and target effects (Series keyed by
    model name and ``task/language``) come back too, as ``(table, effects)``.
    """
    rng = np.random.default_rng(seed)
    frame = grid(models, tasks, languages)
    regime_effects = dict(regime_effects or {})
    model_names = list(dict.fromkeys(frame["model_name"]))
    cells = [f"{t}/{lang}" for t in tasks for lang in languages]
    model_eff = pd.Series(rng.normal(0, model_sd, len(model_names)), index=model_names)
    source_eff = pd.Series(rng.normal(0, source_sd, len(cells)), index=cells)
    target_eff = pd.Series(rng.normal(0, target_sd, len(cells)), index=cells)
    source = frame["fine_tuned_dataset"] + "/" + frame["fine_tuned_language"]
    target = frame["eval_dataset"] + "/" + frame["eval_language"]
    delta = (
        intercept
        + frame["regime"].map(regime_effects).fillna(0.0).to_numpy()
        + frame["model_name"].map(model_eff).to_numpy()
        + source.map(source_eff).to_numpy()
        + target.map(target_eff).to_numpy()
        + rng.normal(0, noise_sd, len(frame))
    )
    table = with_scores(frame, delta, seed)
    if return_effects:
        return table, {"model": model_eff, "source": source_eff, "target": target_eff}
    return table


# Section 5 of the protocol: counts, positives, harms and means per regime.
PUBLISHED_REGIME_COUNTS = {"MT-ML": 396, "MT-CL": 3960, "CT-ML": 1188, "CT-CL": 11880}
PUBLISHED_REGIME_POSITIVE = {"MT-ML": 270, "MT-CL": 2630, "CT-ML": 676, "CT-CL": 6856}
PUBLISHED_REGIME_HARMFUL = {"MT-ML": 37, "MT-CL": 282, "CT-ML": 135, "CT-CL": 1130}
PUBLISHED_REGIME_MEANS = {
    "MT-ML": 2.0202020202020203,
    "MT-CL": 1.2464646464646463,
    "CT-ML": 0.8077300785634120,
    "CT-CL": 0.7845398428731761,
}


def published_statistics_table(seed: int = 0) -> pd.DataFrame:
    """A 17,424-row table whose section-5 statistics equal the published ones.

    In each regime the harmful rows are -2, the other non-positive rows 0, and the positive
    rows 0.25 except the last few, which share the rest of the regime's sum equally (each
    below 100 pp, so every value is a possible Δ); the transfer median is then 0.25, and every
    mean, positive rate and harm rate matches the release.
    """
    rng = np.random.default_rng(seed)
    frame = grid()
    delta = np.empty(len(frame))
    for regime, n in PUBLISHED_REGIME_COUNTS.items():
        n_pos, n_harm = PUBLISHED_REGIME_POSITIVE[regime], PUBLISHED_REGIME_HARMFUL[regime]
        values = np.zeros(n)
        values[:n_harm] = -2.0
        values[n - n_pos :] = 0.25
        rest = PUBLISHED_REGIME_MEANS[regime] * n - values.sum()
        carriers = int(np.ceil(rest / 90))
        values[n - carriers :] += rest / carriers
        rows = np.flatnonzero(frame["regime"].to_numpy() == regime)
        delta[rows] = rng.permutation(values)
    return with_scores(frame, delta, seed)


def table_from_rows(rows: Sequence[tuple]) -> pd.DataFrame:
    """A results table from hand-written (model, size, source task, source language,
    target task, target language, delta) tuples, with the regime derived."""
    frame = pd.DataFrame(
        [row[:6] for row in rows],
        columns=["model_name", "model_size", *KEYS[1:]],
    )
    frame["regime"] = regime_of(
        frame["fine_tuned_dataset"] == frame["eval_dataset"],
        frame["fine_tuned_language"] == frame["eval_language"],
    )
    delta = np.array([row[6] for row in rows], dtype=float)
    return with_scores(frame, delta)


# The text repr gives -(1 - 2**-53), one ulp above -1. pandas 2.3.3, which computed the
# release's numbers, read it as -1.0 (harm); the nearest double is not harm.
ULP_ABOVE_MINUS_ONE = "-0.9999999999999999"


def published_text_table(seed: int = 0, per_regime: int = 3) -> pd.DataFrame:
    """:func:`published_statistics_table` with Δ as text, as the release's CSV held it.

    In each regime ``per_regime`` harmful rows read ``-0.9999999999999999`` instead of -2,
    one of the regime's large positive rows taking up the difference, and every other Δ is its
    ``repr``. Read as pandas 2.3.3 read it (-1.0) the table gives the published section-5
    values; read exactly, each regime loses ``per_regime`` harmful rows.
    """
    table = published_statistics_table(seed)
    delta = table["delta_score_norm_mean"].to_numpy()
    regime = table["regime"].to_numpy()
    text = np.array([repr(float(v)) for v in delta], dtype=object)
    for name in PUBLISHED_REGIME_COUNTS:
        rows = np.flatnonzero(regime == name)
        harmful = rows[delta[rows] == -2.0][:per_regime]
        carry = rows[(delta[rows] > 0) & (delta[rows] != 0.25)][0]
        text[harmful] = ULP_ABOVE_MINUS_ONE
        text[carry] = repr(float(delta[carry] - len(harmful)))  # each -2 -> -1 added 1
    table["delta_score_norm_mean"] = text
    return table
