"""The answer-token loss, computed without reading the output head twice.

A plain ``cross_entropy(hidden @ W.T, labels)`` reads the head's weight ``W`` once for the
logits and again in the backward pass for the hidden states' gradient. For Gemma 3's 262k x 640
head that is 671 MB read twice a step, a tenth of a CPU training step, for a handful of answer
positions. The head is frozen under LoRA, so the only gradient needed is the hidden states',
``softmax(logits) @ W - W[label]``; it is accumulated chunk by chunk in the same pass that
computes the log-sum-exp (an online softmax: the running sum and the running gradient are
rescaled whenever the running maximum grows), while each chunk of ``W`` is still in cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from donors.models import head_logits


def _capped(logits: torch.Tensor, softcap: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Soft-capped logits and their slope d(capped)/d(logits), or the logits as they are."""
    if not softcap:
        return logits, None
    capped = torch.tanh(logits / softcap) * softcap
    return capped, 1 - (capped / softcap).square()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, softcap, chunk_rows):
        n, vocab = hidden.shape[0], weight.shape[0]
        need_grad = ctx.needs_input_grad[0]
        running_max = hidden.new_full((n,), -torch.inf, dtype=torch.float32)
        running_sum = hidden.new_zeros((n,), dtype=torch.float32)
        running_grad = hidden.new_zeros((n, hidden.shape[1]), dtype=torch.float32) if need_grad else None
        for start in range(0, vocab, chunk_rows):
            chunk = weight[start : start + chunk_rows]
            logits, slope = _capped((hidden @ chunk.T).float(), softcap)
            new_max = torch.maximum(running_max, logits.amax(dim=1))
            rescale = torch.exp(running_max - new_max)
            exp = torch.exp(logits - new_max[:, None])
            running_sum = running_sum * rescale + exp.sum(dim=1)
            if need_grad:
                if slope is not None:
                    exp = exp * slope
                running_grad = torch.addmm(running_grad * rescale[:, None], exp, chunk.float())
            running_max = new_max
        target_rows = weight[labels]
        target, target_slope = _capped((hidden * target_rows).sum(dim=1, dtype=torch.float32), softcap)
        loss = (running_max + torch.log(running_sum) - target).sum()
        if need_grad:
            target_grad = target_rows.float() if target_slope is None else target_rows.float() * target_slope[:, None]
            ctx.save_for_backward(running_grad / running_sum[:, None] - target_grad)
            ctx.hidden_dtype = hidden.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_hidden,) = ctx.saved_tensors
        return (grad_loss * grad_hidden).to(ctx.hidden_dtype), None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, softcap: float | None = None, chunk_rows: int = 1024
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` (soft-capped) against ``labels``: one pass over a frozen head.

    A head that trains, has a bias or is anything but a plain ``Linear`` (a LoRA-wrapped head, say)
    takes the plain path: its logits, then ``cross_entropy``.
    ``chunk_rows`` rows of the head are read at a time; 1024 rows of a 640-wide head are 2.6 MB.
    """
    if type(head) is not torch.nn.Linear or head.weight.requires_grad or head.bias is not None:
        return F.cross_entropy(head_logits(hidden, head, softcap).float(), labels, reduction="sum")
    return _LinearCrossEntropy.apply(hidden, head.weight, labels, softcap, chunk_rows)
