import math

import pytest
import torch

from mmdlib.dependence import dependence_summary, pairwise_mi, permutation_test, total_correlation
from mmdlib.mmd import MMDConfig

LN2 = math.log(2.0)


def h2(p):
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def codes_from(*streams):
    """Streams [n] each -> codes [1, k, n]."""
    return torch.stack(streams)[None]


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
    assert torch.allclose(r["mi"][0, 1], r["entropy"][0])
    assert abs(r["mi"][0, 1] - 5.0) < 0.01 and abs(r["nmi"][0, 1] - 1.0) < 1e-9


def test_mi_binary_symmetric_channel():
    g = torch.Generator().manual_seed(2)
    n, eps = 20000, 0.1
    x = torch.randint(0, 2, (n,), generator=g)
    y = x ^ (torch.rand(n, generator=g) < eps).long()
    r = pairwise_mi(codes_from(x, y), 2)
    truth = 1 - h2(eps)
    assert abs(r["mi"][0, 1] - truth) < 0.01  # sampling sd ≈ 0.004 bits
    assert abs(r["nmi"][0, 1] - truth) < 0.01  # both entropies are ≈ 1 bit


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
    assert s["nmi_delay"] < 0.05 and s["n_samples_lag0"] == 2000


def test_codes_out_of_range_raise():
    with pytest.raises(ValueError, match="codes"):
        pairwise_mi(torch.full((1, 2, 5), 9), 8)


def test_permutation_p_values_roughly_uniform():
    cfg = MMDConfig(align="none")
    p = torch.tensor([
        permutation_test(torch.randn(1, 2, 2, 64, generator=torch.Generator().manual_seed(s)), cfg, 100, seed=s)["p_value"]
        for s in range(100)
    ])
    assert 0.0 <= (p <= 0.05).float().mean() <= 0.12
    assert 0.3 < p.mean() < 0.7  # uniform: mean 0.5, sd of the mean ≈ 0.03


def test_permutation_test_detects_dependence():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(1, 2, 2, 128, generator=g)
    s[:, 1] = torch.tanh(2 * s[:, 0]) + 0.3 * s[:, 1]
    r = permutation_test(s, MMDConfig(align="none"), 200, seed=0)
    assert r["p_value"] < 0.01 and r["statistic"] > r["null"].max()


def test_permutation_test_rff_runs():
    s = torch.randn(1, 2, 2, 128, generator=torch.Generator().manual_seed(6))
    s[:, 1] = torch.tanh(2 * s[:, 0]) + 0.3 * s[:, 1]
    r = permutation_test(s, MMDConfig(align="none", estimator="rff", n_features=512), 50, seed=0)
    assert r["p_value"] < 0.05 and r["null"].shape == (50,)
