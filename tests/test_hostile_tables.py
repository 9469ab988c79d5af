"""Hostile inputs to ``donors analyze`` and ``donors report``, and the CLI's one error path (issue 17, items 5, 14, 15).

Model-free: results CSVs from :mod:`synthetic`, and study stores filled with hand-made
predictions. A bad table gives a :class:`ResultsTableError` naming the file, row or column
and the fix (exit 2, no traceback); a table too small for an analysis gives a report that
lists what it could not compute; a bug is one ``internal error`` line, its traceback saved.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from synthetic import results_table, table_from_rows
from typer.testing import CliRunner

from donors import api, cli
from donors.analysis.results import ResultsTableError, load_results_table
from donors.analysis.study import NO_ROWS
from donors.config import config_from_dict
from donors.errors import DonorsError
from donors.evaluate import target_result
from donors.grid import Cell
from donors.records import AdapterRecord, ItemPrediction, ModelState
from donors.store import ResultsStore, store_path

DONORS = Path(sys.executable).parent / "donors"
MODEL = "smollm2-135m"
TASKS = ("number_words", "cldr_continent")
LANGUAGES = ("en", "de")
CELLS = [Cell(task, language) for task in TASKS for language in LANGUAGES]
SEED = 1


def donors_command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run([str(DONORS), *args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture
def good_table() -> pd.DataFrame:
    return results_table({"m-1B": 1.0}, ["a", "b"], ["en", "de"], seed=1)


# Item 14: results tables that are not tables -----------------------------------------------


def test_an_empty_file_is_refused_by_name(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(ResultsTableError, match=r"empty\.csv is empty \(0 bytes\).*transfer_results\.csv"):
        load_results_table(path)


def test_a_header_without_rows_is_refused(tmp_path, good_table):
    path = tmp_path / "header.csv"
    good_table.head(0).to_csv(path, index=False)
    with pytest.raises(ResultsTableError, match=r"header\.csv has the columns of a results table but no rows"):
        load_results_table(path)


def test_binary_garbage_and_other_encodings_are_refused(tmp_path, good_table):
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(ResultsTableError, match=r"garbage\.csv is a binary file"):
        load_results_table(garbage)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(good_table.to_csv(index=False).encode() + "m-1B,1.0,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ResultsTableError, match=rf"latin\.csv: line {len(good_table) + 2} is not UTF-8 text"):
        load_results_table(latin)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("model_name,model_size\nm,1\nm,1,2,3\n")
    with pytest.raises(ResultsTableError, match=r"ragged\.csv is not a CSV table that can be read \(.*line 3"):
        load_results_table(ragged)
    one_column = tmp_path / "notes.csv"
    one_column.write_text("just some notes\nabout a study\n")
    with pytest.raises(ResultsTableError, match=r"notes\.csv is not a results table.*missing column\(s\) model_name"):
        load_results_table(one_column)


def test_text_in_a_numeric_column_is_named_by_row_and_column(tmp_path, good_table):
    table = good_table.astype({"delta_score_norm_mean": object, "n_seeds": object})
    table.loc[3, "delta_score_norm_mean"] = "abc"
    table.loc[5, "n_seeds"] = "three"
    table.loc[6, "delta_score_norm_mean"] = "n/a"  # missing: allowed, as published
    path = tmp_path / "strings.csv"
    table.to_csv(path, index=False)
    with pytest.raises(ResultsTableError) as refused:
        load_results_table(path)
    message = str(refused.value)
    assert "strings.csv: 2 value(s)" in message
    assert "row 5, column delta_score_norm_mean: 'abc'" in message and "row 7, column n_seeds: 'three'" in message
    assert "write a number there" in message
    table.loc[[3, 5], ["delta_score_norm_mean", "n_seeds"]] = [1.0, 3]
    table.to_csv(path, index=False)
    assert load_results_table(path)["delta_score_norm_mean"].isna().sum() == 1


def test_a_repeated_key_is_refused_naming_the_key_and_its_rows(tmp_path, good_table):
    path = tmp_path / "dup.csv"
    pd.concat([good_table, good_table.iloc[[5]]]).to_csv(path, index=False)
    row = good_table.iloc[5]
    key = f"m-1B: {row['fine_tuned_dataset']}/{row['fine_tuned_language']} -> {row['eval_dataset']}/{row['eval_language']}"
    with pytest.raises(ResultsTableError) as refused:
        load_results_table(path)
    message = str(refused.value)
    assert f"row 7 and row {len(good_table) + 2} are all {key}" in message
    assert "published validator" in message and "docs/protocol.md" in message
    with pytest.raises(ResultsTableError, match="appear more than once"):
        load_results_table(pd.concat([good_table, good_table.iloc[[5]]]))  # a DataFrame too


def test_a_regime_label_the_keys_contradict_is_refused_and_an_empty_one_derived(tmp_path, good_table):
    lower = good_table.assign(regime=good_table["regime"].str.lower())
    lower.to_csv(tmp_path / "lower.csv", index=False)
    # Read as it is, "mt-ml" would put the trained cells into the transfer set T.
    with pytest.raises(
        ResultsTableError,
        match=r"lower\.csv: 16 row\(s\) have a regime that is not what their keys imply \(row 2: 'mt-ml' where the keys say MT-ML",
    ):
        load_results_table(tmp_path / "lower.csv")
    good_table.assign(regime="").to_csv(tmp_path / "empty.csv", index=False)
    assert load_results_table(tmp_path / "empty.csv")["regime"].tolist() == good_table["regime"].tolist()


def test_a_row_with_a_missing_or_padded_key_is_refused_by_row(tmp_path, good_table):
    blank = good_table.copy()
    blank.loc[3, "eval_language"] = ""
    blank.loc[5, "fine_tuned_dataset"] = ""
    blank.to_csv(tmp_path / "blank.csv", index=False)
    with pytest.raises(ResultsTableError, match=r"row 5: column eval_language is empty; row 7: only one of fine_tuned_dataset"):
        load_results_table(tmp_path / "blank.csv")
    padded = good_table.copy()
    padded.loc[0, "eval_language"] = "de "
    padded.to_csv(tmp_path / "padded.csv", index=False)
    with pytest.raises(ResultsTableError, match=r"row 2: column eval_language has spaces around 'de '"):
        load_results_table(tmp_path / "padded.csv")
    # Through the CLI: exit 2 and the message, never an internal error.
    for command in ("analyze", "report", "predict"):
        done = donors_command(command, str(tmp_path / "blank.csv"), "--out", str(tmp_path / command))
        assert done.returncode == 2 and "column eval_language is empty" in " ".join(done.stderr.split()), done.stderr


def test_names_are_read_as_written_and_a_missing_size_is_read_off_the_name(tmp_path):
    table = results_table({"olmo-2-1B": 1.0, "phi-3-mini-3.8b": 3.8, "unsized": 1.0}, ["a", "b"], ["NA", "nan"], seed=2)
    table["model_size"] = float("nan")
    table.to_csv(tmp_path / "names.csv", index=False)
    loaded = load_results_table(tmp_path / "names.csv")
    assert set(loaded["eval_language"]) == set(loaded["fine_tuned_language"]) == {"NA", "nan"}  # Nauruan, not missing
    assert loaded.groupby("model_name")["model_size"].first().to_dict() == pytest.approx(
        {"olmo-2-1B": 1.0, "phi-3-mini-3.8b": 3.8, "unsized": float("nan")}, nan_ok=True
    )


def test_report_out_keeps_every_output_beside_it_and_an_unwritable_place_is_named(tmp_path, good_table):
    source = tmp_path / "source"
    source.mkdir()
    good_table.to_csv(source / "table.csv", index=False)
    out = tmp_path / "elsewhere" / "report.html"
    done = donors_command("report", str(source / "table.csv"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in source.iterdir()) == ["table.csv"]  # the source's folder is only read
    assert (out.parent / "report_analysis" / "global_uplift.csv").is_file() and (out.parent / "figures").is_dir()
    # A place that cannot be written: the file or folder is not a folder, or is read-only.
    (tmp_path / "file").write_text("not a folder")
    for command, where in (("analyze", "file/tables"), ("predict", "file/prediction"), ("report", "file/report.html")):
        done = donors_command(command, str(source / "table.csv"), "--out", str(tmp_path / where))
        message = " ".join(done.stderr.split())
        assert done.returncode == 2 and "cannot write" in message and "give a folder that can be written" in message, done.stderr


def test_the_curated_tasks_can_be_named_and_their_absence_is_said_once(tmp_path, good_table):
    good_table.to_csv(tmp_path / "table.csv", index=False)
    done = donors_command("analyze", str(tmp_path / "table.csv"), "--out", str(tmp_path / "default"))
    curated = "language_roles_curated, curated_vs_translated_donor_correlation, variance_decomposition_global_mmlu"
    said = " ".join(done.stderr.split())
    assert f"warning: {curated} skipped: the table has no rows of the human-translated dataset(s) global_mmlu" in said
    assert said.count("global_mmlu this analysis reads") == 1
    done = donors_command("analyze", str(tmp_path / "table.csv"), "--out", str(tmp_path / "named"), "--curated", "a")
    assert done.returncode == 0 and "human-translated" not in done.stderr, done.stderr
    roles = pd.read_csv(tmp_path / "named" / "language_roles_curated.csv")
    assert set(roles["lang"]) == {"en", "de"}


def test_a_table_of_one_transfer_cell_is_analysed_and_says_what_it_could_not_compute(tmp_path):
    path = tmp_path / "one.csv"
    table_from_rows([("m-1B", 1.0, "a", "en", "a", "de", 1.5)]).to_csv(path, index=False)
    analysis = api.analyze(path, tmp_path / "tables")
    skipped = analysis.tables["skipped_analyses"].set_index("analysis")["reason"]
    assert "at least 6 are needed" in skipped["variance_decomposition_all"]
    assert not skipped.str.contains("IndexError|Traceback").any()
    assert analysis.tables["global_uplift"]["n"].iloc[0] == 1
    report = api.write_report(path, tmp_path / "one.html")
    page = report.read_text()
    assert "Analyses that could not run" in page and "variance_decomposition_all" in page


@pytest.mark.parametrize("command", ["analyze", "report"])
def test_a_bad_table_through_the_cli_exits_2_with_the_message(tmp_path, command):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    result = CliRunner().invoke(cli.app, [command, str(path)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "empty.csv is empty" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_the_console_script_refuses_bad_tables_without_a_traceback(tmp_path, good_table):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    strings = tmp_path / "strings.csv"
    good_table.astype({"delta_score_norm_mean": object}).assign(delta_score_norm_mean="abc").to_csv(strings, index=False)
    for args, expected in (
        (["analyze", str(empty), "--out", str(tmp_path / "out")], "is empty (0 bytes)"),
        (["report", str(strings)], "column delta_score_norm_mean: 'abc'"),
    ):
        result = donors_command(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert expected in " ".join(result.stderr.split())
        assert "Traceback" not in result.stderr + result.stdout


# Item 15: one error path ----------------------------------------------------------------------


def test_a_bug_is_one_line_and_its_traceback_is_saved_in_the_study(tmp_path, monkeypatch):
    study = make_study(tmp_path / "study", adapters=1)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(api, "analyze", boom)
    result = CliRunner().invoke(cli.app, ["analyze", str(study)])
    assert result.exit_code == cli.INTERNAL_ERROR_EXIT == 3
    lines = result.output.strip().splitlines()
    assert lines[0] == "internal error: RuntimeError: boom"
    log = study / cli.ERROR_LOG
    assert str(log) in result.output and "please report it" in result.output
    assert "Traceback" not in result.output
    saved = log.read_text()
    assert "Traceback (most recent call last)" in saved and "RuntimeError: boom" in saved and "in boom" in saved
    assert "command: " in saved
    CliRunner().invoke(cli.app, ["analyze", str(study)])
    assert log.read_text().count("RuntimeError: boom") == 2  # appended


def test_a_bug_without_a_study_is_saved_in_the_temp_dir_and_its_message_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def boom(*args, **kwargs):
        raise KeyError("x" * 5000 + "\nsecond line")

    monkeypatch.setattr(api, "write_report", boom)
    result = CliRunner().invoke(cli.app, ["report", str(tmp_path / "absent.csv")])
    assert result.exit_code == 3
    first = result.output.splitlines()[0]
    assert first.startswith("internal error: KeyError: ") and len(first) < 300 and first.endswith("...")
    assert (tmp_path / cli._user_log_name()).read_text().count("x" * 5000) == 1


def test_an_error_outside_the_api_call_is_caught_too(tmp_path, monkeypatch, good_table):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = tmp_path / "good.csv"
    good_table.to_csv(path, index=False)

    def broken(*args, **kwargs):
        raise ValueError("printing failed")

    monkeypatch.setattr(api, "print_findings", broken)
    result = CliRunner().invoke(cli.app, ["analyze", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 3 and result.output.startswith("internal error: ValueError: printing failed")


def test_a_users_error_still_exits_2_and_an_interrupt_is_no_internal_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def refused(*args, **kwargs):
        raise DonorsError("the table [is] wrong; fix it")

    monkeypatch.setattr(api, "analyze", refused)
    result = CliRunner().invoke(cli.app, ["analyze", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip() == "error: the table [is] wrong; fix it"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "analyze", interrupted)
    result = CliRunner().invoke(cli.app, ["analyze", str(tmp_path)])
    assert result.exit_code not in (0, 2, 3) and "internal error" not in result.output
    assert not (tmp_path / cli._user_log_name()).exists()
    # An interrupted run says its finished work is kept and how to resume.
    monkeypatch.setattr(api, "run_study", interrupted)
    result = CliRunner().invoke(cli.app, ["run", "study.yaml"])
    said = " ".join(result.output.split())
    assert result.exit_code == 130 and "finished so far is kept in the study's store; `donors run study.yaml` resumes" in said


def test_every_command_goes_through_the_guard():
    commands = cli.app.registered_commands
    assert {c.callback.__name__ for c in commands} >= {"run", "plan", "status", "analyze", "report", "tasks", "models", "config"}
    for command in commands:
        assert getattr(command.callback, "__wrapped__", None) is not None, command.callback.__name__
    result = CliRunner().invoke(cli.app, ["analyze", "--help"])
    assert result.exit_code == 0 and "--metric" in result.output  # the wrapped signature is still the command's


# Item 5: a study that is not finished -----------------------------------------------------------


def predictions(cell: Cell, right: int) -> list[ItemPrediction]:
    return [
        ItemPrediction(
            cell.task, cell.language, f"i{k}", gold=k % 4, predicted=k % 4 if k < right else (k + 1) % 4, logprobs=(-0.1, -2.0, -3.0, -4.0)
        )
        for k in range(8)
    ]


def make_study(
    study: Path, *, adapters: int, base_targets: int = len(CELLS), dtypes: tuple[str, str] = ("", ""), trained_in: str = ""
) -> Path:
    """A study directory with config.json (1 model, 4 cells, 1 seed) and a store holding part of its grid.

    ``dtypes``: what the base and the adapted states are recorded as having been scored in;
    ``trained_in``: what the adapters are recorded as having been trained in.
    """
    study.mkdir(parents=True, exist_ok=True)
    config = config_from_dict(
        {"models": [MODEL], "tasks": list(TASKS), "languages": list(LANGUAGES), "seeds": [SEED], "output_dir": str(study)}
    )
    (study / "config.json").write_text(config.model_dump_json(indent=1))
    with ResultsStore(store_path(study)) as store:
        for cell in CELLS[:base_targets]:
            store.add_target_result(ModelState(MODEL), target_result(predictions(cell, 4)).computed_in(dtypes[0]))
        for i, source in enumerate(CELLS[:adapters]):
            state = ModelState(MODEL, source, SEED)
            record = AdapterRecord(
                state.state_id,
                MODEL,
                source.task,
                source.language,
                SEED,
                "adapters/x",
                "abc",
                ("a",),
                ("c",),
                2,
                (1.2,),
                3.0,
                {"dtype": trained_in} if trained_in else {},
            )
            store.add_adapter(record)
            for cell in CELLS:
                store.add_target_result(state, target_result(predictions(cell, 5 + i % 3)).computed_in(dtypes[1]))
    return study


def test_a_model_scored_in_two_dtypes_is_named_in_the_findings(tmp_path):
    """A study resumed where `dtype: auto` resolves otherwise: its Δ would mix rounding with transfer."""
    for dtypes, trained_in in ((("", ""), ""), (("float32", "float32"), "float32"), (("", "bfloat16"), ""), (("", ""), "bfloat16")):
        name = "-".join([*dtypes, trained_in]) or "none"
        findings = api.analysis_of(make_study(tmp_path / name, adapters=4, dtypes=dtypes, trained_in=trained_in)).findings
        assert not any("more than one dtype" in line for line in findings), (dtypes, trained_in)
    mixed = make_study(tmp_path / "mixed", adapters=4, dtypes=("float32", "bfloat16"))
    (line,) = [line for line in api.analyze(mixed).findings if "more than one dtype" in line]
    assert line.startswith(f"WARNING: {MODEL} was computed in more than one dtype")
    assert "bfloat16: 16 scored (model state, target) pairs; float32: 4 scored (model state, target) pairs" in line
    assert "more than one dtype" in pd.read_csv(mixed / "analysis" / "grid_coverage.csv")["finding"].iloc[-1]
    # Trained in one dtype, scored in another: the adapters count too.
    retrained = make_study(tmp_path / "retrained", adapters=4, dtypes=("float32", "float32"), trained_in="bfloat16")
    (line,) = [line for line in api.analysis_of(retrained).findings if "more than one dtype" in line]
    assert "bfloat16: 4 trained adapters; float32: 20 scored (model state, target) pairs" in line


def test_a_partial_study_says_how_much_of_the_grid_is_present_and_what_was_skipped(tmp_path):
    study = make_study(tmp_path / "study", adapters=2, base_targets=3)
    analysis = api.analyze(study)
    coverage = analysis.findings[0]
    assert coverage.startswith("WARNING: the study is not complete")
    assert "6 of 16 (source, target) pairs of 1 model measured; 2 of 4 adapters trained" in coverage
    assert "base model scored on 3 of 4 (model, target) cells" in coverage
    assert "2 adapted scores on 1 target without a base-model score yet are left out" in coverage
    assert "skipped_analyses" in coverage
    assert pd.read_csv(study / "analysis" / "grid_coverage.csv")["finding"].tolist() == [coverage]
    report = api.write_report(study)
    page = report.read_text()
    assert "Grid coverage" in page and "6 of 16 (source, target) pairs" in page


def test_a_study_with_only_base_scores_lists_the_analyses_without_data(tmp_path):
    study = make_study(tmp_path / "study", adapters=0)
    analysis = api.analyze(study)
    assert "0 of 16 (source, target) pairs of 1 model measured; 0 of 4 adapters trained" in analysis.findings[0]
    skipped = analysis.tables["skipped_analyses"].set_index("analysis")["reason"]
    assert skipped["pareto_profiles"] == NO_ROWS and skipped["task_transfer_matrix"] == NO_ROWS
    assert not (study / "analysis" / "pareto_profiles.csv").exists()  # no blank table written without a word
    result = CliRunner().invoke(cli.app, ["analyze", str(study)])
    # One line per reason, naming every analysis it kept from running.
    (line,) = [line for line in " ".join(result.output.split()).split("warning: ") if "skipped: no data" in line]
    assert result.exit_code == 0 and "pareto_profiles" in line and "task_transfer_matrix" in line


def test_a_studys_curated_tasks_come_from_its_config_and_the_command_line_overrides_them(tmp_path):
    study = make_study(tmp_path / "study", adapters=4)
    settings = json.loads((study / "config.json").read_text())
    assert settings["curated"] == ["global_mmlu"]  # the published default, which this study has no rows of
    skipped = api.analyze(study).tables["skipped_analyses"].set_index("analysis")["reason"]
    assert "global_mmlu this analysis reads" in skipped["variance_decomposition_global_mmlu"]
    (study / "config.json").write_text(json.dumps({**settings, "curated": ["number_words"]}))
    tables = api.analyze(study).tables
    assert "language_roles_curated" in tables and set(tables["language_roles_curated"]["lang"]) == set(LANGUAGES)
    skipped = api.analyze(study, curated=["nothing_here"]).tables["skipped_analyses"].set_index("analysis")["reason"]
    assert "dataset(s) nothing_here this analysis reads" in skipped["language_roles_curated"]


def test_predict_on_a_study_with_only_base_scores_says_there_is_nothing_to_fit(tmp_path):
    study = make_study(tmp_path / "study", adapters=0)
    for command in (["predict", str(study)], ["recommend", str(study), "--targets", "number_words/*"]):
        done = donors_command(*command)
        message = " ".join(done.stderr.split())
        assert done.returncode == 2 and "no (source, target) cell with a Δ is measured yet" in message, done.stderr


def test_a_study_with_one_adapted_state_reports(tmp_path):
    study = make_study(tmp_path / "study", adapters=1)
    report = api.write_report(study)
    analysis = api.analysis_of(study)
    skipped = analysis.tables["skipped_analyses"].set_index("analysis")["reason"]
    assert "at least 6 are needed" in skipped["variance_decomposition_all"]
    assert "Analyses that could not run" in report.read_text()


def test_a_complete_study_and_a_bare_table_say_what_they_hold(tmp_path, good_table):
    study = make_study(tmp_path / "study", adapters=len(CELLS))
    assert api.analysis_of(study).findings[0] == (
        "The study's grid is complete: 16 of 16 (source, target) pairs of 1 model measured; 4 of 4 adapters trained; "
        "base model scored on 4 of 4 (model, target) cells."
    )
    path = tmp_path / "table.csv"
    good_table.drop(index=[0, 1]).to_csv(path, index=False)
    assert api.analysis_of(path).findings[0] == (
        "The table holds 14 (model, source, target) rows with a Δ: 1 model, 4 sources and 4 targets (task/language); "
        "14 of the 16 combinations of these are present."
    )
