"""The factorisation-gap instrument on ground truth: does it recover a known within-step dependence?

    python -m mmdlib.bench gap [--codebook-size 256] [--p 0.5] [--patterns parallel,delay]

Token sets from `depth.copy_tokens`: codebook k copies codebook k-1 with probability p inside the
tuple the pattern predicts in one step (the frame for parallel, the delay tuple for delay), else
draws a uniform code; p = 0 gives independent codes. For each pattern and set, an LM of the
`small` preset trains on the train clips (train_lm, early stopping), then `depth.factorization_gap`
trains the depth heads and scores fresh test clips. The exact gap follows from p and the codebook
size (`depth.copy_gap_bits`); the instrument should find ~0 on independent codes and the exact
value on dependent ones (the goal: within 15 %; it understates, a lower bound).

Last line, JSON: independent_gap_bits, dependent_gap_bits, dependent_gap_true_bits (the first
pattern's), relative_error, and every pattern's rows under "patterns".
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

from mmdlib.lm.depth import DEPTH_PRESETS, copy_gap_bits, copy_tokens, factorization_gap
from mmdlib.lm.model import lm_config
from mmdlib.train.config import LM_TRAIN_PRESETS
from mmdlib.train.lm import train_lm

from .common import peak_rss_mib, report


def measure(pattern: str, p: float, a) -> dict:
    align = "delay" if pattern == "delay" else "none"
    sets = {name: copy_tokens(n, a.n_q, a.frames, a.codebook_size, p, align, seed=100 * i + a.seed)
            for i, (name, n) in enumerate((("train", a.n_train), ("valid", a.n_test), ("test", a.n_test)))}
    lm_cfg = lm_config("small", pattern=pattern, n_q=a.n_q, codebook_size=a.codebook_size)
    tcfg = dataclasses.replace(LM_TRAIN_PRESETS["tiny"], steps=a.lm_steps, warmup=a.lm_steps // 10,
                               eval_every=max(1, a.lm_steps // 4), seq_frames=a.window, patience=2,
                               seed=a.seed, progress=False)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as run_dir:
        model, _ = train_lm(sets["train"], sets["valid"], lm_cfg, tcfg, run_dir)
    dcfg = dataclasses.replace(DEPTH_PRESETS[a.depth_preset], seed=a.seed,
                               **({"max_train_windows": a.train_windows} if a.train_windows else {}))
    gap, _ = factorization_gap(model.eval(), sets["train"], sets["valid"], sets["test"], dcfg, a.window)
    # exact: every step of a window holds a full tuple, but for delay the last frame of a window has no partner
    true = copy_gap_bits(a.codebook_size, p, a.n_q) * (1 if align == "none" else (a.window - 1) / a.window)
    print(f"{pattern} p={p:g}: gap {gap['gap_bits']:.3f} ± {gap['gap_se']:.3f} bits/frame (exact {true:.3f}), "
          f"{time.time() - t0:.0f} s", flush=True)
    return {"pattern": pattern, "p": p, "gap_bits": gap["gap_bits"], "gap_se": gap["gap_se"], "true_bits": true,
            "lm_bits": gap["lm_bits"], "factorised_bits": gap["factorised_bits"], "depth_bits": gap["depth_bits"],
            "epochs": gap["epochs"], "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-q", type=int, default=4)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--p", type=float, default=0.5, help="copy probability of the dependent set")
    ap.add_argument("--frames", type=int, default=200, help="frames per clip")
    ap.add_argument("--window", type=int, default=50, help="LM crop and scoring window (frames)")
    ap.add_argument("--n-train", type=int, default=1024, help="train clips (the sweep's number)")
    ap.add_argument("--n-test", type=int, default=64, help="valid and test clips (each)")
    ap.add_argument("--lm-steps", type=int, default=200)
    ap.add_argument("--depth-preset", default="tiny", help="depth.DEPTH_PRESETS (the sweep's: tiny)")
    ap.add_argument("--train-windows", type=int, help="depth heads' training windows (default: the preset's)")
    ap.add_argument("--patterns", default="parallel,delay")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if not 0 < a.p <= 1:
        ap.error(f"--p {a.p}: the dependent set's copy probability must be in (0, 1]")
    torch.set_num_threads(a.threads)
    rows = [measure(pattern, p, a) for pattern in a.patterns.split(",") for p in (0.0, a.p)]
    first = a.patterns.split(",")[0]
    ind = next(r for r in rows if r["pattern"] == first and r["p"] == 0)
    dep = next(r for r in rows if r["pattern"] == first and r["p"] == a.p)
    table = [(f"{r['pattern']} p={r['p']:g}: gap (bits/frame)", f"{r['gap_bits']:.3f} ± {r['gap_se']:.3f} "
              f"(exact {r['true_bits']:.3f}; LM {r['lm_bits']:.2f}, factorised head {r['factorised_bits']:.2f}, "
              f"depth head {r['depth_bits']:.2f}; {r['seconds']:.0f} s)") for r in rows]
    table.append(("peak RSS (MiB)", round(peak_rss_mib())))
    result = {"independent_gap_bits": round(ind["gap_bits"], 4), "dependent_gap_bits": round(dep["gap_bits"], 4),
              "dependent_gap_true_bits": round(dep["true_bits"], 4),
              "relative_error": round(dep["gap_bits"] / dep["true_bits"] - 1, 4),
              "codebook_size": a.codebook_size, "n_q": a.n_q, "p": a.p, "n_train": a.n_train,
              "train_windows": a.train_windows or DEPTH_PRESETS[a.depth_preset].max_train_windows, "patterns": rows}
    return report(f"factorisation gap on copy-dependent codes (K={a.n_q}, v={a.codebook_size}, "
                  f"{a.n_train} train clips of {a.frames} frames)", table, result)


if __name__ == "__main__":
    main()
