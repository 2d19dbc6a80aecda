"""The training skeleton of checkpoint.py: atomic saves that keep the previous checkpoint, clear
errors for corrupt files and other configurations, atomic JSON, the run-directory lock."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from mmdlib.train.checkpoint import (
    CheckpointError,
    RunDirLocked,
    batch_seed,
    check_same_config,
    config_diff,
    load_checkpoint,
    run_lock,
    save_checkpoint,
    use_previous,
    write_json,
)


def state(step: int, kind: str = "lm") -> dict:
    return {"kind": kind, "model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "step": step,
            "history": [{"step": step}], "rng": [], "config": {"model": {}, "train": {}}}


def test_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state(1))
    assert not (tmp_path / "checkpoint.pt.prev").exists()
    save_checkpoint(path, state(2))
    save_checkpoint(path, state(3))
    assert load_checkpoint(path, "lm")["step"] == 3
    assert torch.load(tmp_path / "checkpoint.pt.prev", weights_only=False)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.prev"]  # no temporaries
    with pytest.raises(ValueError, match=r"needs the keys .* missing \['history'\]"):
        save_checkpoint(path, {k: v for k, v in state(4).items() if k != "history"})


def test_corrupt_or_foreign_files(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state(1))
    save_checkpoint(path, state(2))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{path} cannot be read: it is truncated or corrupt .* Delete it .* "
                                              f"resume from the checkpoint before it, {path}.prev"):
        load_checkpoint(path, "lm")
    assert use_previous(path) == path and load_checkpoint(path, "lm")["step"] == 1
    with pytest.raises(FileNotFoundError, match="no previous checkpoint"):
        use_previous(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="there is no previous checkpoint checkpoint.pt.prev"):
        load_checkpoint(path, "lm")
    save_checkpoint(path, state(1, kind="codec"))
    with pytest.raises(CheckpointError, match="is a train_codec checkpoint, not a train_lm one"):
        load_checkpoint(path, "lm")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt", "lm")


def test_write_json_is_atomic_and_indented(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json(path, {"a": [1, 2]})
    assert path.read_text() == json.dumps({"a": [1, 2]}, indent=1)
    write_json(path, {"b": 1})
    assert json.loads(path.read_text()) == {"b": 1} and [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_config_differences_are_named():
    saved = {"model": {"pattern": "delay", "dim": 8}, "train": {"lr": 1e-3, "betas": (0.9, 0.95), "device": "cpu",
                                                               "mmd": {"block_size": 64, "align": "delay"}}}
    same = {"model": {"pattern": "delay", "dim": 8}, "train": {"lr": 1e-3, "betas": [0.9, 0.95], "device": "cuda",
                                                              "mmd": {"block_size": 64, "align": "delay"}}}
    assert config_diff(saved, same, ignore=("train.device",)) == {}  # tuples as lists, as in JSON
    other = {"model": {"pattern": "flatten", "dim": 8},
             "train": {"lr": 1e-3, "betas": [0.9, 0.95], "device": "cpu", "mmd": {"block_size": 32, "align": "delay"},
                       "new_setting": 1}}
    assert config_diff(saved, other) == {"model.pattern": ("delay", "flatten"), "train.mmd.block_size": (64, 32),
                                         "train.new_setting": ("<missing>", 1)}
    assert list(config_diff(saved, other, ignore=("train.mmd", "train.new_setting"))) == ["model.pattern"]
    with pytest.raises(ValueError, match=r"^run x: model\.pattern: 'delay' in the checkpoint, 'flatten' now; "
                                         r"train\.mmd\.block_size: 64 in the checkpoint, 32 now; "
                                         r"train\.new_setting: '<missing>' in the checkpoint, 1 now\. Do y$"):
        check_same_config(saved, other, what="run x", advice="Do y")
    many = {f"k{i}": i for i in range(10)}
    with pytest.raises(ValueError, match=r"k7: 7 in the checkpoint, -7 now; and 2 more: k8, k9$"):
        check_same_config(many, {k: -v for k, v in many.items() if v}, what="run x")


def test_batch_seed_is_the_codec_loops_formula():
    """Codec runs resume across this change: their batches must not move."""
    assert batch_seed(0, 0, 0) == 0
    assert batch_seed(3, 5, 1) == (3 * 1_000_003 + 5 * 7919 + 104_729) % 2**31
    assert batch_seed(2**40, 1, 0) < 2**31


def test_lock_refuses_a_second_training_and_goes_with_its_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mmdlib.train.checkpoint import run_lock\n"
         f"with run_lock({str(tmp_path)!r}):\n    print('locked', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "RANK": "0"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"{tmp_path} is in use by another training \\(pid {holder.pid} on "):
            with run_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock
        holder.wait()
    with run_lock(tmp_path):  # taken over
        assert (tmp_path / "train.lock").read_text().startswith(f"pid {os.getpid()} on ")
    with run_lock(tmp_path):  # and released after each use
        pass


def test_cuda_rng_state_is_this_devices_own_and_old_lists_restore_on_fewer_gpus(monkeypatch):
    """CUDA paths on a CPU machine, with torch.cuda stood in: a checkpoint saves the current device's
    state only, and a former checkpoint's per-GPU list (8 GPUs) restores on a 1-GPU machine (it raised
    IndexError when restored by index with set_rng_state_all)."""
    from mmdlib.train import checkpoint as ck
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(int(state[0])))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: (_ for _ in ()).throw(IndexError("8 > 1")))
    state = ck.rng_state()
    assert int(state["cuda"][0]) == 7
    ck.set_rng_state(state)
    ck.set_rng_state(state | {"cuda": [torch.tensor([g], dtype=torch.uint8) for g in range(10, 18)]})
    assert restored == [7, 10]


def test_one_process_takes_the_gpu_it_is_given(monkeypatch):
    """`device="cuda:1"` outside torchrun uses cuda:1 (it used LOCAL_RANK's default, cuda:0)."""
    from mmdlib import distributed as D
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: chosen.append(i))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert D.setup("cuda:1") == torch.device("cuda", 1) and D.setup("cuda") == torch.device("cuda", 0)
    assert chosen == [1, 0]
