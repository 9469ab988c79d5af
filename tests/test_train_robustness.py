"""Out of memory mid-step: the step is redone in smaller micro-batches, and the result is unchanged."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

import donors.train.lora as lora_module
from donors.config import LoraConfig, TrainConfig
from donors.models import load_model
from donors.tasks import get_task
from donors.train.lora import TrainingError, train_lora

pytestmark = pytest.mark.slow  # trains or scores a real model

MODEL = "smollm2-135m"
LORA = LoraConfig(r=4, alpha=8)


@pytest.fixture(scope="module")
def items():
    return get_task("number_words").load("en", "train")[:18]  # 16 train (two steps of 8) + 2 validation


def _train(items, out, micro=None, seed=3):
    model, tokenizer = load_model(MODEL, dtype="float32", device="cpu")  # fp32 tolerances: the CPU on any machine
    config = TrainConfig(epochs=1, batch_size=8, micro_batch_size=micro, learning_rate=1e-3)
    return train_lora(model, tokenizer, items, lora=LORA, train=config, seed=seed, output_dir=out)


def _oom_above_two(error: Exception):
    """A loss function that runs out of memory on micro-batches over 2 examples, except the first of 4.

    That one succeeds and its gradients are accumulated before the next one fails, as memory
    creeping up mid-step would: the retry must start the step from zero gradients.
    """
    real, big_calls = lora_module._loss_sum, []

    def loss_sum(model, batch, pad_id):
        if len(batch) > 2:
            big_calls.append(len(batch))
            if big_calls != [8, 4]:
                raise error
        return real(model, batch, pad_id)

    return loss_sum, big_calls


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(items, tmp_path, monkeypatch, caplog):
    expected = _train(items, tmp_path / "direct", micro=2)

    loss_sum, big_calls = _oom_above_two(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    monkeypatch.setattr(lora_module, "_loss_sum", loss_sum)
    with caplog.at_level(logging.WARNING, logger="donors.train.lora"):
        result = _train(items, tmp_path / "retried")

    # 8 fails; 4 passes and is backpropagated, the next 4 fails; then 2 for the rest of the run.
    assert big_calls == [8, 4, 4] and result.micro_batch_size == 2 and result.steps == expected.steps == 2
    assert "out of memory at step 1 of epoch 1 with micro-batch 8; retrying with 4" in caplog.text
    assert result.validation_losses == pytest.approx(expected.validation_losses, rel=1e-6)
    retried, direct = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("retried", "direct"))
    assert retried.keys() == direct.keys()
    assert any(v.abs().max() > 0 for k, v in direct.items() if "lora_B" in k)  # it did train
    for key in direct:
        torch.testing.assert_close(retried[key], direct[key], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"), RuntimeError("MPS backend out of memory")])
def test_out_of_memory_with_one_example_per_pass_gives_up_clearly(items, tmp_path, monkeypatch, error):
    sizes = []

    def always_oom(model, batch, pad_id):
        sizes.append(len(batch))
        raise error

    monkeypatch.setattr(lora_module, "_loss_sum", always_oom)
    with pytest.raises(TrainingError, match="out of memory at step 1 of epoch 1 even with one example") as caught:
        _train(items, tmp_path / "x")
    assert sizes == [8, 4, 2, 1] and caught.value.__cause__ is error
    assert not (tmp_path / "x").exists()


def test_other_runtime_errors_are_not_retried(items, tmp_path, monkeypatch):
    sizes = []

    def broken(model, batch, pad_id):
        sizes.append(len(batch))
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(lora_module, "_loss_sum", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _train(items, tmp_path / "x")
    assert sizes == [8]
