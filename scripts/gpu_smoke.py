"""The paper preset on a GPU, first: a few minutes that show whether a real run would work and what it costs.

    python scripts/gpu_smoke.py                        # one GPU (cuda), about 5-8 minutes
    python scripts/gpu_smoke.py --device cpu --quick   # the same path on CPU, scaled down (plumbing only)

1. The paper codec (SEANet + LSTM, 4 x 2048 codes at 32 kHz, discriminator, balancer, the ICML code's
   MMD from step 0) with bf16 autocast: trained to the middle of an MMD macro-batch, stopped, resumed to
   the end (the resume path the paper's checkpoints take), evaluated. Steps/s and peak GPU memory.
2. The paper LM (1024 wide, 24 layers; --lm-layers to shrink) on random codes at its 1,500-frame crop,
   per pattern: training steps/s and peak memory, or the out-of-memory it hits.
3. Cached generation from the delay LM: frames/s.
Prints one table and, last, one JSON line (also written to --out). Run it whenever a GPU is lent, before
anything long.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmdlib.lm.model import LM_PRESETS, TokenLM, sequence_nll  # noqa: E402
from mmdlib.lm.sampling import generate  # noqa: E402
from mmdlib.train.codec import train_codec  # noqa: E402
from mmdlib.train.config import LM_TRAIN_PRESETS, train_preset  # noqa: E402
from mmdlib.train.lm import make_optimizer  # noqa: E402


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def codec_smoke(a, run_dir: Path) -> dict:
    m = a.macro
    steps = 3 * m  # three macro-batches; stopped in the middle of the second
    cfg = train_preset("paper", steps=steps, device=a.device, amp=True, mmd_macro_batches=m, eval_every=steps,
                       ckpt_every=m, eval_visqol=0, n_valid_items=8, batch_size=a.codec_batch,
                       segment_seconds=a.segment)
    reset_peak(a.device)
    t0 = time.time()
    train_codec(cfg, run_dir, stop_at=m + m // 2, progress=False)  # checkpoint mid macro-batch
    out = train_codec(cfg, run_dir, progress=False)                 # resume on the device
    seconds = time.time() - t0
    final = out["final"]
    return {"codec_steps": steps, "codec_steps_per_s": steps / seconds, "codec_peak_gib": peak_gib(a.device),
            "codec_batch": cfg.batch_size, "codec_mel": final["mel_distance"], "codec_train_mmd": out["last_losses"].get("mmd"),
            "codec_finite": all(v == v for v in out["last_losses"].values())}


def lm_smoke(a, pattern: str) -> dict:
    lm_cfg = dataclasses.replace(LM_PRESETS["paper"], pattern=pattern, n_layers=a.lm_layers)
    tcfg = LM_TRAIN_PRESETS["paper"]
    frames, batch = a.frames, a.lm_batch
    model = TokenLM(lm_cfg).to(a.device)
    opt = make_optimizer(model, tcfg)
    codes = torch.randint(0, lm_cfg.codebook_size, (batch, lm_cfg.n_q, frames), device=a.device)
    reset_peak(a.device)
    try:
        t0 = time.time()
        for _ in range(a.lm_steps):
            with torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16):
                nll, n = sequence_nll(model, codes)
            opt.zero_grad(set_to_none=True)
            (nll / n).backward()
            opt.step()
        if a.device.startswith("cuda"):
            torch.cuda.synchronize(a.device)
        rate = a.lm_steps / (time.time() - t0)
    except torch.OutOfMemoryError as e:
        return {f"lm_{pattern}_error": f"out of memory at batch {batch} x {frames} frames: {str(e)[:160]}"}
    row = {f"lm_{pattern}_steps_per_s": rate, f"lm_{pattern}_peak_gib": peak_gib(a.device)}
    if pattern == "delay":
        t0 = time.time()
        generate(model, a.gen_frames, batch_size=1, top_k=250)
        row["gen_delay_frames_per_s"] = a.gen_frames / (time.time() - t0)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="scaled down: the plumbing on a CPU in a few minutes")
    p.add_argument("--run-dir", default="runs/gpu_smoke")
    p.add_argument("--out", default=None, help="the JSON result (default <run-dir>/smoke.json)")
    a = p.parse_args(argv)
    scale = dict(macro=2, codec_batch=2, segment=0.5, lm_layers=2, frames=64, lm_batch=2, lm_steps=2, gen_frames=16) \
        if a.quick else dict(macro=8, codec_batch=64, segment=1.0, lm_layers=24, frames=1500, lm_batch=32, lm_steps=10,
                             gen_frames=250)
    for k, v in scale.items():
        setattr(a, k, v)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here (use --device cpu --quick to check the plumbing)")
    run_dir = ROOT / a.run_dir
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    result = {"device": a.device, "quick": a.quick,
              "gpu": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else None}
    result |= codec_smoke(a, run_dir / "codec")
    for pattern in ("delay", "parallel", "flatten"):
        result |= lm_smoke(a, pattern)
    for k, v in result.items():
        print(f"{k:<28} {v:.4g}" if isinstance(v, float) else f"{k:<28} {v}")
    out = Path(a.out) if a.out else run_dir / "smoke.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
