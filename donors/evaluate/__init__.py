"""Scoring backends, chosen by ``eval.backend`` in the study config.

* ``native`` (:mod:`donors.evaluate.native`): our scorer, built for this workload;
* ``harness`` (:mod:`donors.evaluate.harness`): lm-evaluation-harness does the scoring, on
  lm-eval tasks generated from our items, with adapters swapped onto one loaded base model;
* ``vllm`` (:mod:`donors.evaluate.vllm_backend`, optional): vLLM's engine scores several
  adapters in shared batches.

``native`` and ``harness`` take any model object (a base model or a ``PeftModel`` with its
current adapter) through :class:`Scorer`; ``vllm`` owns its engine and takes adapter paths.
All return the same records, so the store and every analysis are blind to which one ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable, Literal, Mapping, Protocol, Sequence, TypeVar

from donors.records import ItemPrediction, TargetScore

if TYPE_CHECKING:
    from donors.config import EvalConfig
    from donors.tasks.item import Item

PromptFormat = Literal["lettered", "continuation"]
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class TargetResult:
    """One target scored by one model state: its summary and the item-level predictions."""

    score: TargetScore
    predictions: list[ItemPrediction]


def prediction(item: Item, logprobs: Sequence[float]) -> ItemPrediction:
    """One item's record: the choice with the highest log-likelihood is the prediction."""
    logprobs = tuple(float(lp) for lp in logprobs)
    return ItemPrediction(
        target_task=item.task,
        target_language=item.language,
        item_id=item.id,
        gold=item.answer_index,
        predicted=max(range(len(logprobs)), key=logprobs.__getitem__),
        logprobs=logprobs,
    )


class Scorer(Protocol):
    """Scores targets (any hashable key -> that target's items) with the model as it is now."""

    def score(
        self,
        model,
        tokenizer,
        targets: Mapping[Key, Sequence[Item]],
        *,
        model_name: str = "",
        on_batch: Callable[[int], None] | None = None,
    ) -> dict[Key, TargetResult]: ...


def get_scorer(config: EvalConfig, *, prompt_format: PromptFormat | None = None, normalize: bool = True) -> Scorer:
    """The backend ``config.backend`` names; imported here so ``native`` never pays for lm-eval's import."""
    fmt = prompt_format or config.prompt_format
    if config.backend == "vllm":
        raise ValueError("the vllm backend scores adapters by path: use donors.evaluate.vllm_backend.VllmScorer")
    if config.backend == "harness":
        from donors.evaluate.harness import HarnessScorer

        return HarnessScorer(chat_template=config.chat_template, batch_size=config.batch_size, prompt_format=fmt)
    from donors.evaluate.native import NativeScorer

    return NativeScorer(chat_template=config.chat_template, batch_size=config.batch_size, prompt_format=fmt, normalize=normalize)
