"""The published analyses (protocol A1-A16) on synthetic tables with planted structure."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
from synthetic import (
    PUBLISHED_LANGUAGES,
    PUBLISHED_MODELS,
    PUBLISHED_TASKS,
    grid,
    published_statistics_table,
    results_table,
    table_from_rows,
    with_scores,
)

from donors.analysis import (
    ResultsTableError,
    check_published_values,
    consistency_family,
    consistency_index,
    curated_vs_translated_donor_correlation,
    derive_regime,
    family_distances,
    global_uplift,
    kendall_tau_b,
    language_donor_recipient,
    language_roles,
    language_roles_by_family,
    language_transfer_matrix,
    linguistic_correlations,
    load_results_table,
    mtcl_by_construction_type,
    mtcl_harm_breakdown,
    pareto_family_summary,
    pareto_profiles,
    published_analyses,
    regime_summary,
    run_published_analyses,
    save_tables,
    task_donor_recipient,
    task_on_off_summary,
    task_transfer_matrix,
    transfer_set,
    transfer_statistics,
    typological_distances,
    variance_components,
    variance_decomposition,
    variance_shares,
)
from donors.analysis.constants import PUBLISHED_BY_REGIME, PUBLISHED_TRANSFER, REQUIRED_COLUMNS
from donors.report import figures

TABLE_NAMES = [
    "global_uplift",
    "regime_summary",
    "mtcl_harm_breakdown",
    "mtcl_by_construction_type",
    "linguistic_correlations",
    "pareto_profiles",
    "pareto_family_summary",
    "task_on_off_summary",
    "language_donor_recipient",
    "language_roles_by_family",
    "language_roles_all",
    "language_roles_curated",
    "language_roles_translated",
    "curated_vs_translated_donor_correlation",
    "task_donor_recipient",
    "task_transfer_matrix",
    "language_transfer_matrix",
    "variance_decomposition_all",
    "variance_decomposition_global_mmlu",
    "variance_decomposition_translated",
    "consistency_by_model",
    "consistency_by_family",
    "consistency_by_size",
]
SMALL_MODELS = {"Llama-3.2-1B-Instruct": 1.0, "Qwen2.5-7B-Instruct": 7.0, "gemma-3-4b-it": 4.0}


@pytest.fixture(scope="module")
def full() -> pd.DataFrame:
    """The 9 x 44 x 44 = 17,424-row grid with planted effects."""
    return results_table(regime_effects={"MT-ML": 3.0, "MT-CL": 1.0}, seed=1)


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    """A full grid whose section-5 statistics are the published ones."""
    return published_statistics_table(seed=2)


@pytest.fixture(scope="module")
def hand() -> pd.DataFrame:
    """Six rows, one model, worked by hand below."""
    return table_from_rows(
        [
            ("m-1B", 1.0, "a", "x", "a", "x", 2.0),  # MT-ML
            ("m-1B", 1.0, "a", "x", "a", "y", 0.0),  # MT-CL
            ("m-1B", 1.0, "a", "x", "b", "x", -1.0),  # CT-ML
            ("m-1B", 1.0, "a", "x", "b", "y", 0.5),  # CT-CL
            ("m-1B", 1.0, "a", "y", "a", "x", -3.0),  # MT-CL
            ("m-1B", 1.0, "a", "y", "b", "y", 1.0),  # CT-ML
        ]
    )


# Loading and conventions ---------------------------------------------------------------


def test_load_reads_csv_with_na_sources(tmp_path):
    table = results_table(SMALL_MODELS, ["a"], ["x", "y"], seed=0)
    table.loc[0, ["fine_tuned_dataset", "fine_tuned_language", "regime"]] = "n/a"
    table.loc[1, ["fine_tuned_dataset", "fine_tuned_language", "regime"]] = ["NA", "nan", ""]  # how R and pandas write missing
    table["score_std"] = table["score_std"].astype(object)
    table.loc[2, "score_std"] = "#NA"  # pandas' missing-value text in a number column
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    loaded = load_results_table(path)
    assert loaded.loc[[0, 1], ["fine_tuned_dataset", "fine_tuned_language"]].isna().all().all()
    assert derive_regime(loaded).iloc[:2].isna().all() and loaded["regime"].iloc[:2].isna().all()
    assert pd.isna(loaded.loc[2, "score_std"])
    # A regime's name on a row without a source would put a base-model row into O or T.
    table.loc[0, "regime"] = "MT-ML"
    table.to_csv(path, index=False)
    with pytest.raises(ResultsTableError, match=r"row 2: 'MT-ML' where the keys say none \(the row has no source\)"):
        load_results_table(path)
    table = results_table(SMALL_MODELS, ["a"], ["x", "y"], seed=0)
    table.loc[0, ["fine_tuned_dataset", "fine_tuned_language"]] = "n/a"
    table.loc[0, "regime"] = ""
    table.to_csv(path, index=False)
    loaded = load_results_table(path)
    assert loaded["delta_score_norm_mean"].dtype == float
    assert np.allclose(loaded["delta_score_norm_mean"], table["delta_score_norm_mean"])


def test_load_names_file_and_missing_columns(tmp_path):
    path = tmp_path / "broken.csv"
    results_table(SMALL_MODELS, ["a"], ["x"]).drop(columns=["regime", "n_seeds"]).to_csv(path, index=False)
    with pytest.raises(ResultsTableError, match="broken.csv") as error:
        load_results_table(path)
    assert "regime" in str(error.value) and "n_seeds" in str(error.value)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        load_results_table(tmp_path / "absent.csv")


def test_full_grid_check_is_opt_in(full):
    small = results_table(SMALL_MODELS, ["a", "b"], ["x", "y"])
    assert len(load_results_table(small)) == 3 * 16
    with pytest.raises(ResultsTableError, match="17,424"):
        load_results_table(small, expect_full_grid=True)
    assert len(load_results_table(full, expect_full_grid=True)) == 17_424
    assert set(REQUIRED_COLUMNS) <= set(full.columns)


def test_regime_counts_on_the_full_grid(full):
    derived = derive_regime(full)
    assert (derived == full["regime"]).all()
    assert derived.value_counts().to_dict() == {"CT-CL": 11880, "MT-CL": 3960, "CT-ML": 1188, "MT-ML": 396}
    assert len(transfer_set(full)) == 17_028


def test_thresholds_at_exact_boundaries():
    delta = pd.Series([0.0, -1.0, -0.9999999999, 1e-12, -1.0000000001, 2.0, np.nan])
    stats = transfer_statistics(delta)
    assert stats["n"] == 6
    assert stats["positive_transfer_rate_pct"] == pytest.approx(100 * 2 / 6)  # 1e-12 and 2
    assert stats["harm_rate_pct"] == pytest.approx(100 * 2 / 6)  # -1 and -1.0000000001


# A1-A4 ---------------------------------------------------------------------------------


def test_global_uplift_and_regime_summary_by_hand(hand):
    uplift = global_uplift(hand)
    assert uplift.columns.tolist() == ["mean_delta", "median_delta", "positive_transfer_rate_pct", "n"]
    assert uplift.iloc[0].tolist() == [-0.5, 0.0, 40.0, 5]
    summary = regime_summary(hand)
    assert summary.index.name == "bucket"
    assert summary.index.tolist() == ["MT-ML", "MT-CL", "CT-ML", "CT-CL"]
    expected = pd.DataFrame(
        {
            "n": [1, 2, 2, 1],
            "mean_delta": [2.0, -1.5, 0.0, 0.5],
            "median_delta": [2.0, -1.5, 0.0, 0.5],
            "positive_transfer_rate_pct": [100.0, 0.0, 50.0, 100.0],
            "harm_rate_pct": [0.0, 50.0, 50.0, 0.0],
        },
        index=summary.index,
    )
    pd.testing.assert_frame_equal(summary, expected)


def test_regime_summary_keeps_absent_regimes():
    one_task = results_table(SMALL_MODELS, ["a"], ["x", "y"])
    summary = regime_summary(one_task)
    assert summary.loc["CT-ML", "n"] == 0 and math.isnan(summary.loc["CT-ML", "mean_delta"])


def test_published_statistics_reproduced(published):
    assert global_uplift(published).iloc[0].tolist() == [0.8936, 0.25, 59.6782, 17028]
    summary = regime_summary(published)
    assert summary["n"].tolist() == [396, 3960, 1188, 11880]
    for regime, expected in PUBLISHED_BY_REGIME.items():
        assert summary.loc[regime, "mean_delta"] == pytest.approx(expected["mean"], abs=1e-9)
        assert summary.loc[regime, "harm_rate_pct"] == pytest.approx(expected["harm rate"], abs=1e-9)
    overall = mtcl_harm_breakdown(published).loc[("overall", "ALL")]
    assert overall[["n", "mean_delta", "positive_transfer_rate_pct", "harm_rate_pct"]].tolist() == [3960, 1.2465, 66.4141, 7.1212]
    assert mtcl_by_construction_type(published).loc["all"].tolist() == overall.tolist()


def test_check_published_values(published, full):
    report = check_published_values(published)
    assert report.columns.tolist() == ["statistic", "expected", "got", "ok"]
    assert report["ok"].all(), report[~report["ok"]]
    expected = report.set_index("statistic")["expected"]
    assert expected["transfer median"] == PUBLISHED_TRANSFER["median"] == 0.2499999999999983
    assert expected["CT-ML mean"] == 0.8077300785634120
    mismatch = check_published_values(full).set_index("statistic")
    assert mismatch.loc["rows", "ok"] and mismatch.loc["CT-CL rows", "ok"]
    assert not mismatch.loc["transfer mean", "ok"]
    assert not check_published_values(full.iloc[:100]).loc[0, "ok"]


def test_mtcl_harm_breakdown_groups(full):
    table = mtcl_harm_breakdown(full)
    assert table.index.names == ["group", "key"]
    assert table.index.is_monotonic_increasing
    n = table["n"]
    assert n[("overall", "ALL")] == 3960
    assert set(n.loc["by_language"]) == {360} and len(n.loc["by_language"]) == 11
    assert set(n.loc["by_dataset"]) == {990}
    assert n.loc["by_size_bucket"].to_dict() == {"L": 880, "M": 1320, "S": 1760}
    assert n.loc["by_family"].to_dict() == {"Gemma": 880, "Llama": 1320, "Qwen": 1760}
    assert (table.round(4) == table).all().all()


def test_construction_type_split(full):
    table = mtcl_by_construction_type(full)
    assert table.index.name == "subset"
    assert table.index.tolist() == ["all", "human-translated", "machine-translated"]
    assert table["n"].tolist() == [3960, 990, 2970]
    custom = mtcl_by_construction_type(full, curated={"global_mmlu", "hellaswag"})
    assert custom["n"].tolist() == [3960, 1980, 1980]


# A6-A8 ---------------------------------------------------------------------------------


def test_pareto_profiles_and_family_summary(full):
    profiles = pareto_profiles(full)
    assert len(profiles) == 396
    assert (profiles["n_on"] == 10).all() and (profiles["n_off"] == 33).all()
    assert profiles.columns[-5:].tolist() == ["MT-CL gain (Δ pp)", "n_on", "Mean off-task Δ (pp)", "n_off", "harm_rate"]
    row = profiles.iloc[0]
    run = full[(full["model_name"] == row["model_name"]) & (full["fine_tuned_dataset"] == row["fine_tuned_dataset"])]
    source = run[run["fine_tuned_language"] == row["fine_tuned_language"]]
    on = source[(source["eval_dataset"] == row["fine_tuned_dataset"]) & (source["regime"] == "MT-CL")]
    off = source[source["eval_dataset"] != row["fine_tuned_dataset"]]["delta_score_norm_mean"]
    assert row["MT-CL gain (Δ pp)"] == pytest.approx(on["delta_score_norm_mean"].mean())
    assert row["Mean off-task Δ (pp)"] == pytest.approx(off.mean())
    assert row["harm_rate"] == pytest.approx(100 * (off <= -1).mean())
    summary = pareto_family_summary(profiles)
    assert len(summary) == 36
    mean = summary.set_index(["model_name", "fine_tuned_dataset"]).loc[(row["model_name"], row["fine_tuned_dataset"]), "MT-CL gain (Δ pp)"]
    pooled = run[(run["eval_dataset"] == row["fine_tuned_dataset"]) & (run["regime"] == "MT-CL")]
    assert mean == pytest.approx(pooled["delta_score_norm_mean"].mean())  # equal counts


def test_pareto_filters_thin_units():
    table = results_table(SMALL_MODELS, ["a", "b"], ["x", "y", "z"])
    assert pareto_profiles(table).empty  # two other languages < 3 on-task targets


def test_task_on_off_summary(full):
    table = task_on_off_summary(full)
    assert table["task"].tolist() == sorted(PUBLISHED_TASKS)
    t = transfer_set(full)
    on = t[
        (t["fine_tuned_dataset"] == "hellaswag") & (t["eval_dataset"] == "hellaswag") & (t["eval_language"] != t["fine_tuned_language"])
    ]["delta_score_norm_mean"]
    off = t[(t["fine_tuned_dataset"] == "hellaswag") & (t["eval_dataset"] != "hellaswag")]["delta_score_norm_mean"]
    assert (len(on), len(off)) == (990, 3267)
    row = table.set_index("task").loc["hellaswag"]
    assert row["on_delta"] == pytest.approx(on.mean())
    assert row["off_harm_pct"] == pytest.approx(100 * (off <= -1).mean())
    assert row["on_positive_transfer_rate_pct"] == pytest.approx(100 * (on > 0).mean())


# A9-A12 --------------------------------------------------------------------------------


def test_language_roles_structure(full):
    mtcl = full[full["regime"] == "MT-CL"]
    assert set(mtcl.groupby(["model_name", "fine_tuned_language"]).size()) == {40}
    roles = language_donor_recipient(full)
    assert roles.columns.tolist() == ["lang", "donor", "recipient"]
    assert roles["lang"].tolist() == list(PUBLISHED_LANGUAGES)
    pooled = mtcl.groupby("fine_tuned_language")["delta_score_norm_mean"].mean()
    assert np.allclose(roles.set_index("lang")["donor"], pooled)  # equal counts: two-stage = pooled
    pd.testing.assert_frame_equal(language_roles(full), roles)
    families = language_roles_by_family(roles)
    assert families["family"].tolist() == ["Arabic", "Chinese", "Germanic", "Indic", "Indonesian", "Romance"]
    romance = roles.set_index("lang").loc[["es", "fr", "it", "pt"]].mean()
    assert families.set_index("family").loc["Romance", "donor"] == pytest.approx(romance["donor"])


def test_two_stage_mean_differs_from_pooled_when_rows_are_missing():
    models = {"A-1B": 1.0, "B-1B": 1.0}
    frame = grid(models, ["a", "b"], ["x", "y", "z"])
    keep = ~(
        (frame["model_name"] == "B-1B")
        & (frame["fine_tuned_language"] == "x")
        & ~((frame["fine_tuned_dataset"] == "a") & (frame["eval_language"] == "y"))
    )
    frame = frame[keep].reset_index(drop=True)
    delta = np.where(frame["model_name"] == "A-1B", 1.0, 3.0)
    table = with_scores(frame, delta)
    table.loc[
        (table["model_name"] == "A-1B")
        & (table["regime"] == "MT-CL")
        & (table["fine_tuned_language"] == "x")
        & (table["eval_language"] == "z")
        & (table["fine_tuned_dataset"] == "a"),
        "delta_score_norm_mean",
    ] = np.nan
    roles = language_donor_recipient(table).set_index("lang")
    # Donor x: model A has 3 non-missing MT-CL rows of 1, model B one row of 3.
    assert roles.loc["x", "donor"] == pytest.approx((1.0 + 3.0) / 2)
    assert roles.loc["x", "donor"] != pytest.approx((3 * 1.0 + 3.0) / 4)


def test_language_groups_for_unknown_languages():
    table = results_table(SMALL_MODELS, ["a"], ["en", "de", "sw", "zz"], seed=3)
    families = language_roles_by_family(language_donor_recipient(table))
    assert families["family"].tolist() == ["Germanic", "sw", "zz"]


def test_curated_and_translated_roles(full):
    curated = language_roles(full, datasets={"global_mmlu"})
    translated = language_roles(full, datasets={"global_mmlu"}, exclude=True)
    mtcl = full[(full["regime"] == "MT-CL") & (full["eval_dataset"] == "global_mmlu")]
    assert curated.set_index("lang")["recipient"].to_dict() == pytest.approx(
        mtcl.groupby("eval_language")["delta_score_norm_mean"].mean().to_dict()
    )
    rho = curated_vs_translated_donor_correlation(curated, translated)
    assert rho.columns.tolist() == ["spearman_rho"] and len(rho) == 1
    from scipy.stats import spearmanr

    assert rho.iloc[0, 0] == pytest.approx(spearmanr(curated["donor"], translated["donor"]).statistic)
    assert math.isnan(curated_vs_translated_donor_correlation(curated.iloc[:1], translated).iloc[0, 0])


def test_task_donor_recipient(full):
    ctml = full[full["regime"] == "CT-ML"]
    assert set(ctml.groupby(["model_name", "fine_tuned_dataset"]).size()) == {33}
    roles = task_donor_recipient(full)
    assert roles.columns.tolist() == ["dataset", "donor", "recipient"]
    assert roles.set_index("dataset")["recipient"].to_dict() == pytest.approx(
        ctml.groupby("eval_dataset")["delta_score_norm_mean"].mean().to_dict()
    )


# A13-A14 -------------------------------------------------------------------------------


def test_task_transfer_matrix_recovers_planted_cells():
    tasks = ["hellaswag", "zeta", "global_mmlu", "alpha", "arc_challenge"]
    frame = grid(SMALL_MODELS, tasks, ["x", "y"])
    planted = {(s, t): 10 * i + j for i, s in enumerate(tasks) for j, t in enumerate(tasks)}
    delta = np.array([planted[k] for k in zip(frame["fine_tuned_dataset"], frame["eval_dataset"])], float)
    # Model offsets cancel in each pooled cell; other regimes get noise the matrix must ignore.
    model_offset = frame["model_name"].map({m: i - 1.0 for i, m in enumerate(SMALL_MODELS)}).to_numpy()
    noise = np.random.default_rng(0).normal(0, 5, len(frame))
    ctml = (frame["regime"] == "CT-ML").to_numpy()
    matrix = task_transfer_matrix(with_scores(frame, delta + np.where(ctml, model_offset, noise)))
    order = ["arc_challenge", "hellaswag", "global_mmlu", "alpha", "zeta"]
    assert matrix.index.tolist() == order and matrix.columns.tolist() == order
    assert matrix.index.name == "source_task"
    for s in order:
        for t in order:
            if s == t:
                assert math.isnan(matrix.loc[s, t])
            else:
                assert matrix.loc[s, t] == pytest.approx(planted[(s, t)])


def test_language_transfer_matrix_recovers_planted_cells(full):
    languages = ["zh", "en", "ar", "qq"]
    frame = grid(SMALL_MODELS, ["a", "b"], languages)
    planted = {(s, t): i - 2 * j for i, s in enumerate(languages) for j, t in enumerate(languages)}
    delta = np.array([planted[k] for k in zip(frame["fine_tuned_language"], frame["eval_language"])], float)
    matrix = language_transfer_matrix(with_scores(frame, delta))
    assert matrix.index.tolist() == ["ar", "en", "zh", "qq"]
    assert matrix.index.name == "source_language"
    assert np.isnan(np.diag(matrix.to_numpy())).all()
    assert matrix.loc["qq", "en"] == planted[("qq", "en")]
    pairs = full[full["regime"] == "MT-CL"].groupby(["fine_tuned_language", "eval_language"])["delta_score_norm_mean"]
    assert set(pairs.size()) == {36}
    published_matrix = language_transfer_matrix(full)
    assert published_matrix.stack().dropna().to_dict() == pytest.approx(pairs.mean().to_dict())


# A5 ------------------------------------------------------------------------------------


def test_linguistic_correlations_recover_planted_negative_relation():
    languages = [*PUBLISHED_LANGUAGES, "zz"]
    distances = typological_distances(PUBLISHED_LANGUAGES)
    assert len(distances) == 110
    syntax = distances.set_index(["src", "tgt"])["Syntax Distance"]
    frame = grid(SMALL_MODELS, ["a", "b"], languages)
    rng = np.random.default_rng(4)
    pair = list(zip(frame["fine_tuned_language"], frame["eval_language"]))
    delta = np.array([5.0 - 20.0 * syntax.get(p, 0.0) for p in pair]) + rng.normal(0, 0.2, len(frame))
    with pytest.warns(UserWarning, match="zz"):
        table = linguistic_correlations(with_scores(frame, delta))
    assert table.columns.tolist() == ["Metric", "Spearman (Rank)", "p-value", "Pearson (Linear)", "N"]
    assert table["Metric"].tolist() == ["Syntax Distance", "Phonology Distance", "Inventory Distance"]
    assert (table["N"] == 110).all()
    row = table.set_index("Metric").loc["Syntax Distance"]
    assert row["Spearman (Rank)"] < -0.9 and row["Pearson (Linear)"] < -0.9 and row["p-value"] < 1e-3
    fallback = linguistic_correlations(with_scores(frame, delta), distances=family_distances(languages))
    assert fallback["Metric"].tolist() == ["Family Distance"] and fallback["N"].item() == 132


def test_a_language_tag_with_a_region_or_script_falls_back_to_its_language():
    distances = typological_distances(["pt-BR", "zh_Hant", "pt", "zh"]).set_index(["src", "tgt"])
    assert distances.loc[("pt-BR", "zh_Hant")].tolist() == distances.loc[("pt", "zh")].tolist()
    assert (distances.loc[("pt-BR", "pt")] == 0).all()


# A15 -----------------------------------------------------------------------------------


def _variance_table(seed, **sds):
    models = {f"model-{i}": 1.0 for i in range(4)}
    return results_table(models, ["a", "b", "c"], ["x", "y"], seed=seed, **sds)


def test_variance_decomposition_recovers_dominant_model_variance():
    table = _variance_table(5, model_sd=6.0, source_sd=0.5, target_sd=0.5, noise_sd=0.5)
    shares = variance_decomposition(table)
    assert shares.index.tolist() == ["Model", "Source", "Target", "Residual"]
    assert shares.columns.tolist() == ["Overall"]  # 24 MT-CL, 48 CT-ML, 48 CT-CL rows: each < 50
    assert shares["Overall"].sum() == pytest.approx(100)
    assert shares["Overall"].idxmax() == "Model" and shares.loc["Model", "Overall"] > 80


def test_variance_decomposition_recovers_dominant_target_variance():
    table = _variance_table(6, model_sd=0.2, source_sd=0.2, target_sd=4.0, noise_sd=0.5)
    shares = variance_decomposition(table, min_rows=1)
    assert shares.columns.tolist() == ["Overall", "MT-CL", "CT-ML", "CT-CL"]
    assert shares["Overall"].idxmax() == "Target" and shares.loc["Target", "Overall"] > 70


def test_dense_fit_matches_the_published_sparse_fit():
    table = _variance_table(9, model_sd=2.0, source_sd=1.0, target_sd=1.0, noise_sd=1.0)
    dense = variance_components(transfer_set(table))
    sparse = variance_components(transfer_set(table), use_sparse=True)
    assert dense == pytest.approx(sparse, rel=1e-6)


def test_variance_shares_drop_invalid_components():
    shares = variance_shares({"Model": 1.0, "Source": -0.5, "Target": np.nan, "Residual": 3.0})
    assert shares.to_dict() == {"Model": 25.0, "Source": 0.0, "Target": 0.0, "Residual": 75.0}
    assert variance_shares({"Model": 0.0, "Source": 0.0, "Target": 0.0, "Residual": 0.0}).isna().all()


# A16 -----------------------------------------------------------------------------------


def test_kendall_tau_b_by_hand():
    assert kendall_tau_b(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(4 / 6)
    # ties: x has one tied pair, y one; n_c = 4, n_d = 0, n0 = 6 -> 4 / sqrt(5 * 5)
    assert kendall_tau_b(np.array([1, 1, 2, 3]), np.array([1, 2, 3, 3])) == pytest.approx(0.8)
    assert math.isnan(kendall_tau_b(np.array([1, 1, 1]), np.array([1, 2, 3])))


def test_consistency_index_by_hand():
    ranks = {"A-1B": [1, 2, 3, 4], "B-1B": [1, 3, 2, 4], "C-1B": [4, 3, 2, 1]}
    recipients = ["p", "q", "r", "s"]
    rows = [(model, 1.0, "t", "o", "t", lang, float(value)) for model, values in ranks.items() for lang, value in zip(recipients, values)]
    index = consistency_index(table_from_rows(rows))
    assert index.columns.tolist() == ["regime", "fine_tuned_dataset", "fine_tuned_language", "ci", "n_pairs"]
    row = index.iloc[0]
    assert (row["regime"], row["n_pairs"]) == ("MT-CL", 3)
    assert row["ci"] == pytest.approx((2 / 3 - 1 - 2 / 3) / 3)
    # C is constant on a fourth model: its pairs give NaN tau and are skipped
    flat = rows + [("D-1B", 1.0, "t", "o", "t", lang, 0.0) for lang in recipients]
    assert consistency_index(table_from_rows(flat)).iloc[0]["n_pairs"] == 3
    # two recipients are too few
    assert math.isnan(consistency_index(table_from_rows([r for r in rows if r[5] in "pq"])).iloc[0]["ci"])


def test_consistency_units_on_the_full_grid(full):
    families = {consistency_family(m) for m in PUBLISHED_MODELS}
    assert families == {"Llama-3", "Qwen2.5", "gemma-3"}
    by_family = consistency_index(full, by="family")
    assert set(by_family["n_pairs"]) == {3} and len(by_family) == 132
    by_size = consistency_index(full, by="size")
    assert set(by_size["n_pairs"]) == {21}
    summary = published_analyses()["consistency_by_size"](full)
    assert summary.columns.tolist() == ["regime", "median", "q1", "q3", "n_sources"]
    assert summary["regime"].tolist() == ["MT-CL", "CT-ML", "CT-CL"]
    assert summary["n_sources"].tolist() == [44, 44, 44]
    ci = by_size.loc[by_size["regime"] == "CT-ML", "ci"]
    assert summary.loc[1, "median"] == pytest.approx(ci.median())
    assert summary.loc[1, "q1"] == pytest.approx(ci.quantile(0.25))


def test_consistency_by_model_pairs():
    table = results_table(PUBLISHED_MODELS, ["a", "b"], ["x", "y", "z", "w"], seed=7)
    index = consistency_index(table, by="model")
    assert set(index.loc[index["regime"] == "MT-CL", "n_pairs"]) == {36}
    assert index.loc[index["regime"] == "CT-ML", "ci"].isna().all()  # one recipient task


# Driver, saving, figures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run() -> dict[str, pd.DataFrame]:
    """Every table of a 3-model grid with an unknown task and language in it."""
    table = results_table(SMALL_MODELS, ["global_mmlu", "hellaswag", "dates"], ["en", "de", "fr", "sw"], seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_published_analyses(table)


def test_run_published_analyses_names_every_table(small_run):
    assert list(small_run) == TABLE_NAMES
    assert list(published_analyses()) == TABLE_NAMES
    assert all(isinstance(t, pd.DataFrame) for t in small_run.values())
    assert small_run["task_transfer_matrix"].index.tolist() == ["hellaswag", "global_mmlu", "dates"]
    assert small_run["variance_decomposition_all"].notna().all().all()
    assert small_run["linguistic_correlations"]["N"].tolist() == [12, 12, 12]


def test_save_tables_follows_the_saving_rules(small_run, tmp_path):
    paths = save_tables(small_run, tmp_path)
    assert [p.stem for p in paths] == TABLE_NAMES
    read = {p.stem: pd.read_csv(p) for p in paths}
    assert read["mtcl_harm_breakdown"].columns[:2].tolist() == ["group", "key"]
    assert read["regime_summary"].columns[0] == "bucket"
    assert read["mtcl_by_construction_type"].columns[0] == "subset"
    assert read["variance_decomposition_all"].columns[0] == "row"
    assert read["variance_decomposition_all"]["row"].tolist() == ["Model", "Source", "Target", "Residual"]
    assert read["task_transfer_matrix"].columns[0] == "source_task"
    assert read["language_transfer_matrix"].columns[0] == "source_language"
    assert read["global_uplift"].columns.tolist() == ["mean_delta", "median_delta", "positive_transfer_rate_pct", "n"]
    assert read["language_donor_recipient"].columns.tolist() == ["lang", "donor", "recipient"]


def test_analysis_never_imports_torch():
    code = (
        "import sys, donors.analysis; assert 'matplotlib' not in sys.modules; "
        "import donors.report.figures; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections)


def test_figures(full, tmp_path):
    assert matplotlib.get_backend() is not None
    profiles = pareto_profiles(full)
    summary = pareto_family_summary(profiles)
    drawn = {
        "pareto_on_off": figures.pareto_on_off_figure(profiles),
        "pareto_on_off_summary": figures.pareto_on_off_summary_figure(summary, profiles),
        "language_donor_recipient": figures.donor_recipient_figure(language_donor_recipient(full), key="lang", title="A9"),
        "task_donor_recipient": figures.donor_recipient_figure(task_donor_recipient(full), key="dataset", title="A12"),
        "task_transfer_matrix": figures.transfer_heatmap(task_transfer_matrix(full), title="A13"),
        "language_transfer_matrix": figures.language_transfer_matrix_figure(language_transfer_matrix(full)),
    }
    assert _points(drawn["pareto_on_off"].axes[0]) == 396
    panels = drawn["pareto_on_off_summary"].axes
    assert len(panels) == 3 and sum(_points(ax) for ax in panels) == 396 + 36
    for name, n in [("language_donor_recipient", 11), ("task_donor_recipient", 4)]:
        (ax,) = drawn[name].axes
        assert _points(ax) == n
        (diagonal,) = [line for line in ax.lines if line.get_label() == "y = x"]
        x, y = diagonal.get_data()
        assert np.allclose(x, y)
    task_ax, _colorbar = drawn["task_transfer_matrix"].axes
    (image,) = task_ax.images
    low, high = image.get_clim()
    assert low == -high == -np.nanmax(np.abs(task_transfer_matrix(full).to_numpy()))
    assert len(task_ax.texts) == 12 and all(len(t.get_text().split(".")[1]) == 1 for t in task_ax.texts)
    language_ax, _colorbar = drawn["language_transfer_matrix"].axes
    (image,) = language_ax.images
    assert image.get_cmap().name == "plasma"
    assert np.ma.getmaskarray(image.get_array()).diagonal().all()
    for name, figure in drawn.items():
        assert figure.axes[0].get_title()
        path = tmp_path / f"{name}.png"
        figure.savefig(path)
        assert path.stat().st_size > 1000
    assert set(
        figures.published_figures(
            {
                "pareto_profiles": profiles,
                "pareto_family_summary": summary,
                "language_donor_recipient": language_donor_recipient(full),
                "task_donor_recipient": task_donor_recipient(full),
                "task_transfer_matrix": task_transfer_matrix(full),
                "language_transfer_matrix": language_transfer_matrix(full),
            }
        )
    ) == set(drawn)
