"""Item-level statistics on synthetic item outcomes with planted effects (no models, no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from donors.analysis.paired import (
    benjamini_hochberg,
    item_level_tables,
    most_asymmetric_pairs,
    paired_bootstrap,
    paired_bootstrap_deltas,
    paired_significance,
    regime_summary_by_model,
    transfer_asymmetry,
)
from donors.analysis.study import StoredOutcomes
from donors.evaluate import target_result
from donors.grid import Cell
from donors.records import ItemPrediction, ModelState
from donors.store import ResultsStore

MODEL = "toy-1b"
EN, DE = ("qa", "en"), ("qa", "de")


def outcome_rows(correct, target, source=None, seed=None, model=MODEL) -> pd.DataFrame:
    """One model state's outcomes on one target, in the shape of donors.analysis.metrics.item_scores()."""
    correct = np.asarray(correct, dtype=int)
    return pd.DataFrame(
        {
            "model": model,
            "seed": np.nan if seed is None else float(seed),
            "source_task": None if source is None else source[0],
            "source_language": None if source is None else source[1],
            "target_task": target[0],
            "target_language": target[1],
            "item_id": [f"item{i:04d}" for i in range(len(correct))],
            "gold": 0,
            "predicted": 1 - correct,
            "score": correct,
        }
    )


def changed(base, improve=0, worsen=0) -> np.ndarray:
    """``base`` with the first ``improve`` wrong items made right and the first ``worsen`` right items made wrong."""
    tuned = np.array(base, dtype=int)
    tuned[np.flatnonzero(tuned == 0)[:improve]] = 1
    tuned[np.flatnonzero(np.asarray(base) == 1)[:worsen]] = 0
    return tuned


def one_cell(base, tuned, seeds=(1,)) -> pd.DataFrame:
    """Base and fine-tuned outcomes of the cell qa/en -> qa/de; ``tuned`` is one array per seed."""
    tuned = [tuned] if len(seeds) == 1 else tuned
    frames = [outcome_rows(base, DE)] + [outcome_rows(t, DE, source=EN, seed=s) for t, s in zip(tuned, seeds)]
    return pd.concat(frames, ignore_index=True)


def half_right(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % 2)


def test_bootstrap_interval_covers_the_planted_delta_at_the_binomial_scale():
    n = 400
    base = half_right(n)
    outcomes = one_cell(base, changed(base, improve=80))
    row = paired_bootstrap_deltas(outcomes, n_boot=2000, seed=1).iloc[0]
    assert row["delta"] == pytest.approx(20.0)
    assert row["ci_low"] < 20.0 < row["ci_high"]
    share_changed = 80 / n
    expected_width = 2 * 1.96 * 100 * np.sqrt(share_changed * (1 - share_changed) / n)
    width = row["ci_high"] - row["ci_low"]
    assert 0.8 * expected_width < width < 1.2 * expected_width
    unpaired_width = 2 * 1.96 * 100 * np.sqrt((0.5 * 0.5 + 0.7 * 0.3) / n)
    assert width < 0.7 * unpaired_width
    assert (row["n_items"], row["n_seeds"], row["regime"]) == (n, 1, "MT-CL")


def test_identical_outcomes_give_zero_with_a_zero_interval_and_p_one():
    base = half_right(50)
    outcomes = one_cell(base, base)
    cell = paired_bootstrap_deltas(outcomes, n_boot=200).iloc[0]
    assert (cell["delta"], cell["ci_low"], cell["ci_high"]) == (0.0, 0.0, 0.0)
    tested = paired_significance(outcomes).iloc[0]
    assert tested["p_value"] == 1.0 and tested["q_value"] == 1.0 and not tested["significant"]


def test_large_improvement_survives_benjamini_hochberg_and_a_null_cell_does_not():
    n = 200
    base = {lang: half_right(n, seed=i) for i, lang in enumerate(("en", "de", "fr"))}
    frames = [outcome_rows(b, ("qa", lang)) for lang, b in base.items()]
    frames.append(outcome_rows(changed(base["de"], improve=60), DE, source=EN, seed=1))
    frames.append(outcome_rows(changed(base["fr"], improve=10, worsen=10), ("qa", "fr"), source=EN, seed=1))
    frames.append(outcome_rows(changed(base["en"], improve=3, worsen=1), EN, source=EN, seed=1))
    tested = paired_significance(pd.concat(frames, ignore_index=True)).set_index("target_language")
    assert tested.loc["de", "significant"] and tested.loc["de", "q_value"] < 1e-10
    assert not tested.loc["fr", "significant"] and tested.loc["fr", "delta"] == 0
    assert tested.loc["de", "test"] == "chi-square" and tested.loc["en", "test"] == "exact"
    np.testing.assert_allclose(tested["q_value"], multipletests(tested["p_value"], method="fdr_bh")[1])


def test_benjamini_hochberg_matches_statsmodels_and_the_hand_values_within_each_model():
    p = pd.Series([0.01, 0.04, 0.03, 0.2, 0.5, np.nan])
    models = pd.Series(["a", "a", "a", "a", "b", "b"])
    q = benjamini_hochberg(p, models)
    np.testing.assert_allclose(q[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    np.testing.assert_allclose(q[:4], multipletests(p[:4], method="fdr_bh")[1])
    assert q[4] == 0.5 and np.isnan(q[5])


@pytest.mark.parametrize("improved, worsened", [(8, 1), (1, 8), (3, 3), (12, 12), (30, 10), (10, 35), (20, 20)])
def test_one_seed_test_is_mcnemar(improved, worsened):
    base = half_right(200)
    tested = paired_significance(one_cell(base, changed(base, improve=improved, worsen=worsened))).iloc[0]
    exact = improved + worsened < 25
    table = [[50, improved], [worsened, 50]]
    expected = mcnemar(table, exact=exact, correction=True).pvalue
    if improved == worsened:
        expected = 1.0
    assert tested["p_value"] == pytest.approx(expected, rel=1e-9)
    assert tested["test"] == ("exact" if exact else "chi-square")
    assert (tested["n_improved"], tested["n_worsened"]) == (improved, worsened)


def test_mcnemar_exact_on_a_hand_computed_table():
    base = half_right(40)
    tested = paired_significance(one_cell(base, changed(base, improve=8, worsen=1))).iloc[0]
    assert tested["p_value"] == pytest.approx(0.0390625, abs=1e-12)


def test_asymmetry_of_a_planted_pair_and_its_orientation():
    n = 300
    base_en, base_de = half_right(n, seed=1), half_right(n, seed=2)
    outcomes = pd.concat(
        [
            outcome_rows(base_en, EN),
            outcome_rows(base_de, DE),
            outcome_rows(changed(base_en, improve=45), EN, source=DE, seed=1),
            outcome_rows(changed(base_de, worsen=15), DE, source=EN, seed=1),
            outcome_rows(base_en, EN, source=EN, seed=1),
            outcome_rows(base_de, DE, source=DE, seed=1),
        ],
        ignore_index=True,
    )
    asymmetry = transfer_asymmetry(paired_bootstrap(outcomes, n_boot=1000, seed=3))
    assert len(asymmetry) == 1
    pair = asymmetry.iloc[0]
    assert (pair["cell_a"], pair["cell_b"], pair["regime"]) == ("qa/de", "qa/en", "MT-CL")
    assert pair["a_to_b"] == pytest.approx(15.0) and pair["b_to_a"] == pytest.approx(-5.0)
    assert pair["asymmetry"] == pytest.approx(20.0)
    assert 0 < pair["ci_low"] < 20.0 < pair["ci_high"] and pair["excludes_zero"]

    flipped = asymmetry.assign(
        cell_a="qa/en", cell_b="qa/de", a_to_b=-5.0, b_to_a=15.0, asymmetry=-20.0, ci_low=-pair["ci_high"], ci_high=-pair["ci_low"]
    )
    top = most_asymmetric_pairs(flipped).iloc[0]
    assert (top["cell_a"], top["a_to_b"], top["asymmetry"]) == ("qa/de", 15.0, 20.0)
    assert (top["ci_low"], top["ci_high"]) == (pair["ci_low"], pair["ci_high"])


def test_bootstrap_is_reproducible_from_its_seed():
    base = half_right(120)
    outcomes = one_cell(base, changed(base, improve=20, worsen=8))
    first = paired_bootstrap(outcomes, n_boot=300, seed=7)
    again = paired_bootstrap(outcomes, n_boot=300, seed=7)
    other = paired_bootstrap(outcomes, n_boot=300, seed=8)
    np.testing.assert_array_equal(first.replicates, again.replicates)
    assert not np.array_equal(first.replicates, other.replicates)
    pd.testing.assert_frame_equal(first.intervals(), again.intervals())


def test_several_seeds_are_averaged_per_item_and_not_counted_as_extra_pairs():
    n = 100
    base = np.zeros(n, dtype=int)
    per_seed = [changed(base, improve=k) for k in (10, 20, 30)]
    outcomes = one_cell(base, per_seed, seeds=(1, 2, 3))
    cell = paired_bootstrap_deltas(outcomes, n_boot=500).iloc[0]
    assert cell["delta"] == pytest.approx(20.0) and cell["n_seeds"] == 3 and cell["n_items"] == n
    assert cell["ci_low"] < 20.0 < cell["ci_high"]

    for improve in (9, 30):
        one_seed = one_cell(base, changed(base, improve=improve))
        tripled = one_cell(base, [changed(base, improve=improve)] * 3, seeds=(1, 2, 3))
        assert paired_significance(tripled).iloc[0]["p_value"] == pytest.approx(paired_significance(one_seed).iloc[0]["p_value"])

    base = np.array([0, 0, 1, 1])
    seeds = [np.array([1, 1, 1, 1]), np.array([1, 0, 1, 1]), np.array([1, 0, 1, 1])]
    tested = paired_significance(one_cell(base, seeds, seeds=(1, 2, 3))).iloc[0]
    assert tested["delta"] == pytest.approx(100 * (1 + 1 / 3) / 4)
    assert tested["p_value"] == pytest.approx(0.5)


def test_regime_summary_by_model_shows_the_trend_that_pooling_reverses():
    def rows(model, regime, deltas):
        target_task = "qa" if regime == "MT-CL" else "nli"
        return [
            {
                "model_name": model,
                "model_size": 1.0,
                "fine_tuned_dataset": "qa",
                "fine_tuned_language": "en",
                "eval_dataset": target_task,
                "eval_language": f"l{i}",
                "regime": regime,
                "delta_score_norm_mean": delta,
                "n_seeds": 1,
            }
            for i, delta in enumerate(deltas)
        ]

    table = pd.DataFrame(
        rows("strong", "MT-CL", [10.0])
        + rows("strong", "CT-CL", [8.0] * 9)
        + rows("weak", "MT-CL", [0.0] * 9)
        + rows("weak", "CT-CL", [-2.0])
    )
    summary = regime_summary_by_model(table)
    assert summary.index.names == ["model_name", "bucket"]
    for model, (mt_cl, ct_cl) in {"strong": (10.0, 8.0), "weak": (0.0, -2.0)}.items():
        assert summary.loc[(model, "MT-CL"), "mean_delta"] == pytest.approx(mt_cl)
        assert summary.loc[(model, "CT-CL"), "mean_delta"] == pytest.approx(ct_cl)
        assert summary.loc[(model, "MT-CL"), "mean_delta"] > summary.loc[(model, "CT-CL"), "mean_delta"]
    assert summary.loc[("strong", "CT-CL"), "n"] == 9 and summary.loc[("weak", "CT-CL"), "positive_transfer_rate_pct"] == 0.0
    assert summary.loc[("weak", "CT-CL"), "harm_rate_pct"] == 100.0
    pooled = table.groupby("regime")["delta_score_norm_mean"].mean()
    assert pooled["MT-CL"] < pooled["CT-CL"]


def test_item_level_tables_from_a_store(tmp_path: Path):
    n = 60
    base = {lang: half_right(n, seed=i) for i, lang in enumerate(("en", "de"))}
    tuned = {
        ("en", "de"): changed(base["de"], improve=25),
        ("de", "en"): base["en"],
        ("en", "en"): changed(base["en"], improve=5),
        ("de", "de"): changed(base["de"], improve=2),
    }

    def write(store, state, lang, correct):
        predictions = [
            ItemPrediction("qa", lang, f"item{i:03d}", 0, 1 - int(c), (0.0, -1.0) if c else (-1.0, 0.0), 1 - int(c))
            for i, c in enumerate(correct)
        ]
        store.add_target_result(state, target_result(predictions))

    def stored_item_level_tables(path):
        with ResultsStore(path / "results.sqlite") as store:
            return item_level_tables(StoredOutcomes(store.scores(), store.item_predictions()).item_scores("acc"))

    assert stored_item_level_tables(tmp_path) == {}
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for lang, correct in base.items():
            write(store, ModelState(MODEL), lang, correct)
        for (source, target), correct in tuned.items():
            write(store, ModelState(MODEL, Cell("qa", source), 1), target, correct)
    tables = stored_item_level_tables(tmp_path)
    assert set(tables) == {"transfer_pairs", "significant_transfers", "transfer_asymmetry", "most_asymmetric_pairs"}
    pairs = tables["transfer_pairs"]
    assert len(pairs) == 4 and {"ci_low", "ci_high", "p_value", "q_value", "significant"} <= set(pairs)
    significant = tables["significant_transfers"]
    assert significant[["source_language", "target_language"]].values.tolist() == [["en", "de"]]
    assert tables["most_asymmetric_pairs"].iloc[0][["cell_a", "cell_b", "asymmetry"]].tolist() == [
        "qa/en",
        "qa/de",
        pytest.approx(25 / n * 100),
    ]
    assert item_level_tables(outcome_rows(base["en"], EN)) == {}
