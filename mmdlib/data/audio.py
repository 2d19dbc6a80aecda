"""Audio file I/O: soundfile for reading/writing, torchaudio only for resampling.

Audio tensors are `c n` (c = 1 channel, n samples), float32 in [-1, 1].
Every problem with an input file raises `AudioError` naming the file and the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SILENCE_PEAK = 1e-4  # a file whose peak |x| is below this is considered silent


class AudioError(ValueError):
    """A file that cannot be used as audio; `path` and `reason` are kept as attributes."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def decode_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read a file, downmix to mono and resample to `sample_rate`.

    Returns float32 `n` (numpy). Raises AudioError if the file is unreadable or has no samples.
    Contents are not checked here (NaN, silence, length): see `check_audio`.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # n c
    except Exception as e:  # libsndfile raises several types for corrupt / non-audio input
        raise AudioError(path, f"unreadable ({type(e).__name__}: {e})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "empty (0 samples)")
    mono = data.mean(axis=1, dtype=np.float32)  # n
    if file_rate != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), file_rate, sample_rate).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


def check_audio(wav: np.ndarray | torch.Tensor, path: str | Path, min_samples: int = 1) -> None:
    """Raise AudioError if `wav` (any shape, last axis = time) is empty, non-finite, shorter
    than `min_samples`, silent (peak < SILENCE_PEAK) or constant (a DC offset, no sound)."""
    x = wav.numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    n = x.shape[-1] if x.ndim else 0
    if x.size == 0:
        raise AudioError(path, "empty (0 samples)")
    if not np.isfinite(x).all():
        raise AudioError(path, "contains NaN or inf samples")
    if n < min_samples:
        raise AudioError(path, f"too short ({n} samples < {min_samples} required)")
    peak = float(np.abs(x).max())
    if peak < SILENCE_PEAK:
        raise AudioError(path, f"silent (peak {peak:.2e} < {SILENCE_PEAK:.0e})")
    swing = float(np.abs(x - x.mean(axis=-1, keepdims=True)).max())
    if swing < SILENCE_PEAK:
        raise AudioError(path, f"constant (DC offset {float(x.mean()):.2e}, no sound: variation {swing:.2e} "
                               f"< {SILENCE_PEAK:.0e})")


def load_audio(path: str | Path, sample_rate: int, min_samples: int = 1) -> torch.Tensor:
    """Load a file as float32 mono at `sample_rate`: returns `1 n`.

    Raises AudioError (a ValueError) for unreadable/corrupt/non-audio, empty, NaN/inf, silent
    or too short (< min_samples after resampling) files.
    """
    wav = decode_audio(path, sample_rate)
    check_audio(wav, path, min_samples)
    return torch.from_numpy(wav)[None]


def save_audio(
    path: str | Path,
    wav: torch.Tensor | np.ndarray,
    sample_rate: int,
    subtype: str | None = "PCM_16",
) -> None:
    """Write mono audio `1 n` or `n` with soundfile; the container follows the extension.

    subtype: "PCM_16" (16-bit, values clipped to [-1, 1]), "FLOAT" (wav only), or None for the
    container's default (needed for .ogg).
    """
    x = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise ValueError(f"save_audio expects mono audio [1, n] or [n], got shape {x.shape}")
    x = x.astype(np.float32)
    if subtype is None or subtype.startswith("PCM"):
        x = np.clip(x, -1.0, 1.0)
    sf.write(str(path), x, sample_rate, subtype=subtype)
