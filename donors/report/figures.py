"""Figures for the report, each a function of one analysis table returning a Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import pandas as pd  # noqa: E402


def transfer_heatmap(matrix: pd.DataFrame, title: str = "Transfer (pp)"):
    """Sources (rows) x targets (columns), diverging colours centred on zero, trained cells outlined."""
    values = matrix.to_numpy(dtype=float)
    limit = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
    limit = limit or 1.0
    size = max(4.0, 0.45 * max(values.shape) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_xticks(range(values.shape[1]), matrix.columns, rotation=90)
    ax.set_yticks(range(values.shape[0]), matrix.index)
    ax.set_xlabel("target (evaluated on)")
    ax.set_ylabel("source (fine-tuned on)")
    ax.set_title(title)
    for i, source in enumerate(matrix.index):
        for j, target in enumerate(matrix.columns):
            if np.isfinite(values[i, j]) and values.size <= 400:
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7)
            if source == target:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
    fig.colorbar(image, ax=ax, label="Δ (pp)", shrink=0.8)
    fig.tight_layout()
    return fig


def donor_recipient_figure(roles: pd.DataFrame, key: str, title: str):
    """Each language or task as a point: how much it gives (x) against how much it receives (y)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(roles["donor"], roles["recipient"], color="tab:blue")
    for _, row in roles.iterrows():
        ax.annotate(str(row[key]), (row["donor"], row["recipient"]), textcoords="offset points", xytext=(4, 4), fontsize=9)
    finite = pd.concat([roles["donor"], roles["recipient"]]).dropna()
    if len(finite):
        low, high = finite.min(), finite.max()
        pad = 0.1 * (high - low) if high - low > 1e-9 else 1.0
        ax.plot([low - pad, high + pad], [low - pad, high + pad], ls="--", color="grey", lw=1, label="donor = recipient")
        ax.legend(loc="best", fontsize=8)
    ax.axhline(0, color="lightgrey", lw=0.8)
    ax.axvline(0, color="lightgrey", lw=0.8)
    ax.set_xlabel("donor score (mean Δ given, pp)")
    ax.set_ylabel("recipient score (mean Δ received, pp)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def significance_heatmap(cells: pd.DataFrame, title: str = "Transfer (pp) and significance", alpha: float = 0.05):
    """One model's item-level Δ, sources x targets; cells not significant after BH are hatched and dimmed.

    ``cells`` is that model's rows of the ``paired_transfer_cells`` table.
    """
    frame = cells.assign(
        source=cells["source_task"].astype(str) + "/" + cells["source_language"].astype(str),
        target=cells["target_task"].astype(str) + "/" + cells["target_language"].astype(str),
        significant=cells["significant"].fillna(False).astype(bool),
    )
    matrix = frame.pivot(index="source", columns="target", values="delta").sort_index().sort_index(axis=1)
    significant = frame.pivot(index="source", columns="target", values="significant").reindex_like(matrix).fillna(False).astype(bool)
    fig = transfer_heatmap(matrix, title=title)
    ax = fig.axes[0]
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if not significant.iat[i, j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", alpha=0.55, hatch="///", edgecolor="0.6", lw=0))
    fig.legend(
        handles=[Patch(facecolor="white", edgecolor="0.6", hatch="///", label=f"not significant (q ≥ {alpha:g})")],
        loc="lower center", fontsize=8, frameon=False,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
