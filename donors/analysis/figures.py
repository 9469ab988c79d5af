"""The published figures, each drawn from one analysis table (A6, A7, A9, A12-A14).

Figures are built on the Agg canvas without pyplot, so nothing here touches global
state or needs a display; :func:`save_figure` writes any of them to disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from donors.analysis.consistency import consistency_family
from donors.analysis.constants import FAMILY_SUBSTRINGS, OTHER_FAMILY, SOURCE_TASK
from donors.analysis.published import PARETO_X, PARETO_Y

FAMILY_MARKERS = {"Llama": "o", "Qwen": "s", "Gemma": "^", OTHER_FAMILY: "D"}
SIZE_AREAS = {"S": 30.0, "M": 70.0, "L": 130.0}
UNKNOWN_SIZE_AREA = 50.0
DATASET_COLORMAP = "tab10"
DIVERGING_COLORMAP = "RdBu_r"
LANGUAGE_COLORMAP = "plasma"
SAVE_DPI = 150


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _dataset_colors(datasets) -> dict[str, tuple]:
    colormap = colormaps[DATASET_COLORMAP]
    return {name: colormap(i % colormap.N) for i, name in enumerate(sorted(set(datasets)))}


def _family_order(families) -> list[str]:
    known = [f for f in (*FAMILY_SUBSTRINGS.values(), OTHER_FAMILY) if f in set(families)]
    return known + sorted(set(families).difference(known))


def _reference_lines(ax) -> None:
    ax.axhline(0, color="0.6", linewidth=0.8, zorder=0)
    ax.axvline(0, color="0.6", linewidth=0.8, zorder=0)


def _legend_handle(label: str, *, marker: str = "o", color="0.4", size: float = 7.0) -> Line2D:
    return Line2D([], [], linestyle="", marker=marker, color=color, markersize=size, label=label)


def pareto_on_off_figure(profiles: pd.DataFrame) -> Figure:
    """A6 ``pareto_on_off``: each source run's MT-CL gain against its off-task effect.

    Colour is the source dataset, marker the family, size the S/M/L bucket.
    """
    figure = _figure(7.5, 6.0)
    ax = figure.subplots()
    colors = _dataset_colors(profiles[SOURCE_TASK])
    for (dataset, family), group in profiles.groupby([SOURCE_TASK, "family"], dropna=False):
        ax.scatter(
            group[PARETO_X],
            group[PARETO_Y],
            s=group["size_bucket"].map(SIZE_AREAS).fillna(UNKNOWN_SIZE_AREA),
            c=[colors[dataset]],
            marker=FAMILY_MARKERS.get(family, FAMILY_MARKERS[OTHER_FAMILY]),
            alpha=0.75,
            edgecolors="none",
        )
    _reference_lines(ax)
    handles = [_legend_handle(d, color=c) for d, c in colors.items()]
    handles += [
        _legend_handle(f, marker=FAMILY_MARKERS.get(f, FAMILY_MARKERS[OTHER_FAMILY]))
        for f in _family_order(profiles["family"].dropna())
    ]
    handles += [_legend_handle(f"size {b}", size=np.sqrt(a)) for b, a in SIZE_AREAS.items()]
    ax.legend(handles=handles, loc="best", fontsize="small", frameon=False)
    ax.set_xlabel("On-task gain: mean MT-CL Δ (pp)")
    ax.set_ylabel("Off-task effect: mean CT-ML and CT-CL Δ (pp)")
    ax.set_title("On-task gain versus off-task effect per fine-tuning run")
    return figure


def pareto_on_off_summary_figure(summary: pd.DataFrame, profiles: pd.DataFrame | None = None) -> Figure:
    """A7 ``pareto_on_off_summary``: one panel per family, (model, dataset) means.

    Faint points are the per-language runs of ``profiles`` (A6) when given; the mean
    markers grow with parameter count.
    """
    families = _family_order(summary["family"].dropna())
    figure = _figure(4.5 * max(len(families), 1), 4.8)
    axes = np.atleast_1d(figure.subplots(1, max(len(families), 1), sharex=True, sharey=True))
    colors = _dataset_colors(summary[SOURCE_TASK])
    size_scale = 200.0 / max(float(summary["model_size"].max()), 1.0)
    for ax, family in zip(axes, families):
        if profiles is not None:
            runs = profiles[profiles["family"] == family]
            ax.scatter(
                runs[PARETO_X], runs[PARETO_Y], s=12,
                c=[colors.get(d, "0.5") for d in runs[SOURCE_TASK]], alpha=0.2, edgecolors="none",
            )
        means = summary[summary["family"] == family]
        ax.scatter(
            means[PARETO_X], means[PARETO_Y],
            s=20.0 + size_scale * means["model_size"].fillna(1.0),
            c=[colors[d] for d in means[SOURCE_TASK]], edgecolors="black", linewidths=0.6,
        )
        _reference_lines(ax)
        names = sorted({consistency_family(m) for m in means["model_name"]})
        ax.set_title(f"{family} ({', '.join(names)})")
        ax.set_xlabel("Mean MT-CL gain (Δ pp)")
    axes[0].set_ylabel("Mean off-task Δ (pp)")
    axes[-1].legend(
        handles=[_legend_handle(d, color=c) for d, c in colors.items()],
        loc="best", fontsize="small", frameon=False,
    )
    figure.suptitle(
        "On-task gain versus off-task effect, averaged over source languages "
        "(marker area grows with parameter count)"
    )
    return figure


def _role_scatter(roles: pd.DataFrame, key: str, noun: str) -> Figure:
    figure = _figure(6.0, 6.0)
    ax = figure.subplots()
    ax.scatter(roles["donor"], roles["recipient"], s=45, color="tab:blue", zorder=3)
    for _, row in roles.iterrows():
        ax.annotate(str(row[key]), (row["donor"], row["recipient"]), xytext=(4, 4),
                    textcoords="offset points", fontsize="small")
    values = roles[["donor", "recipient"]].to_numpy(float)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (-1.0, 1.0)
    pad = 0.1 * (high - low) or 0.5
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.5", linestyle="--",
            linewidth=1, label="y = x")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", frameon=False)
    ax.set_xlabel(f"Donor score: mean Δ when the {noun} is the source (pp)")
    ax.set_ylabel(f"Recipient score: mean Δ when the {noun} is the target (pp)")
    return figure


def language_donor_recipient_figure(roles: pd.DataFrame) -> Figure:
    """A9: each language as donor (x) against recipient (y), with the y = x diagonal."""
    figure = _role_scatter(roles, "lang", "language")
    figure.axes[0].set_title("Languages as donors and recipients of MT-CL transfer")
    return figure


def task_donor_recipient_figure(roles: pd.DataFrame) -> Figure:
    """A12: each dataset as donor (x) against recipient (y), with the y = x diagonal."""
    figure = _role_scatter(roles, "dataset", "task")
    figure.axes[0].set_title("Tasks as donors and recipients of CT-ML transfer")
    return figure


def _heatmap(ax, values: np.ma.MaskedArray, matrix: pd.DataFrame, colormap: str, norm: Normalize):
    if matrix.empty:
        values = np.ma.masked_all((1, 1))
        ax.text(0, 0, "no cells to show", ha="center", va="center")
    image = ax.imshow(values, cmap=colormaps[colormap], norm=norm, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.set_yticks(range(matrix.shape[0]), [str(i) for i in matrix.index])
    return image


def task_transfer_matrix_figure(matrix: pd.DataFrame) -> Figure:
    """A13 heatmap: diverging colours symmetric at ±max|A|, one-decimal annotations."""
    values = np.ma.masked_invalid(matrix.to_numpy(float))
    limit = float(np.abs(values).max()) if values.count() else 1.0
    figure = _figure(6.5, 5.5)
    ax = figure.subplots()
    image = _heatmap(ax, values, matrix, DIVERGING_COLORMAP, Normalize(-limit, limit))
    for (i, j), value in np.ndenumerate(matrix.to_numpy(float)):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize="small",
                    color="white" if abs(value) > 0.6 * limit else "black")
    figure.colorbar(image, ax=ax, label="Mean Δ (pp)")
    ax.set_xlabel("Target task")
    ax.set_ylabel("Source task")
    ax.set_title("Cross-task transfer (CT-ML), mean Δ in pp")
    return figure


def language_transfer_matrix_figure(matrix: pd.DataFrame) -> Figure:
    """A14 heatmap: plasma, diagonal masked, lower limit 0 when no cell is negative."""
    array = matrix.to_numpy(float)
    mask = ~np.isfinite(array)
    mask |= np.equal.outer(matrix.index.astype(str), matrix.columns.astype(str))
    values = np.ma.masked_array(array, mask=mask)
    low = float(values.min()) if values.count() else 0.0
    high = float(values.max()) if values.count() else 1.0
    norm = Normalize(0.0 if low >= 0 else low, high)
    figure = _figure(7.5, 6.0)
    ax = figure.subplots()
    image = _heatmap(ax, values, matrix, LANGUAGE_COLORMAP, norm)
    figure.colorbar(image, ax=ax, label="Mean Δ (pp)")
    ax.set_xlabel("Target language")
    ax.set_ylabel("Source language")
    ax.set_title("Cross-lingual transfer (MT-CL), mean Δ in pp")
    return figure


def published_figures(tables: dict[str, pd.DataFrame]) -> dict[str, Figure]:
    """Every published figure from the tables of :func:`run_published_analyses`."""
    return {
        "pareto_on_off": pareto_on_off_figure(tables["pareto_profiles"]),
        "pareto_on_off_summary": pareto_on_off_summary_figure(
            tables["pareto_family_summary"], tables["pareto_profiles"]
        ),
        "language_donor_recipient": language_donor_recipient_figure(tables["language_donor_recipient"]),
        "task_donor_recipient": task_donor_recipient_figure(tables["task_donor_recipient"]),
        "task_transfer_matrix": task_transfer_matrix_figure(tables["task_transfer_matrix"]),
        "language_transfer_matrix": language_transfer_matrix_figure(tables["language_transfer_matrix"]),
    }


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Write a figure (PNG, PDF or SVG by suffix), creating the folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=SAVE_DPI)
    return path
