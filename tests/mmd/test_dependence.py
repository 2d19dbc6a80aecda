import math

import pytest
import torch

from mmdlib.mmd.dependence import (
    dependence_summary,
    pairwise_mi,
    surrogate_indices,
    total_correlation,
)

LN2 = math.log(2.0)


def h2(p):
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def codes_from(*streams):
    """Streams [n] each -> codes [1, k, n]."""
    return torch.stack(streams)[None]


def copy_or_uniform(v, n, p, seed):
    """z2 = z1 with probability p, else an independent uniform code: MI analytic."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randint(0, v, (n,), generator=g)
    z2 = torch.where(torch.rand(n, generator=g) < p, z1, torch.randint(0, v, (n,), generator=g))
    q_same, q_other = p + (1 - p) / v, (1 - p) / v
    truth = math.log2(v) + q_same * math.log2(q_same) + (v - 1) * q_other * math.log2(q_other)
    return codes_from(z1, z2), truth


def sticky_codes(b, k, t, v, stay, seed):
    """Independent codebooks, each a Markov chain that keeps its code with probability `stay`."""
    g = torch.Generator().manual_seed(seed)
    fresh = torch.randint(0, v, (b, k, t), generator=g)
    keep = torch.rand(b, k, t, generator=g) < stay
    z = fresh.clone()
    for s in range(1, t):
        z[..., s] = torch.where(keep[..., s], z[..., s - 1], fresh[..., s])
    return z


def test_mi_independent_uniform_is_debiased():
    g = torch.Generator().manual_seed(0)
    v, n = 16, 4000
    r = pairwise_mi(codes_from(*torch.randint(0, v, (2, n), generator=g)), v)
    plugin_bias = (v - 1) ** 2 / (2 * n * LN2)  # expected excess of the plug-in MI, bits
    assert r["mi_plugin"][0, 1] > 0.5 * plugin_bias
    assert abs(r["mi"][0, 1]) < 0.2 * plugin_bias
    assert abs(r["entropy"][0] - 4.0) < 0.01


def test_mi_identical_copies_equals_entropy():
    z = torch.randint(0, 32, (5000,), generator=torch.Generator().manual_seed(1))
    r = pairwise_mi(codes_from(z, z), 32)
    assert torch.allclose(r["mi_uncorrected"][0, 1], r["entropy"][0])
    assert abs(r["mi"][0, 1] - 5.0) < 0.01 and abs(r["nmi"][0, 1] - 1.0) < 0.002
    assert r["mi"][0, 0] == r["entropy"][0] and r["nmi"][1, 1] == 1.0


def test_mi_binary_symmetric_channel():
    g = torch.Generator().manual_seed(2)
    n, eps = 20000, 0.1
    x = torch.randint(0, 2, (n,), generator=g)
    y = x ^ (torch.rand(n, generator=g) < eps).long()
    r = pairwise_mi(codes_from(x, y), 2)
    truth = 1 - h2(eps)
    assert abs(r["mi"][0, 1] - truth) < 0.01  # sampling sd ≈ 0.004 bits
    assert abs(r["nmi"][0, 1] - truth) < 0.01  # both entropies are ≈ 1 bit


def test_known_mi_recovered_well_sampled_and_undersampled():
    codes, truth = copy_or_uniform(64, 20000, 0.3, seed=3)  # 4096 cells, ~5 samples each
    assert abs(pairwise_mi(codes, 64)["mi"][0, 1] - truth) < 0.05
    codes, truth = copy_or_uniform(256, 12800, 0.3, seed=4)  # 65,536 cells: undersampled
    r = pairwise_mi(codes, 256)
    assert abs(r["mi"][0, 1] - truth) < 0.1 * truth  # measured -4%; uncorrected +60%
    assert r["mi_plugin"][0, 1] > 2 * truth
    assert abs(r["nmi"][0, 1] - truth / 8) < 0.1 * truth / 8


@pytest.mark.parametrize("marginal", ["uniform", "skewed"])
def test_nmi_of_independent_codes_is_zero(marginal):
    v, g = 256, torch.Generator().manual_seed(5)
    p = torch.ones(v) if marginal == "uniform" else 1.0 / torch.arange(1, v + 1) ** 1.1
    codes = torch.multinomial(p, 64 * 4 * 200, replacement=True, generator=g).view(64, 4, 200)  # 12,800 frames
    s = dependence_summary(codes, v)
    for tag in ("lag0", "delay"):
        assert abs(s[f"nmi_{tag}"]) <= 0.02 and s[f"nmi_{tag}_plugin"] > 0.1
        assert abs(s[f"nmi_{tag}"]) < 5 * s[f"nmi_{tag}_null_sd"] + 1e-3
        assert abs(s[f"total_correlation_{tag}"]) < 0.05 < s[f"total_correlation_{tag}_plugin"]


def test_shifted_surrogates_correct_autocorrelated_codes():
    """Sticky codes have a larger plug-in bias than i.i.d. ones: frame shuffles under-correct."""
    codes = sticky_codes(32, 3, 200, 256, stay=0.8, seed=6)
    shift = dependence_summary(codes, 256, n_surrogates=10)
    frames = dependence_summary(codes, 256, n_surrogates=10, null="frames")
    assert abs(shift["nmi_delay"]) <= 0.02 and abs(shift["nmi_lag0"]) <= 0.02
    assert frames["nmi_delay"] > 0.1


def test_mi_delay_alignment():
    # codes[0, t] = codes[1, t-1]: the pair the delay pattern predicts in one step (z0[s], z1[s-1]).
    w = torch.randint(0, 8, (1, 3001), generator=torch.Generator().manual_seed(3))
    codes = torch.stack([w[:, :-1], w[:, 1:]], dim=1)  # [1, 2, 3000]
    lag0 = pairwise_mi(codes, 8, "none")["mi"][0, 1]
    delay = pairwise_mi(codes, 8, "delay")["mi"][0, 1]
    assert delay > 2.9 and abs(lag0) < 0.05


def test_total_correlation_and_summary():
    g = torch.Generator().manual_seed(4)
    z = torch.randint(0, 4, (2, 2000), generator=g)
    codes = codes_from(z[0], z[1], z[0])  # stream 2 copies stream 0: TC = H = 2 bits
    assert abs(total_correlation(codes, 4) - 2.0) < 0.05
    s = dependence_summary(codes, 4)
    assert abs(s["mi_sum_lag0"] - 2.0) < 0.05
    assert abs(s["nmi_lag0"] - 1 / 3) < 0.02  # one of three pairs is identical
    assert s["nmi_delay"] < 0.05 and s["n_samples_lag0"] == 2000 and s["n_surrogates"] == 20


def test_summary_is_seeded():
    codes = torch.randint(0, 16, (4, 3, 50), generator=torch.Generator().manual_seed(7))
    a, b = dependence_summary(codes, 16, seed=1), dependence_summary(codes, 16, seed=1)
    c = dependence_summary(codes, 16, seed=2)
    assert a == b and a["nmi_delay"] != c["nmi_delay"] and a["nmi_delay_plugin"] == c["nmi_delay_plugin"]
    assert a["nmi_delay_null_sd"] > 0 and a["mi_sum_lag0_null_sd"] > 0
    raw = dependence_summary(codes, 16, n_surrogates=0)
    assert raw["nmi_delay_null_sd"] == 0.0 and raw["nmi_delay"] > a["nmi_delay"]


def test_codes_out_of_range_raise():
    with pytest.raises(ValueError, match="codes"):
        pairwise_mi(torch.full((1, 2, 5), 9), 8)


# -- surrogates ----------------------------------------------------------------------------------
def test_surrogate_indices_keep_clips_and_time_order():
    g = torch.Generator().manual_seed(8)
    b, t = 5, 7
    for null in ("shift", "clips", "frames"):
        maps = surrogate_indices(b, t, 20, null, g)
        assert torch.equal(maps.sort(-1).values, torch.arange(b * t).expand(20, -1))  # permutations
    shift = surrogate_indices(b, t, 20, "shift", g).view(20, b, t)
    clip, frame = shift // t, shift % t
    assert (clip == clip[..., :1]).all()  # an output clip comes from one source clip
    assert ((frame[..., 1:] - frame[..., :-1]) % t == 1).all()  # in circular time order
    clips = surrogate_indices(b, t, 20, "clips", g).view(20, b, t)
    assert torch.equal(clips % t, torch.arange(t).expand(20, b, t))
    with pytest.raises(ValueError, match="clips"):
        surrogate_indices(1, t, 3, "clips", g)
    with pytest.raises(ValueError, match="null"):
        surrogate_indices(b, t, 3, "rows", g)


# -- the permutation test ------------------------------------------------------------------------
