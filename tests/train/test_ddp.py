"""Multi-process training for real: both loops under torchrun (2 CPU processes, gloo), then a
single-process resume of what they wrote."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow  # two torch processes start (~20 s each run)


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_train_codec_under_torchrun_then_resume_alone(tmp_path):
    small = ["batch_size=2", "segment_seconds=0.2", "n_train_items=8", "n_valid_items=2", "eval_every=2",
             "ckpt_every=2", "mmd_weight=10", "mmd_start=1", "mmd_macro_batches=2", "eval_visqol=0"]
    torchrun(["-m", "mmdlib.train_codec", "--run-dir", str(tmp_path), "--set", "steps=2", *small], tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["step"] for r in metrics["history"]] == [2]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2  # every rank's RNG states
    # one process carries on from the two-process checkpoint
    from mmdlib.train.codec import main
    main(["--run-dir", str(tmp_path), "--set", "steps=4", *small])
    assert [r["step"] for r in json.loads((tmp_path / "metrics.json").read_text())["history"]] == [2, 4]


def test_train_lm_under_torchrun(tmp_path):
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randint(0, 16, (8, 4, 120), generator=g), tmp_path / "train.pt")
    torch.save(torch.randint(0, 16, (4, 4, 120), generator=g), tmp_path / "valid.pt")
    torchrun(["-m", "mmdlib.train_lm", "--train", "train.pt", "--valid", "valid.pt", "--run-dir", "lm",
              "--lm", "small", "--codebook-size", "16", "--steps", "3"], tmp_path)
    state = torch.load(tmp_path / "lm" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and len(state["rng"]) == 2
    assert torch.isfinite(torch.tensor(state["history"][-1]["valid_bits_per_frame"]))


WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")


def run_worker(kind: str, run_dir, concat: int = 0) -> None:
    """tests/train/ddp_worker.py: under torchrun (2 ranks), or alone on the 2 ranks' batches concatenated."""
    if concat:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, WORKER, kind, str(run_dir), "--concat", str(concat)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    else:
        torchrun([WORKER, kind, str(run_dir)], run_dir.parent)


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        same = torch.allclose(a[name].float(), b[name].float(), rtol=1e-4, atol=1e-6)
        assert same, f"{what}: {name} differs by {float((a[name].float() - b[name].float()).abs().max()):.2e}"


def test_codec_ddp_equals_one_process_on_the_concatenated_batch(tmp_path):
    """3 steps, 2 ranks x batch 2, MMD on from step 1 (λ = 100): the weights, the pooled MMD and the
    validation metrics equal those of one process trained on the 2 ranks' batches concatenated
    (the MMD's gradient under DDP is scaled by the world size, so λ means the same; quantizer
    k-means and restarts off: see tests/train/ddp_worker.py)."""
    run_worker("codec", tmp_path / "ddp")
    run_worker("codec", tmp_path / "one", concat=2)
    ddp, one = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("ddp", "one"))
    assert_same_weights(ddp["model"], one["model"], "codec")
    h_ddp, h_one = ddp["history"][-1], one["history"][-1]
    for key in ("train_mmd", "mel_distance", "sisnr_db", "mmd"):
        assert math.isclose(h_ddp[key], h_one[key], rel_tol=1e-4, abs_tol=1e-6), (key, h_ddp[key], h_one[key])


def test_lm_ddp_equals_one_process_on_the_concatenated_batch(tmp_path):
    """3 steps, 2 ranks x batch 2: the weights, the rank-averaged training losses and the sharded
    validation bits/frame equal those of one process on the concatenated batches."""
    run_worker("lm", tmp_path / "ddp")
    run_worker("lm", tmp_path / "one", concat=2)
    ddp, one = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("ddp", "one"))
    assert_same_weights(ddp["model"], one["model"], "lm")
    for a, b in zip(ddp["history"], one["history"], strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a, b)
    assert math.isclose(ddp["history"][-1]["valid_bits_per_frame"], one["history"][-1]["valid_bits_per_frame"],
                        rel_tol=1e-5)
