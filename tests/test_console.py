"""The installed ``donors`` console command, started as users start it, on results CSVs.

Not ``python -m donors.cli`` and not the API: a console script runs with its bin folder
first on ``sys.path``, where lang2vec's own ``lang2vec.py`` once hid the lang2vec package
and left the typology table silently empty. No model is loaded; each command takes seconds
(most of it lang2vec loading URIEL), and the two run side by side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from synthetic import results_table

from donors import cli
from donors.analysis import published
from donors.analysis.published import NO_UNIT, SKIPPED_ANALYSES, run_published_analyses

BIN = Path(sys.executable).parent
DONORS = shutil.which("donors", path=str(BIN))
MODELS = {"Llama-3.2-1B-Instruct": 1.0, "Qwen2.5-7B-Instruct": 7.0}
TASKS = ["global_mmlu", "hellaswag"]
STUDY_LANGUAGES = ["ar", "de", "en", "zh"]  # four of the eleven: 12 ordered language pairs
UNKNOWN_LANGUAGES = ["qq", "xx", "zz"]  # no URIEL code

needs_console_script = pytest.mark.skipif(DONORS is None, reason=f"no donors console script in {BIN}")


@dataclass
class Analysed:
    out: Path
    returncode: int
    stdout: str
    stderr: str

    def tables(self) -> set[str]:
        return {path.stem for path in self.out.glob("*.csv")}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> dict[str, Analysed]:
    """``donors analyze`` on a table of study languages and on one of unknown languages."""
    root = tmp_path_factory.mktemp("console")
    started = {}
    for name, languages in {"study": STUDY_LANGUAGES, "unknown": UNKNOWN_LANGUAGES}.items():
        csv = root / f"{name}.csv"
        results_table(MODELS, TASKS, languages, seed=3).to_csv(csv, index=False)
        out, stdout, stderr = root / f"{name}_tables", root / f"{name}.out", root / f"{name}.err"
        with stdout.open("w") as o, stderr.open("w") as e:
            command = [DONORS, "analyze", str(csv), "--out", str(out)]
            started[name] = (out, stdout, stderr, subprocess.Popen(command, stdout=o, stderr=e, cwd=root))
    runs = {}
    for name, (out, stdout, stderr, process) in started.items():
        returncode = process.wait(timeout=300)
        runs[name] = Analysed(out, returncode, stdout.read_text(), stderr.read_text())
    return runs


@needs_console_script
def test_console_command_correlates_typology_of_study_languages(analysed):
    run = analysed["study"]
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(run.out / "linguistic_correlations.csv")
    assert table["Metric"].tolist() == ["Syntax Distance", "Phonology Distance", "Inventory Distance"]
    assert (table["N"] == 12).all()
    assert table["Spearman (Rank)"].notna().all()
    # On 2 tasks x 4 languages no (model, source) unit meets the Pareto minimums: said, not written blank.
    skipped = pd.read_csv(run.out / f"{SKIPPED_ANALYSES}.csv")
    assert skipped["analysis"].tolist() == ["pareto_profiles", "pareto_family_summary"]
    assert (skipped["reason"] == f"it gave no rows on this table: {NO_UNIT}").all()
    assert [line for line in run.stderr.splitlines() if line.startswith("warning:")] == [
        f"warning: pareto_profiles, pareto_family_summary skipped: it gave no rows on this table: {NO_UNIT}"
    ]
    assert run.stdout.strip() == f"{len(run.tables())} tables written; 2 analyses skipped, listed in {SKIPPED_ANALYSES}"


@needs_console_script
def test_an_analysis_that_cannot_run_is_listed_with_its_reason_and_the_rest_are_written(analysed):
    run, full = analysed["unknown"], analysed["study"]
    assert run.returncode == 0, run.stderr
    skipped = pd.read_csv(run.out / f"{SKIPPED_ANALYSES}.csv")
    assert skipped.columns.tolist() == ["analysis", "reason"]
    assert skipped["analysis"].tolist() == ["linguistic_correlations", "pareto_profiles", "pareto_family_summary"]
    reason = skipped["reason"].iloc[0]
    assert "qq, xx, zz" in reason and "lang2vec" in reason and "at least 3" in reason
    assert run.tables() == full.tables() - {"linguistic_correlations"}
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: linguistic_correlations skipped: {reason}",
        f"warning: pareto_profiles, pareto_family_summary skipped: it gave no rows on this table: {NO_UNIT}",
    ]
    assert run.stdout.strip() == f"{len(run.tables())} tables written; 3 analyses skipped, listed in {SKIPPED_ANALYSES}"


def test_a_failing_analysis_is_recorded_with_its_error_and_the_others_still_run(monkeypatch):
    steps = published.published_analyses()

    def broken(df):
        raise TypeError("planted bug")

    def fake_steps(**kwargs):
        # linguistic_correlations stubbed only to keep lang2vec (seconds to load) out of this test
        return {
            **steps,
            "pareto_profiles": broken,
            "language_donor_recipient": lambda df: pd.DataFrame(),  # no unit met its minimums
            "linguistic_correlations": lambda df: pd.DataFrame({"Metric": ["stub"]}),
        }

    monkeypatch.setattr(published, "published_analyses", fake_steps)
    # three languages: the translated-only variance fit needs at least 6 transfer pairs (variance.MIXED_MIN_ROWS)
    tables = run_published_analyses(results_table(MODELS, TASKS, ["en", "de", "fr"], seed=1))
    skipped = tables[SKIPPED_ANALYSES].set_index("analysis")["reason"]
    gone = ["pareto_profiles", "pareto_family_summary", "language_donor_recipient", "language_roles_by_family"]
    assert skipped.index.tolist() == gone
    assert skipped["pareto_profiles"].startswith("TypeError: planted bug (at test_console.py:")
    assert skipped["pareto_family_summary"] == skipped["pareto_profiles"]  # computed from it: skipped for its reason
    assert skipped["language_donor_recipient"] == skipped["language_roles_by_family"] == f"it gave no rows on this table: {NO_UNIT}"
    assert list(tables)[-1] == SKIPPED_ANALYSES
    assert set(tables) == set(steps) - set(gone) | {SKIPPED_ANALYSES}


@pytest.mark.skipif(not (BIN / "lang2vec.py").exists(), reason="lang2vec installed no lang2vec.py script")
def test_a_shadowed_lang2vec_is_an_error_naming_the_file():
    code = f"import sys; sys.path.insert(0, {str(BIN)!r})\nfrom donors.analysis.typology import _lang2vec\n_lang2vec()\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "Lang2vecShadowed" in result.stderr and str(BIN / "lang2vec.py") in result.stderr


def test_the_console_scripts_bin_folder_leaves_the_front_of_sys_path(monkeypatch, tmp_path):
    rest = [p for p in sys.path if os.path.realpath(p or os.curdir) != os.path.realpath(BIN)]
    monkeypatch.setattr(sys, "path", [str(BIN), *rest])
    cli._drop_scripts_folder_from_path()
    assert sys.path == rest
    monkeypatch.setattr(sys, "path", [str(tmp_path), *rest])  # a user's own script folder stays
    cli._drop_scripts_folder_from_path()
    assert sys.path == [str(tmp_path), *rest]
