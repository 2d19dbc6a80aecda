import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mmdlib.eval.fad import (
    EMBEDDERS,
    CrepeEmbedder,
    LogMelEmbedder,
    audio_fad,
    embed_audio,
    embedding_stats,
    fad,
    fad_interval,
    frechet_distance,
    get_embedder,
    register,
)


def _spd(rng, f, rank=None):
    a = rng.standard_normal((f, rank or f))
    return a @ a.T / (rank or f) + (0.0 if rank else 0.1) * np.eye(f)


def _music(seed, b=3, seconds=1.0, sr=16000, noise=0.0):
    """A few harmonic tones with an envelope, plus optional white noise: `b 1 n`."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    f0 = 110 * 2 ** (torch.randint(0, 24, (b, 1), generator=g) / 12)
    x = sum(torch.sin(2 * math.pi * h * f0 * t) / h for h in range(1, 6))
    x = 0.3 * x * torch.exp(-3 * (t % 0.5))
    x = x + noise * torch.randn(x.shape, generator=g)
    return x[:, None].float()


# --- Fréchet distance: closed forms -----------------------------------------------------------

def test_identical_gaussians_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(8), _spd(rng, 8)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)


def test_same_cov_is_mean_distance():
    rng = np.random.default_rng(1)
    mu1, mu2, s = rng.standard_normal(6), rng.standard_normal(6), _spd(rng, 6)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-10)


def test_diagonal_closed_form():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)


def test_random_spd_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    s1, s2 = _spd(rng, 12), _spd(rng, 12)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    d12 = frechet_distance(mu1, s1, mu2, s2)
    assert d12 == pytest.approx(want, rel=1e-9)
    assert d12 == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-12)
    # torch float32 inputs are promoted to float64 too
    d_t = frechet_distance(*(torch.from_numpy(x).float() for x in (mu1, s1, mu2, s2)))
    assert d_t == pytest.approx(want, rel=1e-5)


def test_rank_deficient_covariances_stay_finite():
    rng = np.random.default_rng(4)
    s1, s2 = _spd(rng, 16, rank=3), _spd(rng, 16, rank=5)  # singular, like few embeddings
    d = frechet_distance(np.zeros(16), s1, np.zeros(16), s2)
    assert np.isfinite(d) and d >= 0
    # 1-d check of the clamp: sqrt(a) - sqrt(0)
    assert frechet_distance([0.0], [[4.0]], [0.0], [[0.0]]) == pytest.approx(4.0)


def test_stats_and_fad_from_samples():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20000, 4))
    mu, s = embedding_stats(x)
    assert mu.dtype == np.float64 and s.shape == (4, 4)
    np.testing.assert_allclose(s, np.cov(x, rowvar=False), rtol=1e-10)
    y = x + np.array([1.0, 0, 0, 0])  # shift by a known vector: FAD = 1 exactly
    assert fad(x, y) == pytest.approx(1.0, rel=1e-9)
    assert fad(torch.from_numpy(x), torch.from_numpy(x)) == pytest.approx(0.0, abs=1e-9)


def test_fad_interval_resamples_whole_clips_and_covers_the_truth():
    """64 clips of 50 frames from N(0, I) against a large reference N(δ, I): FAD → |δ|² = 1. The
    interval holds the point estimate, narrows with more clips, and a wrong clip count is refused."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50000, 4)) + np.array([1.0, 0, 0, 0])
    value, lo, hi = fad_interval(rng.standard_normal((64 * 50, 4)), 64, ref, n_boot=200, seed=1)
    assert lo <= value <= hi and lo < 1.0 < hi + 0.05 and abs(value - 1.0) < 0.15
    _, lo4, hi4 = fad_interval(rng.standard_normal((256 * 50, 4)), 256, ref, n_boot=200, seed=1)
    assert hi4 - lo4 < hi - lo
    # clips that are each constant (frames of a clip alike): the interval over clips is much wider
    # than one that wrongly treated the 3,200 frames as independent would be
    clips = np.repeat(rng.standard_normal((64, 1, 4)), 50, axis=1).reshape(-1, 4)
    _, clo, chi = fad_interval(clips, 64, ref, n_boot=200, seed=1)
    assert chi - clo > 0.4
    assert fad_interval(clips, 64, ref, n_boot=20, seed=3) == fad_interval(clips, 64, ref, n_boot=20, seed=3)
    with pytest.raises(ValueError, match="equal clips"):
        fad_interval(rng.standard_normal((101, 4)), 2, ref)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="at least 2"):
        embedding_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="same f"):
        fad(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        embedding_stats(np.full((3, 2), np.nan))


# --- registry and embedders -------------------------------------------------------------------

def test_registry():
    assert {"logmel", "crepe", "vggish", "clap"} <= set(EMBEDDERS)
    assert isinstance(get_embedder("logmel"), LogMelEmbedder)
    with pytest.raises(ValueError, match="available"):
        get_embedder("nope")
    with pytest.raises(ValueError, match="already registered"):
        register("logmel")(object)


def test_logmel_identical_sets_zero_and_shapes():
    emb = get_embedder("logmel")
    wav = _music(0)
    e = embed_audio(emb, wav, 16000)
    assert e.shape == (3 * (16000 // 320 + 1), 128)
    assert fad(e, embed_audio(emb, wav.clone(), 16000)) == pytest.approx(0.0, abs=1e-6)
    # resampling path: the same audio at 32 kHz embeds (almost) the same
    wav32 = torch.nn.functional.interpolate(wav, scale_factor=2, mode="linear")
    assert embed_audio(emb, wav32, 32000).shape == e.shape


def test_logmel_fad_grows_with_noise():
    emb = get_embedder("logmel")
    ref = _music(1, b=4)
    fads = [audio_fad(emb, ref, _music(1, b=4, noise=lvl), 16000) for lvl in (0.0, 0.003, 0.03, 0.3)]
    assert fads[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in itertools.pairwise(fads)), fads


def test_embed_audio_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\[b, 1, n\]"):
        embed_audio(get_embedder("logmel"), torch.zeros(2, 16000), 16000)


def test_crepe_shapes_determinism():
    pytest.importorskip("torchcrepe")
    emb = get_embedder("crepe")  # tiny, conv6, hop 320
    assert isinstance(emb, CrepeEmbedder) and emb.sample_rate == 16000
    wav = _music(2, b=2, seconds=0.5)
    e1 = emb.embed(wav)
    frames = (8000 - 1024) // 320 + 1
    assert e1.shape == (2 * frames, 256) and torch.isfinite(e1).all()
    torch.testing.assert_close(emb.embed(wav), e1, rtol=0, atol=0)
    # gain-invariant (CREPE normalises each frame), and different audio embeds differently
    torch.testing.assert_close(emb.embed(3 * wav), e1, rtol=1e-4, atol=1e-4)
    assert (emb.embed(_music(3, b=2, seconds=0.5)) - e1).abs().max() > 1e-2
    assert get_embedder("crepe", layer="conv5").embed(wav).shape == (2 * frames, 256)


def test_torchscript_embedders_need_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="FAD embedder 'vggish' needs a checkpoint path: pass checkpoint="):
        get_embedder("vggish")
    with pytest.raises(ValueError, match="'clap' needs a checkpoint path"):
        get_embedder("clap")
    with pytest.raises(ValueError, match="not a file"):
        get_embedder("vggish", checkpoint=str(tmp_path / "missing.pt"))
    sd = tmp_path / "state_dict.pt"
    torch.save({"w": torch.zeros(3)}, sd)
    with pytest.raises(ValueError, match="not a TorchScript file"):
        get_embedder("vggish", checkpoint=str(sd))


class _ToyNet(torch.nn.Module):
    """[b, n] -> [b, 2] (mean, rms): a stand-in TorchScript embedder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(dim=1), x.pow(2).mean(dim=1).sqrt()], dim=1)


def test_torchscript_contract(tmp_path):
    path = tmp_path / "toy.ts.pt"
    torch.jit.script(_ToyNet()).save(str(path))
    emb = get_embedder("vggish", checkpoint=str(path))
    assert emb.sample_rate == 16000 and emb.segment == 15360
    e = embed_audio(emb, torch.ones(2, 1, 16000 * 2) * 0.5, 16000)  # 2 clips x 2 segments of 0.96 s
    torch.testing.assert_close(e, torch.full((4, 2), 0.5))
    whole = get_embedder("clap", checkpoint=str(path), segment_seconds=None)
    assert embed_audio(whole, torch.ones(3, 1, 4800), 48000).shape == (3, 2)
