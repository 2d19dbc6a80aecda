"""The value the paper's public code computes (audiocraft pull request 465, its final commits): what
its λ = 1000 multiplied. `MMDConfig(estimator="reference")` gives it; written from its formula:

    streams `b k d t`; with delay, stream k shifted right by k frames (zeros in front), then the
    first K frames dropped (T' = t - K: one frame fewer than `patterns.delay_align` keeps);
    samples: the n = b·T' tuples `n (k d)`, each (k, d) feature standardised over the n samples
    (unbiased variance + 1e-8); the product set y: each stream permuted over the n samples;
    value = Σ_a [(S_xx(a) - b) + (S_yy(a) - b)] / (b(b - 1)) - 2 Σ_a S_xy(a) / b², clamped at 0,
    with S(a) = Σ_{i,j} exp(-‖u_i - v_j‖² / (2a)) over all n² pairs (diagonal included), b = clips.

It divides by the clips b where the samples are n = b·T'. Per scale the diagonal leaves n - b ones
in S_xx and S_yy, so with Ū (mean kernel over i ≠ j) and M_xy (mean over all pairs):

    value = T'²·(Ū_xx + Ū_yy - 2 M_xy) + T'(T' - 1)/(b - 1)·(Ū_xx + Ū_yy) + 2A(T' - 1)/(b - 1)

(A scales): T'² times an MMD² (the V-statistic's cross term), a term of relative weight ~1/(b - 1)
that rewards spreading the samples, and a constant. So λ on this value is ≈ λ·T'² on the MMD²:
at t = 50 frames and K = 4 (T' = 46), the paper's λ = 1000 is ≈ 2.1·10⁶ on `estimator="unbiased"`
(tests/mmd/test_reference.py checks the identity and the value against a literal dense version).
Distances are raw (`normalize_distance` does not apply). Row blocks of `block_size` with
activation checkpointing keep memory O(n·block) where the reference builds three n×n matrices.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mmdlib.mmd.kernels import check_scales, no_autocast


def reference_samples(streams: Tensor, delay: bool) -> Tensor:
    """Streams `b k d t` -> standardised samples `n k d` as the reference makes them (see the module doc)."""
    b, k, d, t = streams.shape
    x = streams.float()
    if delay:
        if t <= k:
            raise ValueError(f"streams {tuple(streams.shape)}: the reference's delay keeps t - K = {t - k} frames")
        x = torch.stack([torch.nn.functional.pad(x[:, i, :, : t - i], (i, 0)) for i in range(k)], dim=1)[..., k:]
    x = rearrange(x, "b k d t -> (b t) k d")
    return (x - x.mean(dim=0, keepdim=True)) / torch.sqrt(x.var(dim=0, keepdim=True) + 1e-8)


def _sums(u: Tensor, x: Tensor, w: Tensor, y: Tensor, scales: tuple[float, ...]) -> Tensor:
    """[S_xx, S_yy, S_xy] of rows u (of x) and w (of y) against all of x and y, summed over the scales."""
    with no_autocast(u):
        out = []
        for a, b in ((u, x), (w, y), (u, y)):
            d = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2 * a @ b.T
            out.append(sum(torch.exp(d * (-0.5 / s)).sum() for s in scales))
        return torch.stack(out)


def mmd2_reference(streams: Tensor, scales: tuple[float, ...], delay: bool, generator: torch.Generator | None = None,
                   block_size: int = 1024) -> Tensor:
    """The reference's value (module doc) of streams `b k d t`; the shuffle draws one
    torch.randperm(n) per stream from `generator`, in stream order."""
    scales = check_scales(scales)
    b = streams.shape[0]
    if b < 2:
        raise ValueError(f"streams {tuple(streams.shape)}: the reference's value divides by b(b - 1): give b >= 2 clips")
    x = reference_samples(streams, delay)                                         # n k d
    n, k = x.shape[:2]
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(k)]).to(x.device)  # k n
    y = torch.stack([x[perms[i], i] for i in range(k)], dim=1)                    # n k d
    x, y = x.flatten(1), y.flatten(1)                                             # n (k d)
    s = sum(checkpoint(_sums, x[i: i + block_size], x, y[i: i + block_size], y, scales, use_reentrant=False)
            for i in range(0, n, block_size))
    a = len(scales)
    return ((s[0] - a * b + s[1] - a * b) / (b * (b - 1)) - 2 * s[2] / b**2).clamp(min=0)
