"""Audio in the notebooks: embedded ogg players and HTML tables of players.

Ogg Vorbis inside a saved notebook is about a tenth of the size of wav; one HTML output renders
the same in JupyterLab and in nbconvert's HTML (the browser test checks every player loads).
"""
from __future__ import annotations

import base64
import io
from html import escape

import soundfile as sf
import torch
from IPython.display import HTML, Audio


def audio_bytes(wav: torch.Tensor, sample_rate: int, fmt: str = "ogg") -> bytes:
    """Encoded audio `1 n` or `n` (ogg vorbis: ~10x smaller than wav inside a saved notebook)."""
    x = wav.detach().cpu().float().reshape(-1).clamp(-1, 1).numpy()
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format=fmt.upper(), subtype="VORBIS" if fmt == "ogg" else "PCM_16")
    return buf.getvalue()


def player(wav: torch.Tensor, sample_rate: int):
    """An IPython audio player (embedded ogg) for `1 n` audio; renders in JupyterLab and HTML."""
    audio = Audio(data=audio_bytes(wav, sample_rate))
    audio.mimetype = "audio/ogg"  # IPython assumes wav for raw bytes
    return audio


def audio_html(wav: torch.Tensor, sample_rate: int) -> str:
    """An <audio> element with the clip embedded as ogg (base64)."""
    data = base64.b64encode(audio_bytes(wav, sample_rate)).decode()
    return f'<audio controls preload="none" style="width: 210px" src="data:audio/ogg;base64,{data}"></audio>'


def players_table(rows: dict[str, dict[str, torch.Tensor]], sample_rate: int):
    """An HTML table of audio players: rows[row label][column label] = clip `1 n` (missing cells
    stay empty). One display output that JupyterLab and nbconvert's HTML both render."""
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        f"<tr><th>{escape(name)}</th>"
        + "".join(f"<td>{audio_html(r[c], sample_rate) if c in r else ''}</td>" for c in cols) + "</tr>"
        for name, r in rows.items())
    return HTML(f"<table><tr><th></th>{head}</tr>{body}</table>")
