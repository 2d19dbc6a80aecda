"""Benchmark: our independence test (`dependence.permutation_test`) against hyppo's HSIC test.

`python -m mmdlib.bench hsic [--n 1000] [--permutations 200] [--runs 20] [--power-n 300] [--threads 1]`

hyppo (`pip install hyppo`, optional) tests two variables: `Hsic().test(x, y, reps, auto=False)`,
a Gaussian kernel with the median-heuristic width, kernel matrices computed once and re-indexed
for every i.i.d. permutation. Ours: the shuffle-free MMD² (6 kernel scales on standardised
streams, `MMDConfig(align="none")`), per-group distances computed once and re-indexed for every
surrogate; null "shift" (circular shifts, one clip of n frames: valid for time series) and
"frames" (i.i.d. permutations, hyppo's null).

1. Time of one test with K = 2 streams of dimension --dim at --n samples and --permutations draws
   (the same data for both; hyppo's numba code compiled beforehand), and ours at K = 4.
2. Rejection rate at α = 0.05 over --runs data draws of --power-n samples: i.i.d. independent
   streams (false positives), i.i.d. dependent streams (power; "sine": y = sin(2x) + noise, a
   dependence the correlation misses), and independent AR(1) streams with ρ = 0.9 (false
   positives of time series: i.i.d. permutations are invalid there, hyppo's included).
The hyppo columns are skipped, with a note, when hyppo is not installed.
"""
from __future__ import annotations

import argparse
import math
import time
import warnings

import torch

from mmdlib.mmd.loss import MMDConfig
from mmdlib.mmd.permutation import permutation_test

from .common import report

ALPHA = 0.05


def make_streams(kind: str, n: int, k: int, dim: int, seed: int) -> torch.Tensor:
    """Streams [1, k, dim, n] (one clip of n frames): independent, sine-dependent or AR(1)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(1, k, dim, n, generator=g)
    if kind == "sine":  # every stream after the first is a noisy sine of the first
        s[:, 1:] = torch.sin(2 * s[:, :1]) + 3.0 * s[:, 1:]
    elif kind == "ar1":
        rho = 0.9
        for t in range(1, n):
            s[..., t] = rho * s[..., t - 1] + math.sqrt(1 - rho**2) * s[..., t]
    return s


def hyppo_test(streams: torch.Tensor, permutations: int, workers: int):
    """p-value of hyppo's HSIC permutation test on the first two streams, or None without hyppo."""
    try:
        from hyppo.independence import Hsic
    except ImportError:
        return None
    x, y = (streams[0, i].T.double().numpy() for i in (0, 1))  # [n, dim]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the number of replications is low"
        return float(Hsic().test(x, y, reps=permutations, workers=workers, auto=False).pvalue)


def ours_test(streams: torch.Tensor, permutations: int, null: str, seed: int) -> float:
    return permutation_test(streams, MMDConfig(align="none"), permutations, seed=seed, null=null)["p_value"]


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mmdlib.bench hsic", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="samples of the timed tests")
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--dim", type=int, default=1, help="dimension of each stream")
    p.add_argument("--runs", type=int, default=20, help="data draws of the rejection rates")
    p.add_argument("--power-n", type=int, default=300, help="samples of the rejection-rate tests")
    p.add_argument("--threads", type=int, default=1, help="torch threads, and hyppo workers")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    have_hyppo = hyppo_test(make_streams("sine", 30, 2, args.dim, 0), 5, 1) is not None  # also compiles numba
    result = {"n": args.n, "permutations": args.permutations, "dim": args.dim, "threads": args.threads,
              "hyppo": have_hyppo, "time_s": {}, "rejection_rate": {}}
    rows = []

    data = make_streams("sine", args.n, 4, args.dim, seed=0)
    timings = {"ours_shift_k2": lambda: ours_test(data[:, :2], args.permutations, "shift", 0),
               "ours_frames_k2": lambda: ours_test(data[:, :2], args.permutations, "frames", 0),
               "ours_shift_k4": lambda: ours_test(data, args.permutations, "shift", 0)}
    if have_hyppo:
        timings["hyppo_k2"] = lambda: hyppo_test(data, args.permutations, args.threads)
    for name, fn in timings.items():
        seconds, p_value = timed(fn)
        result["time_s"][name] = seconds
        rows.append((f"time {name} (p={p_value:.3f})", seconds))
    if have_hyppo:
        result["speedup_vs_hyppo_k2"] = result["time_s"]["hyppo_k2"] / result["time_s"]["ours_shift_k2"]
        rows.append(("speedup vs hyppo (K=2, shift)", result["speedup_vs_hyppo_k2"]))
    else:
        rows.append(("hyppo", "not installed: pip install hyppo for its columns"))

    tests = {"ours_shift": lambda s, seed: ours_test(s, args.permutations, "shift", seed),
             "ours_frames": lambda s, seed: ours_test(s, args.permutations, "frames", seed)}
    if have_hyppo:
        tests["hyppo"] = lambda s, seed: hyppo_test(s, args.permutations, args.threads)
    for kind, k in (("independent", 2), ("sine", 2), ("ar1", 2), ("sine", 4)):
        if k == 4:
            tests = {name: fn for name, fn in tests.items() if name != "hyppo"}  # two variables only
        draws = [make_streams(kind, args.power_n, k, args.dim, seed=1000 + r) for r in range(args.runs)]
        for name, fn in tests.items():
            rate = sum(fn(s, r) <= ALPHA for r, s in enumerate(draws)) / args.runs
            result["rejection_rate"][f"{kind}_k{k}_{name}"] = rate
            rows.append((f"reject {kind} K={k} {name} (n={args.power_n})", rate))
    result["runs"], result["power_n"] = args.runs, args.power_n
    return report(f"independence tests (n={args.n}, {args.permutations} permutations, {args.threads} thread(s))",
                  rows, result)


if __name__ == "__main__":
    main()
