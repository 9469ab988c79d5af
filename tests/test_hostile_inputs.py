"""Hostile but realistic inputs and outputs: each case stops with a clear message or is made harmless.

Future input paths add their cases here (config files: tests/test_config.py; the store:
tests/test_store.py; local data files: tests/test_file_tasks.py).
"""

from __future__ import annotations

import pandas as pd
import pytest

from donors.analysis.results import ResultsTableError, load_results_table, save_tables, write_csv


def results_rows(deltas: list[float]) -> pd.DataFrame:
    """A small results table in the published schema: model m-1B, source qa/de, targets qa/en, qa/fr, ..."""
    targets = ["en", "fr", "zh", "es"][: len(deltas)]
    return pd.DataFrame(
        {
            "model_name": "m-1B",
            "model_size": 1.0,
            "fine_tuned_dataset": "qa",
            "fine_tuned_language": "de",
            "eval_dataset": "qa",
            "eval_language": targets,
            "regime": "MT-CL",
            "delta_score_norm_mean": deltas,
            "n_seeds": 1,
        }
    )


def test_text_that_a_spreadsheet_would_execute_is_made_inert_and_numbers_are_not(tmp_path):
    table = pd.DataFrame(
        {
            "model_name": ["=cmd|' /C calc'!A0", "+1", "@SUM(A1)", "\tx", "safe", "-2+3"],
            "eval_language": ["en", "de", "zh", "fr", "es", '=HYPERLINK("http://x")'],
            "delta_score_norm_mean": [-1.5, 0.0, 2.25, -0.0, 3.0, -100.0],
            "n_seeds": [1, 1, 1, 1, 1, 1],
        }
    )
    path = write_csv(table, tmp_path / "t.csv")
    back = pd.read_csv(path, keep_default_na=False)
    assert back["model_name"].tolist() == ["'=cmd|' /C calc'!A0", "'+1", "'@SUM(A1)", "'\tx", "safe", "'-2+3"]
    assert back["eval_language"].iloc[-1] == '\'=HYPERLINK("http://x")'
    assert back["delta_score_norm_mean"].tolist() == [-1.5, 0.0, 2.25, -0.0, 3.0, -100.0]
    assert back["n_seeds"].tolist() == [1] * 6
    # Analysis tables go through the same writer, index levels and column names included.
    indexed = pd.DataFrame({"mean_delta": [-1.0]}, index=pd.Index(["=bad"], name="bucket"))
    (saved,) = save_tables({"regimes": indexed}, tmp_path / "tables")
    assert pd.read_csv(saved)["bucket"].tolist() == ["'=bad"]


def test_deltas_no_score_difference_can_be_are_refused_with_their_rows_and_missing_ones_are_skipped(tmp_path):
    good = results_rows([1.0, -100.0, float("nan"), 100.0])
    assert load_results_table(good)["delta_score_norm_mean"].isna().sum() == 1
    for bad in (float("inf"), -float("inf"), 1e308, -100.5):
        path = tmp_path / "bad.csv"
        results_rows([1.0, bad, 2.0]).to_csv(path, index=False)
        with pytest.raises(
            ResultsTableError,
            match=r"bad.csv: 1 row\(s\) have a delta_score_norm_mean that is infinite or beyond ±100 pp.*\(row 3: m-1B/qa/de/qa/fr = ",
        ):
            load_results_table(path)


def test_model_names_that_look_like_paths_never_write_outside_the_output(tmp_path):
    from donors import api

    rows = results_rows([1.0, -2.0, 0.5, 3.0])
    rows["model_name"] = "../../escaped/m-1B"
    rows["regime"] = "MT-CL"
    table = tmp_path / "in" / "results.csv"
    table.parent.mkdir()
    rows.to_csv(table, index=False)
    out = tmp_path / "deep" / "out"
    api.analyze(table, out)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != table]
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert not (tmp_path / "escaped").exists()
