"""Score multiple-choice items from the log-likelihoods of their answers.

The lettered format needs one forward pass per item: every candidate answer (`` A`` ...
`` D``) is one token after the same prompt, so the body runs once over the prompt and the
output head runs once, at the last position. Batches are sorted by length and padded only
to their longest prompt. Choices that are not single tokens fall back to scoring each
continuation in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from donors.models import causal_lm_parts, head_logits
from donors.records import ItemPrediction, TargetScore
from donors.tasks.item import LETTERS, Item
from donors.tasks.prompts import answer_continuation, encode_example, render_prompt


@dataclass(frozen=True)
class ScoringRequest:
    """One item as token ids: the shared context and each choice's continuation."""

    item: Item
    context_ids: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    continuation_texts: tuple[str, ...]


def build_requests(items: Sequence[Item], tokenizer, *, chat_template: bool, model_name: str = "", max_length: int = 4096) -> list[ScoringRequest]:
    requests = []
    for item in items:
        context = render_prompt(item, tokenizer, chat_template=chat_template, model_name=model_name)
        texts = tuple(answer_continuation(LETTERS[i], chat_template=chat_template) for i in range(len(item.choices)))
        encoded = [encode_example(context, text, tokenizer, max_length) for text in texts]
        context_ids = encoded[0].input_ids[: encoded[0].loss_start]
        continuations = []
        for e in encoded:
            if e.input_ids[: e.loss_start] != context_ids:
                raise ValueError(f"item {item.id}: choices tokenize the shared context differently")
            continuations.append(e.input_ids[e.loss_start :])
        requests.append(ScoringRequest(item, context_ids, tuple(continuations), texts))
    return requests


def _batches(requests: Sequence[ScoringRequest], batch_size: int) -> list[list[int]]:
    """Indices grouped by similar length, longest first (so the first batch finds any OOM)."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].context_ids))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def _single_token_logprobs(model, requests: Sequence[ScoringRequest], pad_id: int, batch_size: int, on_batch) -> list[list[float]]:
    body, head, softcap = causal_lm_parts(model)
    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in requests]
    for batch in _batches(requests, batch_size):
        width = max(len(requests[i].context_ids) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            context = requests[i].context_ids
            ids[row, : len(context)] = torch.tensor(context)
            mask[row, : len(context)] = 1
        hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        last = hidden[torch.arange(len(batch)), mask.sum(1).to(device) - 1]
        logprobs = torch.log_softmax(head_logits(last, head, softcap).float(), dim=-1)
        for row, i in enumerate(batch):
            candidates = torch.tensor([c[0] for c in requests[i].continuations], device=device)
            out[i] = logprobs[row, candidates].tolist()
        if on_batch:
            on_batch(len(batch))
    return out


@torch.no_grad()
def _full_continuation_logprobs(model, requests: Sequence[ScoringRequest], pad_id: int, batch_size: int, on_batch) -> list[list[float]]:
    """Sum of token log-probs of each whole continuation after its context."""
    body, head, softcap = causal_lm_parts(model)
    device = next(model.parameters()).device
    sequences = [(r, c) for r, request in enumerate(requests) for c in range(len(request.continuations))]
    out: list[list[float]] = [[0.0] * len(r.continuations) for r in requests]
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        rows = [requests[r].context_ids + requests[r].continuations[c] for r, c in chunk]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, row in enumerate(rows):
            ids[k, : len(row)] = torch.tensor(row)
            mask[k, : len(row)] = 1
        hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        for k, (r, c) in enumerate(chunk):
            n_context = len(requests[r].context_ids)
            targets = torch.tensor(requests[r].continuations[c], device=device)
            positions = torch.arange(n_context - 1, n_context - 1 + len(targets), device=device)
            logprobs = torch.log_softmax(head_logits(hidden[k, positions], head, softcap).float(), dim=-1)
            out[r][c] = logprobs[torch.arange(len(targets)), targets].sum().item()
        if on_batch:
            on_batch(len({r for r, _ in chunk}))
    return out


def score_choices(
    model,
    tokenizer,
    items: Sequence[Item],
    *,
    chat_template: bool,
    batch_size: int = 32,
    model_name: str = "",
    on_batch: Callable[[int], None] | None = None,
) -> list[ItemPrediction]:
    """Predict each item's answer as the choice with the highest log-likelihood."""
    requests = build_requests(items, tokenizer, chat_template=chat_template, model_name=model_name)
    single_token = all(len(c) == 1 for r in requests for c in r.continuations)
    score = _single_token_logprobs if single_token else _full_continuation_logprobs
    logprobs = score(model, requests, tokenizer.pad_token_id, batch_size, on_batch)
    predictions = []
    for request, lp in zip(requests, logprobs):
        item = request.item
        predictions.append(
            ItemPrediction(
                target_task=item.task,
                target_language=item.language,
                item_id=item.id,
                gold=item.answer_index,
                predicted=max(range(len(lp)), key=lp.__getitem__),
                logprobs=tuple(lp),
            )
        )
    return predictions


def summarize(predictions: Sequence[ItemPrediction], continuation_lengths: Sequence[Sequence[int]] | None = None) -> TargetScore:
    """Accuracy, and lm-eval's length-normalised accuracy (equal to it for letter answers)."""
    if not predictions:
        raise ValueError("no predictions to summarize")
    correct = sum(p.predicted == p.gold for p in predictions)
    if continuation_lengths is None:
        correct_norm = correct
    else:
        correct_norm = sum(
            max(range(len(p.logprobs)), key=lambda i: p.logprobs[i] / lengths[i]) == p.gold
            for p, lengths in zip(predictions, continuation_lengths)
        )
    first = predictions[0]
    return TargetScore(first.target_task, first.target_language, len(predictions), correct / len(predictions), correct_norm / len(predictions))
