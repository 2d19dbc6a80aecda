"""The public reference's MMD value (estimator="reference") against a literal dense version of its
formula, the identity that relates it to an MMD², and its gradient."""
import math

import pytest
import torch

from mmdlib.mmd.loss import MMDConfig, mmd_independence

SCALES = MMDConfig().scales


def literal(streams, delay, seed):
    """The formula of the module doc, step by step, with dense n x n matrices (as the reference does)."""
    b, k, d, t = streams.shape
    x = streams.double()
    if delay:
        shifted = torch.zeros_like(x)
        for i in range(k):
            shifted[:, i, :, i:] = x[:, i, :, : t - i]
        x = shifted[..., k:]
    x = x.permute(0, 3, 1, 2).reshape(-1, k, d)                       # (b t) k d
    x = (x - x.mean(0)) / torch.sqrt(x.var(0) + 1e-8)
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(len(x), generator=g) for _ in range(k)]
    y = torch.stack([x[perms[i], i] for i in range(k)], 1)
    x, y = x.flatten(1), y.flatten(1)
    out = 0.0
    for a in SCALES:
        kxx, kyy, kxy = (torch.exp(-torch.cdist(u, v) ** 2 / (2 * a)) for u, v in ((x, x), (y, y), (x, y)))
        out += (kxx.sum() - b) / (b * (b - 1)) + (kyy.sum() - b) / (b * (b - 1)) - 2 * kxy.sum() / b**2
    return max(float(out), 0.0), (x, y)


@pytest.mark.parametrize("delay", [True, False])
def test_matches_a_literal_dense_version(delay):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 3, 2, 12, generator=g)
    s[:, 1] += 0.8 * s[:, 0]  # dependent streams: the value is not only its constant
    cfg = MMDConfig(estimator="reference", align="delay" if delay else "none", block_size=7)
    got = mmd_independence(s, cfg, seed=3)
    want, _ = literal(s, delay, 3)
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_the_identity_relating_it_to_an_mmd():
    """value = T'²(Ū_xx + Ū_yy - 2 M_xy) + T'(T'-1)/(b-1)(Ū_xx + Ū_yy) + 2A(T'-1)/(b-1): λ on it is ≈ λ·T'²
    on an MMD² (the module doc)."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 3, 2, 10, generator=g)
    s[:, 2] += s[:, 0]
    b, tp, a = 6, 10, len(SCALES)
    value, (x, y) = literal(s, False, 5)
    n = b * tp
    kern = lambda u, v: sum(torch.exp(-torch.cdist(u, v) ** 2 / (2 * s_)) for s_ in SCALES)  # noqa: E731
    u_xx = (kern(x, x).sum() - n * a) / (n * (n - 1))
    u_yy = (kern(y, y).sum() - n * a) / (n * (n - 1))
    m_xy = kern(x, y).mean()
    identity = tp**2 * (u_xx + u_yy - 2 * m_xy) + tp * (tp - 1) / (b - 1) * (u_xx + u_yy) + 2 * a * (tp - 1) / (b - 1)
    assert value == pytest.approx(float(identity), rel=1e-9)


def test_gradient_reaches_the_streams_and_blocks_do_not_matter():
    s = torch.randn(4, 2, 3, 9, generator=torch.Generator().manual_seed(2), requires_grad=True)
    one = mmd_independence(s, MMDConfig(estimator="reference", block_size=5), seed=0)
    one.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    whole = mmd_independence(s.detach(), MMDConfig(estimator="reference", block_size=10_000), seed=0)
    assert math.isclose(float(one.detach()), float(whole), rel_tol=1e-5)


def test_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="b >= 2"):
        mmd_independence(torch.randn(1, 2, 2, 9), MMDConfig(estimator="reference"), seed=0)
    with pytest.raises(ValueError, match="shuffle='clip'"):
        MMDConfig(estimator="reference", shuffle="clip")
