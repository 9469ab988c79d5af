"""The transfer predictor on tables whose answer is known (issue 16): recovery, calibration, choice, recommendation, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from donors.analysis.predict import (
    KEYS,
    MIN_SOURCES_PER_MODEL,
    PREDICTION_COLUMNS,
    Grid,
    NoMatchingTargets,
    choose_sources,
    cross_validate,
    fit_transfer_model,
    predict_transfer,
    recommend_sources,
    synthetic_transfer_table,
    transfer_scores,
)
from donors.errors import DonorsError, InsufficientData


def unmeasured_error(predicted: pd.DataFrame, truth: pd.DataFrame, column: str = "delta_mean") -> np.ndarray:
    merged = predicted[~predicted["measured"]].merge(truth[KEYS + [column]], on=KEYS)
    return (merged["delta_pred"] - merged[column]).to_numpy()


def with_planted(study, term: np.ndarray):
    """The study with ``term`` (one value per truth row) added to every Δ, measured or not."""
    truth = study.truth.assign(delta=study.truth["delta"] + term, delta_mean=study.truth["delta_mean"] + term)
    keyed = truth.set_index(KEYS)["delta"]
    results = study.results.copy()
    measured = results["delta_score_norm_mean"].notna()
    results.loc[measured, "delta_score_norm_mean"] = keyed.reindex(pd.MultiIndex.from_frame(results.loc[measured, KEYS])).to_numpy()
    return results, truth


def test_prediction_table_has_every_cell_and_keeps_measurements():
    study = synthetic_transfer_table(n_models=2, languages=("de", "en", "fr", "hi"), n_sources=5, missing=0.05, seed=3)
    predicted = predict_transfer(study.results)
    assert list(predicted.columns) == PREDICTION_COLUMNS
    assert len(predicted) == 2 * 16 * 16
    measured = predicted[predicted["measured"]].merge(study.results[KEYS + ["delta_score_norm_mean"]], on=KEYS)
    assert len(measured) == study.results["delta_score_norm_mean"].notna().sum()
    np.testing.assert_array_equal(measured["delta_pred"], measured["delta_score_norm_mean"])
    assert predicted[["delta_pred", "delta_lo", "delta_hi", "p_harm"]].notna().all().all()
    assert (predicted["delta_lo"] <= predicted["delta_pred"]).all() and (predicted["delta_pred"] <= predicted["delta_hi"]).all()


def test_additive_truth_is_recovered_exactly_without_noise():
    study = synthetic_transfer_table(n_models=2, n_sources=12, noise_sd=0.0, seed=4)
    error = unmeasured_error(predict_transfer(study.results), study.truth)
    assert len(error) == 2 * 32 * 44
    assert np.abs(error).max() < 1e-3


def test_rank_one_interaction_is_recovered_from_enough_sources():
    study = synthetic_transfer_table(n_models=2, n_sources=30, noise_sd=0.1, seed=5)
    grid = Grid.of(study.truth)
    rng = np.random.default_rng(5)
    loading = rng.normal(0, 1, len(grid.tasks))[grid.cell_task] + rng.normal(0, 1, len(grid.languages))[grid.cell_language]
    response = rng.normal(0, 1.5, len(grid.cells))
    _, source, target = grid.codes(study.truth)
    results, truth = with_planted(study, loading[source] * response[target])
    model = fit_transfer_model(results)
    ours = np.sqrt(np.mean(unmeasured_error(model.predict(), truth) ** 2))
    additive = np.sqrt(np.mean(unmeasured_error(fit_transfer_model(results, kind="additive").predict(), truth) ** 2))
    assert model.rank >= 1
    assert ours < 0.1 and additive > 1.0


def test_held_out_coverage_is_inside_the_stated_band():
    study = synthetic_transfer_table(n_models=4, n_sources=12, interactions=1.0, missing=0.02, seed=6)
    scores = transfer_scores(predict_transfer(study.results), study.truth)
    pooled = scores.set_index("model_name").loc["all"]
    assert 0.85 <= pooled["coverage"] <= 0.95
    assert pooled["n_cells"] > 4 * 32 * 44


def test_choose_sources_never_proposes_a_measured_source():
    study = synthetic_transfer_table(n_models=2, n_sources=12, seed=7)
    measured = set(map(tuple, study.results[["model_name", "fine_tuned_dataset", "fine_tuned_language"]].drop_duplicates().to_numpy()))
    chosen = choose_sources(study.results, 5)
    assert len(chosen) == 10 and len(set(chosen)) == 10
    assert not measured & set(chosen)
    extra = [chosen[0]]
    again = choose_sources(study.results, 3, measured=extra)
    assert not (measured | set(extra)) & set(again)
    shared = choose_sources(study.results, 4, per_model=False)
    assert all(c.model is None for c in shared)
    assert not {(model, c.task, c.language) for c in shared for model in Grid.of(study.results).models} & measured


def test_choose_sources_plans_from_an_empty_grid_covering_tasks_and_languages_first():
    grid = synthetic_transfer_table(n_models=1, n_sources=12, seed=8).truth[["model_name", "eval_dataset", "eval_language"]]
    chosen = choose_sources(grid, 11)
    assert {c.language for c in chosen} == set(Grid.of(grid).languages)
    assert {c.task for c in chosen} == set(Grid.of(grid).tasks)


def test_recommend_ranks_a_planted_best_donor_first_and_flags_a_planted_harmful_one():
    study = synthetic_transfer_table(n_models=2, n_sources=12, noise_sd=0.3, shared_sources=True, seed=9)
    sources = study.results[["fine_tuned_dataset", "fine_tuned_language"]].drop_duplicates().to_numpy()
    (best_task, best_language), (bad_task, bad_language) = sources[0], sources[1]
    truth = study.truth
    on_truthfulqa = truth["eval_dataset"] == "truthfulqa"
    best = (truth["fine_tuned_dataset"] == best_task) & (truth["fine_tuned_language"] == best_language)
    bad = (truth["fine_tuned_dataset"] == bad_task) & (truth["fine_tuned_language"] == bad_language)
    results, _ = with_planted(study, np.where(on_truthfulqa & best, 8.0, 0.0) + np.where(on_truthfulqa & bad, -8.0, 0.0))
    ranked = recommend_sources(results, ["truthfulqa/*"], top=44)
    for _, one in ranked.groupby("model_name"):
        first = one.iloc[0]
        assert (first["fine_tuned_dataset"], first["fine_tuned_language"], first["measured"]) == (best_task, best_language, True)
        assert first["n_targets"] == 11
        harmful = one[(one["fine_tuned_dataset"] == bad_task) & (one["fine_tuned_language"] == bad_language)]
        assert harmful["p_harm_any"].iloc[0] > 0.99
    cautious = recommend_sources(results, ["truthfulqa/*"], top=44, max_harm=0.5, model=ranked["model_name"].iat[0])
    assert not ((cautious["fine_tuned_dataset"] == bad_task) & (cautious["fine_tuned_language"] == bad_language)).any()
    assert set(cautious["model_name"]) == {ranked["model_name"].iat[0]}


def test_too_few_measured_sources_names_the_minimum():
    study = synthetic_transfer_table(n_models=2, n_sources=12, seed=10)
    results = study.results
    pairs = results[["model_name", "fine_tuned_dataset", "fine_tuned_language"]].drop_duplicates()
    kept = pairs.groupby("model_name").head(MIN_SOURCES_PER_MODEL - 1)
    too_few = results.merge(kept, on=list(kept.columns))
    with pytest.raises(InsufficientData, match=f"at least {MIN_SOURCES_PER_MODEL} measured sources"):
        fit_transfer_model(too_few)


def test_a_target_pattern_that_matches_nothing_names_the_targets():
    study = synthetic_transfer_table(n_models=1, languages=("de", "en", "fr"), n_sources=4, seed=11)
    with pytest.raises(NoMatchingTargets, match="'klingon/\\*'.*truthfulqa/en") as caught:
        recommend_sources(study.results, ["truthfulqa/*", "klingon/*"])
    assert isinstance(caught.value, DonorsError)
    with pytest.raises(DonorsError, match="model 'nope'"):
        recommend_sources(study.results, ["*/en"], model="nope")


def test_cross_validation_reports_every_method_per_model_and_pooled():
    study = synthetic_transfer_table(n_models=2, languages=("de", "en", "fr", "hi"), n_sources=8, interactions=1.0, seed=12)
    for per_model in (False, True):
        table = cross_validate(study.results, k=3, per_model=per_model)
        assert set(table["method"]) == {"transfer", "additive", "regime_mean"}
        assert len(table) == 3 * 3
        assert table["rmse"].gt(0).all() and table["coverage"].between(0, 1).all()
