"""`python -m mmdlib.bench independence`: does the MMD loss make the codebooks independent?

Trains two tiny codecs with the same seed, data and steps: lambda = 0 (baseline) and lambda > 0
with the delay-aligned MMD loss, then measures both on the same held-out clips (`held_out`,
larger than the training loop's validation set so that the plug-in MI is less biased): the
delay-aligned mean pairwise NMI of their codes, the MMD of their residual streams (as trained,
and with distances normalised by K·D, whose kernels do not vanish as easily when the encoder
spreads its latents: see the README's results), and their reconstruction (ViSQOL on the first 16
clips, mel distance and SI-SNR on all).

A finished run in --run-dir is reused, not retrained.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from mmdlib.codec.model import Codec
from mmdlib.data.datasets import make_dataset
from mmdlib.eval.codec import evaluate_codec
from mmdlib.mmd.loss import MMDConfig
from mmdlib.pipeline.layout import codec_name
from mmdlib.pipeline.params import variant_tag
from mmdlib.train.codec import train_codec
from mmdlib.train.config import train_preset

from .common import peak_rss_mib, report

KEYS = ("nmi_delay", "nmi_lag0", "mmd", "mmd_normalized", "visqol", "mel_distance", "sisnr_db", "usage_perplexity_ratio_min")
N_VISQOL = 16  # of the held-out clips (~0.5 s of CPU each)


def held_out(codec: Codec, cfg, clips: int = 64, seconds: float = 4.0, mmd_frames: int = 4096) -> dict:
    """Reconstruction and dependence of `codec` on `clips` held-out clips of `seconds` (the same
    clips for every codec of a comparison): NMI on all their frames, MMD² on the first
    `mmd_frames` frames (exact estimator, cost ∝ frames²), raw and normalised distances."""
    valid = make_dataset(cfg.data, "valid", codec.cfg.sample_rate, seconds, clips, cfg.seed, cfg.cache_dir)
    valid = torch.utils.data.Subset(valid, range(min(clips, len(valid))))
    mmd = {name: MMDConfig(align=cfg.mmd.align, normalize_distance=norm)
           for name, norm in (("mmd", False), ("mmd_normalized", True))}
    return evaluate_codec(codec, valid, mmd, batch_size=8, seed=cfg.seed, mmd_frames=mmd_frames,
                          n_visqol=min(N_VISQOL, len(valid)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mmdlib.bench independence", description=__doc__)
    p.add_argument("--lambda", dest="lam", type=float, default=None, help="MMD weight of the second codec")
    p.add_argument("--align", default="delay", choices=("delay", "none"))
    p.add_argument("--steps", type=int, help="training steps (default: the tiny preset's)")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a folder of audio files")
    p.add_argument("--cache-dir", help="decoded-audio cache for folder data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", help="where the two runs live (default: a temporary folder)")
    p.add_argument("--threads", type=int)
    p.add_argument("--estimator", default="unbiased", choices=("unbiased", "expected"),
                   help="MMD estimator of the λ > 0 codec's loss (expected: shuffle-free; its run gets a suffix)")
    p.add_argument("--raw-distance", action="store_true",
                   help="train with raw MMD distances, as the reference (the tiny preset normalises them by K·D)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = train_preset("tiny", data=args.data, seed=args.seed, cache_dir=args.cache_dir,
                        **({"steps": args.steps} if args.steps else {}))
    lam = args.lam if args.lam is not None else DEFAULT_LAMBDA
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="mmdlib-bench-independence-"))

    result = {"data": args.data, "steps": base.steps, "lambda": lam, "align": args.align,
              "estimator": args.estimator, "raw_distance": args.raw_distance}
    rows = []
    for name, weight in (("codec_lambda0", 0.0), ("codec_lambda", lam)):  # "lambda" stays the weight
        variant = bool(weight) and args.estimator != "unbiased"  # λ = 0: the same baseline for every variant
        mmd = dataclasses.replace(base.mmd, align=args.align, estimator=args.estimator if variant else "unbiased",
                                  normalize_distance=base.mmd.normalize_distance and not (args.raw_distance and weight))
        cfg = dataclasses.replace(base, mmd_weight=weight, mmd=mmd)
        out = run_dir / codec_name(weight, variant_tag(mmd))  # the notebooks' layout
        final = train_codec(cfg, out)["history"][-1]
        result[name] = {k: v for k, v in held_out(Codec.load(out / "codec.pt"), cfg).items() if k in KEYS}
        result[name]["train_seconds"] = final["seconds"]  # all sessions of the run (to its last evaluation)
        rows += [(f"{name}.{k}", v) for k, v in result[name].items()]
    result["nmi_delay_lower"] = result["codec_lambda"]["nmi_delay"] < result["codec_lambda0"]["nmi_delay"]
    result["mmd_lower"] = result["codec_lambda"]["mmd"] < result["codec_lambda0"]["mmd"]
    result["mmd_normalized_lower"] = result["codec_lambda"]["mmd_normalized"] < result["codec_lambda0"]["mmd_normalized"]
    result["sisnr_cost_db"] = result["codec_lambda0"]["sisnr_db"] - result["codec_lambda"]["sisnr_db"]
    result["visqol_cost"] = result["codec_lambda0"]["visqol"] - result["codec_lambda"]["visqol"]
    result["mel_cost"] = result["codec_lambda"]["mel_distance"] - result["codec_lambda0"]["mel_distance"]
    result["peak_rss_mib"] = peak_rss_mib()
    rows += [(k, result[k]) for k in ("nmi_delay_lower", "mmd_lower", "mmd_normalized_lower", "visqol_cost", "mel_cost",
                                     "sisnr_cost_db", "peak_rss_mib")]
    return report(f"independence benchmark (tiny, {args.data}, lambda={lam}, align={args.align})", rows, result)


DEFAULT_LAMBDA = 100.0

if __name__ == "__main__":
    main()
