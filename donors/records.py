"""Plain records that cross stage boundaries: what training and evaluation hand to the store."""

from __future__ import annotations

from dataclasses import dataclass

from donors.grid import Cell


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
    """A trained LoRA adapter: where it is, how it was made, and the exact items it saw."""

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


@dataclass(frozen=True)
class ItemPrediction:
    """One item scored by one model state: the atom of every paired statistic."""

    target_task: str
    target_language: str
    item_id: str
    gold: int
    predicted: int
    logprobs: tuple[float, ...]


@dataclass(frozen=True)
class TargetScore:
    target_task: str
    target_language: str
    n: int
    accuracy: float
    accuracy_norm: float
