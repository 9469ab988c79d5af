"""What is left to do, read from the store: the driver's side of resuming a study."""

from __future__ import annotations

from donors.config import StudyConfig
from donors.grid import Cell
from donors.jobs import TrainJob, cells, train_jobs
from donors.records import ModelState
from donors.store import ResultsStore

EvalWork = list[tuple[ModelState, str | None, list[Cell]]]


def pending_train_jobs(config: StudyConfig, store: ResultsStore) -> list[TrainJob]:
    done = store.adapter_ids()
    return [job for job in train_jobs(config) if job.job_id not in done]


def pending_eval_work(config: StudyConfig, store: ResultsStore, states: list[ModelState]) -> EvalWork:
    """(state, adapter path, unscored targets) for each state with work left.

    A state whose adapter is missing (its training failed or has not run) has nothing to
    score yet and is left out.
    """
    work: EvalWork = []
    for state in states:
        scored = store.scored_targets(state.state_id)
        todo = [t for t in cells(config) if (t.task, t.language) not in scored]
        if not todo:
            continue
        if state.is_base:
            work.append((state, None, todo))
            continue
        record = store.adapter(state.state_id)
        if record is not None:
            work.append((state, str(config.adapter_storage / record.path), todo))
    return work
