"""`python -m mmdlib.bench independence`: does the MMD loss make the codebooks independent?

Trains two tiny codecs with the same seed, data and steps: lambda = 0 (baseline) and lambda > 0
with the delay-aligned MMD loss, then measures on the held-out set the delay-aligned mean
pairwise NMI of their codes, the MMD of their residual streams, and their reconstruction.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from ..train_codec import train_codec, train_preset
from .common import peak_rss_mib, report

KEYS = ("nmi_delay", "nmi_lag0", "mmd", "sisnr_db", "mel_distance", "usage_perplexity_ratio_min")


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
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = train_preset("tiny", data=args.data, seed=args.seed, cache_dir=args.cache_dir,
                        **({"steps": args.steps} if args.steps else {}))
    lam = args.lam if args.lam is not None else DEFAULT_LAMBDA
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="mmdlib-bench-independence-"))

    result, rows = {"data": args.data, "steps": base.steps, "lambda": lam, "align": args.align}, []
    for name, weight in (("lambda0", 0.0), ("lambda", lam)):
        cfg = dataclasses.replace(base, mmd_weight=weight, mmd=dataclasses.replace(base.mmd, align=args.align))
        t0 = time.time()
        final = train_codec(cfg, run_dir / f"codec_{name}")["final"]
        result[name] = {k: final[k] for k in KEYS} | {"train_seconds": time.time() - t0}
        rows += [(f"{name}.{k}", v) for k, v in result[name].items()]
    result["nmi_delay_lower"] = result["lambda"]["nmi_delay"] < result["lambda0"]["nmi_delay"]
    result["mmd_lower"] = result["lambda"]["mmd"] < result["lambda0"]["mmd"]
    result["sisnr_cost_db"] = result["lambda0"]["sisnr_db"] - result["lambda"]["sisnr_db"]
    result["peak_rss_mib"] = peak_rss_mib()
    rows += [(k, result[k]) for k in ("nmi_delay_lower", "mmd_lower", "sisnr_cost_db", "peak_rss_mib")]
    return report(f"independence benchmark (tiny, {args.data}, lambda={lam}, align={args.align})", rows, result)


DEFAULT_LAMBDA = 100.0

if __name__ == "__main__":
    main()
