"""Bias-free metrics on hand-made predictions where the right answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from donors.analysis.metrics import MIN_PRIOR_ITEMS, MetricError, item_scores, target_scores
from donors.analysis.paired import paired_significance
from donors.evaluate import PermutedScorer, prediction, rotated, target_result
from donors.records import ModelState
from donors.tasks.item import Item

K = 4


def frame(logprobs: np.ndarray, gold: np.ndarray, source: str | None = None, rotation: int = 0, predicted=None) -> pd.DataFrame:
    """One model state's predictions on one target, in the shape of ResultsStore.item_predictions()."""
    n = len(gold)
    predicted = logprobs.argmax(axis=1) if predicted is None else predicted
    return pd.DataFrame(
        {
            "model": "toy",
            "seed": np.nan if source is None else 1.0,
            "source_task": None if source is None else "qa",
            "source_language": source,
            "target_task": "qa",
            "target_language": "en",
            "item_id": [f"i{i:03d}" for i in range(n)],
            "rotation": rotation,
            "gold": gold,
            "predicted": predicted,
            "predicted_norm": predicted,
            "logprobs": [list(map(float, row)) for row in logprobs],
        }
    )


def mean_score(predictions: pd.DataFrame, metric: str) -> float:
    return float(item_scores(predictions, metric)["score"].mean())


def planted(gold: np.ndarray, content: float, bias: np.ndarray, seed: int) -> np.ndarray:
    """Log-likelihoods: ``content`` on the gold option, a per-position ``bias``, and noise."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(gold), K)) + bias
    logits[np.arange(len(gold)), gold] += content
    return logits


BALANCED = np.tile(np.arange(K), 10)  # 40 items, 10 golds at each position
LOPSIDED = np.array([0] * 20 + [1] * 8 + [2] * 6 + [3] * 6)  # gold A on half the items


@pytest.mark.parametrize("favourite", range(K))
def test_a_constant_option_predictor_scores_chance_without_bias(favourite):
    logprobs = np.tile(np.where(np.arange(K) == favourite, -0.1, -4.0), (len(BALANCED), 1))
    predictions = frame(logprobs, BALANCED)
    assert mean_score(predictions, "acc") == pytest.approx(1 / K)
    assert mean_score(predictions, "acc_debiased") == pytest.approx(1 / K)
    assert mean_score(predictions, "gold_prob") == pytest.approx(1 / K)
    assert mean_score(predictions, "gold_prob_raw") == pytest.approx(1 / K)
    # On a lopsided subset the published accuracy moves with the favourite letter; the debiased one stays at chance.
    lopsided = frame(np.tile(logprobs[0], (len(LOPSIDED), 1)), LOPSIDED)
    assert mean_score(lopsided, "acc") == pytest.approx(np.mean(LOPSIDED == favourite))
    assert mean_score(lopsided, "acc_debiased") == pytest.approx(1 / K)
    assert mean_score(lopsided, "gold_prob") == pytest.approx(1 / K)


def test_a_change_of_favourite_letter_is_zero_transfer_under_the_bias_free_metric():
    def constant(favourite):
        return np.tile(np.where(np.arange(K) == favourite, -0.1, -4.0), (len(LOPSIDED), 1))

    base, tuned = frame(constant(1), LOPSIDED), frame(constant(0), LOPSIDED, source="de")
    both = pd.concat([base, tuned], ignore_index=True)
    scores = pd.DataFrame(
        {
            "state_id": ["toy|base", "toy|qa/de|seed1"],
            "model": "toy",
            "seed": [np.nan, 1.0],
            "source_task": [None, "qa"],
            "source_language": [None, "de"],
            "target_task": "qa",
            "target_language": "en",
            "n": len(LOPSIDED),
            "accuracy": [np.mean(LOPSIDED == 1), np.mean(LOPSIDED == 0)],
            "accuracy_norm": [np.mean(LOPSIDED == 1), np.mean(LOPSIDED == 0)],
        }
    )
    published = target_scores(scores, both, "acc")["accuracy_norm"]
    debiased = target_scores(scores, both, "acc_debiased")["accuracy_norm"]
    assert 100 * (published[1] - published[0]) == pytest.approx(30.0)  # the whole "transfer" is the new favourite letter
    assert 100 * (debiased[1] - debiased[0]) == pytest.approx(0.0)
    assert set(target_scores(scores, both, "gold_prob")["metric"]) == {"gold_prob"}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prior_correction_removes_a_planted_prior_shift_and_keeps_a_planted_content_gain(seed):
    """A base that favours B, an adapter that lost the preference (same content), one that learnt more content."""
    gold = BALANCED.repeat(10)
    base = frame(planted(gold, 1.5, np.array([0.0, 3.0, 0.0, 0.0]), seed), gold)
    unbiased = frame(planted(gold, 1.5, np.zeros(K), seed), gold, source="de")
    learnt = frame(planted(gold, 3.0, np.array([0.0, 0.0, 3.0, 0.0]), seed), gold, source="fr")

    def delta(tuned, metric):
        return 100 * (mean_score(tuned, metric) - mean_score(base, metric))

    # Published accuracy credits the lost preference as a gain of over 30 pp; bias-free scores see (almost) none.
    assert delta(unbiased, "acc") > 30
    assert abs(delta(unbiased, "acc_debiased")) < 8 and abs(delta(unbiased, "gold_prob")) < 3
    assert delta(unbiased, "gold_prob_raw") > 10  # the raw probability is not bias-free
    # The content gain survives the correction, whatever position the adapter now favours.
    assert delta(learnt, "acc_debiased") > 15 and delta(learnt, "gold_prob") > 15


def test_items_of_each_option_count_are_corrected_by_their_own_prior():
    """A target whose items have 3, 4 and 5 options (as ARC-Challenge's have): position C is the last of a 3-option
    item and the middle of a 5-option one, so each option count gets its own prior; a count with too few items
    (here 5) shares the target's pooled prior over its own positions."""
    rng = np.random.default_rng(7)
    widths = np.array([3, 4] * MIN_PRIOR_ITEMS + [5] * 3)
    gold = np.array([i % w for i, w in enumerate(widths)])
    rows = []
    for w, g in zip(widths, gold):
        logits = rng.normal(0, 1, w) + np.array([1.0, 0.0, -0.5, 0.3, 0.6][:w])  # a position bias
        logits[g] += 2.0  # and content
        rows.append(list(logits - np.logaddexp.reduce(logits)))
    predictions = frame(np.zeros((len(gold), 1)), gold)
    predictions["logprobs"] = rows
    # The definition, item by item: a position's prior is its mean probability over the items that have it.
    probabilities = [np.exp(row) for row in rows]

    def prior(members: list[np.ndarray], width: int) -> np.ndarray:
        return np.array([np.mean([p[j] for p in members if len(p) > j]) for j in range(width)])

    expected_gold_prob, expected_correct = [], []
    for p, g, w in zip(probabilities, gold, widths):
        same = [q for q in probabilities if len(q) == w]
        own = p / prior(same if len(same) >= MIN_PRIOR_ITEMS else probabilities, w)
        own = own / own.sum()
        expected_gold_prob.append(own[g])
        expected_correct.append(float(own.argmax() == g))
    scores = item_scores(predictions, "gold_prob")["score"].to_numpy()
    assert scores == pytest.approx(expected_gold_prob)
    assert item_scores(predictions, "acc_debiased")["score"].to_numpy() == pytest.approx(expected_correct)
    assert (scores[widths == 3] > 0).all(), "an item with fewer choices than the widest is not zeroed"


@pytest.mark.parametrize("answer", ["first", "last"])
def test_a_constant_answer_scores_chance_on_a_target_of_mixed_option_counts(answer):
    widths = np.array([2, 4] * 40)
    gold = np.array([(i // 2) % w for i, w in enumerate(widths)])  # balanced within each option count
    rows = [[-0.1 if j == (0 if answer == "first" else w - 1) else -3.0 for j in range(w)] for w in widths]
    predictions = frame(np.zeros((len(gold), 1)), gold)
    predictions["logprobs"] = rows
    chance = np.mean(1 / widths)
    assert mean_score(predictions, "acc_debiased") == pytest.approx(chance)
    assert mean_score(predictions, "gold_prob") == pytest.approx(chance)


def test_permutation_metrics_follow_their_definition():
    gold = np.array([0, 1, 2, 3])
    # Item 0: right under every rotation; item 1: right under two of four; items 2 and 3: never.
    rows = []
    right = {0: [1, 1, 1, 1], 1: [1, 0, 1, 0], 2: [0, 0, 0, 0], 3: [0, 0, 0, 0]}
    for rotation in range(K):
        predicted = np.array([gold[i] if right[i][rotation] else (gold[i] + 1) % K for i in range(4)])
        rows.append(frame(np.zeros((4, K)), gold, rotation=rotation, predicted=predicted))
    predictions = pd.concat(rows, ignore_index=True)
    per_item = item_scores(predictions, "acc_perm").set_index("item_id")["score"]
    assert per_item.tolist() == [1.0, 0.5, 0.0, 0.0]
    assert item_scores(predictions, "acc_perm_strict")["score"].tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(MetricError, match="eval.permutations: cyclic"):
        item_scores(rows[0], "acc_perm")


class AlwaysFirstLetter:
    """A scorer that answers the first shown option, whatever the item."""

    def score(self, model, tokenizer, targets, *, model_name="", on_batch=None):
        return {
            key: target_result([prediction(i, [0.0] + [-1.0] * (len(i.choices) - 1), "lettered") for i in items])
            for key, items in targets.items()
        }


def test_permuted_scoring_maps_each_rotation_back_to_the_original_options():
    items = [Item(f"i{j}", "qa", "en", f"q{j}", ("w", "x", "y", "z"), j) for j in range(K)]
    items.append(Item("two", "qa", "en", "q", ("yes", "no"), 1))
    assert rotated(items[1], 1).choices == ("x", "y", "z", "w") and rotated(items[1], 1).answer_index == 0
    (result,) = PermutedScorer(AlwaysFirstLetter()).score(None, None, {"t": items}).values()
    assert [p.predicted for p in result.predictions] == [0] * 5 and result.score.accuracy == pytest.approx(1 / 5)
    # Rotation r shows original option r first: a first-letter answerer picks original option r.
    by_item = {}
    for p in result.rotations:
        by_item.setdefault(p.item_id, {})[p.rotation] = p
        assert p.logprobs[p.predicted] == 0.0 and p.gold == next(i for i in items if i.id == p.item_id).answer_index
    assert {r: p.predicted for r, p in by_item["i2"].items()} == {1: 1, 2: 2, 3: 3}
    assert set(by_item["two"]) == {1}  # two options: one other rotation
    assert ModelState("m").is_base


def test_continuous_scores_get_a_paired_test():
    gold = np.tile(np.arange(K), 25)
    base = frame(planted(gold, 0.5, np.zeros(K), seed=3), gold)
    tuned = frame(planted(gold, 2.5, np.zeros(K), seed=4), gold, source="de")
    outcomes = item_scores(pd.concat([base, tuned], ignore_index=True), "gold_prob")
    (row,) = paired_significance(outcomes).itertuples()
    assert row.delta > 10 and row.p_value < 1e-6 and row.test == "chi-square"
    same = item_scores(pd.concat([base, base.assign(source_task="qa", source_language="de", seed=1.0)], ignore_index=True), "gold_prob")
    assert paired_significance(same)["p_value"].iloc[0] == 1.0
