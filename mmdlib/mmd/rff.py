"""Random Fourier features: the unbiased MMD² with the kernel mixture in O(n) (`mmd2(estimator="rff")`).

Its error is dominated by the number of features, not N: measured on K·D = 4×64 streams with a
shared 2-d latent (MMD² ≈ 0.07), mean (max over 4 draws) relative error vs exact:
N=4096: 512 feats 22% (38%), 2048: 9% (18%), 8192: 1.7% (3.7%);
N=16384: 512 feats 15% (23%), 2048: 3.7% (6.1%), 8192: 3.3% (6.4%).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from mmdlib.mmd.kernels import kernel_mix, no_autocast


def rff_frequencies(
    f: int, scales: tuple[float, ...], n_features: int, generator: torch.Generator | None = None
) -> Tensor:
    """Frequencies [f, S·m], m = n_features // S per scale, w ~ N(0, I/a) for scale a.

    exp(-‖δ‖²/(2a)) = E_w cos(w·δ) for w ~ N(0, I/a) (Bochner), so with
    φ(x) = [cos(xW), sin(xW)] / √m, φ(x)·φ(y) = Σ_a mean_w cos(w·(x - y)) ≈ Σ_a k_a(x, y)."""
    m = n_features // len(scales)
    return torch.cat([torch.randn(f, m, generator=generator) / math.sqrt(a) for a in scales], dim=1)


def _feature_sum(x: Tensor, w: Tensor) -> Tensor:
    """Σ_i φ(x_i)·√m = Σ_i [cos(x_i W), sin(x_i W)]: [n, f] -> [2F]."""
    with no_autocast(x):
        p = x @ w
    return torch.cat([torch.cos(p).sum(0), torch.sin(p).sum(0)])


def _rff_sums(xb: Tensor, yb: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Per block: Σ_i φ(x_i)·√m and Σ_j φ(y_j)·√m, each [2F]."""
    return _feature_sum(xb, w), _feature_sum(yb, w)


def _coincident_kernel_sum(x: Tensor, y: Tensor, sources: Tensor, scales: tuple[float, ...]) -> Tensor:
    """Σ_{(i,j)∈S} k(x_i, y_j) with the exact kernel: g·N pairs, O(g·N·f)."""
    total = x.new_zeros(())
    for src in sources:  # [n], -1 = none
        valid = src >= 0
        d = ((x[src[valid]] - y[valid]) ** 2).sum(-1)
        total = total + kernel_mix(d, scales).sum()
    return total


def mmd2_rff(
    x: Tensor, y: Tensor, sources: Tensor, w: Tensor, scales: tuple[float, ...], block_size: int,
    expected_pairs: float | None = None,
) -> Tensor:
    """Unbiased MMD² with the random-feature kernel, x, y [n, f] -> scalar, O(n·F) time and
    O(block·F) memory. `sources` [g, n]: the coincident pairs (distinct, -1 = none);
    `expected_pairs`: as in `mmd.mmd2` (divide by it, with the control variate on the xx term).

    With Sx = Σ_i φ(x_i), Sy = Σ_j φ(y_j) and ‖φ(x)‖² = S_a (the number of scales) exactly:
        Σ_{i≠j} k(x_i,x_j) ≈ ‖Sx‖² - N·S_a,   Σ_{(i,j)∉S} k(x_i,y_j) ≈ Sx·Sy - C,
    where C, the sum over the few (g·N) coincident pairs, uses the exact kernel (E_w φ·φ = k,
    so the estimate stays unbiased over the draw of frequencies). Blocks run under activation
    checkpointing when a gradient is needed, so backward keeps one block of features at a time."""
    if x.dim() != 2 or sources.dim() != 2:
        raise ValueError(f"mmd2(estimator='rff'): expected x [n, f] and sources [g, n], got "
                         f"{tuple(x.shape)} and {tuple(sources.shape)}")
    n, w = x.shape[0], w.to(x)
    m = w.shape[1] // len(scales)
    sx = sy = 0.0
    step = 4 * block_size  # features are cheaper than kernel rows
    for start in range(0, n, step):
        args = (x[start : start + step], y[start : start + step], w)
        if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
            bx, by = torch.utils.checkpoint.checkpoint(_rff_sums, *args, use_reentrant=False)
        else:
            bx, by = _rff_sums(*args)
        sx, sy = sx + bx, sy + by
    sx, sy = sx / math.sqrt(m), sy / math.sqrt(m)
    c = _coincident_kernel_sum(x, y, sources, scales)
    pairs = n * n - (sources >= 0).sum()
    w_xx, n_xy = (1.0, pairs) if expected_pairs is None else (1 + 2 * (pairs - expected_pairs) / expected_pairs,
                                                             expected_pairs)
    xx = ((sx * sx).sum() - n * len(scales)) / (n * (n - 1))
    yy = ((sy * sy).sum() - n * len(scales)) / (n * (n - 1))
    return w_xx * xx + yy - 2 * ((sx * sy).sum() - c) / n_xy
