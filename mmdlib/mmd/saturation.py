"""Do the MMD's Gaussian kernels see the streams? A saturation check of the loss's kernels.

The loss compares samples through k_a(x, y) = exp(-‖x - y‖² / (2a)). A scale a whose kernel is
~0 for every pair of distinct samples (all far apart: ‖x - y‖² >> 2a) or ~1 for every pair (all
close) carries no signal and almost no gradient: the MMD² is then ~0 whatever the dependence.
With the reference's raw distances on K·D standardised features a typical squared distance is
~2·K·D (1024 for the paper's 4 × 128), so scales a ≤ 50 give kernels near exp(-10) or less.

`kernel_report(streams, cfg)` prepares the samples exactly as the loss does (alignment,
standardisation, distance normalisation) and reports, per scale, the mean kernel value over pairs
of distinct joint samples, with the median squared distance. train_codec writes it at its first
MMD step to `run_dir/mmd_kernels.json` and warns when every scale is saturated.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmdlib.mmd.kernels import sq_dist
from mmdlib.mmd.loss import MMDConfig, effective_scales, prepare_samples

SATURATED = 1e-3  # a mean kernel value below this (or above 1 - this) is saturated


@torch.no_grad()
def kernel_report(streams: Tensor, cfg: MMDConfig = MMDConfig(), max_samples: int = 1024, seed: int = 0) -> dict:
    """Residual streams `b k d t` -> {"samples", "features", "median_sq_dist", "scales",
    "mean_kernel" (one per scale), "saturated" (one bool per scale), "all_saturated"}.
    At most `max_samples` samples (a seeded random subset) enter the pairs."""
    x = prepare_samples(streams.detach(), cfg).flatten(1)             # n f
    n, f = x.shape
    if n > max_samples:
        x = x[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples]]
    d = sq_dist(x, x).double()
    off = ~torch.eye(len(x), dtype=torch.bool)
    d = d[off]                                                       # pairs of distinct samples
    means = [float(torch.exp(-d / (2 * a)).mean()) for a in effective_scales(cfg, f)]
    saturated = [m < SATURATED or m > 1 - SATURATED for m in means]
    return {"samples": len(x), "features": f, "median_sq_dist": float(d.median()), "scales": list(cfg.scales),
            "normalize_distance": cfg.normalize_distance, "mean_kernel": means, "saturated": saturated,
            "all_saturated": all(saturated)}
