"""The ``donors`` command line: a thin layer over :mod:`donors.api`.

Exit codes: 0 done; 2 an error the user can fix (every error the tool raises on purpose derives
from :class:`donors.errors.DonorsError`; its message, printed as ``error: ...``, names the file,
field or row and the fix), and Typer's own usage errors; 3 an internal error, i.e. a bug: one
line ``internal error: <type>: <message>`` is printed and the full traceback appended to
``donors-errors.log`` in the study directory when the command has one (else in the system temp
directory, ``<tmp>/donors-errors-<user>.log``). Ctrl-C stops a command as Python does.
"""

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

import functools
import shlex
import tempfile
import traceback
from datetime import datetime
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from donors import __version__, api
from donors import plan as planning
from donors.errors import MAX_QUOTED, DonorsError
from donors.grid import path_component

USER_ERROR_EXIT = 2
INTERNAL_ERROR_EXIT = 3
"""A bug (not an error the user can fix): distinct from 2, and from 1, which a Python that dies before the CLI runs gives."""
ERROR_LOG = "donors-errors.log"
"""Where an internal error's traceback is appended: in the study directory, or in the system temp directory."""

console = Console(stderr=True)


def _fail(error: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(error))}")
    raise typer.Exit(code=USER_ERROR_EXIT)


def _study_dir_of(arguments: dict) -> Path | None:
    """The study directory a command works on, if it has one that exists: its ``source``, or its config's output_dir."""
    source = arguments.get("source")
    if isinstance(source, Path) and source.is_dir():
        return source
    config = arguments.get("config")
    if isinstance(config, Path) and config.is_file():
        try:
            output_dir = Path(api.load_config(config).output_dir)
        except Exception:  # the config is what is broken: the temp directory will do
            return None
        return output_dir if output_dir.is_dir() else None
    return None


def _user_log_name() -> str:
    """``donors-errors-<user>.log``: the temp directory's error log of this user."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return ERROR_LOG.replace(".log", f"-{path_component(user)}.log")


def _save_traceback(error: BaseException, study_dir: Path | None) -> Path | None:
    """Append the traceback, with a timestamp and the command line, to the study's error log (else the temp dir's); its path."""
    entry = (
        f"--- {datetime.now().isoformat(timespec='seconds')} donors {__version__} pid {os.getpid()}\n"
        f"command: {shlex.join(sys.argv)}\n"
        f"{''.join(traceback.format_exception(error))}\n"
    )
    # In the shared temp directory a per-user name, never following a link another user may have planted there.
    places = ([study_dir / ERROR_LOG] if study_dir is not None else []) + [Path(tempfile.gettempdir()) / _user_log_name()]
    for path in places:
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(descriptor, "a", encoding="utf-8") as log:
                log.write(entry)
            return path
        except OSError:
            continue  # a read-only study directory, say: try the next place
    return None


def _internal_error(error: Exception, arguments: dict) -> None:
    """A bug: one short line, the traceback saved to a log file, exit 3."""
    message = " ".join(str(error).split())
    if len(message) > MAX_QUOTED:
        message = f"{message[:MAX_QUOTED]}..."
    log = _save_traceback(error, _study_dir_of(arguments))
    console.print(f"[red]internal error:[/red] {escape(type(error).__name__)}: {escape(message)}", soft_wrap=True)
    if log is not None:
        console.print(
            f"This is a bug in donors; the traceback is saved in {escape(str(log))}: please report it with that file.", soft_wrap=True
        )
    else:
        console.print("This is a bug in donors (its traceback could not be saved, so here it is): please report it.")
        console.print(escape("".join(traceback.format_exception(error))), soft_wrap=True, highlight=False)
    raise typer.Exit(code=INTERNAL_ERROR_EXIT)


def _guarded(command):
    """``command`` with every error handled: a user's error as ``error: ...`` (exit 2), anything else as a bug (exit 3)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DonorsError as error:
            _fail(error)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # Typer's and Click's own ways to stop, with their own codes
        except Exception as error:
            _internal_error(error, kwargs)

    return run


class _Typer(typer.Typer):
    """A Typer app whose every command runs :func:`_guarded`: no command can show the user a raw traceback."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda function: register(_guarded(function))


app = _Typer(help="Controlled transfer studies of LoRA fine-tuning across tasks and languages.", no_args_is_help=True)


@app.command()
def run(
    config: Path = typer.Argument(..., help="study config (YAML)"),
    no_report: bool = typer.Option(False, "--no-report"),
    redo_changed_data: bool = typer.Option(
        False, "--redo-changed-data", help="where a task's items changed since they were used, discard that work and redo it"
    ),
) -> None:
    """Train and evaluate whatever the study lacks, then analyse and write the report. Resumable."""
    try:
        path = api.run_study(config, console=console, report=not no_report, redo_changed_data=redo_changed_data)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted:[/yellow] every adapter and score finished so far is kept in the study's store; "
            f"`donors run {config}` resumes from there (the unit in flight starts over)",
            soft_wrap=True,
        )
        raise typer.Exit(code=130) from None
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
    chars_per_token: float = typer.Option(
        planning.CHARS_PER_TOKEN, "--chars-per-token", help="characters per token when counting prompt tokens"
    ),
    probe: int = typer.Option(
        None, "--probe", min=1, help="also score N gold-balanced items per target with each base model, in each format"
    ),
    budget: int = typer.Option(
        None, "--budget", min=1, help="propose the next N sources per model that most reduce the predicted error, as sources: YAML"
    ),
    measured: Path = typer.Option(None, "--measured", help="with --budget: the study (or results CSV) whose sources are trained"),
    shared: bool = typer.Option(False, "--shared", help="with --budget: N sources for all models together"),
) -> None:
    """Print the jobs, tokens and GPU-hours a config implies; with --probe, whether each base model can read its format;
    with --budget, which sources to train next."""
    if budget is not None:
        chosen = api.choose_next_sources(config, budget, measured=measured, shared=shared)
        # The table to stderr, the YAML alone to stdout: `donors plan ... --budget 8 > sources.yaml` keeps only the YAML.
        _print_frame(chosen.choices, f"next {budget} source(s) {'for all models' if shared else 'per model'}", out=console)
        typer.echo(chosen.sources_yaml, nl=False)
        return
    p = api.plan_study(config, tflops=tflops, mfu=mfu, chars_per_token=chars_per_token)
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)
    table = Table(title=f"plan of {config}" + (" (partly estimated)" if p.estimated else ""))
    for column in (
        "model",
        "params",
        "train jobs",
        "states",
        "eval jobs",
        "train tokens",
        "eval tokens",
        "train GPU-h",
        "eval GPU-h",
        "total GPU-h",
    ):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for m in p.models:
        params = "?" if m.params_from == "unknown" else f"{m.params_billions:g}B"
        table.add_row(
            m.model.rstrip("/").rsplit("/", 1)[-1],
            params,
            f"{m.train_jobs:,}",
            f"{m.model_states:,}",
            f"{m.eval_jobs:,}",
            _count(m.train_tokens),
            _count(m.eval_tokens),
            _hours(m.train_gpu_hours),
            _hours(m.eval_gpu_hours),
            _hours(m.gpu_hours),
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        f"{p.train_jobs:,}",
        f"{p.model_states:,}",
        f"{p.eval_jobs:,}",
        _count(p.train_tokens),
        _count(p.eval_tokens),
        _hours(sum(m.train_gpu_hours for m in p.models)),
        _hours(sum(m.eval_gpu_hours for m in p.models)),
        _hours(p.gpu_hours),
        style="bold",
    )
    out.print(table)
    data = Table(title="data per task (all study languages, one pass)")
    for column in ("task", "train items", "test items", "tokens / train item", "tokens / test item", "from"):
        data.add_column(column, justify="left" if column in ("task", "from") else "right")
    for t in p.tasks:
        data.add_row(
            t.task,
            f"{t.train_items:,}",
            f"{t.test_items:,}",
            f"{t.train_tokens / max(t.train_items, 1):.0f}",
            f"{t.test_tokens / max(t.test_items, 1):.0f}",
            "estimate" if t.estimated else "data",
        )
    out.print(data)
    for line in p.assumptions():
        out.print(f"- {line}", highlight=False)
    if probe:
        _print_probe(config, probe, out)


def _print_probe(config: Path, n_items: int, out: Console) -> None:
    from donors.probe import probe_advice

    study = api.load_config(config)
    result = api.probe_study(study, n_items)
    fewer = " (n: fewer where a target has fewer test items)" if (result["n"] < n_items).any() else ""
    table = Table(title=f"base models on up to {n_items} gold-balanced items per target{fewer}")
    for column in ("model", "format", "target", "n", "accuracy", "debiased", "chance", "top option", "collapsed"):
        table.add_column(column, justify="left" if column in ("model", "format", "target") else "right")
    for r in result.itertuples():
        collapsed = "[red]yes[/red]" if r.collapsed else "no"
        table.add_row(
            r.model.rsplit("/", 1)[-1],
            r.format,
            r.target,
            str(r.n),
            f"{r.accuracy:.2f}",
            f"{r.debiased:.2f}",
            f"{r.chance:.2f}",
            f"{r.top_option} {r.top_share:.0%}",
            collapsed,
        )
    out.print(table)
    for line in probe_advice(result, study.eval.prompt_format):
        out.print(line, style="yellow" if line.startswith("WARNING") else "green", highlight=False)


@app.command()
def status(config: Path) -> None:
    """Done / failed / running / pending counts, and the errors of failed jobs."""
    s = api.study_status(config)
    table = Table(title="study status")
    for column in ("jobs", "done", "failed", "running", "pending"):
        table.add_column(column, justify="right")
    table.add_row("training", str(s.train_done), str(s.train_failed), str(s.train_running), str(s.train_pending))
    table.add_row("evaluation", str(s.eval_done), str(s.eval_failed), str(s.eval_running), str(s.eval_pending))
    out = Console()
    out.print(table)
    for row in s.failures.itertuples():
        out.print(f"[red]{row.job_id}[/red] ({row.kind}, {row.attempts} attempt(s)): {row.error.splitlines()[0]}")


METRIC_HELP = "the score transfer is computed from: acc, acc_norm, acc_debiased, gold_prob, gold_prob_raw, acc_perm, acc_perm_strict (default: the study's eval.metric)"
CURATED_HELP = (
    "a human-translated task, which the A4, A11 and A15 analyses set apart from the machine-translated rest; "
    "repeat for several (default: global_mmlu, the published study's)"
)


@app.command()
def analyze(
    source: Path = typer.Argument(..., help="a study directory, or a results CSV in the published schema"),
    out: Path = typer.Option(None, help="directory for the CSV tables"),
    metric: str = typer.Option(None, "--metric", help=METRIC_HELP),
    curated: list[str] = typer.Option(None, "--curated", help=CURATED_HELP),
) -> None:
    """Run every analysis and save each table as CSV; print the validity findings and any analysis that could not run."""
    analysis = api.analyze(source, out, metric=metric, curated=curated or None)
    api.print_findings(analysis, console)
    skipped = analysis.tables.get("skipped_analyses")
    note = f"; {len(skipped)} analyses skipped, listed in skipped_analyses" if skipped is not None else ""
    typer.echo(f"{len(analysis.tables)} tables written{note}")


@app.command()
def report(
    source: Path = typer.Argument(..., help="a study directory, or a results CSV in the published schema"),
    out: Path = typer.Option(None, help="HTML file to write; its tables (<name>_analysis/) and figures (figures/) go beside it"),
    metric: str = typer.Option(None, "--metric", help=METRIC_HELP),
    curated: list[str] = typer.Option(None, "--curated", help=CURATED_HELP),
) -> None:
    """Write the self-contained HTML report and print its path."""
    typer.echo(str(api.write_report(source, out, metric=metric, curated=curated or None)))


def _print_frame(frame, title: str, floats: str = "{:+.2f}", out: Console | None = None) -> None:
    """A small table of a frame, numbers rounded; the full precision is in the CSV."""
    out = out or (Console() if Console().is_terminal else Console(width=200))
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), justify="right" if frame[column].dtype.kind in "fi" else "left", no_wrap=True)
    for row in frame.itertuples(index=False):
        table.add_row(
            *(
                (f"{v:.2f}" if str(c).startswith("p_") else floats.format(v)) if isinstance(v, float) else str(v)
                for c, v in zip(frame.columns, row)
            )
        )
    out.print(table)


@app.command()
def predict(
    source: Path = typer.Argument(..., help="a study directory, or a results CSV in the published schema"),
    out: Path = typer.Option(None, help="directory for predicted_transfer.csv (and predict_cv.csv)"),
    cv: int = typer.Option(None, "--cv", help="also score the predictions by K-fold cross-validation over held-out sources"),
    metric: str = typer.Option(None, "--metric", help=METRIC_HELP),
    seed: int = typer.Option(0, "--seed", help="seed of the inner cross-validation's folds"),
) -> None:
    """Predict every unmeasured (model, source, target) cell of the grid, with 90% intervals and P(harm)."""
    result = api.predict(source, out, cv=cv, metric=metric, seed=seed)
    cells = result.cells
    console.print(
        f"{int((~cells['measured']).sum()):,} of {len(cells):,} cells predicted, {int(cells['measured'].sum()):,} measured "
        f"-> {result.out_dir / 'predicted_transfer.csv'}"
    )
    if result.cross_validation is not None:
        columns = ["scheme", "method", "model_name", "rmse", "mae", "spearman", "sign_accuracy", "harm_auc", "coverage"]
        _print_frame(result.cross_validation[columns], f"{cv}-fold cross-validation over held-out sources", "{:.3f}")


@app.command()
def recommend(
    source: Path = typer.Argument(..., help="a study directory, or a results CSV in the published schema"),
    targets: list[str] = typer.Option(..., "--targets", help="target patterns: 'truthfulqa/*', '*/hi', 'hi'; repeat for more"),
    model: str = typer.Option(None, "--model", help="rank the sources of this model only"),
    top: int = typer.Option(10, "--top", help="sources listed per model"),
    max_harm: float = typer.Option(None, "--max-harm", help="drop sources whose P(harming any chosen target by >= 1 pp) exceeds this"),
    metric: str = typer.Option(None, "--metric", help=METRIC_HELP),
) -> None:
    """Rank sources to fine-tune on by expected mean gain over the chosen targets, measured or predicted."""
    ranked = api.recommend(source, targets, model=model, top=top, max_harm=max_harm, metric=metric)
    _print_frame(ranked, f"what to fine-tune on for {', '.join(targets)} (Δ in pp of {ranked.attrs['metric']}, 90% interval)")


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


@app.command()
def config() -> None:
    """Print the study config reference: every field, its type, default and description (Markdown; docs/config.md)."""
    from donors.config import config_reference

    typer.echo(config_reference(), nl=False)


if __name__ == "__main__":
    app()
