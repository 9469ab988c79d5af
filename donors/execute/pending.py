"""What is left to do, read from the store: the driver's side of resuming a study."""

from __future__ import annotations

from donors.config import StudyConfig
from donors.errors import DonorsError
from donors.grid import Cell
from donors.jobs import EvalJob, StateWork, TrainJob, cells, train_jobs
from donors.records import COLLAPSE_SHARE, ModelState, top_share
from donors.store import ResultsStore
from donors.train.lora import AdapterFilesError, adapter_digest


class DataChanged(DonorsError):
    """Items differ from those the stored work was made from; the message names each cell and the way out."""


def pending_train_jobs(config: StudyConfig, store: ResultsStore) -> list[TrainJob]:
    done = store.adapter_ids()
    return [job for job in train_jobs(config) if job.job_id not in done]


def digest_older_adapters(config: StudyConfig, store: ResultsStore) -> list[str]:
    """Give every adapter stored before digests were (and with targets left) its digest now; discard any whose files are gone.

    Stored digests are checked where an adapter is loaded (:func:`donors.train.lora.verify_adapter`),
    not here: at a restart the driver reads only these older adapters' weights, once. Returns one line
    per discarded adapter.
    """
    lines = []
    targets = {(cell.task, cell.language) for cell in cells(config)}
    for job in train_jobs(config):
        record = store.adapter(job.job_id)
        if record is None or record.sha256 is not None or targets <= store.scored_targets(job.job_id):
            continue
        try:
            store.set_adapter_digest(record.adapter_id, adapter_digest(config.adapter_storage / record.path))
        except AdapterFilesError as error:
            lines.append(f"{discard_changed_adapter(store, job.state, [], error)}; it is trained again")
    return lines


def discard_changed_adapter(store: ResultsStore, state: ModelState, targets: list[Cell], error: BaseException | str) -> str:
    """Forget a state whose adapter's files changed or went (its scores too): its training job is pending again.

    ``targets``: its (state, target) jobs handed out with the adapter, taken off the in-flight list.
    Returns the line to print.
    """
    store.discard_adapter(state.state_id, f"{error}; discarded with its scores, to be trained again")
    store.clear_running([EvalJob(state, target).job_id for target in targets])
    return f"{error}: discarded with its scores"


def reconcile_data(store: ResultsStore, digests: dict[tuple[str, Cell], str], *, redo: bool = False) -> list[str]:
    """Compare each (split, cell)'s items with those the stored work was made from.

    A cell whose items changed while adapters or scores made from them are stored is refused
    (:class:`DataChanged`, every such cell named), or with ``redo`` that work is discarded so
    this run redoes it. Changed cells nothing depends on, and new ones, are simply recorded.
    Returns one line per cell whose work was discarded.
    """
    stored = store.data_fingerprints()
    changed = {key: store.work_using(*key) for key, digest in digests.items() if stored.get(key, digest) != digest}
    used = {key: work for key, work in changed.items() if any(work)}
    if used and not redo:
        listed = "; ".join(
            f"task {cell.task!r}, language {cell.language!r}, split {split!r} ({_work(*work)})" for (split, cell), work in used.items()
        )
        raise DataChanged(
            f"the items of {listed} differ from those the stored results were made from: the data was edited, or, with "
            "train.max_items or eval.max_items, the first language changed (a cut chooses its ids there). Restore the data "
            "or the order of languages, or run again with --redo-changed-data (api: run_study(..., redo_changed_data=True)) "
            "to discard that work and redo it on the new items"
        )
    lines = []
    for (split, cell), work in used.items():
        store.discard_work_using(split, cell)
        lines.append(f"{cell.task}/{cell.language} {split} items changed: {_work(*work)} discarded, redone on this run")
    store.set_data_fingerprints(digests)
    return lines


def _work(adapters: int, scores: int) -> str:
    return (
        f"{adapters} adapter(s) trained on them, {scores} scored (state, target) pair(s)"
        if adapters
        else f"{scores} scored (state, target) pair(s)"
    )


def pending_eval_work(config: StudyConfig, store: ResultsStore, states: list[ModelState]) -> list[StateWork]:
    """The work left of each state: its unscored targets, and its adapter.

    A state whose adapter is missing (its training failed or has not run) has nothing to
    score yet and is left out.
    """
    work = []
    for state in states:
        scored = store.scored_targets(state.state_id)
        todo = [t for t in cells(config) if (t.task, t.language) not in scored]
        if not todo:
            continue
        if state.is_base:
            work.append(StateWork(state, todo))
            continue
        record = store.adapter(state.state_id)
        if record is not None:
            work.append(StateWork(state, todo, str(config.adapter_storage / record.path), record.sha256))
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
