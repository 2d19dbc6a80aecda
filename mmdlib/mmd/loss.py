"""The independence-promoting loss: MMD² between the joint law of the K residual streams and the
product of their marginals (Lemercier et al. 2024).

Read top to bottom:

1. `streams_to_samples`: streams `b k d t` -> samples `n k d`, n = b·t: every (item, frame) is a
   draw of the K-tuple; with `align="delay"` stream k is shifted by k frames first
   (`patterns.delay_align`): the tuple the delay pattern predicts in one step.
2. `standardize`: per stream and dim, zero mean and unit variance over the n samples.
3. `shuffle_streams`: permute each stream (or each group of streams) independently along n.
   The shuffled set is a sample of the product of marginals ⊗P_k (independence between groups).
4. `mmd2`: MMD² between the joint set X and the shuffled set Y, flattened to `n f` (f = K·D),
   with the kernel k(x, y) = Σ_a exp(-‖x - y‖² / (2a)) over `scales`.
5. `mmd_independence`: 1-4, the loss (under DDP, `distributed.gather_with_grad` pools the ranks' streams first).

Estimators (N = number of samples, i, j run over 1..N):

    unbiased  Σ_{i≠j} k(x_i,x_j) / (N(N-1)) + Σ_{i≠j} k(y_i,y_j) / (N(N-1))
              - 2 Σ_{(i,j)∉S} k(x_i,y_j) / C
    biased    [Σ_{i,j} k(x_i,x_j) + Σ_{i,j} k(y_i,y_j) - 2 Σ_{i,j} k(x_i,y_j)] / N²  (V-statistic)
    rff       the unbiased formula with k replaced by a random Fourier feature kernel φ(x)·φ(y),
              computed in O(N) from sums of features (`mmd_rff`).
    expected  the unbiased estimator averaged over all shuffles, in closed form from per-group
              Gram matrices: no shuffle, no shuffle noise (`mmd_expected`; mmd_independence only).

S is the set of "coincident" cross pairs, given by `sources` [g, N]: y_j was built from rows
sources[:, j] of x. The default, sources = [0..N-1], gives S = {i = j} and the textbook U-statistic
with the i ≠ j cross term over C = N(N-1) (Gretton et al. 2012, eq. 4); `mmd2` divides by the
number of pairs left, C = N² - |S|. For the shuffled set,
`mmd_independence` passes the permutations: y_j holds group g of x_{π_g(j)}, so x_i and y_j share a
component whenever i = π_g(j) for some g. Leaving out only i = j would keep ~(K-1)·N such pairs,
whose kernel is larger than average, and bias the estimate by about -2K/N·(E[k | shared] - E[k])
(measured: -2.7/N with K = 3, D = 2, ~10× the null's spread). Leaving out S makes the estimate
exactly mean-zero under independence (y_j is then independent of x_i and distributed as ⊗P_k).
`mmd_independence` divides its cross term by the expected count C = E(N² - |S|) = N²(1 - 1/N)^g
(g groups) and adds the control variate 2·A_xx·(N² - |S| - C)/C (A_xx: the xx term; mean 0 over
the shuffle; without it the value moved by up to 0.9 shuffle SDs at N = 120). Exactly mean-zero
under independence, even given the shuffle, and its average over all shuffles is the closed form
of `estimator="expected"` (with the realised count that average is intractable).

The public reference divides by the batch size B instead of N = B·T, which is off by a factor
~T² and so is not the MMD² it intends; we divide by the true pair counts (its value on demand:
`estimator="reference"`, mmdlib.mmd.reference). `shuffle="clip"` permutes within each clip instead
of across the pool, and every term keeps only pairs of two different clips (a same-clip pair shares
what the clip explains): exactly mean-zero when the streams are independent given the clip.

Distances: raw squared Euclidean between standardised K·D vectors, as in the reference (at f = K·D
= 256 a typical one is ~2f, the small scales nearly Dirac); `normalize_distance=True` divides them
by f, which keeps the kernel widths meaningful at any f.

Memory: row blocks of `block_size` rows against all N columns, never an N×N matrix; a custom
autograd function recomputes each block in backward with the closed-form gradient
(∂k/∂x_i = -Σ_a k_a (x_i - y_j) / a): O(N·block) peak, backward ≈ 1× forward. No double backward.
Precision: float32 at least (half inputs upcast, gradients back in their dtype); `standardize`
takes float64 statistics on max-abs-scaled values. Integer inputs, bad scales, eps <= 0: ValueError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from mmdlib.codec.quantize import STREAMS
from mmdlib.mmd.expected import mmd2_expected
from mmdlib.mmd.kernels import check_scales, compute_dtype, kernel_mix, no_autocast, sq_dist
from mmdlib.mmd.reference import mmd2_reference
from mmdlib.mmd.rff import mmd2_rff, rff_frequencies
from mmdlib.patterns import delay_align

ESTIMATORS = ("unbiased", "biased", "rff", "expected", "reference")
SHUFFLES = ("pooled", "clip")
ALIGNS = ("none", "delay")


@dataclass(frozen=True)
class MMDConfig:
    scales: tuple[float, ...] = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0)  # Gaussian variances a
    estimator: str = "unbiased"  # "unbiased" | "biased" | "rff" | "expected" (shuffle-free) | "reference" (the
                                 # public code's value, mmdlib.mmd.reference)
    align: str = "delay"  # "none" | "delay" (pair streams as the delay pattern predicts them)
    streams: str = "residual"  # what the codec feeds: "residual" r_k | "input" r_{k-1} | "codeword" q_k
    shuffle: str = "pooled"  # "pooled": across all clips | "clip": within each clip (what the clip's past
                             # explains stays in the product set: a conditional criterion)
    groups: list[list[int]] | None = None  # permuted as blocks; None = every stream alone
    block_size: int = 1024  # rows per block of the exact estimators
    n_features: int = 2048  # rff: random frequencies in total, split evenly across scales
    standardize: bool = True
    normalize_distance: bool = False  # divide squared distances by f = K·D
    eps: float = 1e-5  # variance floor of the standardisation

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"MMDConfig.estimator={self.estimator!r}: expected one of {ESTIMATORS}")
        for name, value, known in (("align", self.align, ALIGNS), ("streams", self.streams, STREAMS),
                                   ("shuffle", self.shuffle, SHUFFLES)):
            if value not in known:
                raise ValueError(f"MMDConfig.{name}={value!r}: expected one of {known}")
        if self.shuffle == "clip" and self.estimator != "unbiased":
            raise ValueError(f"MMDConfig.shuffle='clip' needs estimator='unbiased', not {self.estimator!r}")
        check_scales(self.scales, "MMDConfig.scales")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"MMDConfig.eps={self.eps}: the variance floor must be finite and > 0")
        if self.block_size < 1 or self.n_features < len(self.scales):
            raise ValueError(f"MMDConfig: block_size={self.block_size} must be >= 1 and "
                             f"n_features={self.n_features} >= len(scales)={len(self.scales)}")


# ----------------------------------------------------------------------------------------------
# Samples: streams -> [n, k, d], standardisation, per-stream shuffles


def streams_to_samples(streams: Tensor, align: str = "delay") -> Tensor:
    """Residual streams [b, k, d, t] -> samples [n, k, d], n = b·t (b·(t-K+1) with delay)."""
    if streams.dim() != 4:
        raise ValueError(f"streams: expected [b, k, d, t], got shape {tuple(streams.shape)}")
    if align not in ALIGNS:
        raise ValueError(f"align={align!r}: expected one of {ALIGNS}")
    if align == "delay":
        streams = delay_align(streams)
    return rearrange(streams, "b k d t -> (b t) k d")


def standardize(samples: Tensor, eps: float = 1e-5) -> Tensor:
    """Per stream and dim: zero mean, unit variance over the samples. [n, k, d] -> [n, k, d].

    Returns (x - mean) / sqrt(var + eps) in the compute dtype (float32 at least). The statistics
    are taken in float64 on x / s, s = max |x| per stream and dim (a detached constant, so the
    function and its gradient are unchanged): no overflow at any finite magnitude. The variance
    floor `eps` keeps constant streams finite: they become exactly 0 and, since every distance
    gradient is ∝ (x_i - x_j) = 0 for them, get zero gradients (no NaN)."""
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"standardize: eps={eps} must be finite and > 0")
    if not samples.is_floating_point():
        raise ValueError(f"standardize: samples must be floating point, got {samples.dtype}")
    s = samples.detach().abs().amax(dim=0, keepdim=True).double().clamp(min=1e-150)
    z = samples.double() / s
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    floor = (eps / s**2).clamp(min=1e-200)  # eps in the rescaled units; never exactly 0
    return ((z - mean) / torch.sqrt(var + floor)).to(compute_dtype(samples.dtype))


def check_groups(groups: list[list[int]] | None, k: int) -> list[list[int]]:
    """Validate that `groups` partitions range(k); None -> [[0], [1], ..., [k-1]]."""
    if groups is None:
        return [[i] for i in range(k)]
    flat = sorted(i for g in groups for i in g)
    if flat != list(range(k)) or any(len(g) == 0 for g in groups):
        raise ValueError(f"groups={groups}: must split the stream indices 0..{k - 1} into non-empty groups")
    return [list(g) for g in groups]


def random_permutations(n: int, count: int, generator: torch.Generator | None = None, block: int | None = None
                        ) -> Tensor:
    """`count` independent uniform permutations of range(n): [count, n] (int64, CPU); with `block`,
    each permutes within consecutive blocks of that many (the frames of one clip)."""
    if block is None or block == n:
        return torch.stack([torch.randperm(n, generator=generator) for _ in range(count)])
    within = torch.rand(count, n // block, block, generator=generator).argsort(dim=-1)  # count clips frames
    return (within + torch.arange(0, n, block)[:, None]).flatten(1)


def permute_groups(samples: Tensor, perms: Tensor, groups: list[list[int]]) -> Tensor:
    """Reorder each group of streams by its own permutation.

    samples [n, k, d], perms [..., g, n] (one permutation per group) -> [..., n, k, d]
    where out[..., i, group g] = samples[perms[..., g, i], group g]."""
    perms = perms.to(samples.device)
    pieces = [samples[:, g][perms[..., gi, :]] for gi, g in enumerate(groups)]  # [..., n, |g|, d]
    order = [i for g in groups for i in g]
    inverse = torch.argsort(torch.tensor(order, device=samples.device))
    return torch.cat(pieces, dim=-2).index_select(-2, inverse)


def shuffle_streams(
    samples: Tensor, groups: list[list[int]] | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Product-of-marginals set: each group permuted independently. [n, k, d] -> [n, k, d]."""
    groups = check_groups(groups, samples.shape[1])
    perms = random_permutations(samples.shape[0], len(groups), generator)  # [g, n]
    return permute_groups(samples, perms, groups)


# ----------------------------------------------------------------------------------------------
# Exact MMD², blocked over rows, with a closed-form backward


def distinct_sources(sources: Tensor) -> Tensor:
    """sources [..., g, n] with repeats within a column replaced by -1 (each pair counted once)."""
    srt = sources.sort(dim=-2).values
    repeat = torch.zeros_like(srt, dtype=torch.bool)
    repeat[..., 1:, :] = srt[..., 1:, :] == srt[..., :-1, :]
    return srt.masked_fill(repeat, -1)


def _zero_pairs(k: Tensor, sources: Tensor, start: int) -> None:
    """In place: k[..., i - start, j] = 0 for the pairs (i = sources[..., g, j], j) in this block.

    k [..., rows, n] (leading dims flattened to one batch index), sources [..., g, n] (-1 = none)."""
    rows, n = k.shape[-2:]
    src = sources.expand(*k.shape[:-2], *sources.shape[-2:]).reshape(-1, *sources.shape[-2:]) - start
    batch, _, col = torch.meshgrid(*(torch.arange(m, device=k.device) for m in src.shape), indexing="ij")
    inside = (src >= 0) & (src < rows)
    flat = (batch * rows + src) * n + col
    k.view(-1)[flat[inside]] = 0.0


def _terms(x, y, sources, start, stop, scales, unbiased, slope, clip=None):
    """Kernel blocks for rows start:stop: yields (name, k) for xx, yy, xy, each [..., rows, n]
    (the slope g instead of k when slope=True).

    Self terms get an exact 0 distance on the diagonal; the unbiased estimator drops the
    diagonal of xx and yy, and the coincident pairs `sources` of xy; with `clip` (rows in clips of
    that many) every term keeps only the pairs of two different clips."""
    rows = torch.arange(stop - start, device=x.device)
    same = None if clip is None else (start + rows)[:, None] // clip == torch.arange(x.shape[-2], device=x.device) // clip
    for name, u, v in (("xx", x, x), ("yy", y, y), ("xy", x, y)):
        d = sq_dist(u[..., start:stop, :], v)
        if name != "xy":
            d[..., rows, start + rows] = 0.0
        k = kernel_mix(d, scales, slope)
        del d
        if same is not None:
            k.masked_fill_(same, 0.0)
        elif unbiased and name != "xy":
            k[..., rows, start + rows] = 0.0
        elif unbiased:
            _zero_pairs(k, sources, start)
        yield name, k


class _BlockedMMD2(torch.autograd.Function):
    """MMD² (unbiased or biased) from x, y [..., n, f] -> [...], O(n·block) memory both ways.

    sources: [..., g, n] coincident rows (distinct, -1 = none), used by the unbiased estimator;
    expected_pairs: see `mmd2`."""

    @staticmethod
    def forward(ctx, x, y, sources, scales, unbiased, block_size, expected_pairs=None, clip=None):
        n = x.shape[-2]
        if clip is not None:  # pairs of different clips only, N(N - M) of them in each term
            w_self = w_xx = 1.0 / (n * (n - clip))
            w_xy = -2.0 * w_self
        elif unbiased:
            w_self = 1.0 / (n * (n - 1))
            pairs = n * n - (sources >= 0).sum((-2, -1)).to(x.dtype)  # [...] or scalar: N² - |S|
            if expected_pairs is None:
                w_xx, w_xy = w_self, -2.0 / pairs
            else:  # Σ_{∉S} k / C with the control variate A_xx·(N² - |S| - C)/C subtracted
                w_xx, w_xy = w_self * (1 + 2 * (pairs - expected_pairs) / expected_pairs), -2.0 / expected_pairs
        else:
            w_self, w_xy = 1.0 / (n * n), -2.0 / (n * n)
            w_xx = w_self
        weights = dict(xx=w_xx, yy=w_self, xy=w_xy)
        total = x.new_zeros(x.shape[:-2])
        for start in range(0, n, block_size):
            for name, k in _terms(x, y, sources, start, min(start + block_size, n), scales, unbiased, False, clip):
                total = total + weights[name] * k.sum((-2, -1))
        ctx.save_for_backward(x, y, sources)
        ctx.config = (scales, unbiased, block_size, weights, clip)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        x, y, sources = ctx.saved_tensors
        scales, unbiased, block_size, weights, clip = ctx.config
        n = x.shape[-2]
        c_xx, c_yy, c_xy = ((grad_out * weights[name])[..., None, None] for name in ("xx", "yy", "xy"))
        grad_x, grad_y = torch.zeros_like(x), torch.zeros_like(y)
        with no_autocast(x):  # float32 matmuls even when backward runs inside autocast
            for start in range(0, n, block_size):
                stop = min(start + block_size, n)
                xb, yb = x[..., start:stop, :], y[..., start:stop, :]
                for name, g in _terms(x, y, sources, start, stop, scales, unbiased, True, clip):
                    row_sum = g.sum(-1)[..., None]  # [..., rows, 1]
                    if name == "xx":  # symmetric: row i's own block gives x_i both of its roles
                        grad_x[..., start:stop, :] += 2 * c_xx * (xb * row_sum - g @ x)
                    elif name == "yy":
                        grad_y[..., start:stop, :] += 2 * c_yy * (yb * row_sum - g @ y)
                    else:  # Σ k(x_i, y_j): x_i gets its row, every y_j its column
                        grad_x[..., start:stop, :] += c_xy * (xb * row_sum - g @ y)
                        grad_y += c_xy * (y * g.sum(-2)[..., None] - g.mT @ xb)
        return grad_x, grad_y, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# Public entry points


def mmd2(
    x: Tensor,
    y: Tensor,
    scales: tuple[float, ...] = MMDConfig.scales,
    estimator: str = "unbiased",
    block_size: int = 1024,
    n_features: int = 2048,
    generator: torch.Generator | None = None,
    sources: Tensor | None = None,
    expected_pairs: float | None = None,
    clip: int | None = None,
) -> Tensor:
    """MMD² between sample sets x, y [..., n, f] -> [...] (leading dims are batched; rff: [n, f]).

    k(x, y) = Σ_a exp(-‖x - y‖²/(2a)) on raw squared distances; see the module docstring for
    the exact formulas. `sources` [..., g, n] (int64): y_j was built from rows sources[..., :, j]
    of x; those cross pairs are left out of the unbiased estimators (default: the i = j pairs),
    and the sum over the others is divided by their number. `expected_pairs` (C, when y is a
    random shuffle): divide by C = E(N² - |S|) instead and add 2·A_xx·(N² - |S| - C)/C (a control
    variate with mean 0 over the shuffle; see the module docstring).
    `generator` draws the rff frequencies. Float32 at least (the gradient keeps the inputs' dtype)."""
    if x.shape != y.shape or x.dim() < 2:
        raise ValueError(f"mmd2: x {tuple(x.shape)} and y {tuple(y.shape)} must both be [..., n, f]")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"mmd2: x and y must be floating point, got {x.dtype} and {y.dtype}")
    n = x.shape[-2]
    if n < 4:
        raise ValueError(f"mmd2: need at least 4 samples, got x of shape {tuple(x.shape)}")
    if estimator not in ESTIMATORS[:3] or block_size < 1:
        raise ValueError(f"mmd2: estimator={estimator!r}, block_size={block_size}: expected one of {ESTIMATORS[:3]} "
                         "and >= 1 (mmd2_expected: the shuffle-free one; reference: mmd_independence)")
    if sources is None:
        sources = torch.arange(n, device=x.device)[None]
    if sources.shape[-1] != n or sources.dtype != torch.int64:
        raise ValueError(f"mmd2: sources must be int64 [..., g, {n}], got {sources.dtype} {tuple(sources.shape)}")
    sources = distinct_sources(sources.to(x.device))
    scales = check_scales(scales)
    dtype = torch.promote_types(compute_dtype(x.dtype), y.dtype)
    x, y = x.to(dtype), y.to(dtype)
    if estimator == "rff":
        w = rff_frequencies(x.shape[-1], scales, n_features, generator)
        return mmd2_rff(x, y, sources, w, scales, block_size, expected_pairs)
    return _BlockedMMD2.apply(x, y, sources, scales, estimator == "unbiased", block_size, expected_pairs, clip)


def prepare_samples(streams: Tensor, cfg: MMDConfig) -> Tensor:
    """Check, align, flatten and (optionally) standardise: [b, k, d, t] -> [n, k, d], in the
    compute dtype (float32 at least)."""
    if not streams.is_floating_point() or not torch.isfinite(streams).all():
        raise ValueError(f"streams {streams.dtype} {tuple(streams.shape)}: expected floating-point values, no NaN or inf")
    samples = streams_to_samples(streams, cfg.align)
    if samples.shape[0] < 4:
        raise ValueError(f"streams of shape {tuple(streams.shape)} give {samples.shape[0]} samples "
                         f"(align={cfg.align!r}); the MMD needs at least 4")
    if cfg.standardize:
        return standardize(samples, cfg.eps)
    samples = samples.to(compute_dtype(samples.dtype))
    biggest = float(samples.detach().abs().max()) ** 2 * samples[0].numel()
    if biggest > torch.finfo(samples.dtype).max / 8:
        raise ValueError(f"streams: magnitude {biggest ** 0.5:.3g} overflows the {samples.dtype} squared "
                         "distances with standardize=False; standardise them (MMDConfig.standardize=True)")
    return samples


def effective_scales(cfg: MMDConfig, f: int) -> tuple[float, ...]:
    """Scales as applied to raw squared distances (×f when distances are normalised by f)."""
    return tuple(a * f for a in cfg.scales) if cfg.normalize_distance else tuple(cfg.scales)


def group_parts(samples: Tensor, groups: list[list[int]]) -> list[Tensor]:
    """Samples [n, k, d] -> one feature matrix [n, |g|·d] per group."""
    return [samples[:, g].flatten(1) for g in groups]


def expected_pairs(n: int, n_groups: int) -> float:
    """E(N² - |S|) over a uniform per-group shuffle: N²(1 - 1/N)^g (see the module docstring)."""
    return n * n * (1.0 - 1.0 / n) ** n_groups


def mmd_independence(streams: Tensor, cfg: MMDConfig = MMDConfig(), seed: int | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """The loss: MMD²(joint, product of marginals) of residual streams [b, k, d, t] -> scalar.

    The shuffle (and the rff frequencies) come from `generator`, or a new one seeded by `seed`,
    or torch's global generator when both are None. estimator="expected" needs no shuffle (the
    seed is ignored): it is the average of the "unbiased" value over all shuffles."""
    if seed is not None and generator is not None:
        raise ValueError("mmd_independence: pass either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    if cfg.estimator == "reference":
        return mmd2_reference(streams, cfg.scales, cfg.align == "delay", generator, cfg.block_size)
    samples = prepare_samples(streams, cfg)  # [n, k, d]
    groups = check_groups(cfg.groups, samples.shape[1])
    scales = effective_scales(cfg, samples[0].numel())
    if cfg.estimator == "expected":
        return mmd2_expected(group_parts(samples, groups), scales, cfg.block_size)
    n = samples.shape[0]
    if cfg.shuffle == "clip" and streams.shape[0] < 2:
        raise ValueError(f"streams {tuple(streams.shape)}: shuffle='clip' compares pairs of clips; give b >= 2")
    block = n // streams.shape[0] if cfg.shuffle == "clip" else None  # the frames of a clip
    perms = random_permutations(n, len(groups), generator, block)  # [g, n]
    shuffled = permute_groups(samples, perms, groups)  # y_j: group g of sample perms[g, j]
    x, y = samples.flatten(1), shuffled.flatten(1)  # [n, f], f = k·d
    return mmd2(x, y, scales, cfg.estimator, cfg.block_size, cfg.n_features, generator, sources=perms,
                expected_pairs=expected_pairs(n, len(groups)), clip=block)
