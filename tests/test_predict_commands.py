"""`donors predict`, `donors recommend` and `donors plan --budget`, as a user runs them (the installed command).

The statistics are tested in tests/test_predict.py; here: what the commands read and write,
that a prediction never lands among the measurements, and that bad input stops with a message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from donors import api
from donors.analysis.predict import PREDICTION_COLUMNS, predict_transfer, synthetic_transfer_table
from donors.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
TASKS, LANGUAGES = ("number_words", "cldr_continent"), ("de", "es", "fr")


def donors(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "donors"), *args], capture_output=True, text=True, timeout=900, cwd=cwd)


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    """The demo's grid (SmolLM2, 2 tasks x 3 languages) with 5 of its 6 sources measured, planted structure."""
    study = synthetic_transfer_table(n_models=1, tasks=TASKS, languages=LANGUAGES, n_sources=5, interactions=1.0, seed=3)
    results = study.results.assign(model_name="smollm2-135m")
    path = tmp_path_factory.mktemp("measured") / "results.csv"
    results.to_csv(path, index=False)
    return path


def test_predict_writes_every_cell_apart_from_the_measurements_it_read(measured, tmp_path):
    before = measured.read_bytes()
    done = donors("predict", str(measured), "--out", str(tmp_path / "prediction"), "--cv", "2")
    message = " ".join(done.stderr.split())
    assert done.returncode == 2 and "--cv 2: a fold holds out" in message and "Use more folds" in message
    done = donors("predict", str(measured), "--out", str(tmp_path / "prediction"), "--cv", "5")
    assert done.returncode == 0, done.stderr
    assert "6 of 36 cells predicted, 30 measured" in done.stderr
    cells = pd.read_csv(tmp_path / "prediction" / "predicted_transfer.csv")
    assert cells.columns.tolist() == PREDICTION_COLUMNS and len(cells) == 36
    inputs = pd.read_csv(measured)
    keys = ["fine_tuned_dataset", "fine_tuned_language", "eval_dataset", "eval_language"]
    kept = cells[cells["measured"]].merge(inputs, on=keys)
    assert len(kept) == 30
    assert kept["delta_pred"].to_numpy() == pytest.approx(kept["delta_score_norm_mean"].to_numpy(), rel=1e-15)
    predicted = cells[~cells["measured"]]
    assert (predicted["delta_lo"] < predicted["delta_pred"]).all() and (predicted["delta_pred"] < predicted["delta_hi"]).all()
    assert predicted["p_harm"].between(0, 1).all()
    assert measured.read_bytes() == before, "a prediction is never written into the measurements"
    cv = pd.read_csv(tmp_path / "prediction" / "predict_cv.csv")
    assert set(cv["method"]) == {"transfer", "additive", "regime_mean"} and cv["scheme"].nunique() == 2


def test_recommend_ranks_sources_for_the_chosen_targets_and_names_them_when_none_match(measured):
    done = donors("recommend", str(measured), "--targets", "number_words/*", "--top", "3")
    assert done.returncode == 0, done.stderr
    assert "what to fine-tune on for number_words/*" in done.stdout and done.stdout.count("smollm2-135m") == 3
    assert "Δ in pp of the table's delta_score_norm_mean" in " ".join(done.stdout.split())  # which score the gains are in
    ranked = api.recommend(measured, ["number_words/*"], top=6)
    assert ranked["gain"].is_monotonic_decreasing and ranked["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert ranked["measured"].sum() == 5
    done = donors("recommend", str(measured), "--targets", "truthfulqa/*")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())  # rich wraps long lines
    assert "'truthfulqa/*' match no target; the targets are cldr_continent/de, cldr_continent/es" in message


def test_too_few_measured_sources_name_the_minimum(tmp_path):
    results = synthetic_transfer_table(n_models=1, tasks=TASKS, languages=LANGUAGES, n_sources=None, seed=1).results
    path = tmp_path / "two_sources.csv"
    results[results["fine_tuned_language"].isin(["de"])].to_csv(path, index=False)
    done = donors("predict", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "at least 3 measured sources" in " ".join(done.stderr.split()), done.stderr
    assert not (tmp_path / "two_sources_prediction" / "predicted_transfer.csv").exists()


def test_plan_budget_proposes_unmeasured_sources_as_yaml_that_the_config_accepts(measured, tmp_path):
    done = donors("plan", str(DEMO), "--budget", "2", "--measured", str(measured))
    assert done.returncode == 0, done.stderr
    proposal = yaml.safe_load(done.stdout)
    trained = pd.read_csv(measured)[["fine_tuned_dataset", "fine_tuned_language"]].drop_duplicates()
    already = {f"{t}/{lang}" for t, lang in trained.itertuples(index=False)}
    (listed,) = proposal["sources"].values()
    assert set(listed[:5]) == already and len(listed) == 6 and not set(listed[5:]) & already
    data = yaml.safe_load(DEMO.read_text()) | proposal
    assert len(config_from_dict(data).source_cells("smollm2-135m")) == 6
    # From nothing measured, shared across models: every task and language is covered first.
    fresh = config_from_dict(yaml.safe_load(DEMO.read_text()) | {"output_dir": str(tmp_path / "fresh")})
    plan = api.choose_next_sources(fresh, 3, shared=True)
    assert plan.choices["model"].isna().all()
    assert {c.split("/")[1] for c in yaml.safe_load(plan.sources_yaml)["sources"]} == set(LANGUAGES)


def test_a_source_that_is_never_a_target_is_refused_not_dropped(measured):
    from donors.analysis.results import ResultsTableError

    results = pd.read_csv(measured)
    stray = results.iloc[[0]].assign(fine_tuned_dataset="other_task", regime="CT-ML")
    with pytest.raises(ResultsTableError, match=r"source\(s\) other_task/\w+ are never a target of the table"):
        predict_transfer(pd.concat([results, stray]))


def test_a_study_whose_settings_file_is_broken_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    done = donors("analyze", str(tmp_path))
    assert done.returncode == 2 and "config.json: not the JSON `donors run` writes" in " ".join(done.stderr.split())


def test_the_report_shows_what_to_fine_tune_on_and_marks_predicted_cells(measured, tmp_path):
    page_path = api.write_report(measured, tmp_path / "report.html")
    page = page_path.read_text()
    assert "What to fine-tune on" in page and "Measured and predicted transfer: smollm2-135m" in page
    assert "6 of 36 cells predicted" in page
    assert (tmp_path / "figures" / "predicted_matrix__smollm2-135m.png").is_file()
    # The report's own copy of the results holds the measurements only.
    assert len(pd.read_csv(page_path.with_suffix(".results.csv"))) == len(pd.read_csv(measured))
    advice = api.analyze(measured, tmp_path / "tables").tables["what_to_fine_tune_on"]
    assert set(advice["targets"]) == {"all targets", "number_words/*", "cldr_continent/*"}
    assert (advice.groupby("targets")["rank"].max() == 3).all()


def test_a_one_seed_study_gives_measured_cells_their_item_bootstrap_interval(measured):
    from donors.analysis.constants import PUBLISHED_NAMES
    from donors.analysis.study import _with_item_level_se

    results = pd.read_csv(measured).assign(delta_score_norm_se=float("nan"))
    pairs = results.rename(columns={published: ours for ours, published in PUBLISHED_NAMES.items()}).assign(
        ci_low=lambda f: f["delta_score_norm_mean"] - 1.959964 * 2.0, ci_high=lambda f: f["delta_score_norm_mean"] + 1.959964 * 2.0
    )
    filled = _with_item_level_se(results, pairs)
    assert filled["delta_score_norm_se"].to_numpy() == pytest.approx(2.0)
    cells = predict_transfer(filled)
    kept = cells[cells["measured"]]
    assert (kept["delta_hi"] - kept["delta_lo"]).to_numpy() == pytest.approx(2 * 1.644854 * 2.0, rel=1e-5)


def test_plan_budget_keeps_the_configs_own_sources_and_never_proposes_them(tmp_path):
    data = yaml.safe_load(DEMO.read_text()) | {"output_dir": str(tmp_path / "fresh"), "sources": ["number_words/de", "cldr_continent/fr"]}
    plan = api.choose_next_sources(config_from_dict(data), 2)
    (listed,) = yaml.safe_load(plan.sources_yaml)["sources"].values()
    assert listed[:2] == ["number_words/de", "cldr_continent/fr"] and len(listed) == 4
    assert not {"number_words/de", "cldr_continent/fr"} & set(listed[2:])


def test_a_per_model_sources_mapping_must_name_every_model():
    from donors.config import ConfigError

    data = yaml.safe_load(DEMO.read_text()) | {"models": ["smollm2-135m", "gemma3-270m"], "sources": {"smollm2-135m": ["de"]}}
    with pytest.raises(ConfigError, match=r"not for 'gemma3-270m': give each model its list \(an empty list \[\] trains nothing"):
        config_from_dict(data)
    data["sources"]["gemma3-270m"] = []
    assert config_from_dict(data).source_cells("gemma3-270m") == []
