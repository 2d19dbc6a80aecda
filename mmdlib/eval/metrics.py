"""Codec evaluation metrics: SI-SNR, multi-scale log-mel distance, ViSQOL, codebook usage, bitrate.

Audio is `b c n` (or `b n`); per-item metrics return a tensor `[b]`. Codes are `b k t`.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torchaudio.functional as AF
from torch import Tensor

from mmdlib.codec.losses import MultiScaleMelLoss


def si_snr(est: Tensor, ref: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant signal-to-noise ratio in dB, per item: `b ...` -> [b].

    Both signals are made zero-mean (over all but the batch dim), then ref is projected:
    s = (<est, ref> / ||ref||^2) ref, e = est - s, and SI-SNR = 10 log10((||s||^2 + eps) / (||e||^2 + eps)).
    Multiplying est by any non-zero constant leaves it unchanged (up to eps).
    """
    if est.shape != ref.shape or est.dim() < 2:
        raise ValueError(f"si_snr: est {tuple(est.shape)} and ref {tuple(ref.shape)} must have the same shape [b, ...]")
    est = est.reshape(est.shape[0], -1).double()
    ref = ref.reshape(ref.shape[0], -1).double()
    est = est - est.mean(dim=1, keepdim=True)
    ref = ref - ref.mean(dim=1, keepdim=True)
    alpha = (est * ref).sum(dim=1, keepdim=True) / (ref.pow(2).sum(dim=1, keepdim=True) + eps)
    s = alpha * ref
    e = est - s
    return (10 * torch.log10((s.pow(2).sum(dim=1) + eps) / (e.pow(2).sum(dim=1) + eps))).float()


@lru_cache(maxsize=8)
def _mel_module(sample_rate: int, n_ffts: tuple[int, ...], n_mels: int) -> MultiScaleMelLoss:
    return MultiScaleMelLoss(sample_rate, n_ffts=n_ffts, n_mels=n_mels)


@torch.no_grad()
def mel_distance(
    est: Tensor,
    ref: Tensor,
    sample_rate: int,
    n_ffts: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048),
    n_mels: int = 64,
    eps: float = 1e-5,
) -> Tensor:
    """Multi-scale log-mel L1 distance, per item: `b c n` -> [b] (lower is better, 0 iff equal mels).

    Uses the spectrograms of `MultiScaleMelLoss`: for each window size w,
    d_w = mean over (channel, mel band, frame) of |log(M_w(est) + eps) - log(M_w(ref) + eps)|,
    and the distance is the mean of d_w over the window sizes. Natural log, so it is level
    independent above the eps floor.
    """
    if est.shape != ref.shape or est.dim() != 3:
        raise ValueError(f"mel_distance: est {tuple(est.shape)} and ref {tuple(ref.shape)} must both be [b, c, n]")
    mel = _mel_module(int(sample_rate), tuple(n_ffts), int(n_mels)).to(device=est.device, dtype=est.dtype)
    b = est.shape[0]
    dist = est.new_zeros(b)
    for m_est, m_ref in zip(mel.mels(est), mel.mels(ref)):  # (b c) m t
        d = (torch.log(m_est + eps) - torch.log(m_ref + eps)).abs()
        dist += d.reshape(b, -1).mean(dim=1)
    return dist / len(mel.n_ffts)


VISQOL_RATE = 48000       # ViSQOL's audio mode works at 48 kHz
VISQOL_MIN_SECONDS = 1.0  # its patches are ~0.5 s: shorter clips give no meaningful score


@lru_cache(maxsize=1)
def _visqol_api():
    try:
        from visqol import VisqolApi
    except ImportError:
        raise ImportError("ViSQOL needs the visqol-python package: pip install visqol-python "
                          "(or pip install -e '.[dev]' in this repository)") from None
    api = VisqolApi()
    api.create(mode="audio")  # the bundled SVR model: no download
    return api


def visqol(est: Tensor, ref: Tensor, sample_rate: int) -> Tensor:
    """ViSQOL v3 audio mode (MOS-LQO, about 1 to 4.73), per item: `b 1 n` -> [b] (higher is better).

    The paper's codec metric, from `visqol-python` (a pure-Python port of Google's ViSQOL that
    ships its SVR quality model). Both signals are resampled from `sample_rate` to 48 kHz with
    torchaudio, as audio mode requires; a 16 kHz codec is thus judged against its 16 kHz
    reference, both band-limited to 8 kHz. A clip against itself scores the ceiling (4.73).
    Costs about 0.5 s of CPU per 4 s clip (plus ~20 s of numba compilation on the first call).
    """
    if est.shape != ref.shape or est.dim() != 3 or est.shape[1] != 1:
        raise ValueError(f"visqol: est {tuple(est.shape)} and ref {tuple(ref.shape)} must both be mono [b, 1, n]")
    if not isinstance(sample_rate, int) or sample_rate < 8000:
        raise ValueError(f"visqol: sample_rate must be an int >= 8000 Hz, got {sample_rate!r}")
    if est.shape[-1] < VISQOL_MIN_SECONDS * sample_rate:
        raise ValueError(f"visqol: clips of {est.shape[-1] / sample_rate:.2f} s are too short; "
                         f"ViSQOL needs >= {VISQOL_MIN_SECONDS:g} s")
    if not (torch.isfinite(est).all() and torch.isfinite(ref).all()):
        raise ValueError("visqol: est and ref must be finite (NaN or inf samples)")
    api = _visqol_api()
    def up(x):
        return AF.resample(x.detach().cpu().double()[:, 0], sample_rate, VISQOL_RATE).numpy()
    e48, r48 = up(est), up(ref)
    return torch.tensor([api.measure_from_arrays(r, e, sample_rate=VISQOL_RATE).moslqo for r, e in zip(r48, e48)],
                        dtype=torch.float32)


def codebook_usage(codes: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """How evenly each codebook's entries are used, over all items and frames of `codes` [b, k, t].

    Returns, each [k]:
      perplexity: exp(entropy) of the empirical code distribution, in [1, codebook_size]
                  (1: a single code is used; codebook_size: all codes equally often),
      used: number of distinct codes that occur,
      ratio: perplexity / codebook_size.
    """
    if codes.dim() != 3:
        raise ValueError(f"codebook_usage: codes must be [b, k, t], got shape {tuple(codes.shape)}")
    if codes.numel() == 0:
        raise ValueError("codebook_usage: codes is empty")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(f"codebook_usage: codes must be in [0, {codebook_size}), got range [{lo}, {hi}]")
    per_k = codes.long().transpose(0, 1).reshape(codes.shape[1], -1)  # k (b t)
    counts = torch.stack([torch.bincount(c, minlength=codebook_size) for c in per_k]).double()  # k size
    p = counts / counts.sum(dim=1, keepdim=True)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(dim=1)  # 0 log 0 = 0
    perplexity = entropy.exp().float()
    return {
        "perplexity": perplexity,
        "used": (counts > 0).sum(dim=1),
        "ratio": perplexity / codebook_size,
    }


def bitrate(n_q: int, codebook_size: int, frame_rate: float) -> float:
    """Bits per second of `n_q` codebooks of `codebook_size` entries at `frame_rate` frames/s."""
    if n_q < 1 or codebook_size < 2 or frame_rate <= 0:
        raise ValueError(f"bitrate: need n_q >= 1, codebook_size >= 2, frame_rate > 0, got {n_q}, {codebook_size}, {frame_rate}")
    return n_q * math.log2(codebook_size) * frame_rate


# -- metrics that hear notes --------------------------------------------------------------------------
# ViSQOL and the log-mel distance both rate an envelope-shaped buzz with no pitch above Opus at 6 kbps
# (README, "The tiny codec"): a mel band is wider than the spacing of a note's harmonics. These two
# read a 2048-point STFT at 16 kHz (7.8 Hz bins) where the harmonics of a note are separate peaks.
NOTE_RATE, NOTE_FFT, NOTE_HOP = 16000, 2048, 512
NOTE_BAND = (60.0, 4000.0)      # Hz: the fine structure's band (below: too few bins per harmonic)
CHROMA_BAND = (55.0, 4000.0)    # Hz: the chroma's band (A1 up)
SMOOTH_HZ = 200.0               # the envelope: a moving average of the log-power over this width
LOUD_DB = 40.0                  # frames scored: within this many dB of the clip's loudest frame


def _note_power(x: Tensor, sample_rate: int) -> Tensor:
    """`b 1 n` or `b n` -> `b f s`: power of a 2048-point Hann STFT (hop 512) at 16 kHz, float64."""
    if x.dim() == 3:
        if x.shape[1] != 1:
            raise ValueError(f"note metrics need mono audio [b, 1, n], got {list(x.shape)}")
        x = x[:, 0]
    if x.dim() != 2:
        raise ValueError(f"note metrics need audio [b, 1, n] or [b, n], got {list(x.shape)}")
    x = x.detach().double().cpu()
    if sample_rate != NOTE_RATE:
        x = AF.resample(x, int(sample_rate), NOTE_RATE)
    if x.shape[-1] < NOTE_FFT:
        raise ValueError(f"note metrics need clips of >= {NOTE_FFT / NOTE_RATE:.3f} s, got {x.shape[-1] / NOTE_RATE:.3f} s")
    spec = torch.stft(x, NOTE_FFT, NOTE_HOP, window=torch.hann_window(NOTE_FFT, dtype=torch.float64),
                      return_complex=True)
    return spec.abs().pow(2)


def _band(lo: float, hi: float) -> slice:
    return slice(math.ceil(lo * NOTE_FFT / NOTE_RATE), math.floor(hi * NOTE_FFT / NOTE_RATE) + 1)


def _log_power(power: Tensor, floor: Tensor) -> Tensor:
    return torch.log(power + floor[:, None, None])


def _smooth_freq(x: Tensor, hz: float, n_fft: int, sample_rate: int) -> Tensor:
    """`b f s`: the moving average along frequency over `hz` (an odd number of bins, edges replicated)."""
    w = int(round(hz * n_fft / sample_rate)) | 1
    flat = x.transpose(1, 2).reshape(-1, 1, x.shape[1])
    avg = torch.nn.functional.avg_pool1d(torch.nn.functional.pad(flat, (w // 2, w // 2), mode="replicate"), w, 1)
    return avg.reshape(x.shape[0], x.shape[2], -1).transpose(1, 2)


def _fine(logp: Tensor) -> Tensor:
    """`b f s`: log-power minus its moving average over SMOOTH_HZ (the spectral envelope)."""
    return logp - _smooth_freq(logp, SMOOTH_HZ, NOTE_FFT, NOTE_RATE)


def _loud_frames(power: Tensor, band: slice) -> Tensor:
    """`b s` bool: frames of the reference within LOUD_DB of its loudest (in `band`)."""
    energy = power[:, band].sum(1)
    return energy >= energy.amax(1, keepdim=True) * 10 ** (-LOUD_DB / 10)


def _frame_mean(values: Tensor, mask: Tensor) -> Tensor:
    return ((values * mask).sum(1) / mask.sum(1).clamp_min(1)).float()


def _floors(p_ref: Tensor) -> Tensor:
    """One log floor per clip, from the reference: 100 dB under its loudest bin (silence stays flat)."""
    return p_ref.flatten(1).amax(1).clamp_min(1e-20) * 1e-10


def fine_structure_r(est: Tensor, ref: Tensor, sample_rate: int) -> Tensor:
    """Does the reconstruction have the reference's harmonics where it has them? Per item, [b].

    2048-point STFT at 16 kHz; per frame the fine structure is the log-power minus its moving
    average over 200 Hz (what is left once the spectral envelope is removed: the peaks of the
    partials and the valleys between them), 60 Hz to 4 kHz; the score is the Pearson correlation
    of the two fine structures, averaged over the frames within 40 dB of the reference's loudest.
    1 for the reference itself; about 0 for envelope-shaped noise and for the same music 2
    semitones up (tests/eval/test_metrics.py); 0 where either frame is flat (silence).
    """
    _check_same(est, ref, "fine_structure_r")
    p_est, p_ref = _note_power(est, sample_rate), _note_power(ref, sample_rate)
    band, floor = _band(*NOTE_BAND), _floors(p_ref)
    a = _fine(_log_power(p_est, floor))[:, band]
    b = _fine(_log_power(p_ref, floor))[:, band]
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    r = torch.where(den > 1e-12, (a * b).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))  # b s
    return _frame_mean(r, _loud_frames(p_ref, band))


def chroma(power: Tensor) -> Tensor:
    """`b f s` power (2048-point STFT at 16 kHz) -> `b 12 s`: energy per pitch class (C = 0),
    55 Hz to 4 kHz, each bin given to the pitch class nearest its centre frequency."""
    band = _band(*CHROMA_BAND)
    freqs = torch.arange(power.shape[1], dtype=torch.float64)[band] * NOTE_RATE / NOTE_FFT
    pc = (torch.round(12 * torch.log2(freqs / 440.0)).long() + 9) % 12   # A = 9
    onehot = torch.nn.functional.one_hot(pc, 12).to(power.dtype)         # f 12
    return torch.einsum("bfs,fc->bcs", power[:, band], onehot)


def chroma_similarity(est: Tensor, ref: Tensor, sample_rate: int) -> Tensor:
    """Are the same pitch classes sounding? Per item, [b]: the cosine between the 12 pitch-class
    energies (`chroma`) of the two, per frame, averaged over the frames within 40 dB of the
    reference's loudest. 1 for the reference itself, about 0.5 for envelope-shaped noise (a flat
    chroma against a peaked one), low for a transposition; 0 for silence."""
    _check_same(est, ref, "chroma_similarity")
    p_est, p_ref = _note_power(est, sample_rate), _note_power(ref, sample_rate)
    c_est, c_ref = chroma(p_est), chroma(p_ref)
    cos = torch.nn.functional.cosine_similarity(c_est, c_ref, dim=1, eps=1e-300)  # b s
    return _frame_mean(cos, _loud_frames(p_ref, _band(*CHROMA_BAND)))


def _check_same(est: Tensor, ref: Tensor, name: str) -> None:
    if est.shape != ref.shape:
        raise ValueError(f"{name}: est {tuple(est.shape)} and ref {tuple(ref.shape)} must have the same shape")
    if not (torch.isfinite(est).all() and torch.isfinite(ref).all()):
        raise ValueError(f"{name}: est and ref must be finite (NaN or inf samples)")


def envelope_noise(x: Tensor, sample_rate: int, seed: int = 0, smooth_hz: float = SMOOTH_HZ) -> Tensor:
    """A degenerate output to validate metrics on: `x` (`b 1 n`) with its STFT magnitude smoothed
    over `smooth_hz` along frequency and its phase random. It keeps the rhythm, the loudness and the
    spectral envelope and has no notes at all: ViSQOL and the mel distance rate it well, the note
    metrics above must not."""
    n_fft = 2 ** round(math.log2(0.064 * sample_rate))  # 64 ms
    win = torch.hann_window(n_fft, dtype=x.dtype)
    spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, n_fft // 4, window=win, return_complex=True)
    mag = _smooth_freq(spec.abs(), smooth_hz, n_fft, sample_rate)
    g = torch.Generator().manual_seed(seed)
    phase = 2 * math.pi * torch.rand(mag.shape, generator=g, dtype=mag.dtype)
    y = torch.istft(torch.polar(mag, phase), n_fft, n_fft // 4, window=win, length=x.shape[-1])
    return y.reshape(x.shape)
