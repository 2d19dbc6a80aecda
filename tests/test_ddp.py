"""Multi-process training for real: both loops under torchrun (2 CPU processes, gloo), then a
single-process resume of what they wrote."""
import json
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
    from mmdlib.train_codec import main
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
