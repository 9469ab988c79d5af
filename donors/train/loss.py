"""The answer-token loss, computed without reading the output head twice.

A plain ``cross_entropy(hidden @ W.T, labels)`` reads the head's weight ``W`` once for the
logits and again in the backward pass for the hidden states' gradient. For Gemma 3's 262k x 640
head that is 671 MB read twice a step, a tenth of a CPU training step, for a handful of answer
positions. The head is frozen under LoRA, so the only gradient needed is the hidden states',
``softmax(logits) @ W - W[label]``; it is accumulated chunk by chunk in the same pass that
computes the log-sum-exp (an online softmax: the running sum and the running gradient are
rescaled whenever the running maximum grows), while each chunk of ``W`` is still in cache.

On an accelerator the head is read at memory bandwidth and every small kernel costs a launch,
so there the plain loss is the faster for a step's few answer rows; the one pass is kept for
the many rows whose logits would take gigabytes (``PLAIN_LOGITS_BYTES``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from donors.models import head_logits, soft_cap


def _capped(logits: torch.Tensor, softcap: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Soft-capped logits and their slope d(capped)/d(logits), or the logits as they are."""
    if not softcap:
        return logits, None
    capped = soft_cap(logits, softcap)
    return capped, 1 - (capped / softcap).square()


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward: the loss, and (when needed) the hidden states' gradient, which backward only scales."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, softcap, chunk_rows):
        n, vocab = hidden.shape[0], weight.shape[0]
        need_grad = ctx.needs_input_grad[0]
        # One check before the loop (one host sync); the loop itself never waits for the device.
        if n and bool(((labels < 0) | (labels >= vocab)).any()):
            raise ValueError(f"labels must be token ids in [0, {vocab}); got {labels.min().item()}..{labels.max().item()}")
        # Each label's logit is read from the same chunked logits as the log-sum-exp, so in bf16 the
        # two carry the same rounding and a confident token's loss stays at zero, never below. Which
        # rows' labels fall in a chunk is a mask on the device, not a list built on the host.
        target = hidden.new_zeros((n,), dtype=torch.float32)
        target_slope = hidden.new_ones((n,), dtype=torch.float32)
        running_max = hidden.new_full((n,), -torch.inf, dtype=torch.float32)
        running_sum = hidden.new_zeros((n,), dtype=torch.float32)
        running_grad = hidden.new_zeros((n, hidden.shape[1]), dtype=torch.float32) if need_grad else None
        for start in range(0, vocab, chunk_rows):
            chunk = weight[start : start + chunk_rows]
            logits, slope = _capped((hidden @ chunk.T).float(), softcap)
            in_chunk = (labels >= start) & (labels < start + chunk.shape[0])
            column = (labels - start).clamp(0, chunk.shape[0] - 1)[:, None]
            target = torch.where(in_chunk, logits.gather(1, column).squeeze(1), target)
            if slope is not None:
                target_slope = torch.where(in_chunk, slope.gather(1, column).squeeze(1), target_slope)
            new_max = torch.maximum(running_max, logits.amax(dim=1))
            rescale = torch.exp(running_max - new_max)
            exp = torch.exp(logits - new_max[:, None])
            running_sum = running_sum * rescale + exp.sum(dim=1)
            if need_grad:
                if slope is not None:
                    exp = exp * slope
                running_grad = running_grad * rescale[:, None]
                if chunk.dtype == torch.float32:
                    running_grad = running_grad.addmm_(exp, chunk)
                else:
                    # In the head's own dtype, as a plain cross-entropy's backward multiplies: an fp32 copy of
                    # each chunk would write and read the head twice more (5-7x the plain loss's time on an H200).
                    running_grad += (exp.to(chunk.dtype) @ chunk).float()
            running_max = new_max
        loss = (running_max + torch.log(running_sum) - target).sum()
        if need_grad:
            ctx.save_for_backward(running_grad / running_sum[:, None] - weight[labels].float() * target_slope[:, None])
            ctx.hidden_dtype = hidden.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_hidden,) = ctx.saved_tensors
        return (grad_loss * grad_hidden).to(ctx.hidden_dtype), None, None, None, None


CPU_CHUNK_ROWS = 1024
"""Head rows per chunk on a CPU: 1024 rows of a 640-wide head are 2.6 MB, so the chunk is still in cache for its second use."""
GPU_CHUNK_ROWS = 65536
"""Most head rows per chunk on an accelerator: few, large matmuls (4 for a 262k vocabulary) instead of hundreds of
small kernels; the chunk's logits are answer tokens x 65536 fp32 (2 MB for 8 tokens)."""
GPU_CHUNK_BYTES = 256 * 2**20
"""Cap on one chunk of the head, counted at 4 bytes a weight: 16,384 rows of a 4096-wide head (16 matmuls for 262k
rows), still far past launch overhead, while the chunk's fp32 logits for thousands of answer rows stay small."""


PLAIN_LOGITS_BYTES = 256 * 2**20
"""On an accelerator, answer rows whose fp32 logits fit in this take the plain loss. Measured on an H200 at a
262,144 x 2,560 bf16 head: the plain loss took 0.9 ms at 16 rows and 1.9 ms at 256, the one pass 3.2 and 4.7 ms,
for at most 0.7 GiB more memory; the one pass pays back only for thousands of rows (3.0 against 13.4 GiB at 4,096).
A study's training step has a few answer tokens per example: the plain loss on a GPU, the one pass on a CPU."""


def one_pass_pays(device: torch.device, rows: int, vocab: int) -> bool:
    """Whether the one-pass loss beats logits-then-cross-entropy here: always on a CPU (the head is read from
    cache the second time); on an accelerator only once the plain loss's logits outgrow ``PLAIN_LOGITS_BYTES``."""
    return device.type == "cpu" or rows * vocab * 4 > PLAIN_LOGITS_BYTES


def chunk_rows_for(device: torch.device, width: int | None = None) -> int:
    """Rows of the head read at a time: cache-sized on a CPU; on an accelerator large, but under
    ``GPU_CHUNK_BYTES`` at ``width`` columns."""
    if device.type == "cpu":
        return CPU_CHUNK_ROWS
    return GPU_CHUNK_ROWS if width is None else max(CPU_CHUNK_ROWS, min(GPU_CHUNK_ROWS, GPU_CHUNK_BYTES // (4 * width)))


def linear_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, softcap: float | None = None, chunk_rows: int | None = None
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` (soft-capped) against ``labels``: one pass over a frozen head.

    A head that trains, has a bias or is anything but a plain ``Linear`` (a LoRA-wrapped head, say)
    takes the plain path: its logits, then ``cross_entropy``; so do few rows on an accelerator (:func:`one_pass_pays`).
    ``chunk_rows`` rows of the head are read at a time; unset, :func:`chunk_rows_for` the head's device and width.
    """
    if (
        type(head) is not torch.nn.Linear
        or head.weight.requires_grad
        or head.bias is not None
        or not one_pass_pays(head.weight.device, hidden.shape[0], head.weight.shape[0])
    ):
        return F.cross_entropy(head_logits(hidden, head, softcap).float(), labels, reduction="sum")
    return one_pass_cross_entropy(hidden, head.weight, labels, softcap, chunk_rows)


def one_pass_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, softcap: float | None = None, chunk_rows: int | None = None
) -> torch.Tensor:
    """The one-pass loss against a frozen head ``weight`` (vocabulary x width), whatever the device; see the module."""
    return _LinearCrossEntropy.apply(hidden, weight, labels, softcap, chunk_rows or chunk_rows_for(weight.device, weight.shape[1]))
