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

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Hashable, Mapping, Protocol, Sequence, TypeVar

from donors.records import ItemPrediction, TargetResult, TargetScore
from donors.tasks.item import Item
from donors.tasks.prompts import PromptFormat, choice_strings

if TYPE_CHECKING:
    from donors.config import EvalConfig

Key = TypeVar("Key", bound=Hashable)


def _argmax(values: Sequence[float]) -> int:
    """The first index of the largest value, as numpy's argmax (and lm-eval) break ties."""
    return max(range(len(values)), key=values.__getitem__)


def prediction(item: Item, logprobs: Sequence[float], prompt_format: PromptFormat) -> ItemPrediction:
    """One item's record: the choice with the highest log-likelihood, raw and per character."""
    logprobs = tuple(float(lp) for lp in logprobs)
    lengths = [len(s) for s in choice_strings(item, prompt_format)]
    return ItemPrediction(
        target_task=item.task,
        target_language=item.language,
        item_id=item.id,
        gold=item.answer_index,
        predicted=_argmax(logprobs),
        logprobs=logprobs,
        predicted_norm=_argmax([lp / n for lp, n in zip(logprobs, lengths)]),
    )


def summarize(predictions: Sequence[ItemPrediction]) -> TargetScore:
    """Accuracy, lm-eval's length-normalised accuracy, and the spread of predicted and gold options."""
    if not predictions:
        raise ValueError("no predictions to summarize")
    width = max(len(p.logprobs) for p in predictions)
    predicted, gold = [0] * width, [0] * width
    for p in predictions:
        predicted[p.predicted] += 1
        gold[p.gold] += 1
    n = len(predictions)
    first = predictions[0]
    return TargetScore(
        first.target_task,
        first.target_language,
        n,
        accuracy=sum(p.predicted == p.gold for p in predictions) / n,
        accuracy_norm=sum(p.predicted_norm == p.gold for p in predictions) / n,
        predicted_counts=tuple(predicted),
        gold_counts=tuple(gold),
    )


def target_result(predictions: list[ItemPrediction]) -> TargetResult:
    return TargetResult(summarize(predictions), predictions)


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


def rotated(item: Item, rotation: int) -> Item:
    """``item`` with its options rotated left by ``rotation``: option j is shown in place j - r."""
    k = len(item.choices)
    return replace(item, choices=item.choices[rotation:] + item.choices[:rotation], answer_index=(item.answer_index - rotation) % k)


def unrotated(p: ItemPrediction, rotation: int) -> ItemPrediction:
    """A prediction on a rotated item, mapped back to the item's own option order."""
    k = len(p.logprobs)
    back = lambda j: (j + rotation) % k  # noqa: E731 - the one mapping, named once
    logprobs = tuple(p.logprobs[(j - rotation) % k] for j in range(k))
    norm = None if p.predicted_norm is None else back(p.predicted_norm)
    return replace(p, gold=back(p.gold), predicted=back(p.predicted), logprobs=logprobs, predicted_norm=norm, rotation=rotation)


class PermutedScorer:
    """Any scorer, run again under every cyclic rotation of each item's options.

    Rotation 0 is the published score (``TargetResult.score`` and ``predictions``, unchanged);
    rotations 1 .. k-1 go to ``TargetResult.rotations``, mapped back to the original order.
    A model that prefers a position then answers differently under each rotation, which is
    what the permutation metrics (mean and all-rotations accuracy) read. Cost: k passes.
    """

    def __init__(self, inner: Scorer):
        self.inner = inner

    def score(
        self, model, tokenizer, targets: Mapping[Key, Sequence[Item]], *, model_name: str = "", on_batch=None
    ) -> dict[Key, TargetResult]:
        results = self.inner.score(model, tokenizer, targets, model_name=model_name, on_batch=on_batch)
        width = max((len(item.choices) for items in targets.values() for item in items), default=0)
        for rotation in range(1, width):
            shown = {key: [rotated(i, rotation) for i in items if len(i.choices) > rotation] for key, items in targets.items()}
            shown = {key: items for key, items in shown.items() if items}
            for key, result in self.inner.score(model, tokenizer, shown, model_name=model_name, on_batch=on_batch).items():
                results[key].rotations.extend(unrotated(p, rotation) for p in result.predictions)
        return results


def get_scorer(config: EvalConfig, *, prompt_format: PromptFormat | None = None, normalize: bool = True) -> Scorer:
    """The backend ``config.backend`` names (run under every rotation with ``permutations: cyclic``).

    Imported here so ``native`` never pays for lm-eval's import.
    """
    fmt = prompt_format or config.prompt_format
    if config.backend == "vllm":
        raise ValueError("the vllm backend scores adapters by path: use donors.evaluate.vllm_backend.VllmScorer")
    if config.backend == "harness":
        from donors.evaluate.harness import HarnessScorer

        scorer = HarnessScorer(chat_template=config.chat_template, batch_size=config.batch_size, prompt_format=fmt)
    else:
        from donors.evaluate.native import NativeScorer

        scorer = NativeScorer(chat_template=config.chat_template, batch_size=config.batch_size, prompt_format=fmt, normalize=normalize)
    return PermutedScorer(scorer) if config.permutations == "cyclic" else scorer
