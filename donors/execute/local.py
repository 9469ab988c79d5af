"""Run a study's jobs in this process: train what is missing, then score what is missing.

One model is loaded at a time. Training starts from a freshly loaded base model for each
job (nothing of one run leaks into the next); evaluation loads the base once per model and
swaps adapters onto it. Each finished unit of work is committed to the store before the
next begins, so a killed run loses at most the unit in flight.
"""

from __future__ import annotations

import platform
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from donors.config import StudyConfig
from donors.evaluate.native import score_choices, summarize
from donors.jobs import EvalJob, TrainJob, cells, model_states, train_jobs
from donors.models import load_model
from donors.records import AdapterRecord, ModelState
from donors.store import ResultsStore
from donors.tasks.data import StudyData
from donors.train.lora import train_lora


def library_versions() -> dict[str, str]:
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "donors": __import__("donors").__version__,
    }


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


class LocalExecutor:
    def __init__(self, config: StudyConfig, store: ResultsStore, data: StudyData, console: Console | None = None):
        self.config = config
        self.store = store
        self.data = data
        self.console = console or Console(stderr=True)
        self.study_dir = Path(config.output_dir)

    # -- training ---------------------------------------------------------------------
    def pending_train_jobs(self) -> list[TrainJob]:
        done = self.store.adapter_ids()
        return [job for job in train_jobs(self.config) if job.job_id not in done]

    def train(self, job: TrainJob, progress: Progress | None = None) -> AdapterRecord:
        model, tokenizer = load_model(job.model, dtype=self.config.dtype, trust_remote_code=self.config.trust_remote_code)
        bar = progress.add_task(f"train {job.source} seed {job.seed}", total=None) if progress else None

        def on_step(step: int, total: int) -> None:
            if progress is not None:
                progress.update(bar, completed=step, total=total)

        path = job.adapter_dir(self.study_dir)
        result = train_lora(
            model,
            tokenizer,
            self.data.train[job.source],
            lora=self.config.lora,
            train=self.config.train,
            seed=job.seed,
            output_dir=path,
            model_name=job.model,
            on_step=on_step,
        )
        if progress is not None:
            progress.remove_task(bar)
        record = AdapterRecord(
            adapter_id=job.job_id,
            model=job.model,
            source_task=job.source.task,
            source_language=job.source.language,
            seed=job.seed,
            path=str(path.relative_to(self.study_dir)),
            recipe_hash=self.config.recipe_hash(),
            train_ids=result.train_ids,
            validation_ids=result.validation_ids,
            best_epoch=result.best_epoch,
            validation_losses=result.validation_losses,
            train_seconds=result.seconds,
            versions=library_versions(),
        )
        self.store.add_adapter(record)
        return record

    # -- evaluation -------------------------------------------------------------------
    def pending_eval_jobs(self, model: str) -> list[EvalJob]:
        adapters = self.store.adapter_ids()
        jobs = []
        for state in model_states(self.config, model):
            if not state.is_base and state.state_id not in adapters:
                continue  # its training failed or has not run; nothing to score yet
            done = self.store.scored_targets(state.state_id)
            jobs += [EvalJob(state, t) for t in cells(self.config) if (t.task, t.language) not in done]
        return jobs

    def evaluate_model(self, model_name: str, jobs: list[EvalJob], progress: Progress | None = None) -> None:
        """Score all of one model's pending jobs with the base loaded once."""
        from peft import PeftModel

        if not jobs:
            return
        base, tokenizer = load_model(model_name, dtype=self.config.dtype, trust_remote_code=self.config.trust_remote_code)
        peft_model = None
        total_items = sum(len(self.data.test[j.target]) for j in jobs)
        bar = progress.add_task(f"evaluate {model_name}", total=total_items) if progress else None
        by_state: dict[ModelState, list[EvalJob]] = {}
        for job in jobs:
            by_state.setdefault(job.state, []).append(job)
        for state, state_jobs in by_state.items():
            if state.is_base:
                scorer, context = (peft_model or base), (peft_model.disable_adapter() if peft_model else nullcontext())
            else:
                record = self.store.adapter(state.state_id)
                path = str(self.study_dir / record.path)
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(base, path, adapter_name="current")
                else:
                    peft_model.delete_adapter("current")
                    peft_model.load_adapter(path, adapter_name="current")
                    peft_model.set_adapter("current")
                peft_model.eval()
                scorer, context = peft_model, nullcontext()
            with context:
                for job in state_jobs:
                    try:
                        predictions = score_choices(
                            scorer,
                            tokenizer,
                            self.data.test[job.target],
                            chat_template=self.config.eval.chat_template,
                            batch_size=self.config.eval.batch_size,
                            model_name=model_name,
                            on_batch=(lambda n: progress.advance(bar, n)) if progress else None,
                        )
                        self.store.add_target_result(state, summarize(predictions), predictions)
                    except Exception as error:  # noqa: BLE001 - one failed target must not stop the study
                        self.store.record_failure(job.job_id, "eval", _describe(error))
                        self.console.print(f"[red]evaluation failed[/red] {job.job_id}: {error}")
        if progress is not None:
            progress.remove_task(bar)

    # -- the whole study -------------------------------------------------------------
    def run(self) -> None:
        console = self.console
        for model in self.config.models:
            pending = [job for job in self.pending_train_jobs() if job.model == model]
            console.print(f"[bold]train[/bold] {model}: {len(pending)} adapter(s) to train")
            with _progress(console) as progress:
                overall = progress.add_task(f"train {model}", total=len(pending))
                for job in pending:
                    try:
                        record = self.train(job, progress)
                        losses = ", ".join(f"{v:.3f}" for v in record.validation_losses)
                        progress.console.print(
                            f"  trained {job.source} seed {job.seed}: validation loss per epoch [{losses}], "
                            f"kept epoch {record.best_epoch}, {record.train_seconds:.0f} s"
                        )
                    except Exception as error:  # noqa: BLE001 - record it, go on with the rest
                        self.store.record_failure(job.job_id, "train", _describe(error))
                        console.print(f"[red]training failed[/red] {job.job_id}: {error}")
                    progress.advance(overall)
            jobs = self.pending_eval_jobs(model)
            console.print(f"[bold]evaluate[/bold] {model}: {len(jobs)} (model state, target) pair(s) to score")
            with _progress(console) as progress:
                self.evaluate_model(model, jobs, progress)
            console.print(f"  scored {len(jobs)} pair(s) of {model}")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}\n" + "".join(traceback.format_tb(error.__traceback__)[-3:])
