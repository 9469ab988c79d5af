"""Fine-tune one source with LoRA: the study's recipe, without its wasted FLOPs.

The optimisation problem is the published one (docs/protocol.md section 4): the same
examples, loss on the answer only, AdamW with linear warmup and decay, gradient clipping
at 1.0, validation every epoch and the best epoch kept. What differs is cost: batches are
padded only to their longest example, and the output head runs only at the positions that
carry loss, never over the full sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from transformers import get_linear_schedule_with_warmup

from donors.config import LoraConfig, TrainConfig
from donors.errors import DonorsError
from donors.models import causal_lm_parts
from donors.tasks.item import Item
from donors.tasks.prompts import EncodedExample, PromptFormat, encode_example, training_text
from donors.train.loss import linear_cross_entropy
from donors.train.rms_norm import frozen_rms_norms

logger = logging.getLogger(__name__)


class TrainingError(DonorsError, RuntimeError):
    """A run that cannot finish (a non-finite loss, say); the study records it and goes on."""


class AdapterFilesError(DonorsError):
    """A stored adapter's files are missing, not safetensors, or not what was stored."""


class AdapterChanged(AdapterFilesError):
    """A stored adapter whose files are gone or differ from those it was stored with: trained again, never scored."""


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""What an adapter is: PEFT's config and its weights as safetensors (never a pickled ``.bin``)."""


def require_adapter_files(path: str | Path) -> Path:
    """The adapter folder, once both its files are there: what keeps PEFT from falling back to a pickled ``.bin``."""
    path = Path(path)
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise AdapterFilesError(f"adapter {path}: {', '.join(missing)} missing (adapters are loaded from safetensors only)")
    return path


def check_adapter_loaded(peft_model, path: str | Path, adapter_name: str) -> None:
    """Refuse an adapter whose tensors do not all land in the model: PEFT only warns, and scores the base instead.

    A saved adapter names each LoRA tensor by the module it adapts; if the model's modules are
    named otherwise (another architecture, a renamed checkpoint), ``lora_B`` stays at its
    zeros and the "fine-tuned" scores are the base model's, with no error.
    """
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(Path(path) / ADAPTER_FILES[1]), "pt") as weights:
        saved = set(weights.keys())
    loaded = set(get_peft_model_state_dict(peft_model, adapter_name=adapter_name))
    if saved != loaded:
        unused, missing = sorted(saved - loaded), sorted(loaded - saved)
        raise AdapterFilesError(
            f"adapter {path} does not fit this model: {len(unused)} saved tensor(s) match no module "
            f"({', '.join(unused[:2])}{', ...' if len(unused) > 2 else ''}), {len(missing)} module(s) get no tensor; "
            "it was trained on another model or module layout. Retrain it (delete its record with its files) or score it "
            "with the model it was made for"
        )


def adapter_digest(path: str | Path) -> str:
    """SHA-256 over an adapter's config and weights: recorded when it is stored, checked before it is scored.

    Raises :class:`AdapterFilesError` when a file is missing.
    """
    path = require_adapter_files(path)
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update(f"{name}:{(path / name).stat().st_size}:".encode())
        with (path / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def verify_adapter(path: str | Path, sha256: str | None) -> Path:
    """The adapter folder, once its files are there and are the ones stored (when a digest was: ``sha256``).

    Run by the process that loads it, just before: what it scores is what was trained, even
    if the files changed while the study ran. Raises :class:`AdapterChanged`.
    """
    try:
        digest = adapter_digest(path)
    except AdapterFilesError as error:
        raise AdapterChanged(str(error)) from None
    if sha256 is not None and digest != sha256:
        raise AdapterChanged(f"adapter {path}: its files changed since it was stored (sha256 {digest[:12]}, stored {sha256[:12]})")
    return Path(path)


@dataclass(frozen=True)
class TrainResult:
    train_ids: tuple[str, ...]
    validation_ids: tuple[str, ...]
    validation_losses: tuple[float, ...]
    best_epoch: int | None
    seconds: float
    steps: int
    micro_batch_size: int | None = None  # the last one used: smaller than configured after an out-of-memory retry


def split_train_validation(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """A fixed-seed shuffle, then the last ``ceil(fraction * n)`` items validate (300 -> 270/30)."""
    ordered = sorted(items, key=lambda item: item.id)
    random.Random(seed).shuffle(ordered)
    n_validation = math.ceil(fraction * len(ordered)) if fraction > 0 else 0
    if n_validation and n_validation >= len(ordered):
        raise TrainingError(f"validation_fraction {fraction} leaves no training items out of {len(ordered)}")
    cut = len(ordered) - n_validation
    return ordered[:cut], ordered[cut:]


class FusedLoraLinear(PeftLoraLinear):
    """PEFT's LoRA linear, ``W x + s * B(A x)`` as one in-place ``addmm_``, not a matmul, a scale and an add.

    The parameters, their names and the saved adapter are PEFT's own; only the forward pass is
    shorter: the scaling and the sum ride inside the second matmul (in the backward too), and
    the base output is accumulated into where it lies, so no pass over the layer's output is
    spent on them (an out-of-place ``addmm`` would copy it first). In place is safe for
    autograd: the base matmul's backward needs its input and weight, never its output.

    Adapter dtype under a bf16 (or fp16) base, decided here: the LoRA parameters are fp32
    master weights (``get_peft_model(..., autocast_adapter_dtype=True)``, see :func:`train_lora`),
    and the forward computes in the base's dtype with a cast copy of ``A`` and ``B`` (``r x d``
    each, a few MB for a whole 8B model). So AdamW's updates land on fp32 weights (a bf16
    weight would drop updates below 2^-8 of its size, and ``B`` starts at zero), while no
    activation is ever upcast: PEFT's own forward casts each projection's input to the
    adapter's fp32 and keeps those fp32 copies for the backward (about 20 GB for an 8B model at
    8 x 512 tokens). The gradients come back through the cast as fp32. The adapter is saved in
    fp32; scoring loads it in the base's dtype (``autocast_adapter_dtype=False``), which is
    exactly the copy this forward computed with. In fp32 nothing is cast and the fast path is
    what it always was, bit for bit.

    Anything this does not cover (dropout, several or merged or disabled adapters, LoRA
    variants or a LoRA bias, a quantised base, an input in another dtype than the base, an
    adapter in neither the base's dtype nor fp32) goes through PEFT's forward unchanged.
    """

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self.base_layer
        name = self.active_adapters[0] if len(self.active_adapters) == 1 else None
        if (
            args
            or kwargs
            or name is None
            or self.disable_adapters
            or self.merged
            or type(base) is not torch.nn.Linear
            or name not in self.lora_A
            or name in self.lora_variant
            or not isinstance(self.lora_dropout[name], torch.nn.Identity)
            or self.lora_B[name].bias is not None
            or x.dtype != base.weight.dtype
            or self.lora_A[name].weight.dtype not in (x.dtype, torch.float32)
            or self.lora_B[name].weight.dtype != self.lora_A[name].weight.dtype
        ):
            return super().forward(x, *args, **kwargs)
        lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
        if lora_a.dtype != x.dtype:  # fp32 master weights, computed with in the base's dtype
            lora_a, lora_b = lora_a.to(x.dtype), lora_b.to(x.dtype)
        flat = x.reshape(-1, x.shape[-1])
        out = F.linear(flat, base.weight, base.bias)
        out.addmm_(F.linear(flat, lora_a), lora_b.t(), alpha=self.scaling[name])
        return out.view(*x.shape[:-1], out.shape[-1])


NOT_TEXT_MODULES = r"(.*\.)?(vision_tower|vision_model|visual|multi_modal_projector|audio_tower)(\..*)?"
"""Module paths LoRA never adapts: a vision or audio tower and its projector. PEFT matches
``target_modules`` by name suffix, and SigLIP's attention has ``q_proj``, ``k_proj`` and
``v_proj`` too; a regex ``exclude_modules`` keeps the adapter on the language model."""


def peft_lora_config(lora: LoraConfig, *, fused: bool = True, model: torch.nn.Module | None = None) -> PeftLoraConfig:
    """The PEFT config of our LoRA settings, its linear layers built as ``FusedLoraLinear`` unless ``fused`` is off.

    Only the language model is adapted: where ``model`` has a vision or audio tower, its modules
    are excluded (``NOT_TEXT_MODULES``); a text model's config is as it always was (PEFT warns
    about an exclusion that excludes nothing).
    """
    towers = model is not None and any(re.fullmatch(NOT_TEXT_MODULES, name) for name, _ in model.named_modules())
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        exclude_modules=NOT_TEXT_MODULES if towers else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if fused:
        config._register_custom_module({torch.nn.Linear: FusedLoraLinear})  # PEFT's (experimental) hook for custom layers
    return config


def _collate(batch: Sequence[EncodedExample], pad_id: int, device: torch.device):
    """Right-pad to the longest example of this batch only, and list the loss positions."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, positions, labels = [], [], []
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        for position in range(example.loss_start, n):
            rows.append(row)
            positions.append(position - 1)  # the logits at t-1 predict token t
            labels.append(example.input_ids[position])
    index = (torch.tensor(rows), torch.tensor(positions))
    return ids.to(device), mask.to(device), index, torch.tensor(labels, device=device)


def _loss_sum(model, batch, pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's answer tokens, the head applied only there (and read once)."""
    body, head, softcap = causal_lm_parts(model)
    ids, mask, (rows, positions), labels = _collate(batch, pad_id, next(model.parameters()).device)
    hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # no KV cache to fill and keep
    return linear_cross_entropy(hidden[rows, positions], head, labels, softcap), len(labels)


def _is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises its own class; other backends (and older torch) a RuntimeError that says so."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def _accumulate(model, batch: Sequence[EncodedExample], pad_id: int, micro: int, n_tokens: int, where: str) -> None:
    """Forward and backward over ``batch`` in slices of ``micro``, each loss divided by the whole batch's answer tokens.

    That divisor makes the summed gradients the same for any ``micro``: splitting is exact. When
    the batch is split, it is split by length, so each slice pads less.
    """
    if micro < len(batch):
        batch = sorted(batch, key=lambda example: len(example.input_ids))
    for start in range(0, len(batch), micro):
        loss, _ = _loss_sum(model, batch[start : start + micro], pad_id)
        loss = loss / n_tokens
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss.item()}) at {where}; lower train.learning_rate or check the source's data")
        loss.backward()


def _step_gradients(model, optimizer, batch: Sequence[EncodedExample], pad_id: int, micro: int, n_tokens: int, where: str) -> int:
    """One optimiser step's gradients; out of memory halves the micro-batch and redoes the step.

    The effective batch, its examples and the loss normalisation stay as they were, so the
    step's result does not depend on how it was split. Returns the micro-batch that fitted,
    which the rest of the run keeps.
    """
    while True:
        optimizer.zero_grad(set_to_none=True)
        try:
            _accumulate(model, batch, pad_id, micro, n_tokens, where)
            return micro
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            if micro == 1:
                raise TrainingError(
                    f"out of memory at {where} even with one example per forward pass; "
                    "lower train.max_length, use a smaller model or a device with more memory"
                ) from error
        # Outside the except block, so the failed pass's tensors (held by the traceback) are freed first.
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.warning("out of memory at %s with micro-batch %d; retrying with %d", where, micro, micro // 2)
        micro //= 2


@torch.inference_mode()
def validation_loss(model, examples: Sequence[EncodedExample], pad_id: int, batch_size: int) -> float:
    """Mean cross-entropy per answer token; inference mode, since nothing here is ever differentiated."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        loss, n = _loss_sum(model, examples[start : start + batch_size], pad_id)
        total, count = total + loss.item(), count + n
    model.train(was_training)
    return total / max(count, 1)


def _fit(
    peft_model, train_examples, validation_examples, pad_id: int, train: TrainConfig, seed: int, on_step: Callable[[int, int], None] | None
) -> tuple[list[float], int | None, int, int]:
    """The optimisation itself; leaves the best epoch's adapter in ``peft_model``.

    Returns the validation losses, the best epoch, the optimiser steps taken and the micro-batch
    that fitted.
    """
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    # The fused kernel is the same AdamW update in one pass over the parameters, not one per tensor.
    fused = trainable[0].device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(trainable, lr=train.learning_rate, weight_decay=train.weight_decay, fused=fused)

    micro = train.micro_batch_size or train.batch_size
    steps_per_epoch = math.ceil(len(train_examples) / train.batch_size)
    total_steps = steps_per_epoch * train.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(train.warmup_ratio * total_steps), total_steps)

    order_rng = random.Random(seed)
    losses: list[float] = []
    best_state, best_epoch, step = None, None, 0
    peft_model.train()
    for epoch in range(train.epochs):
        order = list(range(len(train_examples)))
        order_rng.shuffle(order)
        for first in range(0, len(order), train.batch_size):
            batch = [train_examples[i] for i in order[first : first + train.batch_size]]
            n_tokens = sum(len(e.input_ids) - e.loss_start for e in batch)
            micro = _step_gradients(peft_model, optimizer, batch, pad_id, micro, n_tokens, f"step {step + 1} of epoch {epoch + 1}")
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step:
                on_step(step, total_steps)
        if validation_examples:
            losses.append(validation_loss(peft_model, validation_examples, pad_id, micro))
            if not math.isfinite(losses[-1]):
                raise TrainingError(f"non-finite validation loss after epoch {epoch + 1}")
            if train.keep_best and (best_epoch is None or losses[-1] < losses[best_epoch - 1]):
                best_epoch = epoch + 1
                best_state = {k: v.detach().clone() for k, v in peft_model.named_parameters() if v.requires_grad}

    if best_state is not None:
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if name in best_state:
                    parameter.copy_(best_state[name])
    peft_model.eval()
    return losses, best_epoch, step, micro


def train_lora(
    model,
    tokenizer,
    items: Sequence[Item],
    *,
    lora: LoraConfig,
    train: TrainConfig,
    seed: int,
    output_dir: Path,
    model_name: str = "",
    prompt_format: PromptFormat = "lettered",
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``items`` and save the best epoch's adapter to ``output_dir``.

    The adapter is written to a temporary directory first and renamed into place, so a
    killed run never leaves a half-written adapter where a finished one is expected.
    ``model`` carries the LoRA layers only while this runs: it is handed back as it came,
    so one loaded base serves every adapter trained in a process.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    train_items, validation_items = split_train_validation(items, train.validation_fraction, train.split_seed)
    if not train_items:
        raise TrainingError("no training items")

    def encode(batch: Sequence[Item]) -> list[EncodedExample]:
        texts = (
            training_text(i, tokenizer, prompt_format=prompt_format, chat_template=train.chat_template, model_name=model_name)
            for i in batch
        )
        return [encode_example(prompt, target, tokenizer, train.max_length) for prompt, target in texts]

    train_examples, validation_examples = encode(train_items), encode(validation_items)
    pad_id = tokenizer.pad_token_id

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # a transformers deprecation inside peft
        # fp32 master weights for the adapter whatever the base's dtype; the forward computes in the base's (FusedLoraLinear).
        peft_model = get_peft_model(model, peft_lora_config(lora, model=model), autocast_adapter_dtype=True)
    try:
        # The frozen norms as one autograd node each: fewer passes over the activations, same values.
        with frozen_rms_norms(peft_model):
            losses, best_epoch, step, micro = _fit(peft_model, train_examples, validation_examples, pad_id, train, seed, on_step)
        result = TrainResult(
            train_ids=tuple(i.id for i in train_items),
            validation_ids=tuple(i.id for i in validation_items),
            validation_losses=tuple(losses),
            best_epoch=best_epoch if train.keep_best else None,
            seconds=time.perf_counter() - started,
            steps=step,
            micro_batch_size=micro,
        )
        _save_adapter(peft_model, output_dir, result, seed)
    finally:
        # Take the LoRA layers out again: the caller's base model is left as it came, frozen and
        # unchanged, so the next adapter can be trained on it without reloading the weights.
        peft_model.unload()
    return result


def _save_adapter(peft_model, output_dir: Path, result: TrainResult, seed: int) -> None:
    output_dir = Path(output_dir)
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    peft_model.save_pretrained(partial, safe_serialization=True)
    meta = {
        "seed": seed,
        "train_ids": result.train_ids,
        "validation_ids": result.validation_ids,
        "validation_losses": result.validation_losses,
        "best_epoch": result.best_epoch,
    }
    (partial / "donors_adapter.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(output_dir, ignore_errors=True)
    partial.rename(output_dir)
