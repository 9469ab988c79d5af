"""Plain records that cross stage boundaries: what training and evaluation hand to the store."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from donors.grid import Cell

COLLAPSE_SHARE = 0.8
"""A (model state, target) whose most-predicted option takes this share of its items is *collapsed*."""


def top_share(predicted_counts) -> float:
    """The share of items answered with the most-predicted option (nan for none)."""
    total = sum(predicted_counts)
    return max(predicted_counts) / total if total else float("nan")


@dataclass(frozen=True)
class ModelState:
    """A model as evaluated: the base model, or the base plus one source's adapter for one seed.

    Evaluation is deterministic, so the base model is one state per model, shared by every
    seed; an adapted state is one per (model, source, seed).
    """

    model: str
    source: Cell | None = None
    seed: int | None = None

    @property
    def is_base(self) -> bool:
        return self.source is None

    @property
    def state_id(self) -> str:
        if self.source is None:
            return f"{self.model}|base"
        return f"{self.model}|{self.source.task}/{self.source.language}|seed{self.seed}"

    @property
    def source_task(self) -> str | None:
        return self.source.task if self.source else None

    @property
    def source_language(self) -> str | None:
        return self.source.language if self.source else None


@dataclass(frozen=True)
class AdapterRecord:
    """A trained LoRA adapter: where it is, how it was made, and the exact items it saw.

    ``sha256``: the digest of its files when it was stored (:func:`donors.train.lora.adapter_digest`),
    checked before it is scored; None only for adapters stored before digests were.
    """

    adapter_id: str
    model: str
    source_task: str
    source_language: str
    seed: int
    path: str
    recipe_hash: str
    train_ids: tuple[str, ...]
    validation_ids: tuple[str, ...]
    best_epoch: int | None
    validation_losses: tuple[float, ...]
    train_seconds: float | None
    versions: dict[str, str]
    sha256: str | None = None


@dataclass(frozen=True)
class ItemPrediction:
    """One item scored by one model state: the atom of every paired statistic.

    ``logprobs`` are the choices' log-likelihoods in the item's own option order;
    ``predicted`` is their argmax (lm-eval's ``acc``), ``predicted_norm`` the argmax after
    dividing by each answer string's length in characters (lm-eval's ``acc_norm``).
    ``rotation`` r > 0: the item was shown with its options rotated by r (option j in
    place j - r), and everything here is mapped back to the original order.
    """

    target_task: str
    target_language: str
    item_id: str
    gold: int
    predicted: int
    logprobs: tuple[float, ...]
    predicted_norm: int | None = None
    rotation: int = 0


@dataclass(frozen=True)
class TargetScore:
    """One target's published scores, and how predictions and golds spread over option positions.

    ``predicted_counts[j]`` items were answered with option j, ``gold_counts[j]`` have option j
    as gold: the first shows a model that answers one letter for everything, the second a test
    subset on which such a model scores above chance. ``dtype``: what the model's weights
    computed in ('bfloat16', 'float32'; '' where it was not recorded); the states of one model
    must share it, or a Δ mixes rounding with transfer.
    """

    target_task: str
    target_language: str
    n: int
    accuracy: float
    accuracy_norm: float
    predicted_counts: tuple[int, ...] = ()
    gold_counts: tuple[int, ...] = ()
    dtype: str = ""

    @property
    def top_share(self) -> float:
        return top_share(self.predicted_counts)

    @property
    def collapsed(self) -> bool:
        """One option takes at least :data:`COLLAPSE_SHARE` of the predictions: the state answers by position."""
        return self.top_share >= COLLAPSE_SHARE


@dataclass(frozen=True)
class TargetResult:
    """One target scored by one model state: its summary and the item-level predictions.

    ``rotations``: with permutation evaluation, the same items' predictions under each
    other cyclic rotation of their options (``predictions`` is rotation 0, the published score).
    """

    score: TargetScore
    predictions: list[ItemPrediction]
    rotations: list[ItemPrediction] = field(default_factory=list)

    def computed_in(self, dtype: str) -> "TargetResult":
        """The same result, its score labelled with the dtype the model computed in."""
        return replace(self, score=replace(self.score, dtype=dtype))


def eval_job_id(state: ModelState, target: Cell) -> str:
    """The one id of scoring ``state`` on ``target``: what the store records a failure under."""
    return f"eval:{state.state_id}:{target}"
