"""A frame-rate encoder and an iSTFT decoder: the `tiny` codec's CPU-friendly alternative to SEANet.

A SEANet spends most of its compute at the sample rate (16,000 steps a second). Here every layer
runs at a frame rate: the encoder reads a short-time Fourier transform, the decoder predicts one
and inverts it (the idea of Vocos, Siuzdenko et al. 2023), so a 1 s clip is 50 latent frames
instead of 16,000 samples.

    encoder  `b 1 n` -> STFT (hop h, window w) -> log-magnitude `b f s` (s = n / h frames)
             -> stack `down` frames `b (f down) t` -> MLP (1x1 conv, GELU, conv over 3 frames, ...) -> `b d t`
    decoder  `b d t` -> MLP -> per STFT frame: log-magnitude m `b f s` and phase
             -> S = exp(m) e^{i phase} -> iSTFT -> `b 1 n`

Both sides are wide (768), shallow MLPs whose hidden layers see three latent frames. The magnitude
is trained against the input's own (`spectral_losses`, "spec"). The phase comes one of two ways:

- `phase="learned"` (the former tiny codec): one real per bin, trained only through the losses on
  the waveform. It kept the envelope and lost the notes: a fixed comb of lines every 50 Hz under a
  smear (README, "The tiny codec").
- `phase="advance"` (the `tiny` preset): per bin, how far its phase advances from one frame to the
  next beyond the bin centre's own advance (`phase_advance`: where in the bin the partial lies),
  regressed as a unit vector against the input's ("advance" loss, weighted by the input's magnitude);
  `phase_from_advance` integrates it over frames and locks the bins of each partial to its peak.
  With hop = n_fft / 2 (the preset: 640 / 320, one STFT frame a latent frame) the frames overlap
  only in pairs, so a phase that is not exactly the input's does not cancel itself.

The STFT is "same"-framed: the signal is padded by (w - h) / 2 on each side and framed without
centring, so frame j covers samples [j h - (w - h) / 2, j h + (w + h) / 2) and n samples give
exactly n / h frames. The inverse is the matching weighted overlap-add (`istft`), exact for any
frames that a `stft` produced (tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

PHASES = ("learned", "advance")


@dataclass
class SpectralConfig:
    channels: int = 1           # mono
    dim: int = 64               # latent dimension d (= the quantizer's)
    n_fft: int = 640            # STFT window w (40 ms at 16 kHz)
    hop: int = 160              # STFT hop h (10 ms at 16 kHz: 100 frames a second)
    down: int = 2               # STFT frames per latent frame (hop_length = hop * down)
    hidden: int = 768           # hidden channels of the encoder's and the decoder's MLP
    layers: int = 2             # hidden layers on each side
    kernel: int = 3             # temporal kernel of the hidden layers after the first (latent frames)
    phase: str = "learned"      # "learned" (the former tiny codec) or "advance" (predicted phase advances, locked
                                # to the partials: the tiny preset); see the module doc

    def __post_init__(self):
        if self.n_fft < self.hop or (self.n_fft - self.hop) % 2:
            raise ValueError(f"SpectralConfig: need n_fft >= hop and n_fft - hop even, got {self.n_fft}, {self.hop}")
        if min(self.channels, self.dim, self.hop, self.down, self.hidden, self.layers, self.kernel) < 1:
            raise ValueError(f"SpectralConfig: sizes must be >= 1, got {self}")
        if self.phase not in PHASES:
            raise ValueError(f"SpectralConfig.phase={self.phase!r}: choose one of {PHASES}")
        if self.kernel % 2 == 0:
            raise ValueError(f"SpectralConfig.kernel={self.kernel} must be odd (same-length convolutions)")

    @property
    def hop_length(self) -> int:
        return self.hop * self.down

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1


# -- the transform pair -----------------------------------------------------------------------------
def stft(x: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """`b n -> b f s` complex, s = n / hop "same" frames (see the module doc); n % hop == 0."""
    pad = (n_fft - hop) // 2
    x = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect" if x.shape[-1] > pad else "constant").squeeze(1)
    return torch.stft(x, n_fft, hop, window=window, center=False, return_complex=True)


def istft(spec: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """`b f s` complex -> `b n` (n = s hop): windowed overlap-add divided by the summed squared window."""
    b, _, s = spec.shape
    frames = torch.fft.irfft(spec, n=n_fft, dim=1) * window[:, None]            # b w s
    length = (s - 1) * hop + n_fft
    y = F.fold(frames, (1, length), kernel_size=(1, n_fft), stride=(1, hop)).reshape(b, length)
    env = F.fold(window.pow(2)[None, :, None].expand(1, n_fft, s), (1, length),
                 kernel_size=(1, n_fft), stride=(1, hop)).reshape(1, length)
    pad = (n_fft - hop) // 2
    return (y / env.clamp_min(1e-8))[:, pad : pad + s * hop]


def log_abs(spec: Tensor) -> Tensor:
    """log(|S| + 1e-5): the encoder's input and the decoder's magnitude target."""
    return torch.log(spec.abs() + 1e-5)


def log_magnitude(wav: Tensor, cfg: SpectralConfig, window: Tensor) -> Tensor:
    """`b c n -> b c f s`: `log_abs` of the STFT."""
    spec = stft(wav.reshape(-1, wav.shape[-1]), cfg.n_fft, cfg.hop, window)
    return log_abs(spec).reshape(*wav.shape[:2], *spec.shape[1:])


def bin_advance(n_freqs: int, n_fft: int, hop: int, device=None) -> Tensor:
    """`f 1`: how far the phase of a sinusoid at the centre of bin k advances in one hop, 2 pi k hop / n_fft,
    modulo 2 pi (computed in float64: the running sums below stay small enough for float32)."""
    k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
    return torch.remainder(2 * math.pi * k * hop / n_fft, 2 * math.pi).float().to(device)


def phase_advance(spec: Tensor, n_fft: int, hop: int) -> Tensor:
    """`... f s` complex STFT -> `... f s`: the phase advance of every bin from frame s - 1 to s minus
    that of its centre frequency, wrapped to [-pi, pi): (w - w_k) hop for a sinusoid of frequency w
    near bin k. It says where in the bin the partial lies; the first frame's is 0."""
    step = torch.angle(spec[..., 1:] * spec[..., :-1].conj()) - bin_advance(spec.shape[-2], n_fft, hop, spec.device)
    step = torch.remainder(step + math.pi, 2 * math.pi) - math.pi
    return torch.cat([torch.zeros_like(step[..., :1]), step], dim=-1)


def nearest_peak(logmag: Tensor) -> Tensor:
    """`... f s` -> `... f s` (long): the bin of the local maximum along frequency nearest to each bin
    (the partial whose lobe it lies in); a frame without any maximum keeps every bin its own."""
    L = logmag.detach()
    f = L.shape[-2]
    left, right = torch.cat([L[..., :1, :], L[..., :-1, :]], -2), torch.cat([L[..., 1:, :], L[..., -1:, :]], -2)
    peak = (L > left) & (L >= right)
    idx = torch.arange(f, device=L.device)[:, None].expand(L.shape)
    far = 4 * f
    before = torch.where(peak, idx, idx.new_full((), -far)).cummax(-2).values
    after = torch.where(peak, idx, idx.new_full((), far)).flip(-2).cummin(-2).values.flip(-2)
    near = torch.where(idx - before <= after - idx, before, after)
    return torch.where(near.abs() >= far, idx, near)


def phase_from_advance(advance: Tensor, logmag: Tensor, n_fft: int, hop: int) -> Tensor:
    """Predicted phase advances `... 2 f s` (vectors (cos, sin) of the deviation `phase_advance` gives)
    and log-magnitude `... f s` -> phase `... f s`.

    Along time, every bin's phase starts at -pi k (frame 0) and each frame adds the bin's own advance
    2 pi k hop / n_fft plus the predicted deviation: a partial keeps its frequency from frame to frame.
    Along frequency, each bin then takes the phase of the spectral peak nearest to it, minus pi per bin
    away from it (identity phase locking, Laroche & Dolson 1999): the bins of one partial's lobe move
    together, as they do in the STFT of a sinusoid in a window centred on the frame. Without the
    locking, every bin drifts on its own and the partials smear (README, "The tiny codec")."""
    advance = advance.detach().float()
    f = advance.shape[-2]
    k = bin_advance(f, n_fft, hop, advance.device)
    start = torch.remainder(math.pi * torch.arange(f, device=advance.device)[:, None], 2 * math.pi)
    step = torch.atan2(advance[..., 1, :, :], advance[..., 0, :, :])
    phase = torch.cumsum(step + k, dim=-1) - k - start   # frame 0's advance is not a step
    near = nearest_peak(logmag)
    offset = math.pi * (torch.arange(f, device=advance.device)[:, None] - near)  # -pi per bin from the peak
    return torch.gather(phase, -2, near) - offset


def spectral_losses(logmag: Tensor, advance: Tensor | None, wav: Tensor, cfg: SpectralConfig, window: Tensor) -> dict:
    """The spectral decoder's own losses against the input `wav` (`b c n`): "spec", the L1 between the
    log-magnitudes, and with a predicted phase advance "advance", 1 - cos of its error weighted by
    the input's magnitude in both frames (where there is a partial to place; 0 for silence)."""
    spec = stft(wav.reshape(-1, wav.shape[-1]), cfg.n_fft, cfg.hop, window).reshape(*wav.shape[:2], cfg.n_freqs, -1)
    out = {"spec": (logmag - log_abs(spec)).abs().mean()}
    if advance is not None:
        mag = spec.abs()
        w = torch.cat([torch.zeros_like(mag[..., :1]), mag[..., 1:] * mag[..., :-1]], -1).sqrt()
        d = phase_advance(spec, cfg.n_fft, cfg.hop)
        err = (advance[:, :, 0] - torch.cos(d)).pow(2) + (advance[:, :, 1] - torch.sin(d)).pow(2)
        out["advance"] = 0.5 * (w * err).sum() / w.sum().clamp_min(1e-8)
    return out


# -- the networks -----------------------------------------------------------------------------------
def mlp(c_in: int, c_out: int, cfg: SpectralConfig) -> nn.Sequential:
    """`b c_in t -> b c_out t`: 1x1 conv in, (layers - 1) hidden convs over `kernel` frames, 1x1 out."""
    layers: list[nn.Module] = [nn.Conv1d(c_in, cfg.hidden, 1), nn.GELU()]
    for _ in range(cfg.layers - 1):
        layers += [nn.Conv1d(cfg.hidden, cfg.hidden, cfg.kernel, padding=cfg.kernel // 2), nn.GELU()]
    return nn.Sequential(*layers, nn.Conv1d(cfg.hidden, c_out, 1))


class SpectralEncoder(nn.Module):
    """`b c n -> b d t`, t = n / (hop down): `down` log-magnitude frames stacked per latent frame."""

    def __init__(self, cfg: SpectralConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.net = mlp(cfg.channels * cfg.n_freqs * cfg.down, cfg.dim, cfg)

    def forward(self, wav: Tensor) -> Tensor:
        feats = (log_magnitude(wav, self.cfg, self.window) + 5) / 3  # b c f s, about unit scale
        return self.net(rearrange(feats, "b c f (t r) -> b (c f r) t", r=self.cfg.down))


class SpectralDecoder(nn.Module):
    """`b d t -> b c n`, n = t hop down: for `down` STFT frames per latent frame, the log-magnitude of
    every bin and its phase ("learned": one real) or phase advance ("advance": a vector, two reals)."""

    def __init__(self, cfg: SpectralConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        per_bin = {"learned": 2, "advance": 3}[cfg.phase]
        self.net = mlp(cfg.dim, per_bin * cfg.channels * cfg.n_freqs * cfg.down, cfg)

    def forward(self, z: Tensor, return_spectra: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
        """`b d t -> b c n`; with return_spectra also the predicted log-magnitude `b c f s` and phase
        advance `b c 2 f s` (None unless phase="advance"), which `spectral_losses` trains."""
        cfg = self.cfg
        out = rearrange(self.net(z).float(), "b (c o r) t -> b c o (t r)", c=cfg.channels, r=cfg.down)  # float32
        logmag = 3 * out[:, :, : cfg.n_freqs] - 5  # back from the encoder's feature scale
        advance = None
        if cfg.phase == "advance":
            advance = rearrange(out[:, :, cfg.n_freqs:], "b c (v f) s -> b c v f s", v=2)
            phase = phase_from_advance(advance, logmag, cfg.n_fft, cfg.hop)
        else:
            phase = out[:, :, cfg.n_freqs:]
        spec = torch.polar(torch.exp(logmag.clamp(max=8.0)), phase)       # b c f s
        wav = istft(spec.flatten(0, 1), cfg.n_fft, cfg.hop, self.window).unflatten(0, spec.shape[:2])
        return (wav, logmag, advance) if return_spectra else wav
