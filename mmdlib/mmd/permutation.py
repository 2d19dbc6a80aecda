"""Is there dependence between the residual streams `b k d t`? A permutation test of the MMD.

`permutation_test`: p-value of "the streams (groups) are independent" with the shuffle-free MMD²
(mmdlib.mmd.expected) and surrogates that keep each stream's time structure
(mmdlib.mmd.dependence.surrogate_indices; see the test's docstring).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmdlib.mmd.dependence import surrogate_indices
from mmdlib.mmd.expected import expected_from_sums, mmd2_expected
from mmdlib.mmd.kernels import sq_dist
from mmdlib.mmd.loss import (
    MMDConfig,
    check_groups,
    effective_scales,
    expected_pairs,
    group_parts,
    mmd2,
    permute_groups,
    prepare_samples,
    random_permutations,
)

CACHE_BYTES = 2**30  # permutation_test keeps the per-group distance matrices below this size


def _shuffle_free_stats(parts: list[Tensor], maps: Tensor, scales: tuple[float, ...], block_size: int) -> Tensor:
    """Shuffle-free MMD² of the re-ordered samples, group g taking rows maps[r, g] of parts[g],
    for every draw r: maps [R, g, n] -> [R]. Per-group distances are computed once and re-indexed
    (the kernel of a re-ordering is the re-indexed kernel) when they fit in CACHE_BYTES."""
    n = parts[0].shape[0]
    maps = maps.to(parts[0].device)
    if len(parts) * n * n * parts[0].element_size() > CACHE_BYTES:
        return torch.stack([mmd2_expected([p[m] for p, m in zip(parts, draw)], scales, block_size).double()
                            for draw in maps])
    rows = torch.arange(n, device=parts[0].device)
    groups = torch.arange(len(parts), device=rows.device)[:, None]
    dists = []
    for p in parts:
        d = sq_dist(p, p)
        d[rows, rows] = 0.0
        dists.append(d)
    row_sums = torch.stack([torch.stack([torch.mul(d, -0.5 / a).exp_().sum(-1) - 1.0 for d in dists])
                            for a in scales])  # [S, g, n]: off-diagonal row sums of every G_g
    stats = []
    for draw in maps:
        total = sum(d if torch.equal(m, rows) else d.index_select(0, m).index_select(1, m)
                    for d, m in zip(dists, draw))
        xx = torch.stack([torch.mul(total, -0.5 / a).exp_().sum() - n for a in scales])
        stats.append(expected_from_sums(xx, row_sums[:, groups, draw], n))
    return torch.stack(stats)


def _rff_stats(samples, groups, maps, cfg, scales, seed) -> Tensor:
    """rff MMD² between each re-ordered sample set and one shuffle of it (the same frequencies)."""
    generator = torch.Generator().manual_seed(seed + 1)
    stats = []
    for draw in maps:
        x = permute_groups(samples, draw, groups)
        perms = random_permutations(x.shape[0], len(groups), generator)
        y = permute_groups(x, perms, groups)
        frequencies = torch.Generator().manual_seed(seed + 2)  # the same frequencies every time
        stats.append(mmd2(x.flatten(1), y.flatten(1), scales, "rff", cfg.block_size, cfg.n_features, frequencies,
                          sources=perms, expected_pairs=expected_pairs(x.shape[0], len(groups))))
    return torch.stack(stats)


def permutation_test(streams: Tensor, cfg: MMDConfig = MMDConfig(), n_permutations: int = 200, seed: int = 0,
                     null: str = "auto") -> dict:
    """Test "the streams (or cfg.groups) are mutually independent" on streams [b, k, d, t].

    Statistic: the shuffle-free MMD² (`mmd_expected`, cfg.align, cfg.scales, standardised) of the
    samples, for the exact estimators; with cfg.estimator="rff", the rff MMD² between the samples
    and one shuffle of them (one draw of frequencies for all statistics). Null draws: the same
    statistic after re-ordering every group but the first with `surrogate_indices(null)`:
      "auto" (default): "clips" with 8 clips or more, else "shift".
      "shift": per group, a random permutation of the b clips and a random circular
        shift of each clip (after the delay alignment, so the pairing (r_1[s], r_2[s-1], ...) is
        what gets shifted). It keeps each stream's autocorrelation, so it stays valid for
        time series (Chwialkowski & Gretton 2014); with b = 1, shifts only.
      "clips": whole clips only: exact for i.i.d. clips at any autocorrelation, but coarse with few
        clips ((b!)^(g-1) arrangements). Independent AR(1) streams, ρ = 0.9, 8 clips × 100 frames, 3
        streams × 4 dims, α = 0.05, 240 draws: false positives 0.054 ("clips") vs 0.096 ("shift": the
        wrap of the circular shifts breaks the paths, which matters when clips are a few correlation
        times long).
      "frames": a uniform permutation of all frames: valid only for i.i.d. frames (independent
        AR(1) streams with ρ = 0.9 were rejected at α = 0.05 in 20 of 20 runs).
    Under independence the data and its surrogates are exchangeable (exactly for frames and
    clips, up to the wrap-around of the circular shifts for stationary streams), so
    p = (1 + #{null >= stat}) / (1 + n_permutations) is a valid p-value.
    The kernel distances are computed once per group and re-indexed for every draw.

    Returns dict(statistic=float, p_value=float, null=[n_permutations] tensor, surrogate=null)."""
    generator = torch.Generator().manual_seed(seed)
    samples = prepare_samples(streams, cfg)  # [n, k, d], clip-major
    n, b = samples.shape[0], streams.shape[0]
    null = ("clips" if b >= 8 else "shift") if null == "auto" else null
    groups = check_groups(cfg.groups, samples.shape[1])
    scales = effective_scales(cfg, samples[0].numel())
    g = len(groups)
    others = surrogate_indices(b, n // b, n_permutations * (g - 1), null, generator).view(n_permutations, g - 1, n)
    first = torch.arange(n).expand(1 + n_permutations, 1, n)  # group 0 stays in place
    data = torch.arange(n).expand(1, g - 1, n)  # draw 0: the data itself
    maps = torch.cat([first, torch.cat([data, others])], dim=1)  # [1 + P, g, n]
    with torch.no_grad():
        if cfg.estimator == "rff":
            stats = _rff_stats(samples, groups, maps, cfg, scales, seed)
        else:
            stats = _shuffle_free_stats(group_parts(samples, groups), maps, scales, cfg.block_size)
    null_stats = stats[1:]
    p_value = (1 + int((null_stats >= stats[0]).sum())) / (1 + n_permutations)
    return dict(statistic=float(stats[0]), p_value=p_value, null=null_stats, surrogate=null)
