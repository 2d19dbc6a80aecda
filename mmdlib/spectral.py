"""A frame-rate encoder and an iSTFT decoder: the `tiny` codec's CPU-friendly alternative to SEANet.

A SEANet spends most of its compute at the sample rate (16,000 steps a second). Here every layer
runs at a frame rate: the encoder reads a short-time Fourier transform, the decoder predicts one
and inverts it (the idea of Vocos, Siuzdenko et al. 2023), so a 1 s clip is 100 STFT frames and
50 latent frames instead of 16,000 samples.

    encoder  `b 1 n` -> STFT (hop h, window w) -> log-magnitude `b f s` (s = n / h frames)
             -> stack `down` frames `b (f down) t` -> MLP (1x1 conv, GELU, conv over 3 frames, ...) -> `b d t`
    decoder  `b d t` -> MLP -> per STFT frame: log-magnitude m and phase p `b f s`
             -> S = exp(m) e^{ip} -> iSTFT -> `b 1 n`

Both sides are per-frame MLPs whose hidden layers see three latent frames: wide (768) and shallow,
they learn the harmonics of notes within a few hundred steps, where ConvNeXt stacks of the same
cost only learned a smear (README, "The tiny codec"). The decoder predicts phase directly as
one real per bin; the STFT magnitude it predicts is also trained against the input's own
(`CodecOutput.logmag`, the `w_spec` loss).

The STFT is "same"-framed: the signal is padded by (w - h) / 2 on each side and framed without
centring, so frame j covers samples [j h - (w - h) / 2, j h + (w + h) / 2) and n samples give
exactly n / h frames. The inverse is the matching weighted overlap-add (`istft`), exact for any
frames that a `stft` produced (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


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

    def __post_init__(self):
        if self.n_fft < self.hop or (self.n_fft - self.hop) % 2:
            raise ValueError(f"SpectralConfig: need n_fft >= hop and n_fft - hop even, got {self.n_fft}, {self.hop}")
        if min(self.channels, self.dim, self.hop, self.down, self.hidden, self.layers, self.kernel) < 1:
            raise ValueError(f"SpectralConfig: sizes must be >= 1, got {self}")
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


def log_magnitude(wav: Tensor, cfg: SpectralConfig, window: Tensor) -> Tensor:
    """`b c n -> b c f s`: log(|STFT| + 1e-5), the encoder's input and the decoder's magnitude target."""
    spec = stft(wav.reshape(-1, wav.shape[-1]), cfg.n_fft, cfg.hop, window)
    return torch.log(spec.abs() + 1e-5).reshape(*wav.shape[:2], *spec.shape[1:])


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
    """`b d t -> b c n`, n = t hop down: log-magnitude and phase of `down` STFT frames per latent frame."""

    def __init__(self, cfg: SpectralConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.net = mlp(cfg.dim, 2 * cfg.channels * cfg.n_freqs * cfg.down, cfg)

    def forward(self, z: Tensor, return_logmag: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """`b d t -> b c n` (and the predicted log-magnitude `b c f s` with return_logmag)."""
        cfg = self.cfg
        out = rearrange(self.net(z).float(), "b (o c f r) t -> o b c f (t r)", o=2, c=cfg.channels, r=cfg.down)
        logmag, phase = 3 * out[0] - 5, out[1]  # logmag back from the encoder's feature scale; float32
                                                # (under bf16 autocast too): the iSTFT needs it
        spec = torch.polar(torch.exp(logmag.clamp(max=8.0)), phase)       # b c f s
        wav = istft(spec.flatten(0, 1), cfg.n_fft, cfg.hop, self.window).unflatten(0, spec.shape[:2])
        return (wav, logmag) if return_logmag else wav
