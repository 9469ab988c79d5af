"""Numbers read from a results CSV as the release read them (pandas 2.3.3's default parser).

pandas 2.3.3 does not always read a 17-digit decimal as its nearest double; pandas 3 and
``float`` do. Strings an ulp from -1 or 0 then fall on different sides of the harm and
positive thresholds, and the published section-5 values are those of the old parser.
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import ULP_ABOVE_MINUS_ONE, published_text_table, table_from_rows

from donors.analysis import check_published_values, global_uplift, load_results_table, regime_summary
from donors.analysis.results import (
    FLOAT_PARSERS,
    delta_values,
    exact_float,
    published_float,
    transfer_set,
    transfer_statistics,
)
from donors.api import results_of

DELTA = "delta_score_norm_mean"

# (text, what pandas 2.3.3's read_csv gave by default, as float.hex), recorded with
# pandas 2.3.3 (x86-64 wheel) under float_precision=None.
PANDAS_2_3_3 = [
    ("-0.9999999999999999", "-0x1.0000000000000p+0"),
    ("0.2499999999999983", "0x1.fffffffffffc3p-3"),
    ("1.0000000000000002", "0x1.0000000000001p+0"),
    ("-1.0000000000000002", "-0x1.0000000000001p+0"),
    ("0.30000000000000004", "0x1.3333333333333p-2"),
    ("0.9999999999999999", "0x1.0000000000000p+0"),
    ("-0.99999999999999989", "-0x1.ffffffffffffep-1"),
    ("1.2464646464646463", "0x1.3f184e9c2f947p+0"),
    ("-2.9999999999999996", "-0x1.8000000000000p+1"),
    ("1.0000000000000007", "0x1.0000000000004p+0"),
    ("0.000000000000000001", "0x0.0p+0"),
    ("-0.00000000000000000099", "-0x0.0p+0"),
    ("2.6961468212794194e-14", "0x1.e5b1d3744a9fap-46"),
    ("-3.0985706841841276", "-0x1.8c9df6d475247p+1"),
    ("1.9999999999999916", "0x1.fffffffffffdcp+0"),
    ("8.635693817386232e-14", "0x1.84eac56653f12p-44"),
    ("123456789012345678901234567890", "0x1.8ee90ff6c373ep+96"),
    ("0.1e1", "0x1.0000000000000p+0"),
    ("-0", "-0x0.0p+0"),
    (".5", "0x1.0000000000000p-1"),
    ("+1.5", "0x1.8000000000000p+0"),
    ("1E5", "0x1.86a0000000000p+16"),
    ("1e-400", "0x0.0p+0"),
    ("1.5e-320", "0x0.0000000000bdcp-1022"),
]


@pytest.mark.parametrize(("text", "expected"), PANDAS_2_3_3)
def test_published_float_is_pandas_2_3_3_bit_for_bit(text, expected):
    assert published_float(text).hex() == expected
    assert exact_float(text) == float(text)


def test_the_recorded_values_tell_the_parsers_apart():
    differ = [t for t, _ in PANDAS_2_3_3 if published_float(t).hex() != exact_float(t).hex()]
    assert len(differ) >= 10
    assert published_float("-0.9999999999999999") == -1.0 < exact_float("-0.9999999999999999")


def test_both_parsers_refuse_the_same_text():
    for text in ("", ".", "1e", "1_0", "1,5", "x", "--1"):
        for parse in FLOAT_PARSERS.values():
            with pytest.raises(ValueError):
                parse(text)
    for text in ("inf", "-Infinity", " 2.5 "):
        assert published_float(text) == exact_float(text) == float(text)


# A hand-made table whose counts depend on the parser ----------------------------------


@pytest.fixture
def hand_csv(tmp_path):
    """One trained cell and six transfer rows whose Δ text the two parsers split."""
    rows = [
        ("m-1B", 1.0, "a", "x", "a", "x", 2.0),  # MT-ML (not in T)
        ("m-1B", 1.0, "a", "x", "a", "y", 0.0),  # -0.9999999999999999: harm only published
        ("m-1B", 1.0, "a", "x", "b", "x", 0.0),  # -0.9999999999999999: harm only published
        ("m-1B", 1.0, "a", "x", "b", "y", 0.0),  # 0.000000000000000001: positive only exact
        ("m-1B", 1.0, "a", "y", "a", "x", -2.0),  # harm under both
        ("m-1B", 1.0, "a", "y", "b", "y", 0.5),  # positive under both
        ("m-1B", 1.0, "b", "x", "a", "x", 0.0),  # 0.30000000000000004: positive under both
    ]
    table = table_from_rows(rows)
    table[DELTA] = [
        "2.0",
        ULP_ABOVE_MINUS_ONE,
        ULP_ABOVE_MINUS_ONE,
        "0.000000000000000001",
        "-2.0",
        "0.5",
        "0.30000000000000004",
    ]
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    return path


def test_harm_and_positive_rates_depend_on_the_parser(hand_csv):
    published = transfer_statistics(delta_values(transfer_set(load_results_table(hand_csv))))
    exact = transfer_statistics(delta_values(transfer_set(load_results_table(hand_csv, float_parser="exact"))))
    assert published["n"] == exact["n"] == 6
    assert published["harm_rate_pct"] == pytest.approx(100 * 3 / 6)  # both ulp strings are -1
    assert exact["harm_rate_pct"] == pytest.approx(100 * 1 / 6)
    assert published["positive_transfer_rate_pct"] == pytest.approx(100 * 2 / 6)  # 1e-18 reads 0
    assert exact["positive_transfer_rate_pct"] == pytest.approx(100 * 3 / 6)


def test_the_default_and_results_of_read_as_the_release(hand_csv):
    default = load_results_table(hand_csv)
    published = load_results_table(hand_csv, float_parser="published")
    delta = default[DELTA].to_numpy()
    assert delta.tobytes() == published[DELTA].to_numpy().tobytes()
    assert delta[1] == delta[2] == -1.0 and delta[3] == 0.0 and delta[6] == 0.3
    # `donors analyze results.csv` reads its table through results_of.
    assert results_of(hand_csv)[DELTA].to_numpy().tobytes() == delta.tobytes()
    assert global_uplift(results_of(hand_csv)).loc[0, "positive_transfer_rate_pct"] == pytest.approx(33.3333)
    assert default["n_seeds"].dtype == np.int64 and default["model_size"].dtype == float


def test_every_numeric_column_is_read_by_the_chosen_parser(tmp_path):
    table = table_from_rows([("m-1B", 1.0, "a", "x", "a", "y", 0.5)])
    table["score_mean"] = "0.9999999999999999"
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    assert load_results_table(path).loc[0, "score_mean"] == 1.0
    assert load_results_table(path, float_parser="exact").loc[0, "score_mean"] < 1.0


def test_text_in_a_dataframe_is_read_by_the_chosen_parser():
    table = table_from_rows([("m-1B", 1.0, "a", "x", "a", "y", 0.0), ("m-1B", 1.0, "a", "x", "b", "y", 0.0)])
    table[DELTA] = [ULP_ABOVE_MINUS_ONE, "not a number"]
    assert load_results_table(table)[DELTA].tolist()[0] == -1.0
    exact = load_results_table(table, float_parser="exact")[DELTA]
    assert exact.iloc[0] == float(ULP_ABOVE_MINUS_ONE) and np.isnan(exact.iloc[1])
    numbers = table.assign(**{DELTA: [float(ULP_ABOVE_MINUS_ONE), 1.0]})
    assert load_results_table(numbers)[DELTA].iloc[0] == float(ULP_ABOVE_MINUS_ONE)  # kept


def test_an_unknown_parser_is_refused(hand_csv):
    with pytest.raises(ValueError, match="float_parser"):
        load_results_table(hand_csv, float_parser="round_trip")


# The full grid: section 5 only under the published parser -------------------------------


@pytest.fixture(scope="module")
def release_csv(tmp_path_factory):
    """A 17,424-row CSV whose Δ text gives section 5 only as pandas 2.3.3 read it."""
    path = tmp_path_factory.mktemp("release") / "transfer_results.csv"
    published_text_table(seed=2, per_regime=3).to_csv(path, index=False)
    return path


def test_check_published_values_reads_the_csv_as_the_release_did(release_csv):
    report = check_published_values(release_csv)
    assert report["ok"].all(), report[~report["ok"]]


def test_read_exactly_the_release_csv_misses_the_published_harm(release_csv):
    published = load_results_table(release_csv)
    exact = load_results_table(release_csv, float_parser="exact")
    on_threshold = published[DELTA] == -1.0
    assert on_threshold.sum() == 4 * 3 and (exact.loc[on_threshold, DELTA] > -1.0).all()
    report = check_published_values(exact).set_index("statistic")
    failing = sorted(report.index[~report["ok"]])
    assert failing == sorted(["transfer harm rate", "MT-ML harm rate", "MT-CL harm rate", "CT-ML harm rate", "CT-CL harm rate"])
    harm = regime_summary(published)["harm_rate_pct"] - regime_summary(exact)["harm_rate_pct"]
    assert harm.to_dict() == pytest.approx({"MT-ML": 300 / 396, "MT-CL": 300 / 3960, "CT-ML": 300 / 1188, "CT-CL": 300 / 11880})
