"""Guidance before money is spent: can each base model read the study's format at all?

A model that answers one option for every item cannot show transfer in that format: its
adapters learn a letter, and a change of favourite letter looks like transfer. Scoring a
few gold-balanced items per target on each base model, in each format the study uses (and
the other one, for comparison), shows that in a minute, before any adapter is trained.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from donors.analysis.metrics import item_scores, predictions_frame
from donors.config import StudyConfig
from donors.evaluate import get_scorer
from donors.models import load_model
from donors.records import ModelState
from donors.tasks.data import StudyData, balanced_ids
from donors.tasks.prompts import PROMPT_FORMATS

PROBE_COLUMNS = ["model", "format", "target", "n", "accuracy", "debiased", "chance", "top_option", "top_share", "collapsed"]


def probe_base_models(
    config: StudyConfig,
    data: StudyData,
    n_items: int,
    *,
    formats: tuple[str, ...] | None = None,
    on_items: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Score ``n_items`` gold-balanced test items per target with each base model, per format.

    Returns one row per (model, format, target): accuracy, prior-corrected accuracy, the
    chance level (mean 1/k), the most-predicted option and its share, and whether the
    target is collapsed. ``formats`` defaults to both, the study's own first.
    """
    if n_items < 1:
        raise ValueError(f"--probe takes a positive number of items per target, got {n_items}")
    own = tuple(dict.fromkeys([config.eval.prompt_format, config.train_format]))
    formats = formats or own + tuple(f for f in PROMPT_FORMATS if f not in own)
    targets = {}
    for cell, items in data.test.items():
        keep = set(balanced_ids(items, n_items))
        targets[cell] = [item for item in items if item.id in keep]
    rows = []
    for model_name in config.models:
        model, tokenizer = load_model(model_name, dtype=config.dtype, trust_remote_code=config.trust_remote_code)
        for fmt in formats:
            scorer = get_scorer(config.eval.model_copy(update={"permutations": "none", "backend": "native"}), prompt_format=fmt)
            results = scorer.score(model, tokenizer, targets, model_name=model_name, on_batch=on_items)
            for cell, result in results.items():
                predictions = predictions_frame(ModelState(model_name), result.predictions)
                score = result.score
                top = max(range(len(score.predicted_counts)), key=score.predicted_counts.__getitem__)
                rows.append(
                    {
                        "model": model_name,
                        "format": fmt,
                        "target": str(cell),
                        "n": score.n,
                        "accuracy": score.accuracy,
                        "debiased": float(item_scores(predictions, "acc_debiased")["score"].mean()),
                        "chance": sum(1 / len(p.logprobs) for p in result.predictions) / score.n,
                        "top_option": "ABCDEFGHIJ"[top],
                        "top_share": score.top_share,
                        "collapsed": score.collapsed,
                    }
                )
        del model
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


def probe_advice(probe: pd.DataFrame, study_format: str) -> list[str]:
    """One line per model: whether it can read the study's format, and the remedy if not."""
    lines = []
    for model, rows in probe.groupby("model", sort=False):
        own = rows[rows["format"] == study_format]
        collapsed = own["collapsed"].sum()
        if collapsed:
            others = rows[(rows["format"] != study_format) & ~rows["collapsed"]]
            remedy = (
                f"; in the {others['format'].iat[0]} format {len(others)} of {len(own)} targets are not collapsed: "
                f"set eval.prompt_format: {others['format'].iat[0]}"
                if len(others)
                else "; no format tried reads better"
            )
            lines.append(
                f"WARNING: {model} answers one option for >= 80% of the items on {collapsed} of {len(own)} targets in the "
                f"{study_format} format: its adapters would learn a position, not the task{remedy}."
            )
        else:
            lines.append(
                f"{model}: no target collapsed in the {study_format} format (mean accuracy {own['accuracy'].mean():.2f}, chance {own['chance'].mean():.2f})."
            )
    return lines
