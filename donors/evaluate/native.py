"""Score multiple-choice items from the log-likelihoods of their answers: our backend.

Built for this workload, with the log-likelihoods lm-evaluation-harness computes:

* batches are sorted by prompt length and padded only to their own longest prompt;
* the lettered format needs one forward pass per item: every candidate answer (`` A`` ...)
  is one token after the same prompt, so the body runs once over the prompt and the output
  head runs at the answer position only. ``normalize`` applies the full-vocabulary
  log-normaliser there (true log-probabilities); without it only the candidates' rows of the
  head run, which picks the same answer and matters for a large vocabulary (Gemma's 262k);
* continuation-style choices (option texts scored after the question, as the published ARC,
  HellaSwag and TruthfulQA lm-eval tasks do) encode the shared context once per item and
  reuse its key/value cache for all of that item's continuations, batched;
* many adapters are scored in one process on one base model (the caller swaps them);
* whatever the model's dtype, the head's rows that are read and the log-softmax run in fp32
  (:func:`donors.models.fp32_head_logits`): a bf16 head would round near-equal candidates
  to equal logits, and a tie goes to the first option.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

import torch

from donors.errors import DonorsError
from donors.evaluate import Key, TargetResult, prediction, target_result
from donors.models import causal_lm_parts, fp32_head_logits
from donors.records import ItemPrediction
from donors.tasks.item import Item
from donors.tasks.prompts import PromptFormat, ScoringRequest, build_requests

# A GPU has the memory and parallelism for far more rows per forward pass than a CPU (at most: token_budget cuts
# a batch to what the free memory holds for this model and these prompts).
GPU_BATCH_FACTOR = 8
# Hidden states per run of the full-vocabulary head: enough rows to pay for reading its weights.
HEAD_ROWS = 128
# Padding a batch may add, as a share of its width: more, and a shorter prompt starts the next batch.
MAX_PADDING = 0.1
# Share of the GPU's free memory a batch's activations and key/value cache may take (the rest: head, fragmentation).
GPU_MEMORY_SHARE = 0.5

logger = logging.getLogger(__name__)


class ScoringError(DonorsError, RuntimeError):
    """Scoring that cannot go on: out of memory even one item at a time."""


def _tokens(request: ScoringRequest) -> int:
    """Positions one request takes in a forward pass: its context, then its continuations' tails packed after it."""
    return len(request.context_ids) + sum(len(c) - 1 for c in request.continuations if len(c) > 1)


def _batches(requests: Sequence[ScoringRequest], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices sorted longest first (so the first batch finds any OOM), cut into batches of at
    most ``batch_size`` whose rows are padded by at most ``MAX_PADDING`` of their width, and,
    with ``max_tokens``, whose rows times their widest row stay within that many tokens."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].context_ids))
    batches: list[list[int]] = []
    widest = 0
    for i in order:
        length = len(requests[i].context_ids)
        if (
            batches
            and len(batches[-1]) < batch_size
            and length >= (1 - MAX_PADDING) * len(requests[batches[-1][0]].context_ids)
            and (max_tokens is None or (len(batches[-1]) + 1) * max(widest, _tokens(requests[i])) <= max_tokens)
        ):
            batches[-1].append(i)
            widest = max(widest, _tokens(requests[i]))
        else:
            batches.append([i])
            widest = _tokens(requests[i])
    return batches


def token_budget(model, *, cached: bool) -> int | None:
    """Tokens one forward pass may hold on this model's GPU: ``GPU_MEMORY_SHARE`` of the memory the weights leave
    (the device's total less the model's parameters) over what a token costs (its key/value cache in every layer when
    ``cached``, and one layer's widest activations); None on a CPU.

    So batches follow the model's size and the prompts' lengths: a 1B model at 100 tokens a
    prompt gets many items per batch, an 8B model at 1,000 tokens few. It depends on the model
    and the device only, never on what happens to be free now, so a rescored target is cut into
    the same batches as before (batch shape moves low-precision logits).
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base.config, "text_config", None) or base.config
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = 2 * config.num_hidden_layers * getattr(config, "num_key_value_heads", heads) * head_dim if cached else 0
    width = max(hidden, heads * head_dim, getattr(config, "intermediate_size", 0) or 0)
    per_token = next(model.parameters()).element_size() * (kv + 4 * hidden + 3 * width)
    total = torch.cuda.get_device_properties(device).total_memory
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return max(1, int(GPU_MEMORY_SHARE * max(total - weights, 0) / per_token))


def _is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises its own class; other backends (and older torch) a RuntimeError that says so."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def _each_batch(batches: Sequence[list], run: Callable[[list], None], what: str) -> None:
    """``run(batch)`` for every batch; out of memory splits a batch in halves and retries, down to one row each.

    As training does: the rows that did not fit are redone in batches of half the size, and
    later batches are cut to that size too (what fitted once is what is tried next). ``run``
    must keep no state from a failed call: every tensor it made is freed before the retry.
    """
    pending = list(reversed(batches))
    limit = None
    while pending:
        batch = pending.pop()
        if limit is not None and len(batch) > limit:
            pending.extend(reversed([batch[i : i + limit] for i in range(0, len(batch), limit)]))
            continue
        try:
            run(batch)
            continue
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            if len(batch) == 1:
                raise ScoringError(
                    f"out of memory scoring {what} even one at a time; lower eval.batch_size, shorten the prompts, "
                    "or use a device with more memory"
                ) from error
        # Outside the except block, so the failed pass's tensors (held by the traceback) are freed first.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        limit = len(batch) // 2
        logger.warning("out of memory scoring %s with a batch of %d; retrying with %d", what, len(batch), limit)
        pending.append(batch[limit:])
        pending.append(batch[:limit])


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, lengths) of rows padded on the right to the longest of them."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, row in enumerate(rows):
        ids[k, : len(row)] = torch.tensor(row)
        mask[k, : len(row)] = 1
    return ids.to(device), mask.to(device), mask.sum(1).to(device)


def _encode_contexts(body, rows: Sequence[Sequence[int]], pad_id: int, device, *, use_cache: bool):
    """The body over right-padded contexts: (output, mask, lengths, hidden state at each last token).

    A batch of equal lengths goes without a mask, so attention takes its causal fast path.
    """
    ids, mask, lengths = _right_padded(rows, pad_id, device)
    ragged = bool((lengths != ids.shape[1]).any())
    out = body(input_ids=ids, attention_mask=mask if ragged else None, use_cache=use_cache)
    last = out.last_hidden_state[torch.arange(len(rows), device=device), lengths - 1]
    return out, mask, lengths, last


@torch.no_grad()
def _merged_weights(body) -> dict[str, torch.Tensor]:
    """``W + BA`` of every LoRA projection with an active adapter, keyed by its base weight's name.

    Empty when there is nothing to merge, or for a LoRA variant (DoRA, LoRA bias...) whose
    output is not ``x (W + BA)^T``: those are scored through PEFT's own forward.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    merged = {}
    for name, module in body.named_modules():
        if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
            continue
        adapters = [a for a in module.active_adapters if a in module.lora_A]
        if not adapters:
            continue
        variant = any(a in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(a) for a in adapters)
        if variant or not isinstance(module.base_layer, torch.nn.Linear):
            return {}
        weight = module.base_layer.weight
        merged[f"{name}.base_layer.weight"] = weight + sum(module.get_delta_weight(a).to(weight.dtype) for a in adapters)
    return merged


class _MergedBody:
    """The decoder body run with merged weights in place of its LoRA projections' base weights."""

    def __init__(self, body, merged: dict[str, torch.Tensor]):
        self.body, self.merged = body, merged

    def __call__(self, **kwargs):
        return torch.func.functional_call(self.body, self.merged, args=(), kwargs=kwargs)

    def get_input_embeddings(self):
        return self.body.get_input_embeddings()


@contextmanager
def scoring_body(model) -> Iterator:
    """The decoder body to score with: on a CPU, an adapted model's LoRA projections merged.

    Eager LoRA adds two thin matmuls and two passes over each projection's output to every
    forward (about 15% of a CPU scoring run); merged once per call, they cost nothing per
    token. The merged tensors are read through ``functional_call`` with the adapter layers
    switched off, so the base weights are never written and come back bit-identical for the
    next adapter; memory grows by one copy of the adapted projections while scoring, whatever
    the number of adapters. On a GPU, where that copy is costly, PEFT's forward runs as is.
    """
    body, _, _ = causal_lm_parts(model)
    on_cpu = next(body.parameters()).device.type == "cpu"
    merged = _merged_weights(body) if on_cpu and hasattr(model, "disable_adapter") else {}
    if not merged:
        yield body
        return
    with model.disable_adapter():
        yield _MergedBody(body, merged)
    del merged


class _HeadQueue:
    """Hidden states waiting for the output head, and the (state, token) log-probs wanted from them.

    Each wanted log-prob adds into a slot, one slot per (item, choice). The full-vocabulary
    head runs over chunks of ``HEAD_ROWS`` states gathered across batches, so its weight
    matrix (671 MB for Gemma's 262k vocabulary in fp32) is read once per chunk, not once per
    batch. Unnormalised, only the wanted tokens' rows of the head run: their logits.
    """

    def __init__(self, n_slots: int, head, softcap, device, normalize: bool = True):
        self.head, self.softcap, self.normalize = head, softcap, normalize
        self.totals = torch.zeros(n_slots, dtype=torch.float64, device=device)
        self.hidden: list[torch.Tensor] = []
        self.rows: list[int] = []
        self.tokens: list[int] = []
        self.slots: list[int] = []
        self.n = 0

    def add(self, hidden: torch.Tensor, wanted: Sequence[tuple[int, int, int]]) -> None:
        """Queue ``hidden``; ``wanted`` holds (row of ``hidden``, token, slot)."""
        for row, token, slot in wanted:
            self.rows.append(self.n + row)
            self.tokens.append(token)
            self.slots.append(slot)
        self.hidden.append(hidden)
        self.n += len(hidden)
        if self.n >= HEAD_ROWS:
            self.flush()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: a batch that fails (out of memory, to be retried in halves) leaves the queue and totals as they were."""
        saved = (list(self.hidden), list(self.rows), list(self.tokens), list(self.slots), self.n, self.totals.clone())
        try:
            yield
        except BaseException:
            self.hidden, self.rows, self.tokens, self.slots, self.n, self.totals = saved
            raise

    def flush(self) -> None:
        if not self.hidden:
            return
        hidden = torch.cat(self.hidden)
        device = hidden.device
        rows, tokens, slots = (torch.tensor(x, device=device) for x in (self.rows, self.tokens, self.slots))
        if self.normalize:
            picked = torch.empty(len(rows), dtype=torch.float32, device=device)
            for start in range(0, len(hidden), HEAD_ROWS):
                logprobs = torch.log_softmax(fp32_head_logits(hidden[start : start + HEAD_ROWS], self.head, self.softcap), dim=-1)
                here = (rows >= start) & (rows < start + HEAD_ROWS)
                picked[here] = logprobs[rows[here] - start, tokens[here]]
        else:
            union, column = torch.unique(tokens, return_inverse=True)
            picked = fp32_head_logits(hidden, self.head, self.softcap, token_ids=union)[rows, column]
        self.totals.index_add_(0, slots, picked.double())
        self.hidden, self.rows, self.tokens, self.slots, self.n = [], [], [], [], 0

    def results(self, requests: Sequence[ScoringRequest]) -> list[list[float]]:
        """Per request, the summed log-prob of each choice."""
        self.flush()
        flat = self.totals.tolist()
        out, start = [], 0
        for r in requests:
            out.append(flat[start : start + len(r.continuations)])
            start += len(r.continuations)
        return out


def _slot_offsets(requests: Sequence[ScoringRequest]) -> list[int]:
    """Index of each request's first (item, choice) slot."""
    offsets, total = [], 0
    for r in requests:
        offsets.append(total)
        total += len(r.continuations)
    return offsets


@torch.inference_mode()
def _single_token_logprobs(
    model, requests: Sequence[ScoringRequest], pad_id: int, batch_size: int, on_batch, normalize: bool = True, max_tokens: int | None = None
) -> list[list[float]]:
    """One forward pass per item; the head only at the answer position, for the candidates (or all, to normalise)."""
    _, head, softcap = causal_lm_parts(model)
    device = next(model.parameters()).device
    offsets = _slot_offsets(requests)
    queue = _HeadQueue(sum(len(r.continuations) for r in requests), head, softcap, device, normalize)
    with scoring_body(model) as body:

        def run(batch: list[int]) -> None:
            with queue.transaction():
                _, _, _, last = _encode_contexts(body, [requests[i].context_ids for i in batch], pad_id, device, use_cache=False)
                wanted = [(row, c[0], offsets[i] + k) for row, i in enumerate(batch) for k, c in enumerate(requests[i].continuations)]
                queue.add(last, wanted)
            if on_batch:
                on_batch(len(batch))

        _each_batch(_batches(requests, batch_size, max_tokens), run, "answers")
    return queue.results(requests)


def _cache_window(model) -> int | None:
    """Tokens a sliding-window layer keeps in its cache (None: every layer keeps all)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    window = getattr(base.config, "sliding_window", None) or getattr(getattr(base.config, "text_config", None), "sliding_window", None)
    return window - 1 if window else None


def _packed_tails(
    tails_per_row: Sequence[Sequence[tuple[int, ...]]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's continuation tails (all tokens but the last) end to end: (ids, segment, offset).

    ``segment`` numbers the tails within a row (-1 on padding); ``offset`` is a token's place in its tail.
    """
    width = max(sum(len(t) - 1 for t in tails) for tails in tails_per_row)
    ids = torch.full((len(tails_per_row), width), pad_id, dtype=torch.long)
    segment = torch.full_like(ids, -1)
    offset = torch.zeros_like(ids)
    for row, tails in enumerate(tails_per_row):
        start = 0
        for s, tail in enumerate(tails):
            n = len(tail) - 1
            ids[row, start : start + n] = torch.tensor(tail[:-1])
            segment[row, start : start + n] = s
            offset[row, start : start + n] = torch.arange(n)
            start += n
    return ids.to(device), segment.to(device), offset.to(device)


def _tails_mask(context_mask: torch.Tensor, segment: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D mask: a tail token sees its item's real context and the earlier tokens of its own tail."""
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment.device).tril()
    own_tail = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0) & causal
    context = context_mask.bool()[:, None, :].expand(-1, width, -1)
    allowed = torch.cat([context, own_tail], dim=2)[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _continuation_tails(body, cache, mask, lengths, tails_per_row: Sequence[Sequence[tuple[int, ...]]], pad_id: int) -> torch.Tensor:
    """Hidden states over every multi-token continuation but its last token, reading its item's cached context.

    An item's tails are packed into one row after its cached context (tree attention: each
    tail sees the context and itself, not its siblings), so the context is neither re-run nor
    copied per choice. Each tail takes the positions right after its context's last real token.
    Rows come out tail by tail, in order, each tail's tokens in order.
    """
    ids, segment, offset = _packed_tails(tails_per_row, pad_id, mask.device)
    hidden = body(
        input_ids=ids,
        attention_mask=_tails_mask(mask, segment, body.get_input_embeddings().weight.dtype),
        position_ids=lengths[:, None] + offset,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    return hidden[segment >= 0]


@torch.inference_mode()
def _shared_context_logprobs(
    model, requests: Sequence[ScoringRequest], pad_id: int, batch_size: int, on_batch, max_tokens: int | None = None
) -> list[list[float]]:
    """Sum of token log-probs of each continuation, the shared context encoded once per item.

    Peak memory is one batch's key/value cache: each batch runs in a function of its own, so
    its cache and hidden states are freed when it returns, before the next batch's forward
    (only the hidden states the head still needs, a few rows each, are kept in the queue).
    """
    _, head, softcap = causal_lm_parts(model)
    device = next(model.parameters()).device
    window = _cache_window(model)
    offsets = _slot_offsets(requests)
    queue = _HeadQueue(offsets[-1] + len(requests[-1].continuations) if requests else 0, head, softcap, device)
    full: dict[int, list[float]] = {}
    with scoring_body(model) as body:

        def run(batch: list[int]) -> None:
            tails_per_row = [[(k, c) for k, c in enumerate(requests[i].continuations) if len(c) > 1] for i in batch]
            longest = max(len(requests[i].context_ids) for i in batch) + max(sum(len(c) for _, c in tails) for tails in tails_per_row)
            if window is not None and longest > window:
                # Past a sliding window the cache no longer holds the whole context: score in full.
                scored = _full_continuation_logprobs(model, [requests[i] for i in batch], pad_id, batch_size, None, body=body)
                full.update(zip(batch, scored))
            else:
                with queue.transaction():
                    result, mask, lengths, last = _encode_contexts(
                        body, [requests[i].context_ids for i in batch], pad_id, device, use_cache=True
                    )
                    queue.add(
                        last, [(row, c[0], offsets[i] + k) for row, i in enumerate(batch) for k, c in enumerate(requests[i].continuations)]
                    )
                    if any(tails_per_row):
                        hidden = _continuation_tails(
                            body, result.past_key_values, mask, lengths, [[c for _, c in t] for t in tails_per_row], pad_id
                        )
                        del result  # the cache: no longer needed once the tails have read it
                        wanted = [(offsets[i] + k, token) for i, tails in zip(batch, tails_per_row) for k, c in tails for token in c[1:]]
                        queue.add(hidden, [(row, token, slot) for row, (slot, token) in enumerate(wanted)])
            if on_batch:
                on_batch(len(batch))

        _each_batch(_batches(requests, batch_size, max_tokens), run, "options")
    out = queue.results(requests)
    for i, logprobs in full.items():
        out[i] = logprobs
    return out


@torch.inference_mode()
def _full_continuation_logprobs(
    model, requests: Sequence[ScoringRequest], pad_id: int, batch_size: int, on_batch, body=None
) -> list[list[float]]:
    """Sum of token log-probs of each whole continuation after its context, every pair run in full.

    No cache is asked for (``use_cache=False``), and each chunk's hidden states are freed before the next forward.
    """
    if body is None:
        with scoring_body(model) as body:
            return _full_continuation_logprobs(model, requests, pad_id, batch_size, on_batch, body)
    _, head, softcap = causal_lm_parts(model)
    device = next(model.parameters()).device
    sequences = [(r, c) for r, request in enumerate(requests) for c in range(len(request.continuations))]
    out: list[list[float]] = [[0.0] * len(r.continuations) for r in requests]

    def run(chunk: list[tuple[int, int]]) -> None:
        ids, mask, _ = _right_padded([requests[r].context_ids + requests[r].continuations[c] for r, c in chunk], pad_id, device)
        hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        for k, (r, c) in enumerate(chunk):
            n_context = len(requests[r].context_ids)
            targets = torch.tensor(requests[r].continuations[c], device=device)
            positions = torch.arange(n_context - 1, n_context - 1 + len(targets), device=device)
            logprobs = torch.log_softmax(fp32_head_logits(hidden[k, positions], head, softcap), dim=-1)
            out[r][c] = logprobs[torch.arange(len(targets)), targets].sum().item()
        if on_batch:
            on_batch(len({r for r, _ in chunk}))

    _each_batch([sequences[start : start + batch_size] for start in range(0, len(sequences), batch_size)], run, "options in full")
    return out


def score_choices(
    model,
    tokenizer,
    items: Sequence[Item],
    *,
    chat_template: bool,
    batch_size: int = 32,
    model_name: str = "",
    prompt_format: PromptFormat = "lettered",
    normalize: bool = True,
    on_batch: Callable[[int], None] | None = None,
    max_tokens: int | None = None,
) -> list[ItemPrediction]:
    """Predict each item's answer as the choice with the highest log-likelihood.

    ``normalize=False`` keeps, for single-token answers, the candidates' logits instead of
    log-probabilities (same prediction, cheaper head); longer answers are always normalised.
    A batch holds at most ``batch_size`` items and, on a GPU, at most ``max_tokens`` tokens
    (by default :func:`token_budget` of the model); out of memory halves it and retries.
    """
    requests = build_requests(items, tokenizer, chat_template=chat_template, prompt_format=prompt_format, model_name=model_name)
    single = all(len(c) == 1 for r in requests for c in r.continuations)
    if max_tokens is None:
        max_tokens = token_budget(model, cached=not single)
    if single:
        logprobs = _single_token_logprobs(model, requests, tokenizer.pad_token_id, batch_size, on_batch, normalize, max_tokens)
    else:
        logprobs = _shared_context_logprobs(model, requests, tokenizer.pad_token_id, batch_size, on_batch, max_tokens)
    return [prediction(request.item, lp, prompt_format) for request, lp in zip(requests, logprobs)]


class NativeScorer:
    """The native backend behind :class:`donors.evaluate.Scorer`."""

    def __init__(self, *, chat_template: bool, batch_size: int = 32, prompt_format: PromptFormat = "lettered", normalize: bool = True):
        self.chat_template = chat_template
        self.batch_size = batch_size
        self.prompt_format = prompt_format
        self.normalize = normalize

    def score(
        self, model, tokenizer, targets: Mapping[Key, Sequence[Item]], *, model_name: str = "", on_batch=None
    ) -> dict[Key, TargetResult]:
        """All targets in one length-sorted pass, so small targets still fill whole batches."""
        on_gpu = next(model.parameters()).device.type == "cuda"
        items = [item for target in targets.values() for item in target]
        predictions = iter(
            score_choices(
                model,
                tokenizer,
                items,
                chat_template=self.chat_template,
                model_name=model_name,
                on_batch=on_batch,
                batch_size=self.batch_size * (GPU_BATCH_FACTOR if on_gpu else 1),
                prompt_format=self.prompt_format,
                normalize=self.normalize,
            )
        )
        results = {}
        for key, target in targets.items():
            results[key] = target_result([next(predictions) for _ in target])
        return results
