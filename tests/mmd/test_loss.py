import dataclasses

import pytest
import torch

from mmdlib.distributed import gather_with_grad
from mmdlib.mmd.dependence import shared_factor_streams
from mmdlib.mmd.expected import mmd2_expected
from mmdlib.mmd.loss import (
    MMDConfig,
    expected_pairs,
    mmd2,
    mmd_independence,
    random_permutations,
    shuffle_streams,
    standardize,
    streams_to_samples,
)
from mmdlib.patterns import delay_align

SCALES = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0)


def brute_force_mmd2(x, y, scales, unbiased):
    """Plain float64 formula: three dense kernel matrices."""
    x, y = x.double(), y.double()

    def k(a, b):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(torch.exp(-d / (2 * s)) for s in scales)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n = x.shape[0]
    if unbiased:
        off = ~torch.eye(n, dtype=torch.bool)
        return (kxx[off].sum() + kyy[off].sum() - 2 * kxy[off].sum()) / (n * (n - 1))
    return (kxx.sum() + kyy.sum() - 2 * kxy.sum()) / (n * n)


def dependent_streams(b=4, d=2, t=64, seed=0, noise=0.3):
    """Stream 1 is a noisy function of stream 0; stream 2 is independent."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, 3, d, t, generator=g)
    s[:, 1] = torch.tanh(2 * s[:, 0]) + noise * torch.randn(b, d, t, generator=g)
    return s


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_exact_matches_brute_force(estimator):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    y = 0.5 * x + torch.randn(50, 6, generator=g, dtype=torch.float64)
    ours = mmd2(x, y, SCALES, estimator, block_size=16)
    ref = brute_force_mmd2(x, y, SCALES, estimator == "unbiased")
    assert abs(ours - ref) / abs(ref) < 1e-6


def test_sources_leave_out_coincident_pairs():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(20, 3, generator=g, dtype=torch.float64)
    sources = torch.stack([torch.arange(20), torch.randperm(20, generator=g), torch.arange(20)])  # repeat on purpose
    d = ((x[:, None] - y[None]) ** 2).sum(-1)
    kxy = sum(torch.exp(-d / (2 * s)) for s in SCALES)
    keep = torch.ones(20, 20, dtype=torch.bool)
    keep[sources, torch.arange(20).expand(3, 20)] = False
    expected = brute_force_mmd2(x, y, SCALES, True) + 2 * (kxy[~torch.eye(20, dtype=torch.bool)].sum() / 380) \
        - 2 * kxy[keep].sum() / keep.sum()
    assert torch.allclose(mmd2(x, y, SCALES, "unbiased", block_size=7, sources=sources), expected, rtol=1e-9)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_blocked_equals_unblocked(estimator):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 8, generator=g)
    y = torch.randn(64, 8, generator=g)
    sources = torch.stack([torch.randperm(64, generator=g) for _ in range(3)])
    values = [mmd2(x, y, SCALES, estimator, block_size=b, sources=sources) for b in (7, 64, 1000)]
    for v in values[1:]:
        assert torch.allclose(v, values[0], rtol=1e-5, atol=1e-7)


def test_batched_leading_dims_match_loop():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(3, 32, 4, generator=g), torch.randn(3, 32, 4, generator=g)
    batched = mmd2(x, y, SCALES, block_size=10)
    assert torch.allclose(batched, torch.stack([mmd2(x[i], y[i], SCALES) for i in range(3)]), rtol=1e-5, atol=1e-6)


def test_gradcheck_blocked_backward():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(24, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(24, 3, generator=g, dtype=torch.float64, requires_grad=True)
    sources = torch.stack([torch.randperm(24, generator=g) for _ in range(2)])
    for est in ("unbiased", "biased"):
        assert torch.autograd.gradcheck(lambda a, b, est=est: mmd2(a, b, (0.5, 2.0), est, 5, sources=sources), (x, y))


def test_independent_near_zero_dependent_large():
    cfg = MMDConfig(align="none")
    indep = torch.stack([mmd_independence(torch.randn(4, 3, 2, 64, generator=torch.Generator().manual_seed(s)), cfg, seed=s)
                         for s in range(10)])
    dep = torch.stack([mmd_independence(dependent_streams(seed=s), cfg, seed=s) for s in range(10)])
    assert abs(indep.mean()) < 3 * indep.std() / 10**0.5 + 1e-4  # mean-zero estimator under H0
    assert dep.min() > 10 * indep.abs().max()


def test_gradients_reach_encoder():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(5, 3 * 2)  # frame features -> 3 streams of dim 2
    frames = torch.randn(4, 40, 5)
    streams = encoder(frames).reshape(4, 40, 3, 2).permute(0, 2, 3, 1)  # [b, k, d, t]
    loss = mmd_independence(streams, MMDConfig(), seed=0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(encoder.weight.grad).all() and encoder.weight.grad.abs().sum() > 0


def test_gradient_descent_lowers_the_loss():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(4, 4)  # 2 streams of dim 2, initially mixing the same inputs
    frames = torch.randn(2, 128, 4)
    opt = torch.optim.Adam(encoder.parameters(), lr=0.05)
    cfg = MMDConfig(align="none", scales=(1.0, 5.0))
    losses = []
    for step in range(30):
        streams = encoder(frames).reshape(2, 128, 2, 2).permute(0, 2, 3, 1)
        loss = mmd_independence(streams, cfg, seed=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_constant_stream_gives_finite_value_and_zero_grad():
    s = torch.randn(2, 3, 2, 20)
    s[:, 1] = 3.0
    s.requires_grad_(True)
    loss = mmd_independence(s, MMDConfig(align="none"), seed=0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert s.grad[:, 1].abs().max() == 0


def test_bad_input_raises():
    bad = torch.randn(2, 2, 3, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mmd_independence(bad, seed=0)
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 4\)"):
        mmd_independence(torch.randn(1, 2, 3, 4), seed=0)  # delay leaves 3 samples
    with pytest.raises(ValueError, match="groups"):
        mmd_independence(torch.randn(2, 3, 2, 8), MMDConfig(groups=[[0, 1]]), seed=0)
    with pytest.raises(ValueError, match="estimator"):
        MMDConfig(estimator="dense")


def test_delay_samples_match_patterns():
    s = torch.randn(2, 4, 3, 10)
    samples = streams_to_samples(s, "delay")
    assert torch.equal(samples, delay_align(s).permute(0, 3, 1, 2).reshape(-1, 4, 3))
    assert streams_to_samples(s, "none").shape == (20, 4, 3)


def lagged_streams(lag, seed=0):
    """Stream 0 at frame t depends on stream 1 at frame t - lag.

    The delay pattern predicts (z_0[s], z_1[s-1]) in one step, so lag 1 is the dependence it
    cannot model and the delay-aligned MMD must see."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(4, 1, 2, 80, generator=g)
    z0 = torch.randn(4, 1, 2, 80, generator=g) * 0.3
    z0[..., lag:] += torch.tanh(2 * z1[..., : 80 - lag])
    return torch.cat([z0, z1], dim=1)


def test_delay_alignment_finds_lagged_dependence():
    delay, none = MMDConfig(align="delay"), MMDConfig(align="none")
    lag1 = lagged_streams(1)
    lag0 = lagged_streams(0)
    assert mmd_independence(lag1, delay, seed=0) > 10 * abs(mmd_independence(lag1, none, seed=0))
    assert mmd_independence(lag0, none, seed=0) > 10 * abs(mmd_independence(lag0, delay, seed=0))


def test_groups_ignore_within_group_dependence():
    s = torch.randn(4, 4, 2, 64, generator=torch.Generator().manual_seed(5))
    s[:, 1] = torch.tanh(2 * s[:, 0]) + 0.3 * s[:, 1]  # dependence inside group [0, 1] only
    within = mmd_independence(s, MMDConfig(align="none", groups=[[0, 1], [2, 3]]), seed=0)
    alone = mmd_independence(s, MMDConfig(align="none"), seed=0)
    assert alone > 10 * abs(within)


def test_shuffle_keeps_group_rows_together():
    samples = torch.arange(10.0)[:, None, None].expand(10, 4, 1).clone()  # each row: its index
    out = shuffle_streams(samples, [[0, 2], [1, 3]], torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], out[:, 2]) and torch.equal(out[:, 1], out[:, 3])
    assert torch.equal(out[:, 0, 0].sort().values, torch.arange(10.0))
    assert not torch.equal(out[:, 0], out[:, 1])


def test_standardize_is_scale_invariant():
    s = torch.randn(2, 2, 3, 30)
    a = mmd_independence(s, MMDConfig(align="none"), seed=1)
    b = mmd_independence(s * torch.tensor([10.0, 0.1])[None, :, None, None] + 4, MMDConfig(align="none"), seed=1)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(standardize(torch.randn(50, 2, 3)).std(0, unbiased=False), torch.ones(2, 3), atol=1e-3)


def test_rff_close_to_exact_small():
    s = dependent_streams(b=8, t=256, seed=6)  # N = 2048
    exact = mmd_independence(s, MMDConfig(align="none"), seed=0)
    rff = mmd_independence(s, MMDConfig(align="none", estimator="rff", n_features=4096), seed=0)
    assert abs(rff - exact) < 0.15 * exact


@pytest.mark.slow
def test_rff_within_10_percent_at_16384():
    s = dependent_streams(b=16, t=1024, seed=7)  # N = 16384
    exact = mmd_independence(s, MMDConfig(align="none", block_size=512), seed=0)
    rff = mmd_independence(s, MMDConfig(align="none", estimator="rff", n_features=4096), seed=0)
    assert abs(rff - exact) < 0.1 * exact


def test_rff_gradients_finite():
    s = dependent_streams(seed=8).requires_grad_(True)
    loss = mmd_independence(s, MMDConfig(estimator="rff", n_features=256), seed=0)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_gather_with_grad_identity_without_distributed():
    s = torch.randn(2, 3, 4, 5)
    assert gather_with_grad(s) is s


def test_gather_with_grad_world_of_one(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        s = torch.randn(2, 3, 4, 5, requires_grad=True)
        out = gather_with_grad(s)
        out.sum().backward()
        assert torch.equal(out, s) and torch.equal(s.grad, torch.ones_like(s))
    finally:
        dist.destroy_process_group()


# -- 2 gloo processes: the pooled loss and each rank's gradient ----------------------------------
def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    s = _two_rank_streams()[rank].clone().requires_grad_(True)
    loss = mmd_independence(gather_with_grad(s), MMDConfig(align="delay", block_size=16), seed=0)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": s.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _two_rank_streams() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 2, 6, generator=g)  # rank b k d t
    x[:, :, 1] += 0.8 * x[:, :, 0]  # dependent streams: a loss worth differentiating
    return x


def test_gather_with_grad_two_ranks_equals_one_process_on_the_pooled_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    pooled = torch.cat(list(_two_rank_streams())).requires_grad_(True)
    loss = mmd_independence(pooled, MMDConfig(align="delay", block_size=16), seed=0)
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"], loss.detach())  # shuffles span both ranks' samples
        torch.testing.assert_close(got["grad"], pooled.grad[3 * rank: 3 * (rank + 1)])  # its own slot


# -- the shuffle-free estimator ----------------------------------------------------------------
def enumerate_shuffled(parts, scales):
    """The mmd_independence estimator (cross term over E|S^c|) for every per-group shuffle."""
    import itertools

    n, g = parts[0].shape[0], len(parts)
    perms = list(itertools.permutations(range(n)))
    # a common relabelling of the columns leaves the estimator unchanged: fix group 0
    sources = torch.tensor([[list(range(n))] + list(c) for c in itertools.product(perms, repeat=g - 1)])
    x = torch.cat(parts, -1).expand(len(sources), n, -1)
    y = torch.cat([p[sources[:, i]] for i, p in enumerate(parts)], -1)
    return mmd2(x, y, scales, "unbiased", block_size=64, sources=sources, expected_pairs=expected_pairs(n, g))


@pytest.mark.parametrize("dims,n", [((2, 2), 5), ((1, 3), 6), ((2, 1, 2), 5)])
def test_expected_equals_the_mean_over_all_shuffles(dims, n):
    g = torch.Generator().manual_seed(10)
    parts = [torch.randn(n, d, generator=g, dtype=torch.float64) for d in dims]
    parts[1] = parts[1] + parts[0][:, :1]  # dependent groups: a nonzero MMD
    every = enumerate_shuffled(parts, (0.5, 2.0))
    expected = mmd2_expected(parts, (0.5, 2.0), block_size=2)
    assert torch.allclose(expected, every.mean(), rtol=1e-12, atol=1e-15)
    assert every.std() > 100 * abs(expected - every.mean())  # the shuffles really differ


def test_expected_equals_mean_of_many_shuffles_through_mmd_independence():
    s = dependent_streams(b=2, t=20, seed=11)  # N = 2 * 18 delay-aligned samples, groups of 2 + 1
    cfg = MMDConfig(groups=[[0, 2], [1]], normalize_distance=True, scales=(0.1, 1.0))
    shuffled = torch.stack([mmd_independence(s, cfg, seed=k) for k in range(400)])
    expected = mmd_independence(s, dataclasses.replace(cfg, estimator="expected"), seed=123)
    assert abs(shuffled.mean() - expected) < 4 * shuffled.std() / 400**0.5
    assert shuffled.std() > 0.05 * abs(expected)


def test_expected_zero_mean_under_independence_and_large_under_dependence():
    cfg = MMDConfig(align="none", estimator="expected")
    indep = torch.stack([mmd_independence(torch.randn(4, 3, 2, 32, generator=torch.Generator().manual_seed(s)), cfg)
                         for s in range(20)])
    dep = torch.stack([mmd_independence(dependent_streams(t=32, seed=s), cfg) for s in range(5)])
    assert abs(indep.mean()) < 3 * indep.std() / 20**0.5
    assert dep.min() > 10 * indep.abs().max()


def test_expected_has_less_variance_than_shuffled():
    """Rao-Blackwell: averaging out the shuffle can only lower the variance over data draws."""
    draws = [dependent_streams(b=2, t=32, seed=s, noise=1.0) for s in range(30)]
    cfg = MMDConfig(align="none")
    shuffled = torch.stack([mmd_independence(s, cfg, seed=i) for i, s in enumerate(draws)])
    expected = torch.stack([mmd_independence(s, dataclasses.replace(cfg, estimator="expected")) for s in draws])
    assert expected.std() < shuffled.std()


def test_expected_blocked_gradcheck():
    g = torch.Generator().manual_seed(12)
    parts = [torch.randn(13, d, generator=g, dtype=torch.float64, requires_grad=True) for d in (2, 1, 3)]
    assert torch.autograd.gradcheck(lambda *p: mmd2_expected(list(p), (0.5, 3.0), block_size=4), parts)


def test_expected_blocked_equals_unblocked_with_gradients():
    g = torch.Generator().manual_seed(13)
    base = [torch.randn(70, 4, generator=g) for _ in range(3)]
    values, grads = [], []
    for block in (7, 70, 1000):
        parts = [p.clone().requires_grad_(True) for p in base]
        v = mmd2_expected(parts, SCALES, block_size=block)
        v.backward()
        values.append(v)
        grads.append(torch.cat([p.grad for p in parts], 1))
    for v, gr in zip(values[1:], grads[1:]):
        assert torch.allclose(v, values[0], rtol=1e-5, atol=1e-7)
        assert torch.allclose(gr, grads[0], rtol=1e-4, atol=1e-8)


def test_expected_gradients_reach_encoder_and_seed_is_ignored():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(5, 3 * 2)
    streams = encoder(torch.randn(4, 40, 5)).reshape(4, 40, 3, 2).permute(0, 2, 3, 1)
    cfg = MMDConfig(estimator="expected", block_size=37)
    loss = mmd_independence(streams, cfg, seed=0)
    loss.backward()
    assert torch.equal(loss, mmd_independence(streams, cfg, seed=1))
    assert torch.isfinite(encoder.weight.grad).all() and encoder.weight.grad.abs().sum() > 0


def test_expected_not_a_two_sample_estimator():
    with pytest.raises(ValueError, match="mmd2_expected"):
        mmd2(torch.randn(8, 2), torch.randn(8, 2), estimator="expected")


# -- precision and validation ------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["unbiased", "expected", "rff"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_match_float32(estimator, dtype):
    s = dependent_streams(t=32, seed=14)
    cfg = MMDConfig(align="none", estimator=estimator, n_features=256)
    low = s.to(dtype).requires_grad_(True)
    value = mmd_independence(low, cfg, seed=0)
    value.backward()
    reference = mmd_independence(s.to(dtype).float(), cfg, seed=0)  # the same (rounded) numbers in float32
    assert value.dtype == torch.float32 and torch.allclose(value, reference, rtol=1e-5)
    assert abs(value - mmd_independence(s, cfg, seed=0)) < 0.02 * value
    assert low.grad.dtype == dtype and torch.isfinite(low.grad).all() and low.grad.abs().sum() > 0


@pytest.mark.parametrize("estimator", ["unbiased", "expected"])
def test_huge_inputs_give_the_rescaled_value(estimator):
    s = dependent_streams(t=32, seed=15)
    cfg = MMDConfig(align="none", estimator=estimator)
    for scale, dtype in ((1e20, torch.float32), (1e200, torch.float64)):
        big = (s.to(dtype) * scale).requires_grad_(True)
        value = mmd_independence(big, cfg, seed=0)
        value.backward()
        assert torch.allclose(value.double(), mmd_independence(s.to(dtype), cfg, seed=0).double(), rtol=1e-3)
        assert torch.isfinite(big.grad).all() and big.grad.abs().sum() > 0


def test_invalid_scales_eps_and_dtypes_raise():
    for scales in ((1.0, float("inf")), (float("nan"),), (0.0,), ()):
        with pytest.raises(ValueError, match="scales"):
            MMDConfig(scales=scales)
    with pytest.raises(ValueError, match="scales"):
        mmd2(torch.randn(8, 2), torch.randn(8, 2), scales=(float("inf"),))
    for eps in (0.0, -1e-5, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            MMDConfig(eps=eps)
    with pytest.raises(ValueError, match="eps"):
        standardize(torch.randn(10, 2, 3), eps=0.0)
    with pytest.raises(ValueError, match="streams.*floating"):
        mmd_independence(torch.randint(0, 5, (2, 3, 2, 8)), seed=0)
    with pytest.raises(ValueError, match="floating"):
        mmd2(torch.randint(0, 5, (8, 2)), torch.randint(0, 5, (8, 2)))
    with pytest.raises(ValueError, match="standardize"):
        mmd_independence(torch.full((2, 2, 1, 8), 1e30).normal_(std=1e30), MMDConfig(standardize=False), seed=0)


def test_expected_pairs_control_variate_stays_near_the_realised_count():
    """Dividing by E(N² - |S|) alone moves the value by up to 0.9 shuffle SDs here (measured); the
    control variate keeps it within a small fraction of the realised-count estimator's shuffle noise."""
    s = dependent_streams(t=32, seed=16)  # N = 4 * 30 delay-aligned samples, 3 groups
    cfg = MMDConfig()
    x = streams_to_samples(standardize(s.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), "delay")
    n = x.shape[0]
    values, realised = [], []
    for seed in range(20):
        perms = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(100 * seed + g)) for g in range(3)])
        y = torch.stack([x[perms[g], g] for g in range(3)], 1)
        values.append(mmd2(x.flatten(1), y.flatten(1), cfg.scales, sources=perms, expected_pairs=expected_pairs(n, 3)))
        realised.append(mmd2(x.flatten(1), y.flatten(1), cfg.scales, sources=perms))
    values, realised = torch.stack(values), torch.stack(realised)
    assert (values - realised).abs().max() < 0.02 * realised.std()


def test_gradcheck_with_expected_pairs():
    g = torch.Generator().manual_seed(17)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    sources = torch.stack([torch.randperm(12, generator=g) for _ in range(3)])
    assert torch.autograd.gradcheck(
        lambda a, b: mmd2(a, b, (0.5, 2.0), "unbiased", 5, sources=sources, expected_pairs=expected_pairs(12, 3)), (x, y))



@pytest.mark.parametrize("estimator", ["unbiased", "expected", "rff"])
@pytest.mark.parametrize("normalize", [False, True])
def test_bf16_autocast_keeps_the_mmd_in_float32(estimator, normalize):
    """Under autocast (`amp=true`) the distance matmuls must not run in bf16: squared distances of a
    few hundred lose whole units there, and the loss and its gradient move far more than 1e-3."""
    s = dependent_streams(d=32, t=64, seed=16)  # K·D = 96: standardised squared distances near 190
    cfg = MMDConfig(align="none", estimator=estimator, n_features=256, normalize_distance=normalize)
    ref_in = s.clone().requires_grad_(True)
    reference = mmd_independence(ref_in, cfg, seed=0)
    reference.backward()
    x = s.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = mmd_independence(x, cfg, seed=0)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.allclose(value, reference, rtol=1e-3, atol=0), (value.item(), reference.item())
    assert torch.allclose(x.grad, ref_in.grad, rtol=1e-3, atol=1e-3 * ref_in.grad.abs().max().item())


# -- shuffle="clip": a criterion conditional on the clip -------------------------------------------
def test_clip_shuffle_ignores_a_per_clip_factor_and_recovers_a_per_frame_one():
    """Pooled: both factors score (the per-clip one is dependence the past explains); within clips:
    the per-clip factor scores as independent streams do (mean 0), the per-frame one still scores."""
    def scores(kind, shuffle):
        cfg = MMDConfig(align="none", normalize_distance=True, shuffle=shuffle)
        return torch.tensor([float(mmd_independence(shared_factor_streams(kind, s), cfg, seed=s)) for s in range(12)])

    null_sd = float(scores("none", "clip").std())
    per_clip, per_frame = scores("clip", "clip"), scores("frame", "clip")
    assert abs(float(per_clip.mean())) < 3 * null_sd / 12**0.5 + 1e-4
    assert float(per_frame.mean()) > 30 * null_sd and float(scores("clip", "pooled").mean()) > 20 * null_sd


def test_clip_shuffle_permutes_within_clips_and_has_an_exact_gradient():
    perms = random_permutations(12, 3, torch.Generator().manual_seed(0), block=4)
    assert torch.equal(perms // 4, torch.arange(12).expand(3, 12) // 4)  # every sample stays in its clip
    assert all(torch.equal(p.sort().values, torch.arange(12)) for p in perms)
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mmd2(a, b, (0.5, 2.0), "unbiased", 5, clip=4), (x, y))
    with pytest.raises(ValueError, match="b >= 2"):
        mmd_independence(torch.randn(1, 3, 2, 20), MMDConfig(shuffle="clip"), seed=0)
    with pytest.raises(ValueError, match="estimator='unbiased'"):
        MMDConfig(shuffle="clip", estimator="rff")
