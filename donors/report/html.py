"""One self-contained HTML report: figures embedded as PNG data, every text escaped.

The report is built from analysis tables only; it never touches models or the store.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from donors.report.figures import donor_recipient_figure, transfer_heatmap  # noqa: E402

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right} th{background:#f5f5f5}
img{max-width:100%} .note{color:#555;font-size:.9em} pre{background:#f7f7f7;padding:.7em;overflow-x:auto;font-size:.8em}
"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(frame: pd.DataFrame, digits: int = 2) -> str:
    return frame.to_html(escape=True, float_format=lambda v: f"{v:.{digits}f}", na_rep="", border=0)


def _summary(tables: dict[str, pd.DataFrame]) -> list[str]:
    """A few plain sentences: the strongest donor, recipient, and the worst harm."""
    lines = []
    regimes = tables.get("regime_summary")
    if regimes is not None and len(regimes):
        for regime, row in regimes.iterrows():
            lines.append(
                f"{regime}: mean transfer {row['mean_delta']:+.2f} pp over {int(row['n'])} cells; "
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
    return lines


def build_report(tables: dict[str, pd.DataFrame], *, settings: dict | None = None, title: str = "Transfer study") -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)} — donors report</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>Transfer = 100 × (fine-tuned score − base score), in percentage points (pp). "
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by donors.</p>",
        "<h2>Summary</h2><ul>",
        *[f"<li>{html.escape(line)}</li>" for line in _summary(tables)],
        "</ul>",
    ]
    if settings:
        grid = {k: settings.get(k) for k in ("models", "languages", "seeds")}
        grid["tasks"] = [t["name"] if isinstance(t, dict) else t for t in settings.get("tasks", [])]
        parts += ["<h2>Grid and settings</h2>", f"<pre>{html.escape(json.dumps(grid, indent=1))}</pre>"]
        recipe = {k: settings.get(k) for k in ("lora", "train", "eval")}
        parts += ["<details><summary>LoRA, training and evaluation settings</summary>", f"<pre>{html.escape(json.dumps(recipe, indent=1))}</pre></details>"]
    if "regime_summary" in tables:
        parts += ["<h2>Regimes</h2>", "<p class='note'>MT-ML is the trained cell itself and is kept out of the transfer regimes.</p>",
                  _table(tables["regime_summary"])]
    for name, matrix in tables.items():
        if name.startswith("transfer_matrix__") and not matrix.empty:
            model = name.split("__", 1)[1]
            parts += [f"<h2>Transfer matrix: {html.escape(model)}</h2>", _png(transfer_heatmap(matrix, title=f"{model}: transfer (pp)"))]
    for name, key, what, regime in (
        ("language_donor_recipient", "lang", "Languages", "MT-CL"),
        ("task_donor_recipient", "dataset", "Tasks", "CT-ML"),
    ):
        roles = tables.get(name)
        if roles is not None and not roles.empty:
            parts += [f"<h2>{what} as donors and recipients ({regime})</h2>",
                      "<p class='note'>Donor: mean transfer a source gives; recipient: mean transfer a target receives (two-stage means, each model weighs equally).</p>",
                      _png(donor_recipient_figure(roles, key=key, title=f"{what}: donor vs recipient ({regime})")), _table(roles)]
    shown = {"regime_summary", "language_donor_recipient", "task_donor_recipient"}
    rest = [k for k in tables if k not in shown and not k.startswith("transfer_matrix__")]
    if rest:
        parts.append("<h2>All tables</h2>")
        for name in rest:
            frame = tables[name]
            if frame is None or frame.empty:
                continue
            parts += [f"<details><summary>{html.escape(name)}</summary>", _table(frame, 3), "</details>"]
    parts.append("</body></html>")
    return "\n".join(parts)
