"""Generation speed per codebook pattern (KV cache, batch 1), and KV-cache scaling.

    python -m mmdlib.bench generate [--frames 250] [--repeats 3] [--checkpoint runs/lm/lm.pt]

Times `sampling.generate` for each pattern with the same transformer (the `tiny` preset, random init
unless an LM model file (lm.pt) is given: its weights are used for its own pattern, its config for all).
Reports the min over repeats (the CPU may be shared), the flatten / delay time ratio (the step
ratio K T / (T + K - 1) is its ceiling, ~4 for K = 4, T = 250), the joint model in T steps
(`depth`: the parallel trunk with a depth head of DEPTH_PRESETS[--depth-preset], mmdlib.lm.depth)
over delay (`depth_over_delay`, goal <= 1.5) and the delay time for 4x the frames over 1x (linear
in steps with a cache, plus a small O(s) attention term per step).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from mmdlib.lm.depth import DEPTH_PRESETS, DepthHead, generate_depth
from mmdlib.lm.model import TokenLM, lm_config
from mmdlib.lm.sampling import generate
from mmdlib.patterns import PATTERNS


def time_generation(model: TokenLM, n_frames: int, repeats: int, head: DepthHead | None = None) -> float:
    """Min wall seconds over repeats of sampling n_frames (batch 1); with a head: trunk + depth head."""
    def sample(n, seed):
        return generate(model, n, seed=seed) if head is None else generate_depth(model, head, n, seed=seed)

    sample(min(n_frames, 8), 0)  # warm-up (allocator, kernels)
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        sample(n_frames, r)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-q", type=int, default=4)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--scale", type=int, default=4, help="cache scaling: frames x scale vs frames (delay)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--patterns", default=",".join(PATTERNS) + ",depth", help="'depth': parallel trunk + depth head")
    p.add_argument("--depth-preset", default="tiny", choices=sorted(DEPTH_PRESETS))
    p.add_argument("--checkpoint", default=None, help="an LM model file (run_dir/lm.pt of train_lm)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (per-step ops are tiny)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    trained = TokenLM.load(a.checkpoint, a.device) if a.checkpoint else None
    base = trained.cfg if trained else lm_config(a.preset, n_q=a.n_q)
    base = dataclasses.replace(base, max_steps=max(base.max_steps, base.n_q * a.frames * a.scale + base.n_q))

    def model_for(pattern: str) -> TokenLM:
        if trained is not None and pattern == trained.cfg.pattern:
            return trained
        torch.manual_seed(0)
        return TokenLM(dataclasses.replace(base, pattern=pattern)).to(a.device)

    result = {"device": a.device, "threads": a.threads, "n_q": base.n_q, "frames": a.frames,
              "dim": base.dim, "n_layers": base.n_layers, "codebook_size": base.codebook_size,
              "repeats": a.repeats, "patterns": {}}
    print(f"generation, batch 1, K={base.n_q}, T={a.frames}, dim {base.dim}, {base.n_layers} layers, "
          f"v={base.codebook_size}, min of {a.repeats}")
    print(f"{'pattern':<14}{'steps':>7}{'seconds':>10}{'ms/step':>9}")
    for name in a.patterns.split(","):
        model = model_for("parallel" if name == "depth" else name)
        head = None
        if name == "depth":
            torch.manual_seed(0)
            head = DepthHead(model, DEPTH_PRESETS[a.depth_preset]).to(a.device)
        steps = model.make_pattern(a.frames).n_steps
        sec = time_generation(model, a.frames, a.repeats, head)
        result["patterns"][name] = {"seconds": round(sec, 4), "steps": steps}
        print(f"{name:<14}{steps:>7}{sec:>10.3f}{1000 * sec / steps:>9.3f}")

    pats = result["patterns"]
    if "flatten" in pats and "delay" in pats:
        result["flatten_over_delay"] = round(pats["flatten"]["seconds"] / pats["delay"]["seconds"], 3)
        result["step_ratio"] = round(pats["flatten"]["steps"] / pats["delay"]["steps"], 3)
        print(f"flatten / delay: {result['flatten_over_delay']:.2f}x time, {result['step_ratio']:.2f}x steps")
    if "depth" in pats and "delay" in pats:
        result["depth_over_delay"] = round(pats["depth"]["seconds"] / pats["delay"]["seconds"], 3)
        print(f"depth / delay: {result['depth_over_delay']:.2f}x time (T trunk steps + K head steps per frame)")
    delay = model_for("delay")
    one = pats["delay"]["seconds"] if "delay" in pats else time_generation(delay, a.frames, a.repeats)
    many = time_generation(delay, a.frames * a.scale, a.repeats)
    result["time_4x_over_1x"] = round(many / one, 3)
    result["scale"] = a.scale
    print(f"delay, {a.scale * a.frames} vs {a.frames} frames: {many:.3f} s / {one:.3f} s = {many / one:.2f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
