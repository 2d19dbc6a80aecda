"""Benchmark: our blocked exact MMD² vs a plain dense implementation, the shuffle-free
("expected") estimator, and the rff estimator.

`python -m mmdlib.bench mmd [--sizes 1024 4096 16384] [--impls exact dense expected] [--repeats 1]
[--threads 2] [--no-backward]`

Samples are K·D = 4×64 standardised streams sharing a 2-d latent (so the MMD is clearly nonzero),
6 kernel scales. "exact" and "dense" are the unbiased estimator on one shuffle; "expected" is its
average over all shuffles from the 4 per-stream Gram matrices (`mmd_expected`). For every N we
time the forward pass (no_grad) and forward+backward, and measure the peak extra memory of each run.

Variance (`--toy-n`, `--toy-draws`): on the same toy at N = toy-n, the SD over data draws of the
shuffled estimator (one shuffle per draw) and of the expected one, and the SD over shuffles of
the shuffled estimator on one draw (the part the expected estimator removes).

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

from mmdlib.mmd.expected import mmd2_expected
from mmdlib.mmd.loss import (
    MMDConfig,
    check_groups,
    expected_pairs,
    mmd2,
    permute_groups,
    random_permutations,
    standardize,
)


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


def make_sets(n: int, k: int = 4, d: int = 64, seed: int = 0, shared: bool = True):
    """Joint samples x [n, k·d] and one per-stream shuffle y, plus the permutations [k, n].
    shared=False: a latent per stream (independent streams)."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 2 if shared else 2 * k, generator=g)
    mix = torch.randn(2, k * d, generator=g)
    mix = mix if shared else torch.block_diag(*mix.view(2, k, d).unbind(1))  # stream i reads latents 2i, 2i+1
    samples = latent @ mix + 0.3 * torch.randn(n, k * d, generator=g)
    samples = standardize(samples.reshape(n, k, d))
    perms = random_permutations(n, k, g)
    y = permute_groups(samples, perms, check_groups(None, k))
    return samples.flatten(1), y.flatten(1), perms


def variance_toy(n: int, draws: int, scales, block_size: int, shared: bool) -> dict:
    """SD over data draws of the shuffled (one shuffle each) and expected estimators, and SD over
    `draws` shuffles of the shuffled estimator on the first draw."""
    def shuffled(x, seed):
        perms = random_permutations(n, 4, torch.Generator().manual_seed(seed))
        y = permute_groups(x.view(n, 4, -1), perms, check_groups(None, 4)).flatten(1)
        return float(mmd2(x, y, scales, "unbiased", block_size, sources=perms, expected_pairs=expected_pairs(n, 4)))

    with torch.no_grad():
        data = [make_sets(n, seed=100 + r, shared=shared)[0] for r in range(draws)]
        one_shuffle = torch.tensor([shuffled(x, 1000 + r) for r, x in enumerate(data)])
        expected = torch.tensor([float(mmd2_expected(list(x.view(n, 4, -1).unbind(1)), scales, block_size))
                                 for x in data])
        shuffles = torch.tensor([shuffled(data[0], 2000 + r) for r in range(draws)])
    return dict(shuffled_sd=float(one_shuffle.std()), expected_sd=float(expected.std()),
                shuffle_only_sd=float(shuffles.std()), shuffled_mean=float(one_shuffle.mean()),
                expected_mean=float(expected.mean()), shuffles_mean_first_draw=float(shuffles.mean()),
                expected_first_draw=float(expected[0]))


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
    p.add_argument("--impls", nargs="+", default=["exact", "dense", "expected"], choices=["exact", "dense", "expected"])
    p.add_argument("--no-backward", action="store_true", help="time the forward passes only")
    p.add_argument("--toy-n", type=int, default=1024)
    p.add_argument("--toy-draws", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = MMDConfig().scales

    def exact(x, y, sources=None):
        return mmd2(x, y, scales, "unbiased", args.block_size, sources=sources)

    def dense(x, y):
        return dense_mmd2(x, y, scales)

    def expected(x, y):  # y unused: no shuffle
        return mmd2_expected(list(x.view(x.shape[0], 4, -1).unbind(1)), scales, args.block_size)

    impls = {"exact": exact, "dense": dense, "expected": expected}

    result = {"n": {}}
    print(f"threads={args.threads} block_size={args.block_size} K·D=4×64 scales={scales}")
    print(f"{'N':>6} {'impl':>6} {'pass':>8} {'seconds':>9} {'peak MiB':>9} {'value':>10}")
    exact_values = {}
    for n in args.sizes:
        x, y, _ = make_sets(n)
        row = {}
        for name in args.impls:
            fn = impls[name]
            for backward in (False,) if args.no_backward else (False, True):
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
        if "exact" in row:
            exact_values[n] = row["exact"]["value"]
        result["n"][str(n)] = row

    result["variance"] = dict(n=args.toy_n, draws=args.toy_draws)
    toys = (("dependent", True), ("independent", False))
    if args.toy_draws < 2:
        result["variance"]["skipped"] = f"--toy-draws {args.toy_draws}: an SD over draws needs at least 2"
        print(f"variance toy skipped ({result['variance']['skipped']})")
        toys = ()
    for name, shared in toys:
        toy = result["variance"][name] = variance_toy(args.toy_n, args.toy_draws, scales, args.block_size, shared)
        print(f"{name} toy, N={args.toy_n}, {args.toy_draws} draws: SD over draws shuffled {toy['shuffled_sd']:.6f}, "
              f"expected {toy['expected_sd']:.6f} (means {toy['shuffled_mean']:.6f}, {toy['expected_mean']:.6f}); "
              f"one draw: SD over shuffles {toy['shuffle_only_sd']:.6f}, mean {toy['shuffles_mean_first_draw']:.6f} "
              f"vs expected {toy['expected_first_draw']:.6f}")
    if not exact_values:
        print(json.dumps(result))
        return result

    # rff: time at --rff-n, accuracy against the exact value at the largest size measured
    ref_n = max(exact_values)
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
