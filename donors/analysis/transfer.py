"""From stored scores to transfer: the published results table and the transfer matrix.

Transfer of a (source, target) cell = 100 x (fine-tuned score - base score), in percentage
points, per seed; then mean, std and SE across seeds, exactly as the published release
aggregated it (docs/protocol.md section 1c), so every published analysis runs on a study
of ours unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from donors.analysis.constants import PUBLISHED_NAMES
from donors.grid import regime_labels, size_from_name

KEYS = ["model_name", "model_size", "fine_tuned_dataset", "fine_tuned_language", "eval_dataset", "eval_language"]


def results_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Stored per-(state, target) scores -> one row per (model, source, target), published schema."""
    base = scores[scores["source_task"].isna()][["model", "target_task", "target_language", "accuracy", "accuracy_norm"]]
    base = base.rename(columns={"accuracy": "score_base", "accuracy_norm": "score_norm_base"})
    tuned = scores[scores["source_task"].notna()].rename(columns={"accuracy": "score", "accuracy_norm": "score_norm"})
    if tuned.empty:
        return pd.DataFrame(columns=KEYS + ["regime", "delta_score_norm_mean", "n_seeds"])
    merged = tuned.merge(base, on=["model", "target_task", "target_language"], how="left", validate="many_to_one")
    missing = merged["score_base"].isna()
    if missing.any():
        first = merged[missing].iloc[0]
        raise ValueError(
            f"no base-model score for {first['model']} on {first['target_task']}/{first['target_language']}; run the study to finish it"
        )
    merged["delta_score"] = 100 * (merged["score"] - merged["score_base"])
    merged["delta_score_norm"] = 100 * (merged["score_norm"] - merged["score_norm_base"])
    merged = merged.rename(columns=PUBLISHED_NAMES)
    merged["model_size"] = merged["model_name"].map(size_from_name)
    quantities = ["score", "score_base", "score_norm", "score_norm_base", "delta_score", "delta_score_norm"]
    grouped = merged.groupby(KEYS, dropna=False)
    table = grouped[quantities].agg(["mean", "std"])
    table.columns = [f"{q}_{stat}" for q, stat in table.columns]
    table["n_seeds"] = grouped["seed"].nunique()
    for q in quantities:
        table[f"{q}_se"] = table[f"{q}_std"] / np.sqrt(table["n_seeds"])
    table = table.reset_index()
    if "metric" in scores:
        # Under a metric other than the published one, the *_norm columns hold that metric; say which.
        table["metric"] = scores["metric"].iat[0]
    regimes = regime_labels(table["fine_tuned_dataset"], table["fine_tuned_language"], table["eval_dataset"], table["eval_language"])
    table.insert(KEYS.index("eval_language") + 1, "regime", regimes)
    return table


@dataclass(frozen=True)
class TransferMatrix:
    """Sources x targets of mean transfer (pp) for one model, averaged over seeds."""

    model: str
    values: pd.DataFrame  # index: source "task/lang", columns: target "task/lang"

    @classmethod
    def from_results(cls, results: pd.DataFrame, model: str, column: str = "delta_score_norm_mean") -> "TransferMatrix":
        rows = results[results["model_name"] == model]
        source = rows["fine_tuned_dataset"] + "/" + rows["fine_tuned_language"]
        target = rows["eval_dataset"] + "/" + rows["eval_language"]
        values = pd.DataFrame({"source": source, "target": target, "delta": rows[column]}).pivot(
            index="source", columns="target", values="delta"
        )
        return cls(model, values.sort_index().sort_index(axis=1))
