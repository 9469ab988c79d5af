"""Every figure of the report and of the published study, each a function of one analysis table.

Each function returns a :class:`~matplotlib.figure.Figure` built on the Agg canvas without
pyplot, so nothing here touches global state or needs a display; ``figure.savefig`` writes
one to disk. :mod:`donors.analysis` stays free of matplotlib: its tables are drawn here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from donors.analysis.consistency import consistency_family
from donors.analysis.constants import FAMILY_SUBSTRINGS, OTHER_FAMILY, SOURCE_TASK
from donors.analysis.published import PARETO_X, PARETO_Y

FAMILY_MARKERS = {"Llama": "o", "Qwen": "s", "Gemma": "^", OTHER_FAMILY: "D"}
SIZE_AREAS = {"S": 30.0, "M": 70.0, "L": 130.0}
UNKNOWN_SIZE_AREA = 50.0
TASK_COLORMAP = "tab10"
DIVERGING_COLORMAP = "RdBu"
LANGUAGE_COLORMAP = "plasma"
MAX_ANNOTATED_CELLS = 400
"""Heatmaps with more cells than this are drawn without their values written in."""


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _task_colors(tasks) -> dict[str, tuple]:
    colormap = colormaps[TASK_COLORMAP]
    return {name: colormap(i % colormap.N) for i, name in enumerate(sorted(set(tasks)))}


def _family_order(families) -> list[str]:
    known = [f for f in (*FAMILY_SUBSTRINGS.values(), OTHER_FAMILY) if f in set(families)]
    return known + sorted(set(families).difference(known))


def _reference_lines(ax) -> None:
    ax.axhline(0, color="0.6", linewidth=0.8, zorder=0)
    ax.axvline(0, color="0.6", linewidth=0.8, zorder=0)


def _legend_handle(label: str, *, marker: str = "o", color="0.4", size: float = 7.0) -> Line2D:
    return Line2D([], [], linestyle="", marker=marker, color=color, markersize=size, label=label)


# Heatmaps --------------------------------------------------------------------------------


def _matrix_figure(matrix: pd.DataFrame, values: np.ma.MaskedArray, colormap: str, norm: Normalize, title: str):
    """A figure sized to ``matrix`` with its values drawn as an image, sources down and targets across."""
    size = max(4.0, 0.45 * max(matrix.shape) + 2)
    figure = _figure(size + 1.5, size)
    ax = figure.subplots()
    if matrix.empty:
        values = np.ma.masked_all((1, 1))
        ax.text(0, 0, "no cells to show", ha="center", va="center")
    image = ax.imshow(values, cmap=colormaps[colormap], norm=norm)
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], rotation=90)
    ax.set_yticks(range(matrix.shape[0]), [str(i) for i in matrix.index])
    ax.set_xlabel("target (evaluated on)")
    ax.set_ylabel("source (fine-tuned on)")
    ax.set_title(title)
    figure.colorbar(image, ax=ax, label="Δ (pp)", shrink=0.8)
    return figure, ax


def transfer_heatmap(matrix: pd.DataFrame, title: str = "Transfer (pp)") -> Figure:
    """Sources (rows) x targets (columns), diverging colours symmetric about zero, one-decimal labels, trained cells outlined (also A13)."""
    array = matrix.to_numpy(dtype=float)
    values = np.ma.masked_invalid(array)
    limit = float(np.abs(values).max()) if values.count() else 1.0
    limit = limit or 1.0
    figure, ax = _matrix_figure(matrix, values, DIVERGING_COLORMAP, Normalize(-limit, limit), title)
    for i, source in enumerate(matrix.index):
        for j, target in enumerate(matrix.columns):
            if np.isfinite(array[i, j]) and array.size <= MAX_ANNOTATED_CELLS:
                ax.text(
                    j,
                    i,
                    f"{array[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(array[i, j]) > 0.6 * limit else "black",
                )
            if source == target:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
    return figure


def _marked_heatmap(
    cells: pd.DataFrame, keys: tuple[str, str, str, str], value: str, plain: pd.Series, title: str, patch: dict, label: str
) -> Figure:
    """One model's long-form rows as a source x target heatmap of ``value``; cells where ``plain`` is false get ``patch``.

    ``keys``: the source task, source language, target task and target language columns.
    """
    frame = cells.assign(
        source=cells[keys[0]].astype(str) + "/" + cells[keys[1]].astype(str),
        target=cells[keys[2]].astype(str) + "/" + cells[keys[3]].astype(str),
        plain=plain.to_numpy(bool),
    )
    matrix = frame.pivot(index="source", columns="target", values=value).sort_index().sort_index(axis=1)
    unmarked = frame.pivot(index="source", columns="target", values="plain").reindex_like(matrix).fillna(False).astype(bool)
    figure = transfer_heatmap(matrix, title=title)
    ax = figure.axes[0]
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if not unmarked.iat[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, lw=0, **patch))
    legend = {k: v for k, v in patch.items() if k in ("hatch", "edgecolor")}
    figure.legend(handles=[Patch(facecolor="white", label=label, **legend)], loc="outside lower center", fontsize=8, frameon=False)
    return figure


def significance_heatmap(cells: pd.DataFrame, title: str = "Transfer (pp) and significance", alpha: float = 0.05) -> Figure:
    """One model's rows of ``transfer_pairs`` as a heatmap of Δ, pairs not significant after BH hatched and dimmed."""
    return _marked_heatmap(
        cells,
        ("source_task", "source_language", "target_task", "target_language"),
        "delta",
        cells["significant"].fillna(False).astype(bool),
        title,
        dict(facecolor="white", alpha=0.55, hatch="///", edgecolor="0.6"),
        f"not significant (q ≥ {alpha:g})",
    )


def predicted_heatmap(cells: pd.DataFrame, title: str = "Measured and predicted Δ (pp)") -> Figure:
    """One model's rows of ``predicted_transfer``: measured cells as they are, predicted ones dotted."""
    return _marked_heatmap(
        cells,
        ("fine_tuned_dataset", "fine_tuned_language", "eval_dataset", "eval_language"),
        "delta_pred",
        cells["measured"].astype(bool),
        title,
        dict(fill=False, hatch="...", edgecolor="0.35"),
        "predicted (not measured)",
    )


def language_transfer_matrix_figure(matrix: pd.DataFrame) -> Figure:
    """A14 ``language_transfer_matrix``: plasma, diagonal masked, lower limit 0 when no cell is negative."""
    array = matrix.to_numpy(float)
    mask = ~np.isfinite(array)
    mask |= np.equal.outer(matrix.index.astype(str), matrix.columns.astype(str))
    values = np.ma.masked_array(array, mask=mask)
    low = float(values.min()) if values.count() else 0.0
    high = float(values.max()) if values.count() else 1.0
    norm = Normalize(0.0 if low >= 0 else low, high)
    figure, _ax = _matrix_figure(matrix, values, LANGUAGE_COLORMAP, norm, "Cross-lingual transfer (MT-CL), mean Δ in pp")
    return figure


# Scatters --------------------------------------------------------------------------------


def donor_recipient_figure(roles: pd.DataFrame, key: str, title: str) -> Figure:
    """Each language (A9, key ``lang``) or task (A12, key ``dataset``): donor score (x) against recipient score (y), with y = x."""
    figure = _figure(6.0, 6.0)
    ax = figure.subplots()
    ax.scatter(roles["donor"], roles["recipient"], s=45, color="tab:blue", zorder=3)
    for _, row in roles.iterrows():
        ax.annotate(str(row[key]), (row["donor"], row["recipient"]), xytext=(4, 4), textcoords="offset points", fontsize="small")
    values = roles[["donor", "recipient"]].to_numpy(float)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (-1.0, 1.0)
    pad = 0.1 * (high - low) if high - low > 1e-9 else 1.0
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.5", linestyle="--", linewidth=1, label="y = x")
    _reference_lines(ax)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", frameon=False)
    ax.set_xlabel("donor score: mean Δ given as the source (pp)")
    ax.set_ylabel("recipient score: mean Δ received as the target (pp)")
    ax.set_title(title)
    return figure


def pareto_on_off_figure(profiles: pd.DataFrame) -> Figure:
    """A6: each fine-tuning run's MT-CL gain against its off-task effect; colour source task, marker family, size S/M/L."""
    figure = _figure(7.5, 6.0)
    ax = figure.subplots()
    colors = _task_colors(profiles[SOURCE_TASK])
    for (task, family), group in profiles.groupby([SOURCE_TASK, "family"], dropna=False):
        ax.scatter(
            group[PARETO_X],
            group[PARETO_Y],
            s=group["size_bucket"].map(SIZE_AREAS).fillna(UNKNOWN_SIZE_AREA),
            c=[colors[task]],
            marker=FAMILY_MARKERS.get(family, FAMILY_MARKERS[OTHER_FAMILY]),
            alpha=0.75,
            edgecolors="none",
        )
    _reference_lines(ax)
    handles = [_legend_handle(d, color=c) for d, c in colors.items()]
    handles += [
        _legend_handle(f, marker=FAMILY_MARKERS.get(f, FAMILY_MARKERS[OTHER_FAMILY])) for f in _family_order(profiles["family"].dropna())
    ]
    handles += [_legend_handle(f"size {b}", size=np.sqrt(a)) for b, a in SIZE_AREAS.items()]
    ax.legend(handles=handles, loc="best", fontsize="small", frameon=False)
    ax.set_xlabel("On-task gain: mean MT-CL Δ (pp)")
    ax.set_ylabel("Off-task effect: mean CT-ML and CT-CL Δ (pp)")
    ax.set_title("On-task gain versus off-task effect per fine-tuning run")
    return figure


def pareto_on_off_summary_figure(summary: pd.DataFrame, profiles: pd.DataFrame | None = None) -> Figure:
    """A7: a panel per family of (model, source task) mean gain against off-task effect, over A6's runs faint when given."""
    families = _family_order(summary["family"].dropna())
    figure = _figure(4.5 * max(len(families), 1), 4.8)
    axes = np.atleast_1d(figure.subplots(1, max(len(families), 1), sharex=True, sharey=True))
    colors = _task_colors(summary[SOURCE_TASK])
    size_scale = 200.0 / max(float(summary["model_size"].max()), 1.0)
    for ax, family in zip(axes, families):
        if profiles is not None:
            runs = profiles[profiles["family"] == family]
            ax.scatter(
                runs[PARETO_X],
                runs[PARETO_Y],
                s=12,
                c=[colors.get(d, "0.5") for d in runs[SOURCE_TASK]],
                alpha=0.2,
                edgecolors="none",
            )
        means = summary[summary["family"] == family]
        ax.scatter(
            means[PARETO_X],
            means[PARETO_Y],
            s=20.0 + size_scale * means["model_size"].fillna(1.0),
            c=[colors[d] for d in means[SOURCE_TASK]],
            edgecolors="black",
            linewidths=0.6,
        )
        _reference_lines(ax)
        names = sorted({consistency_family(m) for m in means["model_name"]})
        ax.set_title(f"{family} ({', '.join(names)})")
        ax.set_xlabel("Mean MT-CL gain (Δ pp)")
    axes[0].set_ylabel("Mean off-task Δ (pp)")
    axes[-1].legend(
        handles=[_legend_handle(d, color=c) for d, c in colors.items()],
        loc="best",
        fontsize="small",
        frameon=False,
    )
    figure.suptitle("On-task gain versus off-task effect, averaged over source languages (marker area grows with parameter count)")
    return figure


def published_figures(tables: dict[str, pd.DataFrame]) -> dict[str, Figure]:
    """Every published figure (A6, A7, A9, A12-A14) by its release file stem, from ``run_published_analyses`` tables."""
    return {
        "pareto_on_off": pareto_on_off_figure(tables["pareto_profiles"]),
        "pareto_on_off_summary": pareto_on_off_summary_figure(tables["pareto_family_summary"], tables["pareto_profiles"]),
        "language_donor_recipient": donor_recipient_figure(
            tables["language_donor_recipient"],
            key="lang",
            title="Languages as donors and recipients of MT-CL transfer",
        ),
        "task_donor_recipient": donor_recipient_figure(
            tables["task_donor_recipient"],
            key="dataset",
            title="Tasks as donors and recipients of CT-ML transfer",
        ),
        "task_transfer_matrix": transfer_heatmap(tables["task_transfer_matrix"], title="Cross-task transfer (CT-ML), mean Δ in pp"),
        "language_transfer_matrix": language_transfer_matrix_figure(tables["language_transfer_matrix"]),
    }
