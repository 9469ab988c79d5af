"""Scores per item from the stored log-likelihoods: the published metrics and bias-free ones.

A small model often answers one option letter for nearly every item; its accuracy then says
how often that letter is gold, and a change of favourite letter after fine-tuning looks like
transfer. The metrics here separate what a model knows from which position it prefers:

* ``acc``, ``acc_norm``: the published scores (lm-eval's), unchanged;
* ``acc_debiased``: prior-corrected accuracy. Each (model state, target) has a prior over
  option positions, estimated as the mean of its own choice probabilities over the target's
  items; each item's probabilities are divided by it before the argmax. A model that prefers
  a position for every item has that preference removed; what varies with the item stays.
  Ties (a model that says nothing about the item) earn 1/|tied|, the chance of a fair guess,
  so a constant answer scores exactly chance;
* ``gold_prob``: the gold option's probability normalised over the choices, after the same
  prior is divided out: a continuous score with more statistical power per item than 0/1
  accuracy (chance: 1/k; a constant answer scores exactly 1/k on every item);
* ``gold_prob_raw``: the same without the prior correction. On a gold-balanced subset a
  constant answer averages 1/k, but a model whose probability mass sits on a favourite
  position loses score that it regains when the preference goes, which looks like learning;
* ``acc_perm``, ``acc_perm_strict`` (with ``eval.permutations: cyclic``): accuracy averaged
  over every cyclic rotation of the options, and the share of items right under all of them.

No extra forward pass is needed for the first four. Everything is computed from
:meth:`donors.store.ResultsStore.item_predictions`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from donors.errors import DonorsError
from donors.records import ItemPrediction, ModelState

STATE_KEYS = ["model", "seed", "source_task", "source_language"]
TARGET_KEYS = ["target_task", "target_language"]
STATE_TARGET_KEYS = STATE_KEYS + TARGET_KEYS

METRICS: dict[str, str] = {
    "acc": "accuracy: the option with the highest log-likelihood (lm-eval's acc)",
    "acc_norm": "length-normalised accuracy (lm-eval's acc_norm; the published study's score)",
    "acc_debiased": "prior-corrected accuracy: each state's preference for option positions on a target divided out",
    "gold_prob": "the gold option's probability among the choices, position prior divided out (continuous; chance 1/k)",
    "gold_prob_raw": "the gold option's probability among the choices, as the model gives it (continuous)",
    "acc_perm": "accuracy averaged over every cyclic rotation of the options",
    "acc_perm_strict": "share of items answered right under every rotation of the options",
}
BIAS_FREE_METRIC = "acc_debiased"
"""The bias-free metric the report and the validity check set beside the published one."""
TIE_TOLERANCE = 1e-9
"""Scores this close count as a tie (float noise of the prior division)."""


class MetricError(DonorsError):
    """A metric that cannot be computed from what is stored."""


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def predictions_frame(state: ModelState, predictions: Sequence[ItemPrediction]) -> pd.DataFrame:
    """Prediction records of one model state in the shape of :meth:`~donors.store.ResultsStore.item_predictions`."""
    return pd.DataFrame(
        {
            "model": state.model,
            "seed": state.seed,
            "source_task": state.source_task,
            "source_language": state.source_language,
            "target_task": [p.target_task for p in predictions],
            "target_language": [p.target_language for p in predictions],
            "item_id": [p.item_id for p in predictions],
            "rotation": [p.rotation for p in predictions],
            "gold": [p.gold for p in predictions],
            "predicted": [p.predicted for p in predictions],
            "predicted_norm": [p.predicted_norm for p in predictions],
            "logprobs": [list(p.logprobs) for p in predictions],
        }
    )


def _logprob_matrix(logprobs: pd.Series) -> np.ndarray:
    """Rows of per-choice log-likelihoods, padded with -inf to the widest item."""
    width = max((len(row) for row in logprobs), default=0)
    matrix = np.full((len(logprobs), width), -np.inf)
    for i, row in enumerate(logprobs):
        matrix[i, : len(row)] = row
    return matrix


def choice_probabilities(logprobs: pd.Series) -> np.ndarray:
    """Each item's log-likelihoods as probabilities over its own choices (0 on padding)."""
    matrix = _logprob_matrix(logprobs)
    if matrix.size == 0:
        return matrix
    shifted = np.exp(matrix - matrix.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def choice_mask(logprobs: pd.Series) -> np.ndarray:
    """True where an item has a choice: items with fewer choices than the widest are padded on the right."""
    widths = np.array([len(row) for row in logprobs], dtype=int)
    return np.arange(widths.max(initial=0))[None, :] < widths[:, None]


def _group_codes(frame: pd.DataFrame) -> np.ndarray:
    """One integer per (model state, target); missing keys (the base model's source) are a value too."""
    return frame.groupby(STATE_TARGET_KEYS, dropna=False, sort=False).ngroup().to_numpy()


def position_priors(probabilities: np.ndarray, groups: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per row, its group's prior over positions: the mean choice probability of each position.

    ``present``: where each item has a choice (:func:`choice_mask`). A position is averaged only
    over the items that have it; the prior is then normalised over the item's own positions,
    so items with fewer choices get a proper distribution (0 on the positions they lack).
    """
    n_groups = groups.max() + 1 if len(groups) else 0
    sums = np.zeros((n_groups, probabilities.shape[1]))
    counts = np.zeros_like(sums)
    np.add.at(sums, groups, probabilities)
    np.add.at(counts, groups, present)
    with np.errstate(invalid="ignore", divide="ignore"):
        prior = np.where(counts > 0, sums / counts, 0.0)[groups]
    prior = np.where(present, prior, 0.0)
    return prior / prior.sum(axis=1, keepdims=True)


MIN_PRIOR_ITEMS = 20
"""Items of one option count a (state, target) needs for a prior of its own; fewer share the target's pooled prior."""


def debiased_probabilities(probabilities: np.ndarray, groups: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Each item's choice probabilities divided by its position prior, renormalised over its own choices.

    ``groups``: one code per (model state, target). Position C of a 3-option item is its last, of
    a 5-option item its middle, so the prior is estimated per option count within a group; an
    option count with fewer than :data:`MIN_PRIOR_ITEMS` items there uses the group's pooled
    prior, normalised over the item's own positions. A position an item lacks stays 0.
    """
    if probabilities.size == 0:
        return probabilities
    widths = present.sum(axis=1)
    by_width = np.unique(np.column_stack([groups, widths]), axis=0, return_inverse=True)[1].ravel()
    own = np.bincount(by_width)[by_width] >= MIN_PRIOR_ITEMS
    prior = np.where(own[:, None], position_priors(probabilities, by_width, present), position_priors(probabilities, groups, present))
    corrected = np.divide(probabilities, prior, out=np.zeros_like(probabilities), where=present & (prior > 0))
    total = corrected.sum(axis=1, keepdims=True)
    return np.divide(corrected, total, out=np.zeros_like(corrected), where=total > 0)


def _tie_aware_correct(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """1/|best| when gold is among the best-scoring options, else 0: the chance a fair tie-break is right."""
    best = scores.max(axis=1, keepdims=True)
    tied = scores >= best - TIE_TOLERANCE * np.maximum(1.0, np.abs(best))
    rows = np.arange(len(gold))
    return np.where(tied[rows, gold], 1.0 / tied.sum(axis=1), 0.0)


def _first_pass(predictions: pd.DataFrame) -> pd.DataFrame:
    return (
        predictions[predictions["rotation"] == 0].reset_index(drop=True)
        if "rotation" in predictions
        else predictions.reset_index(drop=True)
    )


def item_scores(predictions: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (model state, target, item): the state's keys, the target, the item and its ``score``.

    ``predictions`` is :meth:`~donors.store.ResultsStore.item_predictions` (columns model,
    seed, source_task, source_language, target_task, target_language, item_id, rotation,
    gold, predicted, predicted_norm, logprobs).
    """
    check_metric(metric)
    first = _first_pass(predictions)
    gold = first["gold"].to_numpy(int)
    if metric == "acc":
        score = (first["predicted"].to_numpy(int) == gold).astype(float)
    elif metric == "acc_norm":
        if first["predicted_norm"].isna().any():
            raise MetricError("these predictions were stored before per-item acc_norm existed; rescore them, or use --metric acc")
        score = (first["predicted_norm"].to_numpy(int) == gold).astype(float)
    elif metric in ("acc_debiased", "gold_prob", "gold_prob_raw"):
        probabilities = choice_probabilities(first["logprobs"])
        rows = np.arange(len(gold))
        if metric == "gold_prob_raw":
            score = probabilities[rows, gold] if len(gold) else np.zeros(0)
        else:
            corrected = debiased_probabilities(probabilities, _group_codes(first), choice_mask(first["logprobs"]))
            if metric == "gold_prob":
                score = corrected[rows, gold] if len(gold) else np.zeros(0)
            else:
                with np.errstate(divide="ignore"):
                    score = _tie_aware_correct(np.log(corrected), gold) if len(gold) else np.zeros(0)
    else:
        return _permutation_scores(predictions, strict=metric == "acc_perm_strict")
    out = first[STATE_TARGET_KEYS + ["item_id"]].copy()
    out["score"] = score
    return out


def _permutation_scores(predictions: pd.DataFrame, *, strict: bool) -> pd.DataFrame:
    if "rotation" not in predictions or not (predictions["rotation"] > 0).any():
        raise MetricError(
            "the permutation metrics need every rotation of the options scored, which this study did not do: run its config with "
            "eval.permutations: cyclic (lettered format only) into a new output_dir, or choose another --metric"
        )
    correct = predictions.assign(score=(predictions["predicted"] == predictions["gold"]).astype(float))
    grouped = correct.groupby(STATE_TARGET_KEYS + ["item_id"], dropna=False, sort=False)["score"]
    out = (grouped.min() if strict else grouped.mean()).reset_index()
    return out[STATE_TARGET_KEYS + ["item_id", "score"]]


def target_scores(scores: pd.DataFrame, predictions: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The stored per-(state, target) scores with ``accuracy_norm`` (the column transfer is read from) holding ``metric``.

    ``acc`` and ``acc_norm`` are the stored scores themselves, as lm-eval computed them; the
    others are item means of :func:`item_scores`. ``metric`` names what the column holds.
    """
    check_metric(metric)
    out = scores.copy()
    if metric == "acc":
        out["accuracy_norm"] = out["accuracy"]
    elif metric != "acc_norm":
        means = item_scores(predictions, metric).groupby(STATE_TARGET_KEYS, dropna=False)["score"].mean().rename("value").reset_index()
        out = out.merge(means, on=STATE_TARGET_KEYS, how="left", validate="one_to_one")
        missing = out["value"].isna()
        if missing.any():
            row = out[missing].iloc[0]
            raise MetricError(
                f"no stored predictions for {row['state_id']} on {row['target_task']}/{row['target_language']}; cannot compute {metric}"
            )
        out["accuracy"] = out["accuracy_norm"] = out.pop("value")
    out["metric"] = metric
    return out
