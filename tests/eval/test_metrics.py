import math

import pytest
import torch
import torchaudio.functional as AF

from mmdlib.data.synth import synth_clip
from mmdlib.eval.anchors import opus_available, opus_roundtrip
from mmdlib.eval.metrics import (
    bitrate,
    chroma_similarity,
    codebook_usage,
    envelope_noise,
    fine_structure_r,
    mel_distance,
    si_snr,
    visqol,
)

SR = 16000


def _ref(b=3, n=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, n, generator=g)


def _noise_orthogonal_to(ref, seed):
    """Zero-mean noise with <noise, ref - mean(ref)> = 0 per item: SI-SNR is then exactly the SNR."""
    g = torch.Generator().manual_seed(seed)
    r = ref.reshape(ref.shape[0], -1).double()
    r = r - r.mean(dim=1, keepdim=True)
    e = torch.randn(r.shape, generator=g, dtype=torch.float64)
    e = e - e.mean(dim=1, keepdim=True)
    e = e - (e * r).sum(1, keepdim=True) / (r * r).sum(1, keepdim=True) * r
    return e.reshape(ref.shape)


# ---------------------------------------------------------------- SI-SNR


def test_si_snr_scaled_copy_is_huge():
    ref = _ref()
    assert si_snr(0.3 * ref, ref).shape == (3,)
    assert (si_snr(0.3 * ref, ref) > 60).all()


def test_si_snr_known_noise_ratio():
    ref = _ref().double()
    noise = _noise_orthogonal_to(ref, seed=1)
    for target_db in (-5.0, 0.0, 10.0, 30.0):
        # scale the noise so that ||ref_centered||^2 / ||noise||^2 = 10^(target/10)
        p_ref = (ref - ref.mean(-1, keepdim=True)).pow(2).sum(dim=(1, 2), keepdim=True)
        p_noise = noise.pow(2).sum(dim=(1, 2), keepdim=True)
        scaled = noise * torch.sqrt(p_ref / p_noise / 10 ** (target_db / 10))
        out = si_snr(ref + scaled, ref)
        torch.testing.assert_close(out, torch.full((3,), target_db, dtype=torch.float32), atol=0.01, rtol=0)


def test_si_snr_invariant_to_scale_and_offset_of_est():
    ref = _ref()
    g = torch.Generator().manual_seed(2)
    est = ref + 0.5 * torch.randn(ref.shape, generator=g)
    base = si_snr(est, ref)
    torch.testing.assert_close(si_snr(7.0 * est, ref), base, atol=1e-4, rtol=0)
    torch.testing.assert_close(si_snr(0.01 * est + 3.0, ref), base, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="same shape"):
        si_snr(est, ref[:, :, :-1])


# ---------------------------------------------------------------- mel distance


def test_mel_distance_zero_then_increasing_with_noise():
    ref = _ref()
    assert torch.equal(mel_distance(ref, ref, SR), torch.zeros(3))
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(ref.shape, generator=g)
    d = torch.stack([mel_distance(ref + s * noise, ref, SR) for s in (0.01, 0.1, 1.0)])  # s b
    assert (d[0] > 0).all() and (d[1] > d[0]).all() and (d[2] > d[1]).all()


def test_mel_distance_float64():
    ref = _ref().double()
    assert mel_distance(0.5 * ref, ref, SR).dtype == torch.float64


def test_mel_distance_is_per_item():
    ref = _ref()
    est = ref + 0.1 * _ref(seed=4)
    full = mel_distance(est, ref, SR)
    single = mel_distance(est[1:2], ref[1:2], SR)
    torch.testing.assert_close(full[1:2], single)


# ---------------------------------------------------------------- codebooks, bitrate


def test_codebook_usage_uniform_constant_and_two_codes():
    size = 16
    uniform = torch.arange(size).repeat(4).reshape(2, 1, 2 * size).expand(2, 3, 2 * size)  # each code 4x
    out = codebook_usage(uniform, size)
    torch.testing.assert_close(out["perplexity"], torch.full((3,), float(size)))
    assert out["used"].tolist() == [size] * 3
    torch.testing.assert_close(out["ratio"], torch.ones(3))

    const = torch.full((2, 3, 10), 5)
    out = codebook_usage(const, size)
    torch.testing.assert_close(out["perplexity"], torch.ones(3))
    assert out["used"].tolist() == [1, 1, 1]

    mixed = torch.stack([torch.tensor([0, 1] * 5), torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 0])])[None]  # 1 2 10
    out = codebook_usage(mixed, size)
    torch.testing.assert_close(out["perplexity"], torch.tensor([2.0, 1.0]))


def test_codebook_usage_rejects_out_of_range():
    with pytest.raises(ValueError, match="range"):
        codebook_usage(torch.tensor([[[0, 16]]]), 16)


def test_bitrate():
    assert bitrate(4, 2048, 50) == 2200.0
    assert bitrate(8, 1024, 75) == pytest.approx(6000.0)
    assert bitrate(1, 2, 1.5) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        bitrate(0, 2048, 50)
    assert math.isfinite(bitrate(4, 2048, 50))


# ---------------------------------------------------------------- ViSQOL (audio mode) and the Opus anchor


def _music(seconds=2.0, seed=3):
    return synth_clip(seed, seconds)[None]  # 1 1 n, 16 kHz


@pytest.mark.slow  # the first call compiles visqol's numba kernels (~20 s once, then cached on disk)
def test_visqol_ceiling_and_monotone_in_noise():
    x = _music()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    noise *= x.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt()
    levels = [None, 40.0, 25.0, 10.0, 0.0]  # SNR in dB
    batch = torch.cat([x if snr is None else x + noise * 10 ** (-snr / 20) for snr in levels])
    scores = visqol(batch, x.expand_as(batch), SR)
    assert scores.shape == (len(levels),)
    assert scores[0] > 4.6  # a clip against itself: the metric's ceiling (4.73)
    assert all(a > b for a, b in zip(scores[:-1], scores[1:])), scores  # falls with every step of noise
    assert scores[-1] < 3.0


def test_visqol_refuses_bad_input():
    x = _music()
    with pytest.raises(ValueError, match="mono"):
        visqol(x[:, 0], x[:, 0], SR)  # [b, n]
    with pytest.raises(ValueError, match="mono"):
        visqol(x.expand(1, 2, -1), x.expand(1, 2, -1), SR)  # stereo
    with pytest.raises(ValueError, match="same|mono"):
        visqol(x[..., :-10], x, SR)
    with pytest.raises(ValueError, match="sample_rate"):
        visqol(x, x, 4000)
    with pytest.raises(ValueError, match="sample_rate"):
        visqol(x, x, 16000.0)
    with pytest.raises(ValueError, match="too short"):
        visqol(x[..., :8000], x[..., :8000], SR)
    with pytest.raises(ValueError, match="finite"):
        visqol(x * float("nan"), x, SR)


@pytest.mark.skipif(not opus_available(), reason="opus-tools (opusenc/opusdec) not installed")
def test_opus_roundtrip_is_aligned_and_better_at_higher_bitrate():
    x = _music(seconds=1.5)
    low, high = opus_roundtrip(x, SR, 6), opus_roundtrip(x, SR, 24)
    assert low.shape == high.shape == x.shape
    # time-aligned: the decoded signal correlates best with the original at lag 0
    lags = range(-40, 41)
    corr = [float((torch.roll(high, k, -1) * x).sum()) for k in lags]
    assert list(lags)[max(range(len(corr)), key=corr.__getitem__)] == 0
    assert mel_distance(high, x, SR) < mel_distance(low, x, SR)
    assert si_snr(high, x) > 5
    with pytest.raises(ValueError, match="kbps"):
        opus_roundtrip(x, SR, 3)


# ---------------------------------------------------------------- metrics that hear notes
# Validated on the degenerate outputs that fooled ViSQOL and the mel distance: the same music with no
# notes (envelope-shaped noise), the same music transposed, silence, and added noise.


def _clips(n=3, seconds=2.0):
    return torch.cat([_music(seed=s, seconds=seconds) for s in range(n)])  # n 1 samples


def test_note_metrics_self_is_one_and_silence_zero():
    x = _clips()
    torch.testing.assert_close(fine_structure_r(x, x, SR), torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(chroma_similarity(x, x, SR), torch.ones(3), atol=1e-6, rtol=0)
    assert torch.equal(fine_structure_r(torch.zeros_like(x), x, SR), torch.zeros(3))
    assert torch.equal(chroma_similarity(torch.zeros_like(x), x, SR), torch.zeros(3))


def _chords(shift=0.0, seconds=2.0):
    """Three held chords (C, F, G major; 8 harmonics each note, 1/h), `shift` semitones up: 3 1 n."""
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    h = torch.arange(1, 9, dtype=torch.float64)[:, None]
    out = []
    for root in (60, 65, 67):
        f0 = [440 * 2 ** ((root + i + shift - 69) / 12) for i in (0, 4, 7)]
        out.append(sum((torch.sin(2 * math.pi * f * h * t) / h).sum(0) for f in f0))
    x = torch.stack(out)[:, None].float()
    return 0.5 * x / x.abs().amax(-1, keepdim=True)


def test_note_metrics_reject_envelope_noise_and_transposition():
    x = _clips()
    noise = envelope_noise(x, SR)
    # what fooled the older metrics: the envelope is right (low mel distance against a transposition)
    assert (mel_distance(noise, x, SR) < 1.5).all()
    assert fine_structure_r(noise, x, SR).abs().max() < 0.15
    assert chroma_similarity(noise, x, SR).max() < 0.65      # a flat chroma against a peaked one
    chords, up2 = _chords(), _chords(shift=2)                # the same chords a whole tone up
    assert fine_structure_r(up2, chords, SR).abs().max() < 0.15
    assert chroma_similarity(up2, chords, SR).max() < 0.4
    assert fine_structure_r(_chords(shift=0.05), chords, SR).min() > 0.8  # 5 cents: the same notes


def test_note_metrics_fall_with_added_noise():
    x = _clips()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    noise *= x.pow(2).mean((1, 2), keepdim=True).sqrt() / noise.pow(2).mean((1, 2), keepdim=True).sqrt()
    r = torch.stack([fine_structure_r(x + noise * 10 ** (-snr / 20), x, SR) for snr in (40, 30, 20, 10, 0, -10)])
    assert (r[:-1] > r[1:]).all(), r                         # every clip, every step of noise
    c = torch.stack([chroma_similarity(x + noise * 10 ** (-snr / 20), x, SR) for snr in (10, 0, -10, -20)])
    assert (c[:-1] > c[1:]).all(), c


def test_note_metrics_resample_and_check_input():
    x = _clips(n=1)
    x32 = AF.resample(x, SR, 32000)
    assert fine_structure_r(x32, x32, 32000).item() == pytest.approx(1.0)
    # the same audio at another rate reads the same notes
    assert fine_structure_r(x32[..., ::2], x, SR).item() > 0.9
    with pytest.raises(ValueError, match="same shape"):
        fine_structure_r(x[..., :-1], x, SR)
    with pytest.raises(ValueError, match="finite"):
        chroma_similarity(x * float("nan"), x, SR)
    with pytest.raises(ValueError, match="mono"):
        chroma_similarity(x.expand(1, 2, -1), x.expand(1, 2, -1), SR)
