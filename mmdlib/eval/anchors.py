"""Classic codecs as anchors for the learned one: Opus through Debian's `opusenc` / `opusdec`.

SoundStream and EnCodec measure themselves against Opus at several times their bitrate. The
tools come from the `opus-tools` package (`apt-get install opus-tools`); `opus_available()`
tells whether they are on the PATH, and callers skip the anchor with a note when they are not.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

OPUS_TOOLS = ("opusenc", "opusdec")
OPUS_INSTALL = "install Debian's opus-tools (apt-get install opus-tools) for the Opus anchor rows"


def opus_available() -> bool:
    return all(shutil.which(t) for t in OPUS_TOOLS)


def opus_roundtrip(wav: Tensor, sample_rate: int, kbps: float) -> Tensor:
    """Encode and decode `b 1 n` audio with Opus at `kbps` (VBR, the encoder's default mode).

    Each clip goes through a 16-bit wav file, `opusenc --bitrate kbps` and `opusdec --rate 48000`,
    and is resampled back to `sample_rate` and trimmed/padded to n samples (opusdec removes the
    encoder's pre-skip, so the result is time-aligned)."""
    if not opus_available():
        raise RuntimeError(f"opusenc/opusdec not found: {OPUS_INSTALL}")
    if wav.dim() != 3 or wav.shape[1] != 1:
        raise ValueError(f"opus_roundtrip: wav must be mono [b, 1, n], got {tuple(wav.shape)}")
    if not 6 <= kbps <= 256:
        raise ValueError(f"opus_roundtrip: kbps={kbps} outside Opus' 6..256 kbps")
    n, out = wav.shape[-1], []
    with tempfile.TemporaryDirectory(prefix="mmdlib-opus-") as tmp:
        src, enc, dec = (Path(tmp) / f for f in ("in.wav", "x.opus", "out.wav"))
        for x in wav[:, 0].detach().cpu().numpy():
            sf.write(src, np.clip(x, -1, 1), sample_rate, subtype="PCM_16")
            subprocess.run(["opusenc", "--quiet", "--bitrate", f"{kbps:g}", str(src), str(enc)], check=True)
            subprocess.run(["opusdec", "--quiet", "--rate", "48000", str(enc), str(dec)], check=True)
            y, rate = sf.read(dec, dtype="float32", always_2d=True)
            y = AF.resample(torch.from_numpy(y[:, 0].copy()), rate, sample_rate)
            out.append(torch.nn.functional.pad(y[:n], (0, max(0, n - len(y)))))
    return torch.stack(out)[:, None]
