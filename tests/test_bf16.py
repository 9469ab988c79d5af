"""Numerics under bf16 (issue 18, items 1-4), on the CPU: tiny random models, bf16 matmuls run there too.

Every model here is built from a config in the test (no download, no embedded model), so the
suite runs the same on a machine with a GPU: nothing is moved off the CPU.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from transformers import LlamaConfig, LlamaForCausalLM

from donors import models
from donors.config import LoraConfig
from donors.evaluate import native, prediction
from donors.models import fp32_head_logits, head_logits
from donors.tasks.item import Item
from donors.tasks.prompts import ScoringRequest
from donors.train.lora import FusedLoraLinear, peft_lora_config

LAYERS = 2


def tiny_llama(dtype: torch.dtype = torch.bfloat16, vocab: int = 256, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


class _Calls:
    """Counts FusedLoraLinear forwards and those that fell back to PEFT's (super().forward)."""

    def __init__(self, monkeypatch):
        self.fused = self.fallback = 0
        fused_forward, peft_forward = FusedLoraLinear.forward, PeftLoraLinear.forward

        def counted_fused(module, *args, **kwargs):
            self.fused += 1
            return fused_forward(module, *args, **kwargs)

        def counted_fallback(module, *args, **kwargs):
            self.fallback += 1
            return peft_forward(module, *args, **kwargs)

        monkeypatch.setattr(FusedLoraLinear, "forward", counted_fused)
        monkeypatch.setattr(PeftLoraLinear, "forward", counted_fallback)

    @property
    def fast(self) -> int:
        return self.fused - self.fallback


def _saved_bytes(run) -> dict[torch.dtype, int]:
    """Bytes autograd keeps for the backward, per dtype, while ``run()`` builds its graph."""
    saved: dict[torch.dtype, int] = {}

    def pack(tensor):
        saved[tensor.dtype] = saved.get(tensor.dtype, 0) + tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return saved


def _adapted(dtype):
    model = tiny_llama(dtype)
    peft_model = get_peft_model(model, peft_lora_config(LoraConfig(r=8, alpha=16)), autocast_adapter_dtype=True)
    with torch.no_grad():  # B starts at zero; give the adapter something to say
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return peft_model


def test_bf16_lora_takes_the_fused_path_with_fp32_master_weights(monkeypatch):
    """Item 1: every projection of a bf16 base runs the one-addmm path; the adapter's weights and gradients stay fp32."""
    peft_model = _adapted(torch.bfloat16)
    adapters = [p for n, p in peft_model.named_parameters() if p.requires_grad]
    assert adapters and all(p.dtype == torch.float32 for p in adapters)  # fp32 master weights, on purpose
    ids = torch.randint(1, 256, (2, 12))
    calls = _Calls(monkeypatch)
    logits = peft_model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    logits.float().square().mean().backward()
    assert calls.fused == 7 * LAYERS and calls.fast == 7 * LAYERS and calls.fallback == 0
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapters)

    # Before the fix (a fast path that wanted the adapter in the base's dtype) every call fell back.
    with monkeypatch.context() as patch:
        patch.setattr(FusedLoraLinear, "forward", lambda module, x: PeftLoraLinear.forward(module, x))
        before = _Calls(monkeypatch)
        peft_model(input_ids=ids)
        assert before.fast == 0 and before.fallback == 7 * LAYERS


def test_bf16_fused_path_keeps_no_fp32_activations_and_computes_what_peft_computes():
    """The memory item 1 is about: PEFT's forward keeps an fp32 copy of every projection's input for the backward."""
    peft_model = _adapted(torch.bfloat16)
    fused = [m for m in peft_model.modules() if isinstance(m, FusedLoraLinear)]
    ids = torch.randint(1, 256, (2, 12))
    out = {}

    def run(key):
        def forward():
            out[key] = peft_model(input_ids=ids).logits

        return forward

    ours = _saved_bytes(run("fused"))
    for module in fused:
        module.__class__ = PeftLoraLinear
    try:
        theirs = _saved_bytes(run("peft"))
    finally:
        for module in fused:
            module.__class__ = FusedLoraLinear
    # The norms and rotary embeddings keep a few fp32 tensors either way; PEFT adds every projection's input, in fp32.
    tokens = ids.numel()
    inputs = tokens * sum(m.in_features for m in fused)
    assert theirs[torch.float32] - ours.get(torch.float32, 0) >= 4 * inputs, (ours, theirs)
    assert sum(ours.values()) < sum(theirs.values())
    # One projection alone: nothing fp32 is kept by the fused path.
    x = torch.randn(tokens, fused[0].in_features, dtype=torch.bfloat16, requires_grad=True)
    assert torch.float32 not in _saved_bytes(lambda: fused[0](x))
    # Same function up to bf16 rounding (PEFT adds an fp32 delta, we add a bf16 one).
    assert torch.allclose(out["fused"].float(), out["peft"].float(), atol=0.05, rtol=0.02)


def test_fp32_fast_path_is_unchanged(monkeypatch):
    """In fp32 nothing is cast: bit-identical to the product written out, and every call fused."""
    peft_model = _adapted(torch.float32)
    layer = next(m for m in peft_model.modules() if isinstance(m, FusedLoraLinear))
    x = torch.randn(3, 5, layer.in_features)
    calls = _Calls(monkeypatch)
    with torch.no_grad():
        got = layer(x)
    assert calls.fast == 1
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    flat = x.reshape(-1, x.shape[-1])
    want = torch.nn.functional.linear(flat, layer.base_layer.weight).addmm_(flat @ a.t(), b.t(), alpha=layer.scaling["default"])
    assert torch.equal(got, want.view(3, 5, -1))


@pytest.mark.parametrize(
    "cuda, native_bf16, emulated, expected",
    [
        (False, False, False, torch.float32),  # the CPU
        (True, True, True, torch.bfloat16),  # Ampere and later
        (True, False, True, torch.float32),  # V100, T4: bf16 only emulated
        (True, False, False, torch.float32),
    ],
)
def test_auto_dtype_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, caplog, cuda, native_bf16, emulated, expected):
    """Item 3: ``is_bf16_supported()`` counts emulation; auto asks for native support and falls back to fp32, said in the log."""

    asked = []

    def is_bf16_supported(including_emulation: bool = True):
        asked.append(including_emulation)
        return native_bf16 or (including_emulation and emulated)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    models._warn_no_native_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="donors.models"):
        assert models.pick_dtype("auto") is expected
        assert models.pick_dtype("auto") is expected
    assert models.pick_dtype("float32") is torch.float32 and models.pick_dtype("bfloat16") is torch.bfloat16
    assert all(flag is False for flag in asked) and len(asked) == (2 if cuda else 0)
    warned = [r.getMessage() for r in caplog.records if r.name == "donors.models"]
    if cuda and not native_bf16:
        assert len(warned) == 1 and "Tesla V100" in warned[0] and "float32" in warned[0] and "loss scaling" in warned[0]
        assert torch.float16 is not expected  # never fp16 without loss scaling
    else:
        assert not warned


LETTER_TOKENS = (10, 11, 12, 13)


def near_tied_letters(n_items: int = 48, seed: int = 0):
    """A bf16 model whose four letter rows of the head differ by little, and items that ask for those letters.

    Their logits (about 10 in size, where bf16's spacing is 0.0625) differ by a few hundredths:
    distinct in fp32, often one value in bf16.
    """
    model = tiny_llama(torch.bfloat16, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        shared = 1.5 * torch.randn(model.config.hidden_size, generator=generator)
        for token in LETTER_TOKENS:
            model.lm_head.weight[token] = shared + 0.003 * torch.randn(model.config.hidden_size, generator=generator)
    requests = []
    for n in range(n_items):
        item = Item(id=f"i{n}", task="toy", language="en", question="q", choices=("w", "x", "y", "z"), answer_index=n % 4)
        context = tuple(torch.randint(20, 256, (6 + n % 5,), generator=generator).tolist())
        requests.append(ScoringRequest(item, context, tuple((t,) for t in LETTER_TOKENS), (" A", " B", " C", " D")))
    return model, requests


def _ties(scores) -> int:
    return sum(sum(lp == max(lps) for lp in lps) > 1 for lps in scores)


def _bf16_head(hidden, head, softcap=None, token_ids=None):
    """The head as it ran before: logits rounded to the model's dtype, then cast up."""
    return head_logits(hidden, head, softcap, token_ids).float()


@pytest.mark.parametrize("normalize", [True, False])
def test_letter_scores_of_a_bf16_model_are_read_in_fp32_and_do_not_tie(monkeypatch, normalize):
    """Item 2: near-equal letters of a bf16 head tie when read in bf16 (and the tie goes to A); in fp32 they do not."""
    model, requests = near_tied_letters()
    fixed = native._single_token_logprobs(model, requests, 0, 8, None, normalize)
    with monkeypatch.context() as patch:
        patch.setattr(native, "fp32_head_logits", _bf16_head)
        before = native._single_token_logprobs(model, requests, 0, 8, None, normalize)
    ties_before, ties_after = _ties(before), _ties(fixed)
    assert ties_before >= len(requests) // 4, ties_before  # measured: 30 of 48 items
    assert ties_after == 0
    # The tied items went to the first of the tied letters (measured: 30 of 48 answered A before, 10 after).
    # Read in fp32, the bf16 model answers as the same model run in fp32 does (measured: 25 of 48 before, 48 after).
    reference = native._single_token_logprobs(copy.deepcopy(model).float(), requests, 0, 8, None, normalize)

    def predicted(scores):
        return [prediction(r.item, lp, "lettered").predicted for r, lp in zip(requests, scores)]

    assert predicted(before).count(0) > predicted(fixed).count(0)
    agree_before, agree_after = (sum(p == q for p, q in zip(predicted(s), predicted(reference))) for s in (before, fixed))
    assert agree_after >= 0.95 * len(requests) > agree_before
    # fp32 scores of the bf16 body agree with the rounded ones to bf16's spacing at these logits.
    assert max(abs(a - b) for x, y in zip(fixed, before) for a, b in zip(x, y)) < 0.1


def test_fp32_head_logits_is_the_plain_head_in_fp32_and_exact_on_fp32_models(monkeypatch):
    head = torch.nn.Linear(64, 1000, bias=True, dtype=torch.bfloat16)
    hidden = torch.randn(5, 64).bfloat16()
    want = hidden.float() @ head.weight.float().T + head.bias.float()
    monkeypatch.setattr(models, "VOCAB_ROWS", 300)  # several slices of the vocabulary, the last one shorter
    got = fp32_head_logits(hidden, head, 30.0)
    assert got.dtype == torch.float32 and torch.allclose(got, 30.0 * torch.tanh(want / 30.0), rtol=1e-6, atol=1e-6)
    picked = fp32_head_logits(hidden, head, None, token_ids=torch.tensor([7, 3]))
    assert torch.allclose(picked, want[:, [7, 3]], rtol=1e-6, atol=1e-6)
    head32 = head.float()
    assert torch.equal(fp32_head_logits(hidden.float(), head32), head_logits(hidden.float(), head32))


@pytest.mark.slow  # reads the embedded SmolLM2's tokenizer (converted once from its package)
def test_backends_in_bf16_agree_up_to_the_rounding_of_lm_evals_bf16_logits():
    """Item 2, the harness backend: lm-eval's log-softmax runs in fp32 (softmax_dtype), its logits are the model's bf16 ones.

    What holds in bf16, with near-tied letters: each log-likelihood within one bf16 spacing of
    the item's largest candidate logit (the rounding of a logit and of the normaliser), the
    native scores never tie, and the answers differ only where lm-eval sees a tie or the native
    top two are closer than that spacing. (In fp32 they agree to 1e-3: test_harness_agreement.)
    """
    import math

    from donors.evaluate.harness import HarnessScorer
    from donors.grid import Cell
    from donors.models import load_tokenizer
    from donors.tasks import get_task
    from donors.tasks.prompts import build_requests

    tokenizer = load_tokenizer("smollm2-135m")
    cell = Cell("number_words", "en")
    items = get_task(cell.task).load(cell.language, "test")[:24]
    letters = sorted({c[0] for r in build_requests(items, tokenizer, chat_template=False) for c in r.continuations})
    model = tiny_llama(torch.bfloat16, vocab=len(tokenizer))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        shared = 1.5 * torch.randn(model.config.hidden_size, generator=generator)
        for token in letters:
            model.lm_head.weight[token] = shared + 0.003 * torch.randn(model.config.hidden_size, generator=generator)

    harness_scorer = HarnessScorer(chat_template=False, batch_size=8)
    harness = harness_scorer.score(model, tokenizer, {cell: items})[cell].predictions
    assert harness_scorer._lm.softmax_dtype is torch.float32
    ours = native.NativeScorer(chat_template=False, batch_size=8).score(model, tokenizer, {cell: items})[cell].predictions
    logits = native.NativeScorer(chat_template=False, batch_size=8, normalize=False).score(model, tokenizer, {cell: items})[cell]

    def spacing(values) -> float:
        """bf16's spacing at the largest magnitude (8 significant bits)."""
        return 2.0 ** (math.floor(math.log2(max(1.0, *map(abs, values)))) - 7)

    disagree = 0
    for p, q, z in zip(ours, harness, logits.predictions):
        bound = spacing(z.logprobs)
        assert max(abs(a - b) for a, b in zip(p.logprobs, q.logprobs)) <= 1.25 * bound  # a little for batch shapes
        if p.predicted != q.predicted:
            disagree += 1
            top, second = sorted(p.logprobs, reverse=True)[:2]
            assert q.logprobs.count(max(q.logprobs)) > 1 or top - second < bound
    assert _ties([p.logprobs for p in ours]) == 0
    assert _ties([q.logprobs for q in harness]) >= len(items) // 2  # measured: 22 of 24
    assert disagree <= len(items) // 4  # measured: 1 of 24


def tiny_gemma3_vlm(seed: int = 0):
    """A randomly initialised ``Gemma3ForConditionalGeneration``: Gemma 3 4b's architecture at toy size."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=16,
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299, boi_token_index=297, eoi_token_index=298
    )
    torch.manual_seed(seed)
    return Gemma3ForConditionalGeneration(config).eval()


def test_a_gemma3_vision_language_checkpoint_loads_as_its_text_model(tmp_path, monkeypatch):
    """Item 4: the vision tower is dropped on the CPU, before the move to the device; the text logits are the same."""
    vlm = tiny_gemma3_vlm()
    vlm.save_pretrained(tmp_path / "gemma3-vlm")
    ids = torch.randint(1, 290, (2, 10))
    with torch.no_grad():
        want = vlm(input_ids=ids).logits
    monkeypatch.setattr(models, "load_tokenizer", lambda name, **kw: "tokenizer")  # the checkpoint has none
    moved = []
    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(type(self).__name__) or self)
        model, tokenizer = models.load_model(str(tmp_path / "gemma3-vlm"), device="cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM" and moved == ["Gemma3ForCausalLM"]
    assert not any("vision" in name or "multi_modal" in name for name, _ in model.named_modules())
    assert model.dtype == torch.float32 and not model.training
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    text_params = sum(p.numel() for p in vlm.model.language_model.parameters())
    assert sum(p.numel() for p in model.parameters()) == text_params
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, want)
    bf16, _ = models.load_model(str(tmp_path / "gemma3-vlm"), dtype="bfloat16", device="cpu")
    assert bf16.dtype == torch.bfloat16 and type(bf16).__name__ == "Gemma3ForCausalLM"


def test_lora_never_adapts_a_vision_tower():
    """Item 4: PEFT matches target_modules by suffix, and SigLIP has q_proj, k_proj and v_proj too."""
    vlm = tiny_gemma3_vlm()
    lora = LoraConfig(r=4, alpha=8)

    def adapted(config):
        peft_model = get_peft_model(copy.deepcopy(vlm), config, autocast_adapter_dtype=True)
        return [name for name, module in peft_model.named_modules() if isinstance(module, PeftLoraLinear)]

    unguarded = adapted(peft_lora_config(lora))
    assert any("vision_tower" in name for name in unguarded)  # what PEFT does by itself: 3 of SigLIP's projections
    guarded = adapted(peft_lora_config(lora, model=vlm))
    assert guarded and not any("vision" in name or "multi_modal" in name for name in guarded)
    assert len(guarded) == 7 * vlm.config.text_config.num_hidden_layers
    assert peft_lora_config(lora, model=models.text_only(copy.deepcopy(vlm))).exclude_modules is None
    assert peft_lora_config(lora, model=tiny_llama()).exclude_modules is None  # a text model's adapter config as before
