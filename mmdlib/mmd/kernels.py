"""The Gaussian kernel mixture on squared distances, shared by the MMD estimators.

k(x, y) = Σ_a exp(-‖x - y‖² / (2a)) over the scales a (variances). On concatenated groups of
features the squared distance is the sum of the per-group ones, so each term factorises into a
product of per-group kernels: exp(-Σ_g D_g / (2a)) = Π_g exp(-D_g / (2a)) (used by
`mmd_expected` and the permutation test).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def check_scales(scales, name: str = "scales") -> tuple[float, ...]:
    """Scales as a tuple of floats, each finite and > 0 (ValueError naming `name` otherwise)."""
    scales = tuple(float(a) for a in scales)
    if len(scales) == 0 or not all(math.isfinite(a) and a > 0 for a in scales):
        raise ValueError(f"{name}={scales}: need at least one scale, each finite and > 0")
    return scales


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: float16 / bfloat16 inputs are computed in float32, float64 stays."""
    return torch.promote_types(dtype, torch.float32)


def no_autocast(t: Tensor):
    """A context with autocast off on t's device: under amp the kernels' matmuls would otherwise run in
    bf16, where squared distances of a few hundred lose whole units (tests/mmd/test_loss.py)."""
    return torch.autocast(t.device.type, enabled=False)


def sq_dist(u: Tensor, v: Tensor) -> Tensor:
    """Squared distances [..., m, f], [..., n, f] -> [..., m, n] (via ‖u‖² + ‖v‖² - 2u·v), in u's dtype
    even under autocast."""
    with no_autocast(u):
        d = u @ v.mT
        d.mul_(-2).add_((u * u).sum(-1)[..., :, None]).add_((v * v).sum(-1)[..., None, :])
        return d.clamp_(min=0)


def kernel_mix(d: Tensor, scales: tuple[float, ...], slope: bool = False) -> Tensor:
    """k = Σ_a exp(-d/(2a)), or with slope=True g = -Σ_a exp(-d/(2a))/a, so that the gradient
    of k(u, v) = Σ_a exp(-‖u - v‖²/(2a)) is ∂k/∂u = g·(u - v)."""
    out = torch.zeros_like(d)
    for a in scales:
        out.add_(torch.mul(d, -0.5 / a).exp_(), alpha=-1.0 / a if slope else 1.0)
    return out
