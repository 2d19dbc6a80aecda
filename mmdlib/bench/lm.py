"""LM training speed per codebook pattern: optimiser steps and codes per second.

    python -m mmdlib.bench lm [--preset small] [--seq-frames 50] [--batch-size 16] [--steps 30] [--threads 2]

Times `train_lm`'s step (forward, backward, clip, AdamW) on random codes for each pattern, the same
transformer for all: flatten's sequences are K times longer, so it trains on K times the steps per
frame. Reports the median step time over --steps steps after --warmup steps, codes (frames x K) per
second, and flatten / delay. The sweep trains two or three LMs per codec (mmdlib.experiment): these
numbers are its LM budget. `--compile` times the same steps under torch.compile (its compile time
apart).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmdlib.bench.common import peak_rss_mib, report
from mmdlib.lm.model import LM_PRESETS, TokenLM, lm_config, sequence_nll
from mmdlib.patterns import PATTERNS
from mmdlib.train.config import LMTrainConfig
from mmdlib.train.lm import make_optimizer


def step_seconds(model: torch.nn.Module, codes: torch.Tensor, cfg: LMTrainConfig, steps: int, warmup: int) -> float:
    """Median wall seconds of one training step on `codes` [b, k, t] (after `warmup` untimed steps)."""
    opt = make_optimizer(model, cfg)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        nll, n = sequence_nll(model, codes)
        opt.zero_grad(set_to_none=True)
        (nll / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=sorted(LM_PRESETS), help="LM architecture (the sweep's: small)")
    p.add_argument("--n-q", type=int, default=4)
    p.add_argument("--seq-frames", type=int, default=50, help="training crop (the sweep's: 50 frames, 1 s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=30, help="timed steps per pattern")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--patterns", default=",".join(PATTERNS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    a = p.parse_args(argv)
    for name in ("seq_frames", "batch_size", "steps", "threads", "n_q"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    patterns = a.patterns.split(",")
    unknown = [x for x in patterns if x not in PATTERNS]
    if unknown:
        p.error(f"--patterns: unknown {unknown}; choose from {list(PATTERNS)}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = LMTrainConfig(batch_size=a.batch_size, seq_frames=a.seq_frames)
    rows, result = [], {"preset": a.preset, "seq_frames": a.seq_frames, "batch_size": a.batch_size,
                        "threads": a.threads, "compile": a.compile}
    for pattern in patterns:
        lm_cfg = lm_config(a.preset, n_q=a.n_q, pattern=pattern)
        model = TokenLM(lm_cfg)
        codes = torch.randint(0, lm_cfg.codebook_size, (a.batch_size, a.n_q, a.seq_frames))
        net = torch.compile(model) if a.compile else model
        s = step_seconds(net, codes, cfg, a.steps, a.warmup)
        codes_per_s = a.batch_size * a.n_q * a.seq_frames / s
        result |= {f"{pattern}_step_s": s, f"{pattern}_codes_per_s": codes_per_s,
                   f"{pattern}_seq_len": model.make_pattern(a.seq_frames).n_steps}
        rows += [(f"{pattern}: s / step", s), (f"{pattern}: codes / s", codes_per_s)]
    if "flatten" in patterns and "delay" in patterns:
        result["flatten_over_delay"] = result["flatten_step_s"] / result["delay_step_s"]
        rows.append(("flatten / delay (time per step)", result["flatten_over_delay"]))
    result["peak_rss_mib"] = peak_rss_mib()
    title = (f"LM training steps: {a.preset} ({sum(x.numel() for x in TokenLM(lm_cfg).parameters()) / 1e6:.2f} M "
             f"parameters), batch {a.batch_size} x {a.seq_frames} frames x {a.n_q} codebooks, {a.threads} threads")
    return report(title, rows, result)


if __name__ == "__main__":
    main()
