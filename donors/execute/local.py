"""Run a study's jobs in this process: train what is missing, then score what is missing.

One model is loaded at a time. Training loads the base once per model and trains each
adapter on it in turn (the LoRA layers are taken out after each run, so nothing of one run
leaks into the next); evaluation loads the base once per model and swaps adapters onto it.
Each finished unit of work is committed to the store before the next begins, so a killed
run loses at most the unit in flight.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from donors.config import StudyConfig
from donors.errors import DonorsError
from donors.execute.pending import collapsed_base_warning, discard_changed_adapter, pending_eval_work, pending_train_jobs
from donors.execute.work import describe, evaluate_states, load_on_device, prepare_worker, train_adapter
from donors.jobs import EvalJob, model_states
from donors.models import dtype_name, pick_dtype
from donors.records import ModelState
from donors.store import ResultsStore
from donors.tasks.data import StudyData
from donors.train.lora import AdapterChanged

RETRAIN_ROUNDS = 2
"""Times a run trains again the adapters whose files changed under it, before it says so and leaves them."""


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

    def train(self, model: str, only: set[str] | None = None) -> None:
        """Train ``model``'s adapters the store lacks (``only``: those of these job ids)."""
        jobs = [job for job in pending_train_jobs(self.config, self.store) if job.model == model and (only is None or job.job_id in only)]
        self.console.print(f"[bold]train[/bold] {model}: {len(jobs)} adapter(s) to train")
        if not jobs:
            return
        # One frozen base for every adapter of this model: train_lora hands it back unchanged.
        base = load_on_device(model, self.config)
        with _progress(self.console) as progress:
            overall = progress.add_task(f"train {model}", total=len(jobs))
            for job in jobs:
                bar = progress.add_task(f"train {job.source} seed {job.seed}", total=None)
                self.store.mark_running([job.job_id], "train")
                try:
                    record = train_adapter(
                        self.config,
                        job,
                        self.data.train[job.source],
                        self.config.adapter_storage,
                        on_step=lambda step, total: progress.update(bar, completed=step, total=total),
                        base=base,
                    )
                    self.store.add_adapter(record)
                    losses = ", ".join(f"{v:.3f}" for v in record.validation_losses)
                    progress.console.print(
                        f"  trained {job.source} seed {job.seed}: validation loss per epoch [{losses}], "
                        f"kept epoch {record.best_epoch}, {record.train_seconds:.0f} s"
                    )
                except Exception as error:  # noqa: BLE001 - record it, go on with the rest
                    self.store.record_failure(job.job_id, "train", describe(error))
                    progress.console.print(f"[red]training failed[/red] {job.job_id}: {error}")
                progress.remove_task(bar)
                progress.advance(overall)

    def evaluate(
        self, model: str, *, base_only: bool = False, states: list[ModelState] | None = None, last_round: bool = False
    ) -> set[ModelState]:
        """Score what is left of ``model`` (``states``: of these only); returns the states whose adapters changed, now discarded.

        ``last_round``: a changed adapter is not trained again in this run (it changed too often).
        """
        if states is None:
            states = model_states(self.config, model)[:1] if base_only else model_states(self.config, model)
        work = pending_eval_work(self.config, self.store, states)
        n_pairs = sum(len(unit.targets) for unit in work)
        what = "base model: " if base_only else ""
        self.console.print(f"[bold]evaluate[/bold] {model}: {what}{n_pairs} (model state, target) pair(s) to score")
        if not work:
            return set()
        changed: set[ModelState] = set()
        with _progress(self.console) as progress:
            bar = progress.add_task(f"evaluate {model}", total=sum(len(self.data.test[t]) for unit in work for t in unit.targets))

            def failed(state, target, error) -> None:
                if isinstance(error, AdapterChanged):
                    if state not in changed:
                        changed.add(state)
                        (unit,) = [unit for unit in work if unit.state == state]
                        line = discard_changed_adapter(self.store, state, unit.targets, error)
                        then = "not trained again in this run" if last_round else "it is trained again"
                        progress.console.print(f"[yellow]warning:[/yellow] {line}; {then}", soft_wrap=True)
                    return
                self.store.record_failure(EvalJob(state, target).job_id, "eval", describe(error))
                progress.console.print(f"[red]evaluation failed[/red] {state.state_id} on {target}: {error}")

            self.store.mark_running([EvalJob(unit.state, t).job_id for unit in work for t in unit.targets], "eval")
            evaluate_states(
                self.config,
                model,
                work,
                self.data.test,
                on_result=self.store.add_target_result,
                on_failure=failed,
                on_items=lambda n: progress.advance(bar, n),
            )
        scored = n_pairs - sum(len(unit.targets) for unit in work if unit.state in changed)
        self.console.print(f"  scored {scored} pair(s) of {model}")
        return changed

    def warn_if_collapsed(self, model: str) -> None:
        """Say, before any training, that the base model answers by position on some targets."""
        warning = collapsed_base_warning(self.config, self.store, model)
        if warning:
            self.console.print(f"[yellow]warning:[/yellow] {warning}")

    def _all_gpus_through_ray(self, n_gpus: int) -> bool:
        """With several GPUs visible, run the study on a Ray cluster started on this machine, one job per GPU."""
        try:
            import ray  # noqa: F401 - only whether it is installed

            from donors.execute.ray import RayExecutor
        except ImportError:
            self.console.print(
                f"[yellow]local:[/yellow] {n_gpus} GPUs are visible but only cuda:0 is used: install Ray "
                "(pip install 'donors[ray]') to use every GPU, or set CUDA_VISIBLE_DEVICES to the one to use"
            )
            return False
        self.console.print(
            f"[bold]local[/bold] {n_gpus} GPUs visible: starting a Ray cluster on this machine to use all of them, one job "
            "per GPU (this process stays the store's one writer; set CUDA_VISIBLE_DEVICES=0 to use one GPU)"
        )
        ray_settings = self.config.ray.model_copy(update={"address": None, "gpus_per_job": 1.0})
        RayExecutor(self.config.model_copy(update={"ray": ray_settings}), self.store, self.data, self.console).run()
        return True

    def check_same_dtype(self) -> None:
        """Stop before any work where this machine would compute a model with work left in another dtype than its stored work.

        ``dtype: auto`` resolves by device (bf16 on a GPU that has it natively, else float32), so a
        study resumed elsewhere could score new states in one dtype beside old ones in another.
        """
        now = dtype_name(pick_dtype(self.config.dtype))
        to_train = {job.model for job in pending_train_jobs(self.config, self.store)}
        for model in self.config.models:
            if model not in to_train and not pending_eval_work(self.config, self.store, model_states(self.config, model)):
                continue  # finished: rerunning to rebuild the report, or a new model beside it, computes nothing of it
            stored = self.store.computed_dtypes(model)
            if stored and now not in stored:
                raise DonorsError(
                    f"{model}: its stored adapters and scores were computed in {', '.join(sorted(stored))}, and this machine "
                    f"would compute in {now} (dtype: {self.config.dtype}); a Δ between the two would mix rounding with transfer. "
                    "Resume on the kind of device that made them, or run this config with a new output_dir"
                )

    def run(self) -> None:
        import torch

        prepare_worker(self.config)  # a GPU given to a CPU build of torch stops here, with the fix
        self.check_same_dtype()
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpus > 1 and self._all_gpus_through_ray(n_gpus):
            return
        where = f"cuda:0 ({torch.cuda.get_device_name(0)})" if n_gpus else "the CPU"
        self.console.print(f"[bold]local[/bold] running on {where}")
        for model in self.config.models:
            # The base first: whether it can read the format at all is known before any training.
            self.evaluate(model, base_only=True)
            self.warn_if_collapsed(model)
            self.train(model)
            changed = self.evaluate(model)
            for round_ in range(1, RETRAIN_ROUNDS + 1):  # adapters whose files changed were discarded: train and score them again
                if not changed:
                    break
                self.train(model, only={state.state_id for state in changed})
                states = sorted(changed, key=lambda s: s.state_id)
                changed = self.evaluate(model, states=states, last_round=round_ == RETRAIN_ROUNDS)
            if changed:
                self.console.print(
                    f"[red]adapters changed again:[/red] {', '.join(sorted(s.state_id for s in changed))} changed after being "
                    f"trained again {RETRAIN_ROUNDS} times in this run; find what writes to {self.config.adapter_storage}, then rerun",
                    soft_wrap=True,
                )
