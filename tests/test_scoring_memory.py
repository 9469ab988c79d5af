"""Scoring memory (issue 18, items 5 and 11): out-of-memory back-off, token-budget batches, one batch's cache at a time.

Tiny random Llama models in fp32 on the CPU, requests written as token ids (no tokenizer):
out of memory is raised by a patched forward, never provoked.
"""

from __future__ import annotations

import logging
import weakref

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from donors.evaluate import native
from donors.tasks.item import Item
from donors.tasks.prompts import ScoringRequest


def tiny_llama(layers: int = 2, hidden: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def requests(n: int = 12, continuation: bool = False, seed: int = 0, vary: bool = True) -> list[ScoringRequest]:
    """``n`` items of 4 options: letters (one token each) or option texts of 1-3 tokens (continuation).

    Contexts of 5 to 15 tokens, or all of 12 (``vary`` off: one padding-free batch takes them all)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        item = Item(id=f"i{k}", task="toy", language="en", question="q", choices=("w", "x", "y", "z"), answer_index=k % 4)
        context = tuple(torch.randint(20, 128, (5 + 2 * (k % 6) if vary else 12,), generator=generator).tolist())
        if continuation:
            options = tuple(tuple(torch.randint(20, 128, (1 + (k + j) % 3,), generator=generator).tolist()) for j in range(4))
        else:
            options = ((10,), (11,), (12,), (13,))
        out.append(ScoringRequest(item, context, options, ("a", "b", "c", "d")))
    return out


class Forwards:
    """The body's forward, recorded: batch sizes, ``use_cache``, and out of memory above ``fits`` rows when set."""

    def __init__(self, model, monkeypatch, fits: int | None = None, on_tails_only: bool = False):
        self.body = model.model
        self.real = self.body.forward
        self.fits, self.on_tails_only = fits, on_tails_only
        self.calls: list[dict] = []
        self.outputs: list[weakref.ref] = []
        self.alive_at_next: list[int] = []
        monkeypatch.setattr(self.body, "forward", self)

    def __call__(self, *args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        tails = kwargs.get("past_key_values") is not None
        if not tails:  # outputs of earlier batches still referenced now: what peak memory holds beside this forward
            self.alive_at_next.append(sum(ref() is not None for ref in self.outputs))
        self.calls.append({"rows": rows, "use_cache": kwargs.get("use_cache"), "tails": tails})
        if self.fits is not None and rows > self.fits and (tails or not self.on_tails_only):
            raise torch.OutOfMemoryError(f"CUDA out of memory (test: {rows} rows, {self.fits} fit)")
        out = self.real(*args, **kwargs)
        if not tails:
            self.outputs.append(weakref.ref(out.past_key_values if kwargs.get("use_cache") else out.last_hidden_state))
        return out


def _close(a, b) -> bool:
    return all(abs(x - y) < 1e-5 for p, q in zip(a, b) for x, y in zip(p, q))


def test_out_of_memory_halves_the_scoring_batch_and_gives_the_same_scores(monkeypatch, caplog):
    """Item 5: 8 rows do not fit, then 4 do not: the batch is halved to 2 and the rest of the run keeps 2."""
    model, reqs = tiny_llama(), requests(12, vary=False)
    want = native._single_token_logprobs(model, reqs, 0, 2, None)
    forwards = Forwards(model, monkeypatch, fits=2)
    with caplog.at_level(logging.WARNING, logger="donors.evaluate.native"):
        got = native._single_token_logprobs(model, reqs, 0, 8, None)
    assert _close(got, want)
    assert [c["rows"] for c in forwards.calls][:3] == [8, 4, 2] and max(c["rows"] for c in forwards.calls[3:]) <= 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("batch of 8; retrying with 4" in m for m in messages) and any("batch of 4; retrying with 2" in m for m in messages)


def test_out_of_memory_with_one_item_fails_the_target_with_the_fix(monkeypatch):
    model, reqs = tiny_llama(), requests(4)
    Forwards(model, monkeypatch, fits=0)
    with pytest.raises(native.ScoringError, match="even one at a time"):
        native._single_token_logprobs(model, reqs, 0, 4, None)


def test_out_of_memory_mid_batch_counts_nothing_twice(monkeypatch):
    """Continuation scoring: the contexts' first tokens are queued before the tails' forward fails; the retry starts clean."""
    model, reqs = tiny_llama(), requests(10, continuation=True, vary=False)
    want = native._shared_context_logprobs(model, reqs, 0, 2, None)
    forwards = Forwards(model, monkeypatch, fits=2, on_tails_only=True)
    monkeypatch.setattr(native, "HEAD_ROWS", 4)  # the head runs (and adds into the totals) inside the failed batch too
    got = native._shared_context_logprobs(model, reqs, 0, 8, None)
    assert any(c["tails"] and c["rows"] == 8 for c in forwards.calls)  # it did fail after queueing
    assert _close(got, want)


def test_out_of_memory_in_the_head_is_retried_without_double_counting(monkeypatch):
    model, reqs = tiny_llama(), requests(12, vary=False)
    want = native._single_token_logprobs(model, reqs, 0, 4, None)
    real, failed = native.fp32_head_logits, []

    def head_once_out_of_memory(hidden, *args, **kwargs):
        if not failed and len(hidden) > 4:
            failed.append(len(hidden))
            raise torch.OutOfMemoryError("CUDA out of memory (test: the head)")
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(native, "fp32_head_logits", head_once_out_of_memory)
    monkeypatch.setattr(native, "HEAD_ROWS", 8)
    got = native._single_token_logprobs(model, reqs, 0, 4, None)
    assert failed and _close(got, want)


def test_batches_follow_a_token_budget():
    """Item 5: long prompts go fewer to a batch; without a budget (the CPU) the batches are what they were."""
    reqs = requests(12, vary=False)
    plain = native._batches(reqs, 8)
    assert native._batches(reqs, 8, None) == plain
    budget = 40
    cut = native._batches(reqs, 8, budget)
    assert sorted(i for b in cut for i in b) == list(range(12))
    assert all(len(b) * max(native._tokens(reqs[i]) for i in b) <= budget or len(b) == 1 for b in cut)
    assert len(cut) > len(plain)
    assert [len(b) for b in native._batches(reqs, 8, 10_000)] == [len(b) for b in plain]


class _FakeGpuModel:
    """What token_budget reads of a model: its config, its parameters' device and element size."""

    def __init__(self, **config):
        self.config = LlamaConfig(**config)
        self.parameter = torch.empty(1, dtype=torch.bfloat16, device="meta")

    def parameters(self):
        class P:
            device = torch.device("cuda", 0)

            def element_size(_):
                return 2

            def numel(_):
                return 2 * 10**9  # 4 GB of bf16 weights

        return iter([P()])


def _gpu_of(monkeypatch, gib: int) -> None:
    class Properties:
        total_memory = gib * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Properties())


def test_the_token_budget_follows_the_models_size_and_the_device_not_what_is_free_now(monkeypatch):
    _gpu_of(monkeypatch, 80)
    small = _FakeGpuModel(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
    large = _FakeGpuModel(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
    budgets = {
        (m, cached): native.token_budget(model, cached=cached) for m, model in (("1B", small), ("8B", large)) for cached in (False, True)
    }
    assert budgets[("8B", False)] < budgets[("1B", False)] and budgets[("8B", True)] < budgets[("1B", True)]
    assert budgets[("1B", True)] < budgets[("1B", False)]  # the key/value cache costs memory per token
    assert 10_000 < budgets[("8B", True)] < 1_000_000  # ~38 GiB over ~200 KB a token: about 200k tokens
    # Whatever is free at the moment (a warm cache, another process) does not move the batches: reruns cut alike.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * 2**30, 80 * 2**30))
    assert native.token_budget(large, cached=True) == budgets[("8B", True)]
    _gpu_of(monkeypatch, 16)
    assert native.token_budget(large, cached=True) < budgets[("8B", True)] / 5
    assert native.token_budget(tiny_llama(), cached=True) is None  # the CPU: no budget, batches as configured


def test_letters_ask_for_no_cache(monkeypatch):
    """Item 11: the lettered pass and the full continuation pass never build a key/value cache."""
    model = tiny_llama()
    forwards = Forwards(model, monkeypatch)
    native._single_token_logprobs(model, requests(6), 0, 2, None)
    native._full_continuation_logprobs(model, requests(6, continuation=True), 0, 4, None)
    assert forwards.calls and all(c["use_cache"] is False for c in forwards.calls)
    assert max(forwards.alive_at_next) == 0  # no earlier batch's hidden states alive during a forward


def test_continuation_scoring_holds_one_batchs_cache(monkeypatch):
    """Item 11: the previous batch's key/value cache is freed before the next batch's forward."""
    model = tiny_llama()
    forwards = Forwards(model, monkeypatch)
    native._shared_context_logprobs(model, requests(10, continuation=True), 0, 2, None)
    contexts = [c for c in forwards.calls if not c["tails"]]
    assert len(contexts) >= 3 and all(c["use_cache"] is True for c in contexts)
    assert max(forwards.alive_at_next) == 0, forwards.alive_at_next
