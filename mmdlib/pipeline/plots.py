"""Figures of the notebooks: each function returns a matplotlib Figure (nothing is shown or saved
here); `save_figure` writes it as PNG and SVG. Audio `c n` or `n`, codes `b k t`."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch


def save_figure(fig, fig_dir: str | Path, name: str, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write fig_dir/name.{png,svg} without timestamps (same figure, same bytes); returns the paths."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = fig_dir / f"{name}.{fmt}"
        meta = {"Date": None} if fmt == "svg" else {"Software": None} if fmt == "png" else {}
        fig.savefig(path, format=fmt, bbox_inches="tight", metadata=meta)
        paths.append(path)
    return paths


def _np(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def log_spectrogram(wav, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Log-magnitude STFT in dB `f t` of mono audio (Hann window)."""
    x = torch.as_tensor(_np(wav)).reshape(-1)
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    return (20 * torch.log10(spec + 1e-5)).numpy()


def spectrograms(wavs: list, sample_rate: int, titles: list[str] | None = None, ncols: int = 2,
                 vmin: float = -80.0, n_fft: int = 1024, fmax: float | None = None):
    """A grid of log spectrograms (frequency in kHz, time in s). `n_fft=2048, fmax=2000` zooms in where
    the notes are: at 16 kHz 7.8 Hz bins, each partial of a note its own line."""
    n = len(wavs)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.0 * nrows), squeeze=False, layout="constrained")
    top = sample_rate / 2 if fmax is None else min(fmax, sample_rate / 2)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        s = log_spectrogram(wavs[i], n_fft, n_fft // 4)
        s = s[: int(round(top * n_fft / sample_rate)) + 1]
        dur = _np(wavs[i]).size / sample_rate
        im = ax.imshow(s, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=max(vmin + 1, s.max()),
                       extent=(0, dur, 0, top / 1000))
        ax.set(xlabel="time (s)", ylabel="kHz", title=titles[i] if titles else None)
        ax.grid(False)
    fig.colorbar(im, ax=axes, shrink=0.8, label="dB")  # constrained layout: no title/label collisions
    return fig


def waveforms(wavs: list, sample_rate: int, titles: list[str] | None = None):
    fig, axes = plt.subplots(len(wavs), 1, figsize=(10, 1.4 * len(wavs)), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        x = _np(wavs[i]).reshape(-1)
        ax.plot(np.arange(x.size) / sample_rate, x, lw=0.4)
        ax.set(ylim=(-1, 1), ylabel=titles[i] if titles else None)
    axes[-1, 0].set_xlabel("time (s)")
    return fig


def codec_curves(histories: dict[str, list[dict]], keys: tuple[str, ...] = ("chroma", "mel_distance",
                 "nmi_delay", "mmd")):
    """Validation metrics against training step, one line per codec."""
    labels = {"chroma": "chroma similarity (the notes) ↑", "fine_structure_r": "fine-structure r (the notes) ↑",
              "sisnr_db": "SI-SNR (dB) ↑", "mel_distance": "mel distance ↓", "nmi_delay": "NMI, delay-aligned ↓",
              "nmi_lag0": "NMI, lag 0 ↓", "mmd": "MMD² (joint vs shuffled) ↓",
              "usage_perplexity_ratio_min": "min codebook usage (perplexity / size) ↑"}
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(np.atleast_1d(axes), keys):
        for name, hist in histories.items():
            ax.plot([h["step"] for h in hist], [h.get(key, np.nan) for h in hist], marker="o", ms=3, label=name)
        ax.set(xlabel="step", title=labels.get(key, key))
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def heatmaps(matrices: dict[str, np.ndarray], title: str = "", vmax: float | None = None, fmt: str = ".2f",
             cmap: str = "viridis", ncols: int | None = None, hide_diagonal: bool = True):
    """Annotated K x K heatmaps (e.g. NMI between codebooks) on one shared colour scale, in a grid
    of `ncols` columns. The diagonal (a codebook with itself) is left blank by default."""
    mats = {}
    for k, v in matrices.items():
        m = _np(v).astype(np.float64).copy()
        if hide_diagonal:
            np.fill_diagonal(m, np.nan)
        mats[k] = m
    vmax = vmax if vmax is not None else max(float(np.nanmax(m)) for m in mats.values()) or 1.0
    ncols = ncols or len(mats)
    nrows = -(-len(mats) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 1.0, 3.2 * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(mats):]:
        ax.axis("off")
    for ax, (name, m) in zip(axes.flat, mats.items()):
        im = ax.imshow(m, vmin=0, vmax=vmax, cmap=cmap)
        k = m.shape[0]
        for i in range(k):
            for j in range(k):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=8,
                            color="white" if m[i, j] < 0.6 * vmax else "black")
        ax.set(xticks=range(k), yticks=range(k), xlabel="codebook", ylabel="codebook")
        ax.set_title(name, fontsize=9)
        ax.grid(False)
    fig.colorbar(im, ax=axes, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def joint_histograms(codes: dict[str, torch.Tensor], pairs: list[tuple[int, int]], codebook_size: int,
                     lag: int | str = 0, top: int | None = None):
    """Joint histograms of the codes of codebook pairs (i, j): rows codecs, columns pairs. Codes are
    sorted by frequency on each axis, so an independent pair looks like a smooth product
    (mass in the top-left corner fading out) and a dependent one shows structure. lag: pair
    codebook i at frame t with codebook j at frame t - lag ("delay": lag = j - i, the delay alignment).
    top: keep only the `top` most frequent codes of each axis (a denser picture)."""
    fig, axes = plt.subplots(len(codes), len(pairs), figsize=(3.2 * len(pairs), 3.1 * len(codes)), squeeze=False)
    for r, (name, c) in enumerate(codes.items()):
        c = c.long().cpu()
        for col, (i, j) in enumerate(pairs):
            a, b = c[:, i], c[:, j]
            d = (j - i) if lag == "delay" else int(lag)
            if d > 0:
                a, b = a[:, d:], b[:, :-d]
            a, b = a.reshape(-1), b.reshape(-1)
            h = torch.bincount(a * codebook_size + b, minlength=codebook_size**2).view(codebook_size, codebook_size)
            ra = torch.argsort(h.sum(1), descending=True)
            rb = torch.argsort(h.sum(0), descending=True)
            h = h[ra][:, rb].float()[:top, :top]
            ax = axes[r, col]
            ax.imshow(np.log10(1 + h.numpy()), cmap="Greys", aspect="auto", interpolation="nearest")
            ax.set(title=f"{name}: k{i} × k{j}", xlabel=f"code of k{j} (by freq.)", ylabel=f"code of k{i} (by freq.)",
                   xticks=[], yticks=[])
            ax.grid(False)
    fig.tight_layout()
    return fig


def scatter_pairs(sets: dict[str, np.ndarray], s: float = 4.0, ncols: int | None = None):
    """2-D point clouds `n 2` in a grid (the toy independence examples)."""
    ncols = ncols or len(sets)
    nrows = -(-len(sets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 2.8 * nrows), squeeze=False, sharex=True, sharey=True)
    for ax, (name, xy) in zip(axes.flat, sets.items()):
        xy = _np(xy)
        ax.scatter(xy[:, 0], xy[:, 1], s=s, alpha=0.5, lw=0)
        ax.set(title=name, xlabel="x", ylabel="y")
    fig.tight_layout()
    return fig


def tradeoff(rows: list[dict], x: str = "nmi_delay", y: str = "mel_distance", label: str = "codec"):
    """One point per codec: dependence (x) against reconstruction quality (y)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        ax.scatter(r[x], r[y], s=40)
        ax.annotate(str(r[label]), (r[x], r[y]), textcoords="offset points", xytext=(5, 5), fontsize=9)
    names = {"nmi_delay": "NMI between codebooks, delay-aligned\n(← more independent)", "sisnr_db": "SI-SNR (dB) ↑",
             "mmd": "MMD² ↓", "mel_distance": "mel distance ↓", "visqol": "ViSQOL (MOS-LQO) ↑"}
    ax.set(xlabel=names.get(x, x), ylabel=names.get(y, y), title="λ trade-off: dependence vs reconstruction")
    ax.margins(0.25)  # room for the labels next to the points
    fig.tight_layout()
    return fig


def lm_curves(histories: dict[str, list[dict]], key: str = "valid_bits_per_frame"):
    """Training loss (left) and held-out bits per frame (right) per LM, from train_lm's history
    rows ({"step", "loss", "lr"} per step, `key` at the evaluation steps)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, h in histories.items():
        loss = np.asarray([r["loss"] for r in h])
        w = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        a.plot(np.asarray([r["step"] for r in h])[w - 1:], smooth, label=name)
        evals = [r for r in h if key in r]
        b.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", ms=3, label=name)
    a.set(xlabel="step", ylabel="nats / code", title="training loss (moving average)")
    b.set(xlabel="step", ylabel="bits / frame", title="held-out bits per frame ↓")
    b.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over the curves
    fig.tight_layout()
    return fig


def grouped_bars(table: dict[str, dict[str, float]], ylabel: str, title: str = "", fmt: str = ".2f"):
    """table[group][bar] -> value: bars grouped by `group` (e.g. codec), one colour per bar (pattern)."""
    groups = list(table)
    bars = list(dict.fromkeys(b for g in groups for b in table[g]))
    width = 0.8 / max(1, len(bars))
    fig, ax = plt.subplots(figsize=(max(5.5, 2.6 + 1.4 * len(groups) * max(1, len(bars)) / 2), 3.8))
    for i, bar in enumerate(bars):
        xs = np.arange(len(groups)) + (i - (len(bars) - 1) / 2) * width
        vals = [table[g].get(bar, np.nan) for g in groups]
        rects = ax.bar(xs, vals, width, label=bar)
        ax.bar_label(rects, fmt=f"%{fmt}", fontsize=7)
    ax.set(xticks=np.arange(len(groups)), xticklabels=groups, ylabel=ylabel, title=title)
    ax.margins(y=0.15)  # room for the value labels
    if len(bars) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def lines(x, ys: dict[str, list[float]], xlabel: str, ylabel: str, title: str = "", logx: bool = False,
          logy: bool = False):
    """One line per entry of ys against x."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, y in ys.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xscale="log" if logx else "linear",
           yscale="log" if logy else "linear")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def null_histograms(tests: dict[str, dict], bins: int = 30):
    """Permutation tests: the null distribution of the statistic and the observed value."""
    fig, axes = plt.subplots(1, len(tests), figsize=(3.6 * len(tests), 2.9), squeeze=False)
    for ax, (name, t) in zip(axes[0], tests.items()):
        null = _np(t["null"])
        ax.hist(null, bins=bins, color="0.6")
        ax.axvline(t["statistic"], color="C3", lw=2, label="observed")
        ax.set(title=f"{name}\np = {t['p_value']:.3f}", xlabel="MMD²")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def pattern_grids(patterns: list[str], n_q: int = 4, n_frames: int = 6):
    """For each pattern, the step at which the code of (codebook k, frame t) is predicted: codes
    sharing a step are predicted together, independently of each other given the past."""
    from mmdlib.patterns import make_pattern

    fig, axes = plt.subplots(1, len(patterns), figsize=(3.3 * len(patterns), 2.3), squeeze=False)
    for ax, name in zip(axes[0], patterns):
        pat = make_pattern(name, n_q, n_frames)
        steps = pat.step_of().numpy()
        ax.imshow(steps, cmap="Blues", aspect="auto", vmin=-2)
        for k in range(n_q):
            for t in range(n_frames):
                ax.text(t, k, str(steps[k, t]), ha="center", va="center", fontsize=8)
        ax.set(title=f"{name}: {pat.n_steps} steps", xlabel="frame t", ylabel="codebook k",
               xticks=range(n_frames), yticks=range(n_q))
        ax.grid(False)
    fig.tight_layout()
    return fig


def show_jpeg(fig, quality: int = 85) -> None:
    """Display a figure as JPEG and close it (for noisy images such as spectrograms, whose PNG is
    ~10x larger inside a saved notebook)."""
    import io

    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", bbox_inches="tight", pil_kwargs={"quality": quality})
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="jpeg"))
