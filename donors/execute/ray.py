"""Run a study's jobs on a Ray cluster, with this process as the store's one writer.

Each training job is a Ray task in a fresh worker process (``max_calls=1``), so the
accelerator memory it used is returned when it ends. Evaluation is grouped per
(model, seed): one worker loads the base once and scores the base model and every adapter
of that seed. Workers return records; only the driver writes the SQLite store, as each
result arrives, so a killed driver resumes from the store: finished jobs are skipped and
jobs that were in flight run again.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from rich.console import Console

from donors.config import StudyConfig
from donors.execute.pending import collapsed_base_warning, pending_eval_work, pending_train_jobs
from donors.execute.work import describe, evaluate_states, train_adapter
from donors.grid import Cell
from donors.jobs import EvalJob, TrainJob, model_states, train_jobs
from donors.records import ModelState, TargetResult
from donors.store import ResultsStore
from donors.tasks.data import StudyData

FAULT_ENV = "DONORS_INJECT_FAULT"
"""``<job_id>=<marker file>``: that job raises once (the marker records that it did). For fault-tolerance tests."""


def _maybe_inject_fault(job_id: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    target, _, marker = spec.partition("=")
    if target == job_id and marker and not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise RuntimeError(f"injected fault in {job_id}")


def _train_task(config: StudyConfig, job: TrainJob, items) -> object:
    _maybe_inject_fault(job.job_id)
    return train_adapter(config, job, items, config.adapter_storage)


def _evaluate_task(
    config: StudyConfig, model: str, work, test_items
) -> tuple[list[tuple[ModelState, TargetResult]], list[tuple[ModelState, Cell, str]]]:
    results: list[tuple[ModelState, TargetResult]] = []
    failures: list[tuple[ModelState, Cell, str]] = []
    evaluate_states(
        config,
        model,
        work,
        test_items,
        lambda s, r: results.append((s, r)),
        lambda s, t, e: failures.append((s, t, f"{type(e).__name__}: {e}")),
    )
    return results, failures


class RayExecutor:
    def __init__(self, config: StudyConfig, store: ResultsStore, data: StudyData, console: Console | None = None):
        self.config = config
        self.store = store
        self.data = data
        self.console = console or Console(stderr=True)

    def _init_ray(self):
        import ray

        settings = self.config.ray
        if not ray.is_initialized():
            if settings.address:
                ray.init(address=settings.address, log_to_driver=False)
            else:
                ray.init(num_cpus=settings.num_cpus, include_dashboard=False, log_to_driver=False)
        return ray

    def _gpus_per_job(self, ray) -> float:
        if self.config.ray.gpus_per_job is not None:
            return self.config.ray.gpus_per_job
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0

    def run(self) -> None:
        ray = self._init_ray()
        settings = self.config.ray
        gpus = self._gpus_per_job(ray)
        options = dict(num_cpus=settings.cpus_per_job, num_gpus=gpus, max_retries=settings.max_retries, retry_exceptions=True)
        train_remote = ray.remote(max_calls=1, **options)(_train_task)
        eval_remote = ray.remote(max_calls=1, **options)(_evaluate_task)

        pending_train = pending_train_jobs(self.config, self.store)
        self.console.print(
            f"[bold]ray[/bold] {len(pending_train)} training job(s), {gpus:g} GPU(s) and {settings.cpus_per_job:g} CPU(s) each"
        )
        in_flight = {train_remote.remote(self.config, job, self.data.train[job.source]): ("train", job) for job in pending_train}
        self.store.mark_running([job.job_id for job in pending_train], "train")
        waiting_groups = self._eval_groups()
        finished_train = {job.job_id for job in train_jobs(self.config)} - {job.job_id for job in pending_train}

        eval_ids: dict = {}  # in-flight evaluation ref -> the (state, target) jobs it scores

        def submit_ready_groups() -> None:
            for key in list(waiting_groups):
                needed = waiting_groups[key]
                if all(state.is_base or state.state_id in finished_train for state in needed):
                    work = pending_eval_work(self.config, self.store, needed)
                    del waiting_groups[key]
                    if work:
                        ref = eval_remote.remote(self.config, key[0], work, {t: self.data.test[t] for _, _, ts in work for t in ts})
                        in_flight[ref] = ("eval", key)
                        eval_ids[ref] = [EvalJob(state, t).job_id for state, _, targets in work for t in targets]
                        self.store.mark_running(eval_ids[ref], "eval")

        submit_ready_groups()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            kind, what = in_flight.pop(ready[0])
            finished = eval_ids.pop(ready[0], None) or ([what.job_id] if kind == "train" else [])
            try:
                result = ray.get(ready[0])
            except Exception as error:  # noqa: BLE001 - retries are spent; record it and go on
                # A failed evaluation group fails each of its (state, target) jobs, so `donors status` counts them.
                for job_id in finished:
                    self.store.record_failure(job_id, kind, describe(error))
                self.store.clear_running(finished)
                name = what.job_id if kind == "train" else f"{what[0]} seed {what[1]}"
                self.console.print(f"[red]{kind} failed after {settings.max_retries} retries[/red] {name}")
                if kind == "train":
                    finished_train.add(what.job_id)
                    submit_ready_groups()
                continue
            if kind == "train":
                self.store.add_adapter(result)
                finished_train.add(what.job_id)
                self.console.print(f"  trained {what.source} seed {what.seed} ({result.train_seconds:.0f} s)")
                submit_ready_groups()
            else:
                results, failures = result
                for state, target_result in results:
                    self.store.add_target_result(state, target_result)
                if any(state.is_base for state, _ in results):
                    warning = collapsed_base_warning(self.config, self.store, what[0])
                    if warning:
                        self.console.print(f"[yellow]warning:[/yellow] {warning}")
                for state, target, error in failures:
                    self.store.record_failure(EvalJob(state, target).job_id, "eval", error)
                self.console.print(f"  scored {len(results)} pair(s) of {what[0]} seed {what[1]}")
            self.store.clear_running(finished)

    def _eval_groups(self) -> dict[tuple[str, int], list[ModelState]]:
        """(model, seed) -> its states; the base model rides with the model's first seed."""
        groups: dict[tuple[str, int], list[ModelState]] = defaultdict(list)
        for model in self.config.models:
            for state in model_states(self.config, model):
                seed = state.seed if not state.is_base else self.config.seeds[0]
                groups[(model, seed)].append(state)
        return dict(groups)
