"""Run a study's jobs on a Ray cluster, with this process as the store's one writer.

Training: one Ray actor per (model, GPU) loads the base model once, straight onto its device,
and trains one adapter after another on it (the LoRA layers are taken out and the memory
freed between them), so the base is not reloaded for each of the model's adapters. An actor
whose model has no more jobs is ended, and its GPU goes to the next model's.

Evaluation: the states of one (model, seed) are cut into chunks of at most
``EVAL_STATES_PER_TASK``, one Ray task each, so several GPUs share a (model, seed); a chunk
starts once its own adapters are trained. Each task loads the base once and streams its
results back one state at a time (a Ray generator), so a crash loses the state in flight
and a retry scores only what was not returned. A task that finds an adapter's files are not
the ones stored (its digest, checked as it loads) returns that state unscored; the driver
discards the adapter and trains it again, as a retry of its training.

Workers return records; only the driver writes the SQLite store, as each result arrives, so
a killed driver resumes from the store: finished jobs are skipped and jobs that were in
flight run again. Retries are the driver's: a failed job is submitted again up to
``ray.max_retries`` times, then recorded as failed. Warnings a worker logs (out-of-memory
back-offs) travel back with its results and are printed here.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from donors.config import StudyConfig
from donors.errors import DonorsError
from donors.execute.pending import collapsed_base_warning, discard_changed_adapter, pending_eval_work, pending_train_jobs
from donors.execute.work import (
    DeviceError,
    collect_warnings,
    describe,
    evaluate_states,
    free_device_memory,
    load_on_device,
    prepare_worker,
    train_adapter,
)
from donors.jobs import EvalJob, StateWork, TrainJob, model_states, train_jobs
from donors.records import ModelState
from donors.store import ResultsStore
from donors.tasks.data import StudyData
from donors.train.lora import AdapterChanged

FAULT_ENV = "DONORS_INJECT_FAULT"
"""``<job_id>=<marker file>``: that job raises once (the marker records that it did). For fault-tolerance tests."""

EVAL_STATES_PER_TASK = 16
"""States scored by one evaluation task: the base is loaded once per task, so larger chunks load less, smaller ones
spread a (model, seed) over more GPUs. The published 45 states of a (model, seed) make 3 tasks."""


def _maybe_inject_fault(job_id: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    target, _, marker = spec.partition("=")
    if target == job_id and marker and not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise RuntimeError(f"injected fault in {job_id}")


def _ray_gpu_ids() -> list:
    import ray

    try:
        return list(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - outside a worker
        return []


class ModelTrainer:
    """A Ray actor: one base model on one device, trained into one adapter after another."""

    def __init__(self, config: StudyConfig, model: str):
        self.config, self.model = config, model
        self.base = None

    def train(self, job: TrainJob, items) -> tuple:
        """(adapter record, seconds spent loading the base for this job, warnings logged)."""
        prepare_worker(self.config, _ray_gpu_ids())
        with collect_warnings() as warned:
            _maybe_inject_fault(job.job_id)
            load_seconds = 0.0
            if self.base is None:
                started = time.perf_counter()
                self.base = load_on_device(self.model, self.config)
                load_seconds = time.perf_counter() - started
            try:
                record = train_adapter(self.config, job, items, self.config.adapter_storage, base=self.base)
            except BaseException:
                self.base = None  # whatever state a failed run left the base in, the next job starts from a fresh load
                raise
            finally:
                free_device_memory()  # the adapter, its optimiser state and the cached blocks go before the next job
        return record, load_seconds, warned


def _evaluate_stream(config: StudyConfig, model: str, work: list[StateWork], test_items):
    """A Ray generator: evaluate_states over ``work``, yielding ``("state", state, results, failures, changed)`` as each state ends.

    ``changed``: why the state's adapter is not the one stored (:class:`AdapterChanged`), else
    ``None``. Ends with ``("warnings", [...])``. The scoring runs in a thread; this generator
    hands its results to Ray as they come.
    """
    prepare_worker(config, _ray_gpu_ids())
    events: queue.Queue = queue.Queue()
    remaining = {unit.state: len(unit.targets) for unit in work}
    collected: dict[ModelState, tuple[list, list]] = defaultdict(lambda: ([], []))
    changed: dict[ModelState, str] = {}

    def failed(state: ModelState, target, error: BaseException) -> None:
        if isinstance(error, AdapterChanged):
            changed[state] = str(error)
        events.put(("failure", state, (target, describe(error))))

    def score() -> None:
        try:
            with collect_warnings() as warned:
                evaluate_states(config, model, work, test_items, lambda s, r: events.put(("result", s, r)), failed)
            events.put(("end", warned))
        except BaseException as error:  # noqa: BLE001 - handed to the generator, which raises it to the driver
            events.put(("error", error))

    thread = threading.Thread(target=score, daemon=True)
    thread.start()
    while True:
        kind, *rest = events.get()
        if kind == "error":
            raise rest[0]
        if kind == "end":
            yield ("warnings", rest[0])
            break
        state, value = rest
        collected[state][0 if kind == "result" else 1].append(value)
        remaining[state] -= 1
        if remaining[state] == 0:
            results, failures = collected.pop(state)
            yield ("state", state, results, failures, changed.get(state))
    thread.join()


@dataclass
class _Trainer:
    actor: object
    model: str
    busy: object = None  # the ref of the job it is training


@dataclass
class _EvalUnit:
    model: str
    seed: int
    states: list[ModelState]
    attempts: int = 0
    job_ids: set[str] = field(default_factory=set)  # (state, target) jobs handed out and not yet returned


class RayExecutor:
    def __init__(self, config: StudyConfig, store: ResultsStore, data: StudyData, console: Console | None = None):
        self.config = config
        self.store = store
        self.data = data
        self.console = console or Console(stderr=True)
        self._mixed_dtypes: set[str] = set()  # models already warned about

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

    def _slots(self, ray, gpus: float) -> int:
        """How many jobs the cluster runs at once: its GPUs (or CPUs) over what one job takes."""
        resources = ray.cluster_resources()
        if gpus > 0:
            return max(1, int(resources.get("GPU", 0) // gpus))
        return max(1, int(resources.get("CPU", 1) // self.config.ray.cpus_per_job))

    def say_if_mixed_dtypes(self, model: str) -> None:
        """Workers resolve ``dtype: auto`` on their own devices: say at once (once per model) when the stored work disagrees."""
        if model in self._mixed_dtypes:
            return
        dtypes = self.store.computed_dtypes(model)
        if len(dtypes) > 1:
            self._mixed_dtypes.add(model)
            self.console.print(
                f"[yellow]warning:[/yellow] {model} is being computed in {' and '.join(sorted(dtypes))}: its Δ will mix "
                "rounding with transfer. Set `dtype:` in the config, or give the study one kind of GPU"
            )

    def _warn(self, lines) -> None:
        for line in lines:
            self.console.print(f"[yellow]worker warning:[/yellow] {line}")

    def run(self) -> None:
        ray = self._init_ray()
        settings = self.config.ray
        gpus = self._gpus_per_job(ray)
        resources = dict(num_cpus=settings.cpus_per_job, num_gpus=gpus)
        trainer_class = ray.remote(max_restarts=0, **resources)(ModelTrainer)
        # Retries are the driver's (it knows which states a failed task had returned), so Ray's are off.
        eval_remote = ray.remote(max_calls=1, max_retries=0, **resources)(_evaluate_stream)
        slots = self._slots(ray, gpus)

        pending_train = pending_train_jobs(self.config, self.store)
        queues: dict[str, deque[TrainJob]] = {model: deque() for model in self.config.models}
        for job in pending_train:
            queues[job.model].append(job)
        self.console.print(
            f"[bold]ray[/bold] {len(pending_train)} training job(s) on up to {slots} worker(s), {gpus:g} GPU(s) and "
            f"{settings.cpus_per_job:g} CPU(s) each; a worker keeps its model's base loaded across its adapters"
        )
        self.store.mark_running([job.job_id for job in pending_train], "train")
        finished_train = {job.job_id for job in train_jobs(self.config)} - {job.job_id for job in pending_train}
        attempts: Counter = Counter()
        trainers: list[_Trainer] = []
        in_flight: dict = {}  # ref or generator -> ("train", trainer, job) | ("eval", unit)
        waiting_units = self._eval_units()
        timing = {"loads": 0, "load_seconds": 0.0, "train_seconds": 0.0}

        def start_training() -> None:
            """Give each idle trainer its model's next job; end those with none; start trainers for models waiting."""
            for trainer in list(trainers):
                if trainer.busy is None:
                    if queues[trainer.model]:
                        submit_train(trainer, queues[trainer.model].popleft())
                    else:
                        ray.kill(trainer.actor)
                        trainers.remove(trainer)
            for model in self.config.models:
                while queues[model] and len(trainers) < slots:
                    trainer = _Trainer(trainer_class.remote(self.config, model), model)
                    trainers.append(trainer)
                    submit_train(trainer, queues[model].popleft())

        def submit_train(trainer: _Trainer, job: TrainJob) -> None:
            trainer.busy = trainer.actor.train.remote(job, self.data.train[job.source])
            in_flight[trainer.busy] = ("train", trainer, job)

        def submit_ready_units() -> None:
            for unit in list(waiting_units):
                if all(state.is_base or state.state_id in finished_train for state in unit.states):
                    waiting_units.remove(unit)
                    submit_eval(unit)

        def submit_eval(unit: _EvalUnit) -> None:
            work = pending_eval_work(self.config, self.store, unit.states)
            if not work:
                return
            generator = eval_remote.remote(self.config, unit.model, work, {t: self.data.test[t] for w in work for t in w.targets})
            in_flight[generator] = ("eval", unit)
            unit.job_ids = {EvalJob(w.state, t).job_id for w in work for t in w.targets}
            self.store.mark_running(sorted(unit.job_ids), "eval")

        def train_failed(trainer: _Trainer, job: TrainJob, error: Exception) -> None:
            if isinstance(error, DeviceError):
                raise DonorsError(f"a training worker cannot use its GPU: {error}") from None
            actor_died = isinstance(error, ray.exceptions.RayActorError)
            if actor_died:
                trainers.remove(trainer)
            attempts[job.job_id] += 1
            if attempts[job.job_id] <= settings.max_retries:
                self.console.print(f"[yellow]retrying[/yellow] {job.job_id} ({attempts[job.job_id]} of {settings.max_retries}): {error}")
                queues[job.model].appendleft(job)
                return
            self.store.record_failure(job.job_id, "train", describe(error))
            self.console.print(f"[red]train failed after {settings.max_retries} retries[/red] {job.job_id}")
            finished_train.add(job.job_id)

        def eval_failed(unit: _EvalUnit, error: Exception) -> None:
            if isinstance(error, DeviceError):
                raise DonorsError(f"an evaluation worker cannot use its GPU: {error}") from None
            self.store.clear_running(sorted(unit.job_ids))
            unit.attempts += 1
            name = f"{unit.model} seed {unit.seed}"
            if unit.attempts <= settings.max_retries:
                self.console.print(f"[yellow]retrying[/yellow] evaluation of {name}, its unscored states only: {error}")
                submit_eval(unit)
                return
            # Retries spent: each (state, target) job it had not returned fails, so `donors status` counts them.
            for job_id in sorted(unit.job_ids):
                self.store.record_failure(job_id, "eval", describe(error))
            self.console.print(f"[red]eval failed after {settings.max_retries} retries[/red] {name}")

        def adapter_changed(unit: _EvalUnit, state: ModelState, targets, problem: str) -> None:
            """Discard the adapter and train it again (a training attempt: retries are bounded), then score it."""
            unit.job_ids -= {EvalJob(state, t).job_id for t in targets}
            line = discard_changed_adapter(self.store, state, targets, problem)
            job = TrainJob(state.model, state.source, state.seed)
            attempts[job.job_id] += 1
            if attempts[job.job_id] > settings.max_retries:
                self.console.print(
                    f"[red]adapter changed:[/red] {line}; not trained again in this run ({settings.max_retries} retries spent): "
                    "find what writes to its folder, then rerun",
                    soft_wrap=True,
                )
                return
            self.console.print(f"[yellow]warning:[/yellow] {line}; it is trained again", soft_wrap=True)
            finished_train.discard(job.job_id)
            self.store.mark_running([job.job_id], "train")
            queues[job.model].append(job)
            waiting_units.append(_EvalUnit(state.model, state.seed, [state]))
            start_training()

        def state_scored(unit: _EvalUnit, state: ModelState, results, failures, changed: str | None) -> None:
            if changed is not None:
                adapter_changed(unit, state, [target for target, _ in failures], changed)
                return
            for target_result in results:
                self.store.add_target_result(state, target_result)
            for target, error in failures:
                self.store.record_failure(EvalJob(state, target).job_id, "eval", error)
            unit.job_ids -= {EvalJob(state, t).job_id for t in self._targets_of(results, failures)}
            if state.is_base and results:
                warning = collapsed_base_warning(self.config, self.store, state.model)
                if warning:
                    self.console.print(f"[yellow]warning:[/yellow] {warning}")
            self.console.print(f"  scored {state.state_id}: {len(results)} target(s), {len(failures)} failed")
            self.say_if_mixed_dtypes(state.model)

        start_training()
        submit_ready_units()
        try:
            while in_flight:
                (ready, *_), _ = ray.wait(list(in_flight), num_returns=1)
                kind, *what = in_flight[ready]
                if kind == "train":
                    trainer, job = what
                    del in_flight[ready]
                    trainer.busy = None
                    try:
                        record, load_seconds, warned = ray.get(ready)
                    except Exception as error:  # noqa: BLE001 - retried, or recorded once retries are spent
                        train_failed(trainer, job, error)
                    else:
                        self._warn(warned)
                        self.store.add_adapter(record)
                        self.say_if_mixed_dtypes(job.model)
                        finished_train.add(job.job_id)
                        timing["loads"] += load_seconds > 0
                        timing["load_seconds"] += load_seconds
                        timing["train_seconds"] += record.train_seconds
                        loaded = f", base loaded in {load_seconds:.0f} s" if load_seconds else ""
                        self.console.print(f"  trained {job.source} seed {job.seed} ({record.train_seconds:.0f} s{loaded})")
                    start_training()
                    submit_ready_units()
                    continue
                (unit,) = what
                try:
                    item = ray.get(next(ready))
                except StopIteration:
                    del in_flight[ready]
                    continue
                except Exception as error:  # noqa: BLE001 - the task died or raised: retry what it had not returned
                    del in_flight[ready]
                    eval_failed(unit, error)
                    continue
                if item[0] == "warnings":
                    self._warn(item[1])
                else:
                    state_scored(unit, *item[1:])
        finally:
            for trainer in trainers:
                ray.kill(trainer.actor)
        if timing["loads"]:
            self.console.print(
                f"[bold]ray[/bold] base loads: {timing['loads']} taking {timing['load_seconds']:.0f} s in all; "
                f"training: {timing['train_seconds']:.0f} s"
            )

    @staticmethod
    def _targets_of(results, failures):
        from donors.grid import Cell

        return [Cell(r.score.target_task, r.score.target_language) for r in results] + [target for target, _ in failures]

    def _eval_units(self) -> list[_EvalUnit]:
        """Each (model, seed)'s states in chunks of at most EVAL_STATES_PER_TASK; the base rides with the first seed."""
        groups: dict[tuple[str, int], list[ModelState]] = defaultdict(list)
        for model in self.config.models:
            for state in model_states(self.config, model):
                seed = state.seed if not state.is_base else self.config.seeds[0]
                groups[(model, seed)].append(state)
        units = []
        for (model, seed), states in groups.items():
            n_chunks = math.ceil(len(states) / EVAL_STATES_PER_TASK)
            size = math.ceil(len(states) / n_chunks)
            units += [_EvalUnit(model, seed, states[i : i + size]) for i in range(0, len(states), size)]
        return units
