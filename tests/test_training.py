"""LoRA training on the real embedded model: it learns, it saves safely, it is reproducible."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from safetensors.torch import load_file

from donors.config import LoraConfig, TrainConfig
from donors.evaluate import summarize
from donors.evaluate.native import score_choices
from donors.models import causal_lm_parts, head_logits, load_model
from donors.tasks import get_task
from donors.train.lora import FusedLoraLinear, TrainingError, peft_lora_config, split_train_validation, train_lora
from donors.train.loss import linear_cross_entropy
from donors.train.rms_norm import frozen_rms_norms

pytestmark = pytest.mark.slow  # trains or scores a real model
ON_CPU = dict(dtype="float32", device="cpu")  # fp32 tolerances below: the same on a GPU machine (issue 18, item 15)

MODEL = "smollm2-135m"


def test_fine_tuning_raises_the_sources_own_held_out_score(tmp_path):
    """The study's premise on its smallest scale: training on a source helps that source's test set."""
    task = get_task("cldr_continent")
    train_items, test_items = task.load("en", "train")[:150], task.load("en", "test")[:100]
    model, tokenizer = load_model(MODEL, **ON_CPU)
    base = summarize(score_choices(model, tokenizer, test_items, chat_template=False))

    result = train_lora(
        model,
        tokenizer,
        train_items,
        lora=LoraConfig(),
        seed=17,
        output_dir=tmp_path / "adapter",
        train=TrainConfig(epochs=2, learning_rate=1e-3, batch_size=8),
    )
    assert len(result.train_ids) == 135 and len(result.validation_ids) == 15
    assert not set(result.train_ids) & {i.id for i in test_items}

    fresh, _ = load_model(MODEL, **ON_CPU)
    tuned_model = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    tuned = summarize(score_choices(tuned_model, tokenizer, test_items, chat_template=False))
    assert tuned.accuracy >= base.accuracy + 0.05, (base, tuned)


def test_same_seed_gives_bit_identical_adapters_and_records_the_items(tmp_path):
    """Also on a base that already trained another adapter: one loaded base serves many adapters."""
    items = get_task("number_words").load("en", "train")[:10]
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3)
    lora = LoraConfig(r=4, alpha=8)
    model, tokenizer = load_model(MODEL, **ON_CPU)
    train_lora(model, tokenizer, items, lora=lora, train=config, seed=42, output_dir=tmp_path / "a")
    shared, _ = load_model(MODEL, **ON_CPU)
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    train_lora(
        shared,
        tokenizer,
        get_task("cldr_continent").load("de", "train")[:10],
        lora=lora,
        train=config,
        seed=7,
        output_dir=tmp_path / "other",
    )
    after = shared.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    train_lora(shared, tokenizer, items, lora=lora, train=config, seed=42, output_dir=tmp_path / "b")
    weights = [load_file(tmp_path / run / "adapter_model.safetensors") for run in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    meta = json.loads((tmp_path / "a" / "donors_adapter.json").read_text())
    train_ids, validation_ids = split_train_validation(items, 0.1, 42)
    assert meta["train_ids"] == [i.id for i in train_ids] and meta["validation_ids"] == [i.id for i in validation_ids]
    assert meta["seed"] == 42 and len(meta["validation_losses"]) == 1
    assert not (tmp_path / "a.partial").exists()


def test_fused_lora_layers_compute_what_peft_computes():
    """The one-addmm forward is PEFT's function: same logits, same gradients up to rounding, PEFT's file."""
    model, tokenizer = load_model(MODEL, **ON_CPU)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, peft_lora_config(LoraConfig(r=8, alpha=16)))
    fused = [m for m in peft_model.modules() if isinstance(m, FusedLoraLinear)]
    assert len(fused) == 7 * model.config.num_hidden_layers
    with torch.no_grad():  # B starts at zero; give the adapter something to say
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    batch = tokenizer(["The capital of France is", "one two three four five six seven"], return_tensors="pt", padding=True)

    def logits_and_gradients():
        peft_model.zero_grad()
        logits = peft_model(**batch).logits
        logits.square().mean().backward()
        return logits.detach(), {k: p.grad.clone() for k, p in peft_model.named_parameters() if p.requires_grad}

    ours, our_grads = logits_and_gradients()
    for module in fused:
        module.__class__ = PeftLoraLinear
    theirs, their_grads = logits_and_gradients()
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert all(torch.allclose(our_grads[k], their_grads[k], rtol=1e-4, atol=1e-4 * their_grads[k].abs().max()) for k in their_grads)
    for module in fused:
        module.__class__ = FusedLoraLinear
    with peft_model.disable_adapter():  # PEFT's own path: the base model alone
        assert not torch.allclose(peft_model(**batch).logits, ours, atol=1e-3)


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_the_one_pass_head_loss_is_the_cross_entropy_of_the_heads_logits(softcap):
    """Same loss and hidden-state gradient as logits-then-cross_entropy, on the model's own head and hidden states."""
    model, tokenizer = load_model(MODEL, **ON_CPU)
    body, head, _ = causal_lm_parts(model)
    batch = tokenizer(
        ["The capital of France is Paris, and of Italy", "one two three four five six seven"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        states = body(**batch).last_hidden_state.flatten(0, 1)[:10]
    labels = torch.tensor([5, 17, 100, 2000, 49151, 0, 30000, 12, 7, 999])

    def loss_and_gradient(loss_fn):
        hidden = states.clone().requires_grad_()
        loss = loss_fn(hidden)
        (2.5 * loss).backward()  # an upstream factor, as the 1 / answer-token count in training
        return loss.detach(), hidden.grad

    plain = loss_and_gradient(lambda h: torch.nn.functional.cross_entropy(head_logits(h, head, softcap).float(), labels, reduction="sum"))
    one_pass = loss_and_gradient(lambda h: linear_cross_entropy(h, head, labels, softcap, chunk_rows=1000))  # a last, shorter chunk
    assert torch.allclose(one_pass[0], plain[0], rtol=1e-6)
    assert torch.allclose(one_pass[1], plain[1], rtol=1e-4, atol=1e-6)
    with torch.inference_mode():  # validation: the forward alone
        assert torch.allclose(linear_cross_entropy(states, head, labels, softcap), plain[0], rtol=1e-6)


def test_the_one_pass_head_loss_in_bf16_never_goes_below_zero_and_refuses_bad_labels():
    """In bf16 a confident token's loss is a difference of two roundings of its logit: they must be the same rounding."""
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(64, 4096, bias=False, dtype=torch.bfloat16).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(4096, 64, generator=generator))
    labels = torch.arange(5, 4096, 97)
    rows = head.weight[labels].float()
    hidden = (40 * rows / rows.norm(dim=1, keepdim=True)).bfloat16()  # the label's logit ~320, the others far below
    per_token = torch.stack([linear_cross_entropy(hidden[i : i + 1], head, labels[i : i + 1], chunk_rows=1000) for i in range(len(labels))])
    assert (per_token >= 0).all() and per_token.max() < 1e-3
    with pytest.raises(ValueError, match="token ids"):
        linear_cross_entropy(hidden[:2], head, torch.tensor([3, -100]))


def test_the_one_pass_head_loss_in_bf16_multiplies_in_the_heads_dtype_as_a_plain_loss_does(monkeypatch):
    """No fp32 copy of the head (on a GPU it made the loss 5x slower than a plain one); no less accurate than plain bf16."""
    generator = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(64, 4096, bias=False, dtype=torch.bfloat16).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(4096, 64, generator=generator) / 8)
    labels = torch.randint(4096, (12,), generator=generator)
    states = torch.randn(12, 64, generator=generator).bfloat16()

    def gradient(loss_fn, hidden=states):
        hidden = hidden.clone().requires_grad_()
        loss_fn(hidden).backward()
        return hidden.grad.float()

    exact = gradient(lambda h: torch.nn.functional.cross_entropy(h @ head.weight.float().T, labels, reduction="sum"), states.float())
    plain = gradient(lambda h: torch.nn.functional.cross_entropy(head(h).float(), labels, reduction="sum"))
    upcast, original = [], torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda self, *a, **k: (upcast.append(self.numel()), original(self, *a, **k))[1])
    ours = gradient(lambda h: linear_cross_entropy(h, head, labels, chunk_rows=1000))
    monkeypatch.undo()
    assert upcast and max(upcast) < 1000 * 64  # the chunks' logits and the label rows, never a chunk of the head
    error = {name: ((g - exact).norm() / exact.norm()).item() for name, g in (("ours", ours), ("plain", plain))}
    assert error["ours"] < max(2 * error["plain"], 1e-2), error


def test_split_is_ninety_ten_like_the_published_recipe():
    items = get_task("number_words").load("en", "train")[:300]
    train, validation = split_train_validation(items, 0.1, 42)
    assert (len(train), len(validation)) == (270, 30)
    assert split_train_validation(list(reversed(items)), 0.1, 42) == (train, validation)


def test_a_non_finite_loss_stops_the_run_with_a_clear_message(tmp_path):
    model, tokenizer = load_model(MODEL, **ON_CPU)
    model.model.norm.weight.data[0] = float("nan")  # a corrupted weight, as a diverged run would leave
    items = get_task("number_words").load("en", "train")[:6]
    with pytest.raises(TrainingError, match="non-finite loss"):
        train_lora(
            model,
            tokenizer,
            items,
            lora=LoraConfig(r=4, alpha=8),
            seed=1,
            output_dir=tmp_path / "x",
            train=TrainConfig(epochs=1, batch_size=2),
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("model_name, norms", [(MODEL, 2 * 30 + 1), ("gemma3-270m", 6 * 18 + 1)])
def test_one_node_rms_norms_compute_what_the_models_own_norms_compute(model_name, norms):
    """Llama's scale-by-weight and Gemma 3's scale-by-(1 + weight): same logits and input gradients, then the model as it was."""
    model, tokenizer = load_model(model_name, **ON_CPU)
    batch = tokenizer(["The capital of France is", "one two three four five six seven"], return_tensors="pt", padding=True)
    embeddings = model.get_input_embeddings()(batch["input_ids"]).detach()

    def logits_and_gradient():
        inputs = embeddings.clone().requires_grad_()
        logits = model(inputs_embeds=inputs, attention_mask=batch["attention_mask"]).logits
        logits.square().mean().backward()
        return logits.detach(), inputs.grad

    theirs = logits_and_gradient()
    with frozen_rms_norms(model) as patched:
        ours = logits_and_gradient()
    assert patched == norms
    assert torch.allclose(ours[0], theirs[0], atol=1e-4, rtol=1e-5)
    assert torch.allclose(ours[1], theirs[1], atol=1e-6 * theirs[1].abs().max().item(), rtol=1e-4)
    assert not any("forward" in vars(module) for module in model.modules())  # handed back as it came
