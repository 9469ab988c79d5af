"""The ``donors`` command line: a thin layer over :mod:`donors.api`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from donors import api
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

    try:
        return call()
    except (ConfigError, DataError, StudyLockedError, ModelError, ChatTemplateError, FileNotFoundError) as error:
        _fail(error)


@app.command()
def run(config: Path = typer.Argument(..., help="study config (YAML)"), no_report: bool = typer.Option(False, "--no-report")) -> None:
    """Train and evaluate whatever the study lacks, then analyse and write the report. Resumable."""
    path = _handled(lambda: api.run_study(config, console=console, report=not no_report))
    typer.echo(str(path))


@app.command()
def plan(config: Path) -> None:
    """Print the jobs a config implies, without running anything."""
    p = _handled(lambda: api.plan_study(config))
    table = Table(title=f"plan of {config}")
    for column in ("training jobs", "model states", "targets", "evaluation jobs"):
        table.add_column(column, justify="right")
    table.add_row(str(p.train_jobs), str(p.model_states), str(p.targets), str(p.eval_jobs))
    Console().print(table)


@app.command()
def status(config: Path) -> None:
    """Done / failed / pending counts, and the errors of failed jobs."""
    s = _handled(lambda: api.study_status(config))
    table = Table(title="study status")
    for column in ("jobs", "done", "failed", "pending"):
        table.add_column(column, justify="right")
    table.add_row("training", str(s.train_done), str(s.train_failed), str(s.train_pending))
    table.add_row("evaluation", str(s.eval_done), str(s.eval_failed), str(s.eval_pending))
    out = Console()
    out.print(table)
    for row in s.failures.itertuples():
        out.print(f"[red]{row.job_id}[/red] ({row.kind}, {row.attempts} attempt(s)): {row.error.splitlines()[0]}")


@app.command()
def analyze(source: Path = typer.Argument(..., help="a study directory, or a results CSV in the published schema"),
            out: Path = typer.Option(None, help="directory for the CSV tables")) -> None:
    """Run every analysis and save each table as CSV."""
    tables = _handled(lambda: api.analyze(source, out))
    typer.echo(f"{len(tables)} tables written")


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
