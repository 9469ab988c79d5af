"""What is left to do, read from the store: the driver's side of resuming a study."""

from __future__ import annotations

from donors.config import StudyConfig
from donors.grid import Cell
from donors.jobs import TrainJob, cells, train_jobs
from donors.records import COLLAPSE_SHARE, ModelState, top_share
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


def collapsed_base_warning(config: StudyConfig, store: ResultsStore, model: str) -> str | None:
    """A warning when ``model``'s stored base scores answer one option for most items of some targets.

    Its adapters would then learn a position, and its scores measure one; the remedy names
    the continuation format (or another model, if that is the format already).
    """
    scores = store.scores()
    base = scores[(scores["model"] == model) & scores["source_task"].isna()]
    collapsed = [f"{r.target_task}/{r.target_language}" for r in base.itertuples() if top_share(r.predicted_counts) >= COLLAPSE_SHARE]
    if not collapsed:
        return None
    remedy = "eval.prompt_format: continuation" if config.eval.prompt_format == "lettered" else "another model or prompt"
    listed = ", ".join(collapsed[:6]) + (", ..." if len(collapsed) > 6 else "")
    return (
        f"the base model {model} answers one option for >= {COLLAPSE_SHARE:.0%} of the items on {len(collapsed)} of "
        f"{len(base)} targets ({listed}): its scores measure a preferred position, and its adapters may learn one. "
        f"Remedy: {remedy} (the option texts scored after the question; `donors plan CONFIG --probe 32` compares the formats)."
    )
