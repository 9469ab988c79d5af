"""The model's RMSNorm layers, frozen under LoRA, as one autograd node each.

Written out in eager ops, an RMSNorm is about ten passes over its input between the forward
and the backward (square, mean, add, rsqrt, two products, and their gradients). With the scale
frozen, the backward needs only the input gradient, ``r * (g - x * r^2 * mean(g * x))`` with
``g`` the output gradient times the scale, and the whole layer takes four passes. Gemma 3 has
six norms a layer, so on a CPU this is a few percent of a LoRA step.

Only the norm classes listed in ``RMS_NORMS`` are touched, only in float32 (where the result
is the layer's own up to rounding), and only while ``frozen_rms_norms`` is active.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch

# Norm class -> (its epsilon's attribute, whether it scales by 1 + weight rather than by weight).
RMS_NORMS: dict[str, tuple[str, bool]] = {
    "LlamaRMSNorm": ("variance_epsilon", False),
    "Qwen2RMSNorm": ("variance_epsilon", False),
    "Qwen3RMSNorm": ("variance_epsilon", False),
    "Gemma3RMSNorm": ("eps", True),
}


class _FrozenScaleRMSNorm(torch.autograd.Function):
    """``x * rsqrt(mean(x^2) + eps) * scale`` with ``scale`` a constant: only the input gets a gradient."""

    @staticmethod
    def forward(ctx, x, scale, eps):
        inverse_rms = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps))
        ctx.save_for_backward(x, inverse_rms, scale)
        return (x * inverse_rms).mul_(scale)

    @staticmethod
    def backward(ctx, grad_out):
        x, inverse_rms, scale = ctx.saved_tensors
        grad = grad_out * scale
        coefficient = torch.linalg.vecdot(grad, x).unsqueeze(-1).mul_(inverse_rms.pow(3)).div_(x.shape[-1])
        return grad.mul_(inverse_rms).sub_(x * coefficient), None, None


def _forward(module: torch.nn.Module, eps: float, one_plus: bool, x: torch.Tensor) -> torch.Tensor:
    """The one-node norm where it is the layer's own function (float32, frozen scale); else the layer's forward."""
    if x.dtype != torch.float32 or module.weight.dtype != torch.float32 or module.weight.requires_grad:
        return type(module).forward(module, x)
    scale = module.weight + 1.0 if one_plus else module.weight
    return _FrozenScaleRMSNorm.apply(x, scale, eps)


@contextmanager
def frozen_rms_norms(model: torch.nn.Module) -> Iterator[int]:
    """Run ``model``'s known RMSNorm layers as one autograd node each, for as long as this is active; yields how many."""
    patched = []
    try:
        for module in model.modules():
            spec = RMS_NORMS.get(type(module).__name__)
            # transformers' own classes only: a remote-code class of the same name may compute something else.
            if spec is None or not type(module).__module__.startswith("transformers.models.") or "forward" in vars(module):
                continue
            eps = getattr(module, spec[0], None)
            if eps is None:
                continue
            module.forward = partial(_forward, module, eps, spec[1])
            patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            vars(module).pop("forward", None)
