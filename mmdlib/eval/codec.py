"""A codec on held-out clips: what a listener hears (ViSQOL, mel distance, SI-SNR, and whether the notes
are there: fine-structure correlation and chroma similarity), how it uses its codebooks, and how
dependent they are (bias-corrected NMI of the codes, MMD² of the residual streams).
Used by the training loop's validation, the benchmarks, the notebooks' stages and the λ sweep."""
from __future__ import annotations

import torch

from mmdlib.codec.model import Codec
from mmdlib.data.datasets import clip_batches
from mmdlib.eval.metrics import (
    NOTE_FFT,
    NOTE_RATE,
    VISQOL_MIN_SECONDS,
    chroma_similarity,
    codebook_usage,
    fine_structure_r,
    mel_distance,
    si_snr,
    visqol,
)
from mmdlib.mmd.dependence import dependence_summary
from mmdlib.mmd.loss import MMDConfig, mmd_independence


@torch.no_grad()
def evaluate_codec(codec: Codec, valid, mmd_cfg: MMDConfig | dict[str, MMDConfig] | None = None,
                   batch_size: int = 16, device: str | torch.device = "cpu", seed: int = 0,
                   mmd_frames: int | None = None, keep_audio: bool = False, n_visqol: int = 0) -> dict:
    """SI-SNR, mel distance, ViSQOL, the note metrics, per-codebook usage and dependence of a codec on a
    held-out set.

    `mmd_cfg`: one MMDConfig (result key "mmd") or {key: MMDConfig} for several variants; the
    MMD² of the residual streams is taken over the first clips holding `mmd_frames` frames (all
    when None; the exact estimator costs ∝ frames²). `n_visqol`: ViSQOL (MOS-LQO) of the first
    n_visqol clips, mean under "visqol" and per clip under "visqol_clips" (about 0.5 s of CPU per
    4 s clip). "fine_structure_r" and "chroma" (`mmdlib.eval.metrics`: are the reference's partials and
    pitch classes in the reconstruction) need clips of at least 0.128 s. Per-clip values are under
    "mel_clips", "fine_structure_r_clips" and "chroma_clips". `keep_audio` adds the reconstructions
    `b 1 n` (CPU) under "audio".
    """
    was_training = codec.training
    codec.eval()
    sisnr, mel, codes, streams, audio, scores, fine, chroma = [], [], [], [], [], [], [], []
    for i, wav in zip(range(0, len(valid), batch_size), clip_batches(valid, batch_size)):
        wav = wav.to(device)
        out = codec(wav)
        sisnr.append(si_snr(out.wav, wav))
        mel.append(mel_distance(out.wav, wav, codec.cfg.sample_rate))
        if wav.shape[-1] * NOTE_RATE >= NOTE_FFT * codec.cfg.sample_rate:  # long enough for the note metrics
            fine.append(fine_structure_r(out.wav, wav, codec.cfg.sample_rate))
            chroma.append(chroma_similarity(out.wav, wav, codec.cfg.sample_rate))
        codes.append(out.codes)
        streams.append(out.streams)
        if i < n_visqol and wav.shape[-1] >= VISQOL_MIN_SECONDS * codec.cfg.sample_rate:  # short clips: no ViSQOL
            m = min(len(wav), n_visqol - i)
            scores.append(visqol(out.wav[:m].cpu(), wav[:m].cpu(), codec.cfg.sample_rate))
        if keep_audio:
            audio.append(out.wav.cpu())
    codec.train(was_training)
    codes, streams = torch.cat(codes), torch.cat(streams)
    if mmd_frames is not None:  # whole clips, the first ones
        streams = streams[: max(1, -(-mmd_frames // streams.shape[-1]))]
    usage = codebook_usage(codes, codec.cfg.quantizer.codebook_size)
    dep = dependence_summary(codes, codec.cfg.quantizer.codebook_size)
    mmd_cfgs = mmd_cfg if isinstance(mmd_cfg, dict) else {"mmd": mmd_cfg or MMDConfig()}
    out = {
        "sisnr_db": torch.cat(sisnr).mean().item(),
        "mel_distance": torch.cat(mel).mean().item(),
        "mel_clips": torch.cat(mel).tolist(),
        "usage_perplexity": usage["perplexity"].tolist(),
        "usage_perplexity_ratio_min": usage["ratio"].min().item(),
        "nmi_lag0": float(dep["nmi_lag0"]),
        "nmi_delay": float(dep["nmi_delay"]),
        "code_entropy_bits": float(dep["entropy_mean"]),   # mean over codebooks: collapse shows here
        **{key: mmd_independence(streams, c, seed=seed).item() for key, c in mmd_cfgs.items()},
    }
    for key, parts in (("fine_structure_r", fine), ("chroma", chroma)):
        if parts:
            values = torch.cat(parts)
            out |= {key: values.mean().item(), f"{key}_clips": values.tolist()}
    if scores:
        out |= {"visqol": torch.cat(scores).mean().item(), "visqol_clips": torch.cat(scores).tolist()}
    if mmd_frames is not None:
        out |= {"frames": codes.shape[0] * codes.shape[-1], "mmd_frames": streams.shape[0] * streams.shape[-1]}
    if keep_audio:
        out["audio"] = torch.cat(audio)
    return out
