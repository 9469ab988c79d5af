"""Numerics under bf16 (issue 18, items 1-4), on the CPU: tiny random models, bf16 matmuls run there too.

Every model here is built from a config in the test (no download, no embedded model), so the
suite runs the same on a machine with a GPU: nothing is moved off the CPU.
"""

from __future__ import annotations

import logging

import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from transformers import LlamaConfig, LlamaForCausalLM

from donors.config import LoraConfig
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
    "cuda, native, emulated, expected",
    [
        (False, False, False, torch.float32),  # the CPU
        (True, True, True, torch.bfloat16),  # Ampere and later
        (True, False, True, torch.float32),  # V100, T4: bf16 only emulated
        (True, False, False, torch.float32),
    ],
)
def test_auto_dtype_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, caplog, cuda, native, emulated, expected):
    """Item 3: ``is_bf16_supported()`` counts emulation; auto asks for native support and falls back to fp32, said in the log."""
    from donors import models

    asked = []

    def is_bf16_supported(including_emulation: bool = True):
        asked.append(including_emulation)
        return native or (including_emulation and emulated)

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
    if cuda and not native:
        assert len(warned) == 1 and "Tesla V100" in warned[0] and "float32" in warned[0] and "loss scaling" in warned[0]
        assert torch.float16 is not expected  # never fp16 without loss scaling
    else:
        assert not warned
