"""`python -m mmdlib.bench codec`: train the tiny codec (or load one) and report its figures.

Prints SI-SNR and mel distance on the held-out synthetic set, the smallest codebook usage
perplexity over codebook size, training throughput (seconds of audio per second) and peak RSS.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ..codec import Codec
from ..train_codec import evaluate_codec, make_datasets, train_codec, train_preset
from .common import peak_rss_mib, report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mmdlib.bench codec", description=__doc__)
    p.add_argument("--checkpoint", help="evaluate this codec.pt instead of training one")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a folder of audio files")
    p.add_argument("--mmd-weight", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", help="where the run lives (default: a temporary folder)")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = dict(data=args.data, seed=args.seed, mmd_weight=args.mmd_weight)
    if args.steps:
        overrides["steps"] = args.steps
    cfg = train_preset("tiny", **overrides)
    rows, result = [], {}
    if args.checkpoint:
        codec = Codec.load(args.checkpoint)
        _, valid = make_datasets(cfg, codec.cfg.sample_rate)
        metrics = evaluate_codec(codec, valid, cfg.mmd)
        throughput = None
    else:
        run_dir = args.run_dir or tempfile.mkdtemp(prefix="mmdlib-bench-codec-")
        t0 = time.time()
        out = train_codec(cfg, run_dir)
        wall = time.time() - t0
        metrics = out["final"]
        throughput = cfg.steps * cfg.batch_size * cfg.segment_seconds / wall
        rows += [("run_dir", run_dir), ("steps", cfg.steps), ("train_seconds", wall)]
        result |= {"steps": cfg.steps, "train_seconds": wall}
    result |= {
        "data": args.data,
        "sisnr_db": metrics["sisnr_db"],
        "mel_distance": metrics["mel_distance"],
        "usage_perplexity_ratio_min": metrics["usage_perplexity_ratio_min"],
        "usage_perplexity": metrics["usage_perplexity"],
        "nmi_delay": metrics["nmi_delay"],
        "mmd": metrics["mmd"],
        "audio_seconds_per_second": throughput,
        "peak_rss_mib": peak_rss_mib(),
    }
    rows += [(k, v) for k, v in result.items() if k not in ("steps", "train_seconds", "usage_perplexity")]
    return report("codec benchmark (tiny preset)", rows, result)


if __name__ == "__main__":
    main()
