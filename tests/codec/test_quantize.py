"""Residual vector quantizer: shapes, round trips, k-means, EMA, dead codes, gradients, dropout."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmdlib.codec.quantize import QuantizerConfig, ResidualVQ, VectorQuantizer, kmeans, nearest


def mixture(n: int, centres: torch.Tensor, sigma: float, gen: torch.Generator):
    """`n` samples `n d` of an equal-weight Gaussian mixture, and their component labels `n`."""
    labels = torch.arange(n) % centres.shape[0]
    return centres[labels] + sigma * torch.randn(n, centres.shape[1], generator=gen), labels


def as_latents(x: torch.Tensor, b: int) -> torch.Tensor:
    """`(b t) d -> b d t`."""
    return x.reshape(b, -1, x.shape[1]).transpose(1, 2).contiguous()


def perplexity(codes: torch.Tensor, v: int) -> float:
    p = torch.bincount(codes.flatten(), minlength=v).float()
    p = p / p.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


def small_rvq(**kw) -> ResidualVQ:
    return ResidualVQ(QuantizerConfig(**{"dim": 8, "n_q": 3, "codebook_size": 16, **kw}))


def test_shapes_dtype_and_round_trip():
    torch.manual_seed(0)
    rvq = small_rvq()
    x = torch.randn(2, 8, 50)
    out = rvq(x)  # training: k-means init of every stage
    assert all(bool(layer.initialised) for layer in rvq.layers)
    assert out.quantized.shape == (2, 8, 50) and out.quantized.dtype == torch.float32
    assert out.codes.shape == (2, 3, 50) and out.codes.dtype == torch.long
    assert out.streams.shape == (2, 3, 8, 50) and out.streams.dtype == torch.float32
    assert out.commit_loss.shape == () and torch.isfinite(out.commit_loss) and out.n_q == 3
    rvq.eval()
    out = rvq(x)
    codes = rvq.encode(x)
    assert torch.equal(codes, out.codes)
    assert 0 <= int(codes.min()) and int(codes.max()) < 16
    torch.testing.assert_close(rvq.decode(codes), out.quantized, atol=1e-6, rtol=0)
    # fewer codebooks: the first n stages
    out2 = rvq(x, n_q=2)
    assert out2.n_q == 2 and torch.equal(out2.codes, codes)  # codes always for all K stages
    assert torch.equal(rvq.encode(x, n_q=2), codes[:, :2])
    torch.testing.assert_close(rvq.decode(codes[:, :2]), out2.quantized, atol=1e-6, rtol=0)


def test_error_falls_strictly_with_stages():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    centres = 3 * torch.randn(32, 8, generator=gen)
    rvq = small_rvq(n_q=4)
    for _ in range(10):
        rvq(as_latents(mixture(512, centres, 0.5, gen)[0], b=8))
    rvq.eval()
    x = as_latents(mixture(1024, centres, 0.5, gen)[0], b=8)
    codes = rvq.encode(x)
    errors = [float((x - rvq.decode(codes[:, :n])).pow(2).mean()) for n in range(1, 5)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]


def test_kmeans_init_finds_separated_centres():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centres = 4 * torch.cat([torch.eye(8), -torch.eye(8)])  # 16 centres, pairwise >= 5.6 apart
    x, labels = mixture(800, centres, 0.1, gen)
    means = torch.stack([x[labels == i].mean(0) for i in range(16)])
    vq = VectorQuantizer(8, 16)
    vq(x)  # first training batch -> k-means
    assert bool(vq.initialised)
    match = torch.cdist(centres, vq.codebook).argmin(1)  # the code nearest each true centre
    assert sorted(match.tolist()) == list(range(16))     # one code per centre
    torch.testing.assert_close(vq.codebook[match], means, atol=1e-5, rtol=0)  # exactly the means
    assert float((vq.codebook[match] - centres).norm(dim=1).max()) < 0.15
    # the plain function agrees and counts the 50 points of each cluster
    torch.manual_seed(1)
    found, counts = kmeans(x, 16, iters=10)
    match = torch.cdist(centres, found).argmin(1)
    torch.testing.assert_close(found[match], means, atol=1e-5, rtol=0)
    assert counts.tolist() == [50.0] * 16


def test_ema_converges_to_cluster_means():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centres = 4 * torch.eye(4)
    x, labels = mixture(400, centres, 0.3, gen)
    cfg = QuantizerConfig(dim=4, codebook_size=4, kmeans_init=False, ema_decay=0.9, threshold_ema_dead_code=0)
    vq = VectorQuantizer(4, 4, cfg)
    with torch.no_grad():  # start off-centre, with EMA statistics consistent with that codebook
        vq.codebook.copy_(centres + 0.5)
        vq.ema_count.fill_(10.0)
        vq.ema_sum.copy_(vq.codebook * 10.0)
    means = torch.stack([x[labels == i].mean(0) for i in range(4)])
    # one step, analytically: sum and count decay towards the batch's, then Laplace smoothing
    count = 0.9 * 10 + 0.1 * 100
    expected = (0.9 * 10 * (centres + 0.5) + 0.1 * 100 * means) / count
    total, eps = 4 * count, cfg.epsilon
    expected = expected * count / ((count + eps) / (total + 4 * eps) * total)
    vq(x)
    torch.testing.assert_close(vq.codebook, expected, atol=1e-5, rtol=0)
    for _ in range(150):
        vq(x)
    torch.testing.assert_close(vq.codebook, means, atol=1e-3, rtol=0)
    torch.testing.assert_close(vq.ema_count, torch.full((4,), 100.0), atol=1e-3, rtol=0)


@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_dead_code_restart_revives_unused_codes(threshold):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centres = 4 * torch.cat([torch.eye(4), -torch.eye(4)])  # 8 clusters
    cfg = QuantizerConfig(dim=4, codebook_size=8, kmeans_init=False, ema_decay=0.9,
                          threshold_ema_dead_code=threshold)
    vq = VectorQuantizer(4, 8, cfg)
    with torch.no_grad():  # codes 0-3 sit on 4 of the clusters, codes 4-7 far away: never chosen
        vq.codebook[:4] = centres[:4]
        vq.codebook[4:] = 1000.0
        vq.ema_sum.copy_(vq.codebook * vq.ema_count.unsqueeze(1))
    x_eval, _ = mixture(800, centres, 0.1, gen)
    before = perplexity(nearest(x_eval, vq.codebook), 8)
    assert set(nearest(x_eval, vq.codebook).tolist()) == {0, 1, 2, 3}
    for _ in range(50):
        vq(mixture(400, centres, 0.1, gen)[0])
    codes = nearest(x_eval, vq.codebook)
    if threshold == 0:  # control: without restarts the far codes stay dead
        assert set(codes.tolist()) == {0, 1, 2, 3}
        assert bool((vq.ema_count[4:] < 1).all())  # decaying, never selected
    else:
        assert set(codes.tolist()) == set(range(8))
        assert bool((vq.ema_count[4:] >= threshold).all())
        assert perplexity(codes, 8) > before + 2  # from about 4 towards 8


def test_straight_through_and_streams():
    torch.manual_seed(0)
    rvq = small_rvq()
    rvq(torch.randn(2, 8, 20))  # init
    x = torch.randn(2, 8, 20, requires_grad=True)
    out = rvq(x)
    w = torch.randn_like(out.quantized)
    (grad,) = torch.autograd.grad((out.quantized * w).sum(), x, retain_graph=True)
    assert torch.equal(grad, w)  # identity Jacobian
    ws = torch.randn_like(out.streams)
    (grad,) = torch.autograd.grad((out.streams * ws).sum(), x, retain_graph=True)
    torch.testing.assert_close(grad, ws.sum(1))  # every stream is x minus a constant
    (grad,) = torch.autograd.grad(out.commit_loss, x)
    assert grad.abs().sum() > 0
    # streams[:, k] = x - sum_{j <= k} q_j (checked in eval so that the codebooks are fixed)
    rvq.eval()
    out = rvq(x)
    for k in range(3):
        torch.testing.assert_close(out.streams[:, k], x - rvq.decode(out.codes[:, : k + 1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.quantized, x - out.streams[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["residual", "input", "codeword"])
def test_the_three_stream_definitions_by_hand(kind):
    """r_k = x - (q_1 + ... + q_k), r_{k-1}, and q_k = codebook_k[code_k], computed by hand from the
    codes; each reaches x as the identity (codeword: straight through r_k, as the reference's)."""
    torch.manual_seed(0)
    rvq = small_rvq()
    rvq(torch.randn(2, 8, 20))  # init
    rvq.eval()
    x = torch.randn(2, 8, 20, requires_grad=True)
    out = rvq(x, streams=kind)
    q = [rvq.layers[k].lookup(out.codes[:, k]).transpose(1, 2) for k in range(3)]  # b d t each
    partial = [x - sum(q[: k + 1]) for k in range(3)]                              # r_1 .. r_K
    want = {"residual": partial, "input": [x] + partial[:2], "codeword": q}[kind]
    for k in range(3):
        torch.testing.assert_close(out.streams[:, k], want[k], atol=1e-5, rtol=0)
    w = torch.randn_like(out.streams)
    (grad,) = torch.autograd.grad((out.streams * w).sum(), x)
    torch.testing.assert_close(grad, w.sum(1))
    with pytest.raises(ValueError, match="streams='quantized'"):
        rvq(x, streams="quantized")


def test_eval_does_not_change_buffers():
    torch.manual_seed(0)
    rvq = small_rvq(quantizer_dropout=True)
    fresh = {k: v.clone() for k, v in rvq.state_dict().items()}
    rvq.eval()
    rvq(torch.randn(2, 8, 30))  # not even the k-means init
    assert all(torch.equal(v, fresh[k]) for k, v in rvq.state_dict().items())
    rvq.train()
    rvq(torch.randn(2, 8, 30))
    trained = {k: v.clone() for k, v in rvq.state_dict().items()}
    assert not torch.equal(trained["layers.0.codebook"], fresh["layers.0.codebook"])
    rvq.eval()
    for n_q in (None, 1, 3):
        rvq(100 * torch.randn(2, 8, 30), n_q=n_q)  # far-off data would trigger restarts in training
    rvq.encode(torch.randn(2, 8, 30))
    assert all(torch.equal(v, trained[k]) for k, v in rvq.state_dict().items())


def test_quantizer_dropout():
    def run(seed: int) -> tuple[ResidualVQ, list[int]]:
        torch.manual_seed(seed)
        rvq = small_rvq(n_q=4, quantizer_dropout=True)
        rvq(x)  # initialise everything first
        used = []
        for _ in range(20):
            counts = [layer.ema_count.clone() for layer in rvq.layers]
            out = rvq(x)
            used.append(out.n_q)
            assert out.codes.shape == (2, 4, 30) and out.streams.shape == (2, 4, 8, 30)
            torch.testing.assert_close(out.quantized, x - out.streams[:, out.n_q - 1], atol=1e-5, rtol=0)
            for k, layer in enumerate(rvq.layers):  # only the used stages take an EMA step
                assert torch.equal(layer.ema_count, counts[k]) == (k >= out.n_q)
        return rvq, used

    x = torch.randn(2, 8, 30, generator=torch.Generator().manual_seed(0))
    rvq, used = run(0)
    assert set(used) == {1, 2, 3, 4}
    assert run(0)[1] == used  # seeded through torch's global RNG
    rvq.eval()
    assert {rvq(x).n_q for _ in range(10)} == {4}
    rvq.train()
    assert rvq(x, n_q=2).n_q == 2  # an explicit n_q wins


def test_bad_input():
    rvq = small_rvq()
    with pytest.raises(ValueError, match=r"x must be \[b, 8, t\]"):
        rvq(torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match="n_q must be in"):
        rvq(torch.randn(2, 8, 10), n_q=4)
    with pytest.raises(ValueError, match="codes must be in"):
        rvq.decode(torch.full((1, 2, 3), 16))
    with pytest.raises(ValueError, match="codes must be"):
        rvq.decode(torch.zeros(1, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="ema_decay"):
        QuantizerConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="codebook_size"):
        QuantizerConfig(codebook_size=0)


# -- torch.distributed (gloo, 2 CPU processes) ------------------------------------------------------
def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(world, 8, 8, 20, generator=gen) for _ in range(5)]  # per step, per rank
    results = {}
    for name, cfg in _DIST_CONFIGS.items():
        # "kmeans": a different RNG per rank, so agreement must come from the broadcasts;
        # "ema": the same initial codebooks on every rank (as after loading a checkpoint)
        torch.manual_seed(0 if name == "ema" else rank)
        rvq = ResidualVQ(cfg)
        for step in data:
            rvq(step[rank])
        results[name] = [layer.codebook.clone() for layer in rvq.layers]
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


_DIST_CONFIGS = {
    "kmeans": QuantizerConfig(dim=8, n_q=2, codebook_size=32, quantizer_dropout=True),
    "ema": QuantizerConfig(dim=8, n_q=2, codebook_size=32, kmeans_init=False, threshold_ema_dead_code=0),
}


def test_distributed_ranks_agree(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name in _DIST_CONFIGS:  # k-means, restarts and dropout broadcast from rank 0
        for a, b in zip(r0[name], r1[name]):
            assert torch.equal(a, b)
    # without k-means and restarts, 2 ranks = 1 process on the concatenated batch
    torch.manual_seed(0)
    rvq = ResidualVQ(_DIST_CONFIGS["ema"])
    gen = torch.Generator().manual_seed(0)
    for step in [torch.randn(2, 8, 8, 20, generator=gen) for _ in range(5)]:
        rvq(torch.cat([step[0], step[1]]))
    for a, layer in zip(r0["ema"], rvq.layers):
        torch.testing.assert_close(a, layer.codebook, atol=1e-5, rtol=1e-5)
