"""The ``donors`` command line: a thin layer over :mod:`donors.api`."""

from __future__ import annotations

import os
import sys
import sysconfig


def _drop_scripts_folder_from_path() -> None:
    """A console script runs with its bin folder first on sys.path, where installed scripts (lang2vec.py) shadow packages: drop it."""
    scripts = {os.path.dirname(sys.executable)}
    for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")):
        scripts.add(sysconfig.get_path("scripts", scheme))
    if sys.path and os.path.realpath(sys.path[0] or os.curdir) in {os.path.realpath(s) for s in scripts if s}:
        del sys.path[0]


_drop_scripts_folder_from_path()  # before every other import below

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from donors import api
from donors import plan as planning
from donors.config import ConfigError

app = typer.Typer(help="Controlled transfer studies of LoRA fine-tuning across tasks and languages.", no_args_is_help=True)
console = Console(stderr=True)


def _fail(error: Exception) -> None:
    console.print(f"[red]error:[/red] {error}")
    raise typer.Exit(code=2)


def _handled(call):
    from donors.models import ModelError
    from donors.store.lock import StudyLockedError
    from donors.tasks.data import DataError
    from donors.tasks.prompts import ChatTemplateError
    from donors.tasks.registry import UnknownTaskError

    try:
        return call()
    except (ConfigError, DataError, UnknownTaskError, StudyLockedError, ModelError, ChatTemplateError, FileNotFoundError) as error:
        _fail(error)


@app.command()
def run(config: Path = typer.Argument(..., help="study config (YAML)"), no_report: bool = typer.Option(False, "--no-report")) -> None:
    """Train and evaluate whatever the study lacks, then analyse and write the report. Resumable."""
    path = _handled(lambda: api.run_study(config, console=console, report=not no_report))
    typer.echo(str(path))


def _count(value: float) -> str:
    """Big counts readable at a glance: 1234567 -> 1.23M."""
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _hours(value: float) -> str:
    if value != value:
        return "?"
    return f"{value:,.2f}" if value >= 0.01 or value == 0 else f"{value:.1e}"


@app.command()
def plan(
    config: Path = typer.Argument(..., help="study config (YAML)"),
    tflops: float = typer.Option(planning.DEFAULT_TFLOPS, "--tflops", help="peak dense TFLOP/s of one accelerator (default: H100 bf16)"),
    mfu: float = typer.Option(planning.DEFAULT_MFU, "--mfu", help="fraction of the peak actually sustained"),
    chars_per_token: float = typer.Option(planning.CHARS_PER_TOKEN, "--chars-per-token", help="characters per token when counting prompt tokens"),
) -> None:
    """Print the jobs, tokens and GPU-hours a config implies, without running anything."""
    from donors.tasks.registry import UnknownTaskError

    try:
        # Not _handled: its error types import torch, which a plan never needs.
        p = api.plan_study(config, tflops=tflops, mfu=mfu, chars_per_token=chars_per_token)
    except (ValueError, UnknownTaskError, FileNotFoundError) as error:
        _fail(error)
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)
    table = Table(title=f"plan of {config}" + (" (partly estimated)" if p.estimated else ""))
    for column in ("model", "params", "train jobs", "states", "eval jobs", "train tokens", "eval tokens",
                   "train GPU-h", "eval GPU-h", "total GPU-h"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for m in p.models:
        params = "?" if m.params_from == "unknown" else f"{m.params_billions:g}B"
        table.add_row(m.model.rstrip("/").rsplit("/", 1)[-1], params, f"{m.train_jobs:,}", f"{m.model_states:,}", f"{m.eval_jobs:,}", _count(m.train_tokens),
                      _count(m.eval_tokens), _hours(m.train_gpu_hours), _hours(m.eval_gpu_hours), _hours(m.gpu_hours))
    table.add_section()
    table.add_row("total", "", f"{p.train_jobs:,}", f"{p.model_states:,}", f"{p.eval_jobs:,}", _count(p.train_tokens),
                  _count(p.eval_tokens), _hours(sum(m.train_gpu_hours for m in p.models)),
                  _hours(sum(m.eval_gpu_hours for m in p.models)), _hours(p.gpu_hours), style="bold")
    out.print(table)
    data = Table(title="data per task (all study languages, one pass)")
    for column in ("task", "train items", "test items", "tokens / train item", "tokens / test item", "from"):
        data.add_column(column, justify="left" if column in ("task", "from") else "right")
    for t in p.tasks:
        data.add_row(t.task, f"{t.train_items:,}", f"{t.test_items:,}", f"{t.train_tokens / max(t.train_items, 1):.0f}",
                     f"{t.test_tokens / max(t.test_items, 1):.0f}", "estimate" if t.estimated else "data")
    out.print(data)
    for line in p.assumptions():
        out.print(f"- {line}", highlight=False)


@app.command()
def status(config: Path) -> None:
    """Done / failed / running / pending counts, and the errors of failed jobs."""
    s = _handled(lambda: api.study_status(config))
    table = Table(title="study status")
    for column in ("jobs", "done", "failed", "running", "pending"):
        table.add_column(column, justify="right")
    table.add_row("training", str(s.train_done), str(s.train_failed), str(s.train_running), str(s.train_pending))
    table.add_row("evaluation", str(s.eval_done), str(s.eval_failed), str(s.eval_running), str(s.eval_pending))
    out = Console()
    out.print(table)
    for row in s.failures.itertuples():
        out.print(f"[red]{row.job_id}[/red] ({row.kind}, {row.attempts} attempt(s)): {row.error.splitlines()[0]}")


@app.command()
def analyze(source: Path = typer.Argument(..., help="a study directory, or a results CSV in the published schema"),
            out: Path = typer.Option(None, help="directory for the CSV tables")) -> None:
    """Run every analysis and save each table as CSV; warn of any analysis that could not run."""
    from donors.analysis.published import SKIPPED_ANALYSES

    tables = _handled(lambda: api.analyze(source, out))
    skipped = tables.get(SKIPPED_ANALYSES)
    skipped = [] if skipped is None else list(skipped.itertuples(index=False))
    for row in skipped:
        # Text, not markup: a reason may hold brackets; soft_wrap keeps each warning one line.
        console.print(Text.assemble(("warning:", "yellow"), f" {row.analysis} skipped: {row.reason}"), soft_wrap=True)
    note = f"; {len(skipped)} analyses skipped, listed in {SKIPPED_ANALYSES}" if skipped else ""
    typer.echo(f"{len(tables)} tables written{note}")


@app.command()
def report(source: Path = typer.Argument(..., help="a study directory, or a results CSV in the published schema"),
           out: Path = typer.Option(None, help="HTML file to write")) -> None:
    """Write the self-contained HTML report and print its path."""
    typer.echo(str(_handled(lambda: api.write_report(source, out))))


@app.command()
def tasks() -> None:
    """List the registered tasks."""
    from donors.tasks import task_names

    for name in task_names():
        typer.echo(name)


@app.command()
def models() -> None:
    """List the embedded models (they ship in pinned PyPI packages; no hub needed)."""
    from donors.models import EMBEDDED_MODELS

    for model in EMBEDDED_MODELS.values():
        typer.echo(f"{model.name}\t{model.distribution}=={model.version}\t{model.upstream}\t{model.licence}")


if __name__ == "__main__":
    app()
