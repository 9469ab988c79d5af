"""One self-contained HTML report: figures embedded as PNG data, every text escaped.

The report is built from analysis tables only; it never touches models or the store.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from donors.grid import MAX_FILE_STEM, path_component  # noqa: E402
from donors.report.figures import donor_recipient_figure, predicted_heatmap, significance_heatmap, transfer_heatmap  # noqa: E402

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right} th{background:#f5f5f5}
img{max-width:100%} .note{color:#555;font-size:.9em} pre{background:#f7f7f7;padding:.7em;overflow-x:auto;font-size:.8em}
.wide{overflow-x:auto;max-width:100%} .pair{display:flex;gap:1em;flex-wrap:wrap} .pair img{max-width:49%}
.validity li.warn{color:#a40000;font-weight:600} .validity li.ok{color:#1a5e20}
"""


def _png(fig, save_as: Path | None = None) -> str:
    """The figure as an embedded image; also saved as a PNG file when ``save_as`` is given."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    if save_as is not None:
        save_as.parent.mkdir(parents=True, exist_ok=True)
        save_as.write_bytes(buffer.getvalue())
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(frame: pd.DataFrame, digits: int = 2) -> str:
    index = not isinstance(frame.index, pd.RangeIndex)
    return (
        "<div class='wide'>"
        + frame.to_html(escape=True, float_format=lambda v: f"{v:.{digits}f}", na_rep="", border=0, index=index)
        + "</div>"
    )


LARGE_TABLE_ROWS = 1000
"""Tables longer than this are named in the report, not inlined; every table is saved as CSV."""
SIGNIFICANT_ROWS_PER_MODEL = 25

PAIR_COLUMNS = ["model", "source", "target", "regime", "delta", "ci_low", "ci_high", "n_items", "n_seeds", "p_value", "q_value"]


def _has_values(frame: pd.DataFrame | None) -> bool:
    """A table with at least one finite number (a summary of nothing is all NaN)."""
    if frame is None or frame.empty:
        return False
    numbers = frame.select_dtypes("number")
    return bool(numbers.notna().to_numpy().any()) and not ("n_sources" in frame and (frame["n_sources"] == 0).all())


def _pairs_for_display(cells: pd.DataFrame) -> pd.DataFrame:
    """Item-level pairs as source → target rows, p and q in significant digits."""
    shown = cells.assign(
        source=cells["source_task"].astype(str) + "/" + cells["source_language"].astype(str),
        target=cells["target_task"].astype(str) + "/" + cells["target_language"].astype(str),
    )
    shown = shown[[c for c in PAIR_COLUMNS if c in shown]].copy()
    for column in ("p_value", "q_value"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.2g}")
    return shown.reset_index(drop=True)


def _significance_sections(tables: dict[str, pd.DataFrame], figure_path) -> list[str]:
    """Per-model heatmaps with non-significant cells hatched, the significant transfers, the asymmetric pairs."""
    cells = tables.get("transfer_pairs")
    if cells is None or cells.empty:
        return []
    parts = [
        "<h2>Significant transfers (item level)</h2>",
        "<p class='note'>From the stored per-item predictions: Δ = 100 × (fine-tuned − base accuracy), averaged over seeds. "
        "95% interval: paired bootstrap over test items (the same resampled items for base and fine-tuned, for every seed, "
        "and for every language of a task). Test: McNemar's (one seed) or the paired sign-flip test on seed-averaged "
        "per-item differences (several seeds), then Benjamini–Hochberg across all (source, target) pairs of each model. "
        "Hatched, dimmed pairs are not significant (q ≥ 0.05).</p>",
    ]
    for model, rows in cells.groupby("model", sort=True):
        name = f"significance__{path_component(str(model))}"
        parts += [
            f"<h3>{html.escape(str(model))}</h3>",
            _png(significance_heatmap(rows, title=f"{model}: Δ (pp), significant pairs solid"), figure_path(name)),
        ]
    significant = tables.get("significant_transfers")
    transfers = cells[cells["regime"] != "MT-ML"]
    if significant is None or significant.empty:
        low, high = int(cells["n_items"].min()), int(cells["n_items"].max())
        items = f"{low}" if low == high else f"{low}–{high}"
        parts.append(
            f"<p>No transfer pair is significant at q &lt; 0.05 ({len(transfers)} transfer pairs tested, {items} items per target).</p>"
        )
    else:
        listed = significant.groupby("model", sort=True).head(SIGNIFICANT_ROWS_PER_MODEL)
        more = (
            f" The {SIGNIFICANT_ROWS_PER_MODEL} smallest q-values of each model are listed; all are in significant_transfers.csv."
            if len(listed) < len(significant)
            else ""
        )
        parts += [
            f"<p>{len(significant)} of {len(transfers)} transfer pairs are significant at q &lt; 0.05 (MT-ML pairs not listed).{more}</p>",
            _table(_pairs_for_display(listed)),
        ]
    asymmetric = tables.get("most_asymmetric_pairs")
    if asymmetric is not None and not asymmetric.empty:
        parts += [
            "<h2>Most asymmetric pairs</h2>",
            "<p class='note'>Asymmetry = Δ(A→B) − Δ(B→A), turned so that A→B is the larger direction; "
            "its 95% interval comes from the same item resamples as both directions.</p>",
            _table(asymmetric),
        ]
    return parts


def _section(title: str, *body: str, note: str = "", level: int = 2) -> list[str]:
    """One titled section of the page: heading, an optional note, then its parts."""
    parts = [f"<h{level}>{html.escape(title)}</h{level}>"]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    return parts + list(body)


def _validity_sections(tables: dict[str, pd.DataFrame], figure_path, published: str, bias_free: str) -> list[str]:
    """The report's opening: is the study's transfer about content or about option preference?"""
    findings = tables.get("validity_findings")
    if findings is None:
        return []
    items = "".join(
        f"<li class='{'warn' if line.startswith('WARNING:') else 'ok'}'>{html.escape(line)}</li>" for line in findings["finding"]
    )
    parts = _section(
        "Validity: does this measure what the models learnt?",
        f"<ul class='validity'>{items}</ul>",
        note="A (model state, target) is collapsed when one option takes at least 80% of its predictions: its published "
        "score then measures a preferred position. The bias-free metric divides each state's position prior out of its "
        "own choice probabilities (no extra forward pass); where it and the published metric disagree, the published "
        "figure is letter preference.",
    )
    for name, title in (
        ("metric_comparison", "Mean Δ (pp) per regime under each metric"),
        ("pooled_regime_intervals", "Pooled Δ per regime with 95% paired bootstrap intervals"),
        ("own_cell_gains", "Sources that improve their own cell (MT-ML) significantly"),
        ("collapse_summary", "Collapsed (model state, target) pairs"),
    ):
        frame = tables.get(name)
        if frame is not None and not frame.empty:
            parts += _section(title, _table(frame), level=3)
    for name, matrix in tables.items():
        if not name.startswith("published_matrix__"):
            continue
        model = name.split("__", 1)[1]
        other = tables.get(f"bias_free_matrix__{model}")
        if matrix.empty or other is None or other.empty:
            continue
        parts += _section(
            f"{matrix.attrs.get('model', model)}: published and bias-free transfer side by side",
            "<div class='pair'>",
            _png(transfer_heatmap(matrix, title=f"{published} Δ (pp)"), figure_path(f"transfer_matrix__{model}__{published}")),
            _png(transfer_heatmap(other, title=f"{bias_free} Δ (pp)"), figure_path(f"transfer_matrix__{model}__{bias_free}")),
            "</div>",
            level=3,
        )
    diagnostics = tables.get("option_diagnostics")
    if diagnostics is not None and not diagnostics.empty:
        parts += ["<details><summary>Predicted and gold options per (model state, target)</summary>", _table(diagnostics), "</details>"]
    return parts


def _coverage_sections(tables: dict[str, pd.DataFrame]) -> list[str]:
    """How much of the grid the tables below were computed from (a study still running covers only part of it)."""
    coverage = tables.get("grid_coverage")
    if coverage is None or coverage.empty:
        return []
    items = "".join(
        f"<li class='{'warn' if line.startswith('WARNING:') else 'ok'}'>{html.escape(line)}</li>" for line in coverage["finding"]
    )
    return _section("Grid coverage", f"<ul class='validity'>{items}</ul>")


def _skipped_sections(tables: dict[str, pd.DataFrame]) -> list[str]:
    skipped = tables.get("skipped_analyses")
    if skipped is None or skipped.empty:
        return []
    rows = "".join(f"<li><b>{html.escape(str(r.analysis))}</b>: {html.escape(str(r.reason))}</li>" for r in skipped.itertuples())
    return _section("Analyses that could not run", f"<ul>{rows}</ul>", note="Every other analysis ran; these say why they did not.")


def _summary(tables: dict[str, pd.DataFrame]) -> list[str]:
    """A few plain sentences: the strongest donor, recipient, and the worst harm."""
    lines = []
    regimes = tables.get("regime_summary")
    by_model = tables.get("regime_summary_by_model")
    n_models = by_model.index.get_level_values(0).nunique() if by_model is not None and len(by_model) else 1
    pooled = f" (pooled over {n_models} models)" if n_models > 1 else ""
    if regimes is not None and len(regimes):
        for regime, row in regimes.iterrows():
            lines.append(
                f"{regime}{pooled}: mean transfer {row['mean_delta']:+.2f} pp over {int(row['n'])} (source, target) pairs; "
                f"{row['positive_transfer_rate_pct']:.0f}% positive, {row['harm_rate_pct']:.0f}% harmed (Δ ≤ −1 pp)."
            )
    for name, key, what in (("language_donor_recipient", "lang", "language"), ("task_donor_recipient", "dataset", "task")):
        roles = tables.get(name)
        if roles is None or roles.empty or roles["donor"].isna().all():
            continue
        donor = roles.loc[roles["donor"].idxmax()]
        recipient = roles.loc[roles["recipient"].idxmax()]
        lines.append(
            f"Strongest {what} donor: {donor[key]} ({donor['donor']:+.2f} pp given on average); "
            f"strongest {what} recipient: {recipient[key]} ({recipient['recipient']:+.2f} pp received)."
        )
    matrices = [(k, v) for k, v in tables.items() if k.startswith("transfer_matrix__")]
    for name, matrix in matrices:
        stacked = matrix.stack()
        if stacked.empty:
            continue
        (source, target), worst = stacked.idxmin(), stacked.min()
        if worst <= -1:
            lines.append(f"Largest harm for {name.split('__', 1)[1]}: training on {source} changed {target} by {worst:+.1f} pp.")
    cells = tables.get("transfer_pairs")
    if cells is not None and not cells.empty:
        for model, rows in cells[cells["regime"] != "MT-ML"].groupby("model", sort=True):
            n_significant = int(rows["significant"].fillna(False).astype(bool).sum())
            lines.append(f"{model}: {n_significant} of {len(rows)} transfer pairs significant after Benjamini–Hochberg (q < 0.05).")
    return lines


SHOWN_TABLES = frozenset(
    {
        "what_to_fine_tune_on",
        "regime_summary",
        "regime_summary_by_model",
        "language_donor_recipient",
        "task_donor_recipient",
        "significant_transfers",
        "most_asymmetric_pairs",
        "validity_findings",
        "grid_coverage",
        "metric_comparison",
        "pooled_regime_intervals",
        "own_cell_gains",
        "collapse_summary",
        "option_diagnostics",
        "skipped_analyses",
        "variance_decomposition_all",
        "consistency_by_model",
    }
)
"""Tables the report's sections show; every other table is listed at the end."""
MATRIX_PREFIXES = ("transfer_matrix__", "published_matrix__", "bias_free_matrix__")


def _settings_sections(settings: dict | None) -> list[str]:
    if not settings:
        return []
    grid = {k: settings.get(k) for k in ("models", "languages", "seeds")}
    grid["tasks"] = [t["name"] if isinstance(t, dict) else t for t in settings.get("tasks", [])]
    recipe = {k: settings.get(k) for k in ("lora", "train", "eval")}
    return _section(
        "Grid and settings",
        f"<pre>{html.escape(json.dumps(grid, indent=1))}</pre>",
        "<details><summary>LoRA, training and evaluation settings</summary>",
        f"<pre>{html.escape(json.dumps(recipe, indent=1))}</pre></details>",
    )


def _regime_sections(tables: dict[str, pd.DataFrame]) -> list[str]:
    parts = []
    by_model = tables.get("regime_summary_by_model")
    if by_model is not None and not by_model.empty:
        parts += _section(
            "Regimes per model",
            _table(by_model),
            note="Each model on its own, before the pooled table: pooling pairs across models can reverse a comparison that "
            "holds within every model. MT-ML is the trained cell itself and is kept out of the transfer regimes.",
        )
    if "regime_summary" in tables:
        parts += _section(
            "Regimes (pooled over models)",
            _table(tables["regime_summary"]),
            note="MT-ML is the trained cell itself and is kept out of the transfer regimes.",
        )
    return parts


def _matrix_sections(tables: dict[str, pd.DataFrame], figure_path) -> list[str]:
    parts = []
    for name, matrix in tables.items():
        if name.startswith("transfer_matrix__") and not matrix.empty:
            model = matrix.attrs.get("model", name.split("__", 1)[1])
            parts += _section(
                f"Transfer matrix: {model}", _png(transfer_heatmap(matrix, title=f"{model}: transfer (pp)"), figure_path(name))
            )
    return parts


def _prediction_sections(tables: dict[str, pd.DataFrame], figure_path) -> list[str]:
    """What to fine-tune on, then each model's matrix with the unmeasured cells predicted (docs/predict.md)."""
    advice, cells = tables.get("what_to_fine_tune_on"), tables.get("predicted_transfer")
    if advice is None or cells is None or advice.empty:
        return []
    shown = advice.rename(columns={"fine_tuned_dataset": "source task", "fine_tuned_language": "source language"})
    parts = _section(
        "What to fine-tune on",
        _table(shown.drop(columns=["n_targets"])),
        note="Per model, the three sources with the highest expected mean Δ (pp) over all targets and over each target task; "
        "gain_lo..gain_hi averages the cells' 90% intervals; p_harm_any: the probability that the source harms at least one "
        "of those targets by 1 pp or more; measured: the source was trained, else its row is predicted from the measured "
        "sources by the transfer model.",
    )
    for model, rows in cells.groupby("model_name", sort=True):
        if rows["measured"].all():
            continue
        name = f"predicted_matrix__{path_component(str(model))}"
        parts += _section(
            f"Measured and predicted transfer: {model}",
            _png(predicted_heatmap(rows, title=f"{model}: Δ (pp), predicted cells dotted"), figure_path(name)),
            note=f"{int((~rows['measured']).sum()):,} of {len(rows):,} cells predicted; predicted_transfer.csv holds each "
            "one's 90% interval and P(Δ ≤ −1 pp). Predictions are never written into the results store.",
        )
    return parts


def _role_sections(tables: dict[str, pd.DataFrame], figure_path) -> list[str]:
    parts = []
    for name, key, what, regime in (
        ("language_donor_recipient", "lang", "Languages", "MT-CL"),
        ("task_donor_recipient", "dataset", "Tasks", "CT-ML"),
    ):
        roles = tables.get(name)
        if roles is not None and not roles.empty:
            figure = donor_recipient_figure(roles, key=key, title=f"{what}: donor vs recipient ({regime})")
            parts += _section(
                f"{what} as donors and recipients ({regime})",
                _png(figure, figure_path(name)),
                _table(roles),
                note="Donor: mean transfer a source gives; recipient: mean transfer a target receives "
                "(two-stage means, each model weighs equally).",
            )
    return parts


def _spread_sections(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Where the variance of transfer lies, and how alike the models are."""
    parts = []
    if _has_values(tables.get("variance_decomposition_all")):
        parts += _section(
            "Variance shares",
            _table(tables["variance_decomposition_all"]),
            note="Share (%) of the variance of transfer due to the model, the source and the target (mixed model, sources and "
            "targets nested in models), over all transfer pairs and per regime.",
        )
    if _has_values(tables.get("consistency_by_model")):
        parts += _section(
            "Consistency across models",
            _table(tables["consistency_by_model"], 3),
            note="How alike models rank the recipients of a source: the mean Kendall τ-b over pairs of models, per source; "
            "its median and quartiles over sources, per regime.",
        )
    return parts


def _remaining_tables(tables: dict[str, pd.DataFrame]) -> list[str]:
    rest = [k for k, v in tables.items() if k not in SHOWN_TABLES and not k.startswith(MATRIX_PREFIXES) and v is not None and not v.empty]
    if not rest:
        return []
    parts = ["<h2>All tables</h2>"]
    for name in rest:
        frame = tables[name]
        if len(frame) > LARGE_TABLE_ROWS:
            parts.append(
                f"<p class='note'>{html.escape(name)}: {len(frame):,} rows, saved as {html.escape(name)}.csv with the analysis tables.</p>"
            )
        else:
            parts += [f"<details><summary>{html.escape(name)}</summary>", _table(frame, 3), "</details>"]
    return parts


def build_report(
    tables: dict[str, pd.DataFrame],
    *,
    settings: dict | None = None,
    title: str = "Transfer study",
    figures_dir: Path | None = None,
    metric: str = "delta_score_norm (the published score)",
    published_metric: str = "published",
    bias_free_metric: str = "bias-free",
) -> str:
    """The report page; with ``figures_dir`` each figure is also written there as a PNG."""

    def figure_path(name: str) -> Path | None:
        return figures_dir / f"{path_component(name, MAX_FILE_STEM)}.png" if figures_dir is not None else None

    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)} — donors report</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>Transfer = 100 × (fine-tuned score − base score), in percentage points (pp), under the metric "
        f"{html.escape(metric)}. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by donors.</p>",
        *_coverage_sections(tables),
        *_validity_sections(tables, figure_path, published_metric, bias_free_metric),
        *_section("Summary", "<ul>", *[f"<li>{html.escape(line)}</li>" for line in _summary(tables)], "</ul>"),
        *_skipped_sections(tables),
        *_settings_sections(settings),
        *_regime_sections(tables),
        *_matrix_sections(tables, figure_path),
        *_prediction_sections(tables, figure_path),
        *_role_sections(tables, figure_path),
        *_significance_sections(tables, figure_path),
        *_spread_sections(tables),
        *_remaining_tables(tables),
        "</body></html>",
    ]
    return "\n".join(parts)
