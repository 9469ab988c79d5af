"""Is a transfer figure about what a model learnt? Option-bias diagnostics and the validity check.

A state whose predictions pile onto one option answers by position, not by content; a
published-metric Δ between two such states measures a change of favourite letter. Before a
study's numbers are read, this module says, per (model state, target), how the predictions
and the golds spread over option positions, which pairs are *collapsed* (one option takes at
least :data:`COLLAPSE_SHARE` of the predictions), and whether the published metric and the
bias-free one tell the same story per regime.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from donors.analysis.constants import DELTA, REGIME, REGIMES
from donors.analysis.metrics import STATE_TARGET_KEYS
from donors.grid import regime_labels
from donors.records import COLLAPSE_SHARE, top_share
from donors.tasks.item import LETTERS

DISAGREEMENT_RATIO = 0.5
"""Two metrics disagree on a regime when their mean Δ differ in sign or the smaller is under this share of the larger."""


def _spread(counts: list[int]) -> str:
    """``A 5 / B 7 / C 4 / D 4``."""
    return " / ".join(f"{LETTERS[j]} {c}" for j, c in enumerate(counts))


def option_diagnostics(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (model state, target): how predictions and golds spread over option positions.

    ``scores`` is :meth:`~donors.store.ResultsStore.scores` (lists ``predicted_counts`` and
    ``gold_counts`` per row). Columns: the state and target keys, ``state`` (``base`` or the
    regime), n, top_option, top_share, collapsed, predicted and gold (the spreads as text),
    gold_imbalance (the largest minus the smallest gold count).
    """
    columns = [*STATE_TARGET_KEYS, "state", "n", "top_option", "top_share", "collapsed", "predicted", "gold", "gold_imbalance"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    table = scores[STATE_TARGET_KEYS + ["n"]].copy()
    predicted = scores["predicted_counts"].tolist()
    gold = scores["gold_counts"].tolist()
    top = [int(np.argmax(c)) if len(c) else -1 for c in predicted]
    table["state"] = np.where(
        scores["source_task"].isna(),
        "base",
        regime_labels(scores["source_task"], scores["source_language"], scores["target_task"], scores["target_language"]),
    )
    table["top_option"] = [LETTERS[t] if t >= 0 else "" for t in top]
    table["top_share"] = [top_share(c) for c in predicted]
    table["collapsed"] = table["top_share"] >= COLLAPSE_SHARE
    table["predicted"] = [_spread(c) for c in predicted]
    table["gold"] = [_spread(c) for c in gold]
    table["gold_imbalance"] = [max(c) - min(c) if len(c) else 0 for c in gold]
    return table[columns].reset_index(drop=True)


def collapse_summary(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """How many (state, target) pairs are collapsed, for the base models and per regime."""
    if diagnostics.empty:
        return pd.DataFrame(columns=["state", "pairs", "collapsed", "collapsed_pct"])
    order = ["base", *REGIMES]
    grouped = diagnostics.groupby("state")["collapsed"].agg(pairs="size", collapsed="sum")
    grouped = grouped.reindex([s for s in order if s in grouped.index])
    grouped.loc["all"] = grouped.sum()
    grouped["collapsed"] = grouped["collapsed"].astype(int)
    grouped["collapsed_pct"] = 100 * grouped["collapsed"] / grouped["pairs"]
    return grouped.rename_axis("state").reset_index()


def regime_means(results_by_metric: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean Δ (pp) per regime under each metric: one row per regime, one column per metric."""
    columns = {}
    for metric, results in results_by_metric.items():
        columns[metric] = results.groupby(REGIME)[DELTA].mean()
    table = pd.DataFrame(columns).reindex([r for r in REGIMES if any(r in c.index for c in columns.values())])
    return table.rename_axis(REGIME).reset_index()


def disagrees(a: float, b: float) -> bool:
    """Whether two mean Δ tell different stories: opposite signs, or one under half the other."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return False
    if np.sign(a) != np.sign(b):
        return True
    small, large = sorted((abs(a), abs(b)))
    return small < DISAGREEMENT_RATIO * large


def pooled_regime_intervals(pairs: pd.DataFrame, replicates: np.ndarray, level: float = 0.95) -> pd.DataFrame:
    """Per regime, the mean Δ over every model's (source, target) pairs with its paired-bootstrap interval.

    ``pairs`` and ``replicates`` are :class:`~donors.analysis.paired.PairedBootstrap`'s
    rows (aligned); the pooled replicate is the mean of the pairs' replicates, so the interval
    carries the item resampling of every pair at once.
    """
    rows = []
    tail = (1 - level) / 2
    for regime in REGIMES:
        mask = (pairs[REGIME] == regime).to_numpy()
        if not mask.any():
            continue
        pooled = np.nanmean(replicates[mask], axis=0)
        low, high = np.nanquantile(pooled, [tail, 1 - tail]) if np.isfinite(pooled).any() else (np.nan, np.nan)
        rows.append(
            {
                REGIME: regime,
                "pairs": int(mask.sum()),
                "delta": float(pairs.loc[mask, "delta"].mean()),
                "ci_low": float(low),
                "ci_high": float(high),
                "excludes_zero": bool(low > 0 or high < 0),
            }
        )
    return pd.DataFrame(rows, columns=[REGIME, "pairs", "delta", "ci_low", "ci_high", "excludes_zero"])


def own_cell_gains(significance: pd.DataFrame) -> pd.DataFrame:
    """Per model: how many sources improve their own (MT-ML) cell significantly (q below alpha, Δ > 0)."""
    own = significance[significance[REGIME] == "MT-ML"]
    if own.empty:
        return pd.DataFrame(columns=["model", "sources", "improved", "harmed"])
    significant = own["significant"].fillna(False).astype(bool)
    return (
        own.assign(improved=significant & (own["delta"] > 0), harmed=significant & (own["delta"] < 0))
        .groupby("model")
        .agg(sources=("delta", "size"), improved=("improved", "sum"), harmed=("harmed", "sum"))
        .reset_index()
    )


def validity_findings(
    collapse: pd.DataFrame,
    means: pd.DataFrame,
    published: str,
    bias_free: str,
    pooled: dict[str, pd.DataFrame] | None = None,
    own_cells: dict[str, pd.DataFrame] | None = None,
) -> list[str]:
    """Plain sentences for the top of the report and the end of ``donors run``/``analyze``.

    Warnings start with ``WARNING:``; the rest state what holds.
    """
    lines = []
    if not collapse.empty:
        total = collapse[collapse["state"] == "all"].iloc[0]
        if total["collapsed"]:
            parts = [f"{int(r.collapsed)} of {int(r.pairs)} {r.state}" for r in collapse.itertuples() if r.state != "all" and r.collapsed]
            lines.append(
                f"WARNING: {int(total['collapsed'])} of {int(total['pairs'])} (model state, target) pairs are collapsed "
                f"(one option takes >= {COLLAPSE_SHARE:.0%} of the predictions: {', '.join(parts)}). Their published-metric "
                "scores measure a preferred option, not knowledge; read the bias-free metric, and consider "
                "eval.prompt_format: continuation."
            )
        else:
            lines.append(f"No (model state, target) pair is collapsed: no option takes {COLLAPSE_SHARE:.0%} of any pair's predictions.")
    if published in means and bias_free in means:
        for row in means.itertuples(index=False):
            a, b = getattr(row, published), getattr(row, bias_free)
            regime = getattr(row, REGIME)
            if disagrees(a, b):
                lines.append(
                    f"WARNING: {regime}: mean Δ is {a:+.2f} pp under {published} but {b:+.2f} pp under {bias_free}; "
                    "the published figure is driven by option preference, not by what the model learnt."
                )
    for metric, table in (pooled or {}).items():
        own = table[table[REGIME] == "MT-ML"]
        if len(own):
            r = own.iloc[0]
            verdict = "excludes 0" if r["excludes_zero"] else "includes 0"
            lines.append(
                f"MT-ML (training on the target itself) under {metric}: mean Δ {r['delta']:+.2f} pp, "
                f"95% paired bootstrap CI [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] ({verdict})."
            )
    for metric, table in (own_cells or {}).items():
        if len(table):
            lines.append(
                f"Under {metric}, {int(table['improved'].sum())} of {int(table['sources'].sum())} sources improve their own "
                "cell significantly (paired test, BH q < 0.05)"
                + (f"; {int(table['harmed'].sum())} get significantly worse." if table["harmed"].sum() else ".")
            )
    return lines


__all__ = [
    "COLLAPSE_SHARE",
    "collapse_summary",
    "disagrees",
    "option_diagnostics",
    "own_cell_gains",
    "pooled_regime_intervals",
    "regime_means",
    "validity_findings",
]
