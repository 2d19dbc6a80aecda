"""Benchmark: our blocked exact MMD² vs a plain dense implementation, and the rff estimator.

`python -m mmdlib.bench mmd [--sizes 1024 4096 16384] [--repeats 1] [--threads 2]`

Samples are K·D = 4×64 standardised streams sharing a 2-d latent (so the MMD is clearly nonzero),
6 kernel scales, unbiased estimator. For every N we time the forward pass (no_grad) and
forward+backward of both implementations, and measure the peak extra memory of each run.

Peak memory is the resident set size high-water mark (VmHWM in /proc/self/status, which sees
every allocation, torch's included), reset before each run by writing "5" to
/proc/self/clear_refs; peak extra = VmHWM - VmRSS at the start of the run. Where clear_refs is not
writable, a thread samples psutil's RSS every millisecond instead (may miss short spikes).

The dense forward+backward keeps 3 × 6 exp matrices of N² floats for autograd (~18 GiB at
N = 16384), so it is skipped where its estimate exceeds --dense-limit-gib.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import threading
import time

import torch

from mmdlib.mmd import MMDConfig, check_groups, mmd2, permute_groups, random_permutations, standardize


def dense_mmd2(x, y, scales):
    """The same unbiased formula (i = j pairs dropped, N(N-1)) with three dense N×N matrices."""
    n = x.shape[0]

    def kernel(a, b):
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        d = d.clamp(min=0)
        return sum(torch.exp(-d / (2 * s)) for s in scales)

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    total = kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()
    total = total - 2 * (kxy.sum() - kxy.diagonal().sum())
    return total / (n * (n - 1))


# ----------------------------------------------------------------------------------------------
# Peak memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD fixed at 1 MiB: big blocks go back to the OS on free


class PeakMemory:
    """Context manager: .peak_mib = peak RSS increase during the block."""

    def __enter__(self):
        _LIBC.malloc_trim(0)  # hand freed heap memory back, so RSS starts from what is in use
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self._sampler = None
        except OSError:
            import psutil

            self._proc, self._max, self._stop = psutil.Process(), 0, threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        self._start = _status_kib("VmRSS")
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, self._proc.memory_info().rss // 1024)
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self._sampler is None:
            peak = _status_kib("VmHWM")
        else:
            self._stop.set()
            self._sampler.join()
            peak = self._max
        self.peak_mib = max(0, peak - self._start) / 1024


# ----------------------------------------------------------------------------------------------


def make_sets(n: int, k: int = 4, d: int = 64, seed: int = 0):
    """Joint samples x [n, k·d] and one per-stream shuffle y, plus the permutations [k, n]."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 2, generator=g)
    samples = latent @ torch.randn(2, k * d, generator=g) + 0.3 * torch.randn(n, k * d, generator=g)
    samples = standardize(samples.reshape(n, k, d))
    perms = random_permutations(n, k, g)
    y = permute_groups(samples, perms, check_groups(None, k))
    return samples.flatten(1), y.flatten(1), perms


def run_once(fn, x, y, backward: bool):
    x, y = x.clone().requires_grad_(backward), y.clone().requires_grad_(backward)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            value = fn(x, y)
            if backward:
                value.backward()
        seconds = time.perf_counter() - t0
    return dict(seconds=seconds, peak_mib=mem.peak_mib, value=float(value.detach()))


def best_of(repeats, fn, x, y, backward):
    runs = [run_once(fn, x, y, backward) for _ in range(repeats)]
    return min(runs, key=lambda r: r["seconds"]) | dict(peak_mib=max(r["peak_mib"] for r in runs))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mmdlib.bench mmd", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--rff-n", type=int, default=65536)
    p.add_argument("--rff-features", type=int, default=2048)
    p.add_argument("--dense-limit-gib", type=float, default=6.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = MMDConfig().scales

    def exact(x, y, sources=None):
        return mmd2(x, y, scales, "unbiased", args.block_size, sources=sources)

    def dense(x, y):
        return dense_mmd2(x, y, scales)

    result = {"n": {}}
    print(f"threads={args.threads} block_size={args.block_size} K·D=4×64 scales={scales}")
    print(f"{'N':>6} {'impl':>6} {'pass':>8} {'seconds':>9} {'peak MiB':>9} {'value':>10}")
    exact_values = {}
    for n in args.sizes:
        x, y, _ = make_sets(n)
        row = {}
        for name, fn in (("exact", exact), ("dense", dense)):
            for backward in (False, True):
                key = name if not backward else f"{name}_fwd_bwd"
                n_matrices = 3 * len(scales) if backward else 5
                if name == "dense" and n_matrices * n * n * 4 / 2**30 > args.dense_limit_gib:
                    row[key] = dict(skipped=f"needs ~{n_matrices * n * n * 4 / 2**30:.0f} GiB")
                    print(f"{n:>6} {name:>6} {'fwd+bwd' if backward else 'fwd':>8}   skipped ({row[key]['skipped']})")
                    continue
                r = best_of(args.repeats, fn, x, y, backward)
                row[key] = r
                print(f"{n:>6} {name:>6} {'fwd+bwd' if backward else 'fwd':>8} {r['seconds']:9.3f} "
                      f"{r['peak_mib']:9.1f} {r['value']:10.6f}")
        exact_values[n] = row["exact"]["value"]
        result["n"][str(n)] = row

    # rff: time at --rff-n, accuracy against the exact value at the largest size measured
    ref_n = max(args.sizes)
    g = torch.Generator().manual_seed(1)
    x, y, perms = make_sets(ref_n)
    rff_ref = float(mmd2(x, y, scales, "rff", n_features=args.rff_features, generator=g, sources=perms))
    x, y, perms = make_sets(args.rff_n)
    with PeakMemory() as mem, torch.no_grad():
        t0 = time.perf_counter()
        value = float(mmd2(x, y, scales, "rff", n_features=args.rff_features, generator=g, sources=perms))
        seconds = time.perf_counter() - t0
    rel = abs(rff_ref - exact_values[ref_n]) / abs(exact_values[ref_n])
    result["rff"] = dict(n=args.rff_n, n_features=args.rff_features, seconds=seconds, peak_mib=mem.peak_mib,
                         value=value, rel_error=rel, rel_error_at_n=ref_n)
    print(f"rff N={args.rff_n} features={args.rff_features}: {seconds:.3f} s, peak {mem.peak_mib:.1f} MiB, "
          f"value {value:.6f}; at N={ref_n}: rel. error vs exact {rel:.4f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
