"""Dependence between codebooks: diagnostics returning plain tensors and dicts for plots.

Discrete (codes `b k t`, values in [0, V)):
- `pairwise_mi`: mutual information between every pair of codebooks, at lag 0 or at the delay
  alignment (z_1[s], z_2[s-1], ..., z_K[s-K+1]) via `patterns.delay_align`.
  Entropies are plug-in estimates with the Miller–Madow correction H_MM = H_plugin + (m-1)/(2N)
  nats (m = number of non-empty bins, N = number of samples), so
  MI = H_i + H_j - H_ij = MI_plugin + ((m_i - 1) + (m_j - 1) - (m_ij - 1)) / (2N).
  The plug-in MI is biased upwards by about (m_ij - m_i - m_j + 1)/(2N) nats (≈ (V-1)²/(2N) for
  independent uniform codes); the corrected MI is not clipped at 0 (clipping would bias means).
  NMI = MI / sqrt(H_i H_j) (the geometric-mean normalisation: 1 for identical copies, 0 for
  independent codes; 0 where an entropy is 0). Values in bits.
- `total_correlation`: TC = Σ_k H(z_k) - H(z_1..z_K) (Miller–Madow corrected). Caveat: the joint
  entropy has V^K bins; when N << V^K almost every tuple is seen once, H_joint ≈ log2 N and TC is
  grossly overestimated (≈ Σ_k H_k - log2 N). Compare TC values only at equal N and V.
- `dependence_summary`: the scalars above for a batch of codes.

Continuous (residual streams `b k d t`):
- `permutation_test`: p-value of "the streams (groups) are independent" with our MMD statistic.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .mmd import (
    MMDConfig,
    check_groups,
    effective_scales,
    mmd2,
    permute_groups,
    prepare_samples,
    random_permutations,
)
from .patterns import delay_align

LN2 = math.log(2.0)


def _entropy_bits(counts: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(Miller–Madow entropy, plug-in entropy) in bits of a histogram `counts` over n samples."""
    p = counts[counts > 0].double() / n
    plugin = -(p * p.log()).sum()
    corrected = plugin + (p.numel() - 1) / (2 * n)
    return corrected / LN2, plugin / LN2


def _code_samples(codes: Tensor, codebook_size: int, align: str) -> Tensor:
    """Codes [b, k, t] -> samples [n, k] (int64), checked to lie in [0, codebook_size)."""
    if codes.dim() != 3:
        raise ValueError(f"codes: expected [b, k, t], got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.min() < 0 or codes.max() >= codebook_size:
        raise ValueError(f"codes: expected integers in [0, {codebook_size}), got {codes.dtype} "
                         f"in [{codes.min().item()}, {codes.max().item()}]")
    if align not in ("none", "delay"):
        raise ValueError(f"align={align!r}: expected 'none' or 'delay'")
    if align == "delay":
        codes = delay_align(codes)
    return codes.permute(0, 2, 1).reshape(-1, codes.shape[1]).long()


def pairwise_mi(codes: Tensor, codebook_size: int, align: str = "none") -> dict:
    """Mutual information between every pair of codebooks of codes [b, k, t].

    Returns dict(mi=[k, k] bits (Miller–Madow; diagonal = entropy), mi_plugin=[k, k],
    nmi=[k, k] (MI / sqrt(H_i H_j), diagonal 1), entropy=[k] bits (Miller–Madow),
    entropy_plugin=[k], n_samples=int)."""
    samples = _code_samples(codes, codebook_size, align)  # [n, k]
    n, k = samples.shape
    v = codebook_size
    h, h_plug = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    for i in range(k):
        h[i], h_plug[i] = _entropy_bits(torch.bincount(samples[:, i], minlength=v), n)
    mi, mi_plug = torch.diag(h), torch.diag(h_plug)
    for i in range(k):
        for j in range(i + 1, k):
            joint = torch.bincount(samples[:, i] * v + samples[:, j], minlength=v * v)
            h_ij, h_ij_plug = _entropy_bits(joint, n)
            mi[i, j] = mi[j, i] = h[i] + h[j] - h_ij
            mi_plug[i, j] = mi_plug[j, i] = h_plug[i] + h_plug[j] - h_ij_plug
    norm = torch.sqrt(h[:, None] * h[None, :])
    nmi = torch.where(norm > 0, mi / norm.clamp(min=1e-12), torch.zeros_like(mi))
    return dict(mi=mi, mi_plugin=mi_plug, nmi=nmi, entropy=h, entropy_plugin=h_plug, n_samples=n)


def total_correlation(codes: Tensor, codebook_size: int, align: str = "none") -> float:
    """TC = Σ_k H(z_k) - H(z_1..z_K) in bits (Miller–Madow); see the module caveat on N << V^K."""
    samples = _code_samples(codes, codebook_size, align)
    n = samples.shape[0]
    marginals = sum(_entropy_bits(torch.bincount(samples[:, i], minlength=codebook_size), n)[0]
                    for i in range(samples.shape[1]))
    _, counts = torch.unique(samples, dim=0, return_counts=True)
    return float(marginals - _entropy_bits(counts, n)[0])


def _mean_off_diagonal(m: Tensor) -> float:
    k = m.shape[0]
    return float((m.sum() - m.diagonal().sum()) / (k * (k - 1))) if k > 1 else 0.0


def dependence_summary(codes: Tensor, codebook_size: int) -> dict:
    """Scalar dependence measures of codes [b, k, t] (floats, bits):
    nmi_lag0 / nmi_delay (mean off-diagonal NMI), mi_sum_lag0 / mi_sum_delay (sum over pairs
    i < j), total_correlation_lag0 / total_correlation_delay, entropy_mean, n_samples_lag0."""
    out = {}
    for tag, align in (("lag0", "none"), ("delay", "delay")):
        r = pairwise_mi(codes, codebook_size, align)
        out[f"nmi_{tag}"] = _mean_off_diagonal(r["nmi"])
        out[f"mi_sum_{tag}"] = float(torch.triu(r["mi"], diagonal=1).sum())
        out[f"total_correlation_{tag}"] = total_correlation(codes, codebook_size, align)
        if tag == "lag0":
            out["entropy_mean"] = float(r["entropy"].mean())
            out["n_samples_lag0"] = r["n_samples"]
    return out


def permutation_test(streams: Tensor, cfg: MMDConfig = MMDConfig(), n_permutations: int = 200, seed: int = 0) -> dict:
    """Test "the streams (or cfg.groups) are mutually independent" on streams [b, k, d, t].

    Statistic: our MMD² (cfg.estimator, cfg.align, standardised) between the joint samples X
    and one per-group shuffle of them. Null draws: the same statistic between two independent
    shuffles of X (both sides product-of-marginals). Under independence the data are
    invariant in law to per-group permutations, so the observed statistic and the null draws
    are exchangeable and p = (1 + #{null >= stat}) / (1 + n_permutations) is a valid p-value.
    The rff estimator uses one draw of frequencies for all statistics.

    Returns dict(statistic=float, p_value=float, null=[n_permutations] tensor)."""
    generator = torch.Generator().manual_seed(seed)
    samples = prepare_samples(streams, cfg)  # [n, k, d]
    n = samples.shape[0]
    groups = check_groups(cfg.groups, samples.shape[1])
    scales = effective_scales(cfg, samples[0].numel())
    identity = torch.arange(n).expand(len(groups), n)
    left = [identity] + [random_permutations(n, len(groups), generator) for _ in range(n_permutations)]
    right = [random_permutations(n, len(groups), generator) for _ in range(1 + n_permutations)]
    left, right = torch.stack(left), torch.stack(right)  # [1 + P, g, n]
    # y_j's group g is x row left_g^{-1}(right_g(j)): the coincident pairs of the unbiased estimator.
    sources = torch.gather(torch.argsort(left, dim=-1), -1, right)
    features = dict(n_features=cfg.n_features, generator=torch.Generator().manual_seed(seed + 1))
    chunk = 1 if cfg.estimator == "rff" else max(1, cfg.block_size * 4096 // (n * n))
    stats = []
    with torch.no_grad():
        for s in range(0, 1 + n_permutations, chunk):
            x = permute_groups(samples, left[s : s + chunk], groups).flatten(-2)  # [c, n, f]
            y = permute_groups(samples, right[s : s + chunk], groups).flatten(-2)
            if cfg.estimator == "rff":
                features["generator"].manual_seed(seed + 1)  # same frequencies every time
                stats.append(mmd2(x[0], y[0], scales, "rff", cfg.block_size, sources=sources[s], **features)[None])
            else:
                stats.append(mmd2(x, y, scales, cfg.estimator, cfg.block_size, sources=sources[s : s + chunk]))
    stats = torch.cat(stats)
    null = stats[1:]
    p_value = (1 + int((null >= stats[0]).sum())) / (1 + n_permutations)
    return dict(statistic=float(stats[0]), p_value=p_value, null=null)
