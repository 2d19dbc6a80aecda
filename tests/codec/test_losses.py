import warnings

import pytest
import torch

from mmdlib.codec.discriminator import DiscriminatorConfig, MultiScaleSTFTDiscriminator
from mmdlib.codec.losses import (
    LossBalancer,
    MultiScaleMelLoss,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    l1_wave,
    mel_filterbank,
)

SR = 16000


def _audio(b=2, n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, n, generator=g)


# ---------------------------------------------------------------- reconstruction


def test_l1_wave_value_and_shape_check():
    x = torch.zeros(2, 1, 10)
    assert l1_wave(x + 0.5, x).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        l1_wave(x, torch.zeros(2, 1, 11))


def test_mel_filterbank_has_no_empty_band_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n_fft in (32, 64, 256, 2048):
            fb = mel_filterbank(n_fft, 64, SR)
            assert fb.shape[0] == n_fft // 2 + 1
            assert 1 <= fb.shape[1] <= 64
            assert (fb.max(dim=0).values > 0).all()
    assert mel_filterbank(2048, 64, SR).shape[1] == 64  # large windows keep all bands
    assert mel_filterbank(64, 64, SR).shape[1] < 64  # small ones are capped


def test_mel_loss_zero_for_identical_and_grows_with_noise():
    loss = MultiScaleMelLoss(SR)
    x = _audio()
    assert loss(x, x).item() == 0.0
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    values = [loss(x + s * noise, x).item() for s in (0.01, 0.1, 1.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_mel_loss_gradient_finite_even_from_silence():
    loss = MultiScaleMelLoss(SR, n_ffts=(64, 256, 1024))
    x = _audio()
    for start in (torch.zeros_like(x), 0.5 * x):
        x_hat = start.clone().requires_grad_()
        loss(x_hat, x).backward()
        assert torch.isfinite(x_hat.grad).all()
    assert x_hat.grad.abs().sum() > 0  # from exact silence a magnitude loss has zero gradient (|.| at 0)


def test_mel_loss_buffers_follow_dtype():
    loss = MultiScaleMelLoss(SR, n_ffts=(128, 512)).double()
    x = _audio().double()
    assert loss(x * 0.9, x).dtype == torch.float64


# ---------------------------------------------------------------- adversarial


def test_hinge_losses_analytic():
    real = [torch.tensor([2.0, 0.5, -1.0]), torch.tensor([[1.0, 1.0]])]
    fake = [torch.tensor([-2.0, 0.0, 0.5]), torch.tensor([[-1.0, -3.0]])]
    # disc 0: relu(1 - real) = [0, .5, 2] -> 5/6, relu(1 + fake) = [0, 1, 1.5] -> 5/6; disc 1: 0 + 0
    assert hinge_d_loss(real, fake).item() == pytest.approx((5 / 3 + 0.0) / 2)
    # relu(1 - fake): disc 0 [3, 1, .5] -> 1.5; disc 1 [2, 4] -> 3
    assert hinge_g_loss(fake).item() == pytest.approx((1.5 + 3.0) / 2)
    with pytest.raises(ValueError):
        hinge_d_loss(real, fake[:1])


def test_feature_matching_analytic():
    g = torch.Generator().manual_seed(0)
    real = [[torch.randn(2, 4, 5, generator=g) for _ in range(3)] for _ in range(2)]
    same = [[f.clone() for f in fs] for fs in real]
    assert feature_matching_loss(real, same).item() == 0.0
    zeros = [[torch.zeros_like(f) for f in fs] for fs in real]
    assert feature_matching_loss(real, zeros).item() == pytest.approx(1.0)  # |r - 0| / |r|
    doubled = [[3 * f for f in fs] for fs in real]
    assert feature_matching_loss(real, doubled).item() == pytest.approx(2.0)


def test_feature_matching_does_not_backprop_into_real():
    r = torch.randn(2, 3, requires_grad=True)
    f = torch.randn(2, 3, requires_grad=True)
    feature_matching_loss([[r]], [[f]]).backward()
    assert r.grad is None and f.grad is not None


# ---------------------------------------------------------------- balancer


def _toy():
    """output [1, 1, 8]; loss a acts on the first half (huge grads), loss b on the second (tiny)."""
    p = torch.linspace(0.1, 0.8, 8).reshape(1, 1, 8).requires_grad_()
    out = p * 1.0  # non-leaf "model output"
    losses = {"a": 1e3 * out[..., :4].pow(2).sum(), "b": 1e-3 * out[..., 4:].sum()}
    return p, out, losses


def test_balancer_contribution_norms_follow_weights():
    p, out, losses = _toy()
    bal = LossBalancer({"a": 3.0, "b": 1.0}, total_norm=2.0)
    stats = bal.backward(losses, out)
    # the two gradients have disjoint supports, so each half of p.grad is one loss's share
    assert p.grad[..., :4].norm().item() == pytest.approx(2.0 * 3 / 4, rel=1e-5)
    assert p.grad[..., 4:].norm().item() == pytest.approx(2.0 * 1 / 4, rel=1e-5)
    assert stats["grad_norm/b"] == pytest.approx(1e-3 * 2.0, rel=1e-5)  # ||1e-3 * ones(4)||
    assert stats["loss/a"] == pytest.approx(losses["a"].item())


def test_balancer_invariant_to_loss_scale():
    p1, out1, l1 = _toy()
    LossBalancer({"a": 1.0, "b": 1.0}).backward(l1, out1)
    p2, out2, l2 = _toy()
    LossBalancer({"a": 1.0, "b": 1.0}).backward({"a": 50 * l2["a"], "b": 0.01 * l2["b"]}, out2)
    torch.testing.assert_close(p1.grad, p2.grad)


def test_balancer_ema_is_bias_corrected_average():
    bal = LossBalancer({"a": 1.0}, ema_decay=0.5)
    norms = []
    for scale in (1.0, 3.0):
        p = torch.ones(1, 1, 4, requires_grad=True)
        out = p * 1.0
        stats = bal.backward({"a": scale * out.sum()}, out)
        norms.append(stats["grad_norm/a"])
    assert norms == pytest.approx([2.0, 6.0])
    assert stats["ema_norm/a"] == pytest.approx((0.5 * 2.0 + 6.0) / 1.5)


def test_balancer_plain_equals_weighted_sum():
    p, out, losses = _toy()
    LossBalancer({"a": 3.0, "b": 0.5}, balance=False).backward(losses, out)
    q, out_q, losses_q = _toy()
    (3.0 * losses_q["a"] + 0.5 * losses_q["b"]).backward()
    torch.testing.assert_close(p.grad, q.grad)


def test_balancer_rejects_bad_input():
    p, out, losses = _toy()
    with pytest.raises(ValueError, match="no weight"):
        LossBalancer({"a": 1.0}).backward(losses, out)
    unrelated = torch.ones(3, requires_grad=True).sum()
    with pytest.raises(ValueError, match="does not depend"):
        LossBalancer({"a": 1.0, "c": 1.0}).backward({"a": losses["a"], "c": unrelated}, out)


def test_balancer_does_not_touch_discriminator():
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(DiscriminatorConfig(filters=4, n_ffts=(256,)))
    p = _audio(n=2000).requires_grad_()
    out = p * 1.0
    logits, _ = disc(out)
    LossBalancer({"adv": 1.0, "l1": 1.0}).backward({"adv": hinge_g_loss(logits), "l1": l1_wave(out, 0 * out.detach())}, out)
    assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(q.grad is None for q in disc.parameters())


# ---------------------------------------------------------------- discriminator


def test_discriminator_shapes_and_gradients():
    torch.manual_seed(0)
    cfg = DiscriminatorConfig.tiny()
    disc = MultiScaleSTFTDiscriminator(cfg)
    x = _audio(b=2, n=16000).requires_grad_()
    logits, feats = disc(x)
    assert len(logits) == len(feats) == len(cfg.n_ffts)
    for n_fft, lg, fs in zip(cfg.n_ffts, logits, feats):
        f = n_fft // 2 + 1
        for _ in cfg.dilations:
            f = (f - 1) // 2 + 1  # kernel 9, padding 4, stride 2
        t = 16000 // (n_fft // 4) + 1
        assert lg.shape == (2, 1, f, t)
        assert len(fs) == len(cfg.dilations) + 2
        assert fs[-1].shape == (2, cfg.filters, f, t)
    hinge_g_loss(logits).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in disc.parameters())


def test_discriminator_items_are_independent():
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(DiscriminatorConfig(filters=4, n_ffts=(512, 128)))
    x = _audio(b=2, n=3000)
    y = x.clone()
    y[1] = torch.randn(1, 3000)
    with torch.no_grad():
        for a, b in zip(disc(x)[0], disc(y)[0]):
            torch.testing.assert_close(a[0], b[0])
            assert not torch.allclose(a[1], b[1])


def test_discriminator_rejects_stereo():
    with pytest.raises(ValueError, match="mono"):
        MultiScaleSTFTDiscriminator(DiscriminatorConfig(filters=2, n_ffts=(64,)))(torch.zeros(1, 2, 1000))
