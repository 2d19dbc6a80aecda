"""The tiny codec's spectral decoder: phase advances, phase locking and its own losses, on signals whose
answer is known (a sinusoid, chords), not on a trained model."""
import math

import pytest
import torch

from mmdlib.codec.spectral import SpectralConfig, istft, nearest_peak, phase_advance, phase_from_advance, spectral_losses, stft
from mmdlib.eval.metrics import chroma_similarity, fine_structure_r

SR, N_FFT, HOP = 16000, 640, 320


def _chords(seconds=2.0, shift=0.0):
    """Three held chords (C, F, G major), 8 harmonics a note: `3 1 n`."""
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    h = torch.arange(1, 9, dtype=torch.float64)[:, None]
    out = [sum((torch.sin(2 * math.pi * 440 * 2 ** ((r + i + shift - 69) / 12) * h * t) / h).sum(0) for i in (0, 4, 7))
           for r in (60, 65, 67)]
    x = torch.stack(out)[:, None].float()
    return 0.5 * x / x.abs().amax(-1, keepdim=True)


def test_phase_advance_of_a_sinusoid_is_its_offset_in_the_bin():
    """A sinusoid 0.3 bins above bin 20 advances 2 pi 20.3 hop / n_fft a hop; minus bin k's own advance
    that leaves 2 pi (20.3 - k) hop / n_fft = pi (20.3 - k) (hop = n_fft / 2), wrapped, in every bin of
    its main lobe and every frame."""
    t = torch.arange(40 * HOP, dtype=torch.float64)
    x = torch.cos(2 * math.pi * 20.3 * t / N_FFT + 0.7)[None]
    d = phase_advance(stft(x, N_FFT, HOP, torch.hann_window(N_FFT, dtype=torch.float64)), N_FFT, HOP)
    assert torch.equal(d[..., 0], torch.zeros_like(d[..., 0]))  # no step into the first frame
    expect = torch.tensor([1.3 - 2, 0.3, -0.7], dtype=torch.float64)[:, None] * math.pi   # bins 19, 20, 21
    torch.testing.assert_close(d[0, 19:22, 2:-2], expect.expand(3, 36), rtol=0, atol=1e-4)  # float32 bin advance


def test_nearest_peak():
    L = torch.tensor([0.0, 2.0, 1.0, 0.0, 1.0, 3.0, 1.0, 0.5])[:, None]   # peaks at bins 1 and 5
    assert nearest_peak(L)[:, 0].tolist() == [1, 1, 1, 1, 5, 5, 5, 5]
    flat = torch.zeros(5, 1)
    assert nearest_peak(flat)[:, 0].tolist() == [0, 1, 2, 3, 4]             # no peak: each bin its own


def _oracle(x):
    """The true log-magnitude and phase-advance vectors of `b 1 n` audio: what a perfect decoder predicts."""
    spec = stft(x[:, 0], N_FFT, HOP, torch.hann_window(N_FFT))
    d = phase_advance(spec, N_FFT, HOP)
    return torch.log(spec.abs() + 1e-5), torch.stack([d.cos(), d.sin()], dim=1), spec


def test_true_advances_and_locking_rebuild_the_notes():
    """From the true magnitude and phase advances alone (no phase), phase_from_advance gives back the
    chords' partials; a random phase of the same magnitude does not."""
    x = _chords()
    logmag, advance, _ = _oracle(x)
    y = istft(torch.polar(torch.exp(logmag), phase_from_advance(advance, logmag, N_FFT, HOP)), N_FFT, HOP,
              torch.hann_window(N_FFT))[:, None]
    assert fine_structure_r(y, x, SR).min() > 0.75
    assert chroma_similarity(y, x, SR).min() > 0.98
    g = torch.Generator().manual_seed(0)
    noisy = istft(torch.polar(torch.exp(logmag), 2 * math.pi * torch.rand(logmag.shape, generator=g)), N_FFT, HOP,
                  torch.hann_window(N_FFT))[:, None]
    assert fine_structure_r(noisy, x, SR).max() < fine_structure_r(y, x, SR).min() - 0.2


def test_phase_from_advance_is_deterministic_and_ignores_vector_length():
    x = _chords()
    logmag, advance, _ = _oracle(x)
    a = phase_from_advance(advance, logmag, N_FFT, HOP)
    torch.testing.assert_close(phase_from_advance(0.3 * advance, logmag, N_FFT, HOP), a)


def test_spectral_losses_vanish_at_the_target_and_grow_with_error():
    x = _chords()
    logmag, advance, _ = _oracle(x)
    cfg = SpectralConfig(n_fft=N_FFT, hop=HOP, down=1, phase="advance")
    window = torch.hann_window(N_FFT)
    exact = spectral_losses(logmag[:, None], advance[:, None], x, cfg, window)
    assert exact["spec"].item() == pytest.approx(0, abs=1e-6) and exact["advance"].item() == pytest.approx(0, abs=1e-6)
    off = spectral_losses(logmag[:, None] + 0.5, -advance[:, None], x, cfg, window)
    assert off["spec"].item() == pytest.approx(0.5, abs=1e-5)
    assert off["advance"].item() == pytest.approx(2.0, abs=1e-4)   # |v - (-v)|^2 / 2 for unit vectors
    assert "advance" not in spectral_losses(logmag[:, None], None, x, cfg, window)
