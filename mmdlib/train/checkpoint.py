"""The skeleton shared by the training loops (`train_codec`, `train_lm`): one checkpoint file and
layout, one history format, atomic writes that keep the previous checkpoint, clear errors for a
corrupt file or a resume into another configuration, a lock per run directory, the batch seed and
every RNG state (what an exact resume needs).

    run_dir/checkpoint.pt       the latest checkpoint (CHECKPOINT)
    run_dir/checkpoint.pt.prev  the one it replaced: resume from it if the latest is corrupt
    run_dir/train.lock          locked while a training runs in run_dir (LOCK, see run_lock)

The models themselves are apart from these: train_codec's codec.pt (Codec.load), train_lm's lm.pt
(TokenLM.load). JSON results are written atomically too (write_json).

A checkpoint is a dict with the keys of both loops (KEYS) and each loop's extras:

    kind        "codec" (train_codec) or "lm" (train_lm)
    model       the model's state_dict
    optimizer   its optimiser's state_dict
    step        optimiser steps done
    history     a list of dict rows, each with a "step": train_codec writes one per evaluation
                (its metrics), train_lm one per step ("loss", "lr"; "valid_bits_per_frame" added
                at the evaluation steps)
    rng         every rank's RNG states (all_rng_states)
    config      {"model": CodecConfig or LMConfig dict, "train": training config dict}
    extras      codec: "discriminator", "optimizer_d", "balancer" (None when unused); lm: "scheduler",
                "best" ({"step", "bits", "model", "stopped"}: the state of the lowest held-out loss)

Resuming (check_resume) compares `config` key by key, except the settings that do not change the
run (RUN_NEUTRAL: device, progress, cache_dir, eval_batch_size, ckpt_every) and `steps`, which may
change as long as the checkpoint is not past it (the schedule follows the new `steps` from there).
The loops restore and save checkpoints through `mmdlib.train.loop` (restore, save).
"""
from __future__ import annotations

import fcntl
import functools
import inspect
import json
import os
import random
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mmdlib import distributed as D

CHECKPOINT = "checkpoint.pt"  # in the run directory, for both loops
LOCK = "train.lock"
KEYS = ("kind", "model", "optimizer", "step", "history", "rng", "config")
LOOPS = {"codec": "train_codec", "lm": "train_lm"}
# training settings that do not change the numbers of a run: a resume may change them
RUN_NEUTRAL = ("device", "amp", "progress", "cache_dir", "eval_batch_size", "ckpt_every")
RESUME_IGNORE = tuple(f"train.{k}" for k in RUN_NEUTRAL + ("steps",))


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the run it should resume."""


class RunDirLocked(RuntimeError):
    """Another training holds the run directory."""


MAX_SEED = 2**31  # run seeds are mixed into batch seeds below; larger ones would overflow torch's 64-bit seeds


def valid_seed(seed) -> bool:
    """A run seed the training loops accept: an int (not a bool) in 0..MAX_SEED-1."""
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < MAX_SEED


def batch_seed(seed: int, step: int, rank: int) -> int:
    """Seed of what `rank` draws at `step` (its batch): batches are a pure function of (seed, step,
    rank), so resuming needs no data-loader state."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**31)


def rng_state() -> dict:
    """This process's RNG states; on CUDA its own device's only (each rank saves its own, so a resume
    on another number of GPUs finds one state per rank, not one per GPU of the old machine)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    cuda = s["cuda"]
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # checkpoints before: every visible GPU's state, by index
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)  # the current device's


def all_rng_states() -> list[dict]:
    """Every rank's RNG states, rank order (a collective under DDP)."""
    if not D.is_distributed():
        return [rng_state()]
    states = [None] * D.world_size()
    dist.all_gather_object(states, rng_state())
    return states


def restore_rng_states(states: list[dict]) -> None:
    """This rank's states from `all_rng_states()` (rank 0's if the world grew)."""
    set_rng_state(states[D.rank()] if D.rank() < len(states) else states[0])


def previous_path(path: str | Path) -> Path:
    """checkpoint.pt -> checkpoint.pt.prev: the checkpoint that `path` replaced."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def atomic_save(obj, path: str | Path, keep_previous: bool = False) -> None:
    """torch.save to a temporary file of this process, then rename: an interruption never leaves
    half a file. keep_previous: the file it replaces stays as `path.prev` (a hard link made before
    the rename, so `path` exists at every instant)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        prev_tmp = path.with_name(f".{path.name}.prev.{os.getpid()}.tmp")
        prev_tmp.unlink(missing_ok=True)
        try:
            os.link(path, prev_tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, prev_tmp)
        os.replace(prev_tmp, previous_path(path))
    os.replace(tmp, path)


def file_record(path: str | Path) -> dict:
    """{"path": absolute path, "sha256": of its bytes}: what an LM records of the codec of its tokens."""
    import hashlib

    path = Path(path).resolve()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": str(path), "sha256": h.hexdigest()}


def write_json(path: str | Path, obj) -> None:
    """json.dumps(obj, indent=1) to `path`, atomically (a temporary file, then a rename): an
    interruption leaves the previous file. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# -- checkpoints -----------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write a training checkpoint (a dict with KEYS) atomically; the one it replaces stays as
    `path.prev`. Rank 0 only (callers gather the RNG states of every rank first)."""
    missing = [k for k in KEYS if k not in state]
    if missing or state["kind"] not in LOOPS:
        raise ValueError(f"save_checkpoint({path}): a checkpoint needs the keys {list(KEYS)} and a kind in "
                         f"{list(LOOPS)}; missing {missing}, kind {state.get('kind')!r}")
    atomic_save(state, path, keep_previous=True)


def _advice(path: Path) -> str:
    prev = previous_path(path)
    if prev.is_file():
        return (f"Delete it to start the run over, or resume from the checkpoint before it, {prev}: "
                f"mmdlib.train.checkpoint.use_previous('{path}') (or `mv {prev} {path}`), then start the training again")
    return f"Delete it to start the run over (there is no previous checkpoint {prev.name} to resume from)"


def load_checkpoint(path: str | Path, kind: str) -> dict:
    """The checkpoint at `path` of loop `kind` ("codec" or "lm"), on the CPU (load_state_dict
    copies to the model's device; RNG states must be CPU tensors). A truncated or corrupt file raises a
    CheckpointError naming it and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, bad pickle, empty file, ...
        raise CheckpointError(f"{path} cannot be read: it is truncated or corrupt ({type(e).__name__}: {e}). "
                              f"{_advice(path)}") from None
    if not isinstance(state, dict) or state.get("kind") not in LOOPS:
        raise CheckpointError(f"{path} is not a training checkpoint (no {list(KEYS)}). {_advice(path)}")
    if state["kind"] != kind:
        raise CheckpointError(f"{path} is a {LOOPS[state['kind']]} checkpoint, not a {LOOPS[kind]} one: "
                              "use another run_dir")
    return state


def use_previous(path: str | Path) -> Path:
    """Resume from `path.prev`: it replaces the (corrupt) checkpoint `path`. Returns `path`."""
    path = Path(path)
    prev = previous_path(path)
    if not prev.is_file():
        raise FileNotFoundError(f"{prev} does not exist: there is no previous checkpoint to resume from")
    os.replace(prev, path)
    return path


# -- configurations --------------------------------------------------------------------------------
_MISSING = "<missing>"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v}
    return out


def config_diff(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
    """{dotted key: (saved value, current value)} for every setting that differs (nested dicts are
    compared leaf by leaf, tuples equal to lists as in JSON). `ignore` drops keys and all keys under
    them, e.g. ("train.device", "train.mmd")."""
    a, b = (_flat(json.loads(json.dumps(d, default=repr))) for d in (saved, current))
    skip = lambda k: any(k == i or k.startswith(i + ".") for i in ignore)  # noqa: E731
    keys = sorted(k for k in a.keys() | b.keys() if not skip(k))
    return {k: (a.get(k, _MISSING), b.get(k, _MISSING)) for k in keys if a.get(k, _MISSING) != b.get(k, _MISSING)}


def check_same_config(saved: dict, current: dict, ignore: tuple[str, ...] = (),
                      what: str = "the checkpoint was written with another configuration", advice: str = "") -> None:
    """Raise a CheckpointError (a ValueError) naming each differing key with both values (the
    values of the first 8, the names of the others)."""
    diff = list(config_diff(saved, current, ignore).items())
    if diff:
        keys = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff[:8])
        if len(diff) > 8:
            keys += f"; and {len(diff) - 8} more: {', '.join(k for k, _ in diff[8:])}"
        raise CheckpointError(f"{what}: {keys}" + (f". {advice}" if advice else ""))


def check_resume(state: dict, config: dict, steps: int, path: str | Path) -> None:
    """Refuse to resume checkpoint `state` (read from `path`) into the run `config` ({"model": ...,
    "train": ...}) of `steps` steps, unless they differ only in RESUME_IGNORE and the checkpoint is
    not past `steps`."""
    check_same_config(state["config"], config, RESUME_IGNORE, f"{path} was written with another configuration",
                      f"Use a new run_dir, or delete {path} to start over")
    if state["step"] > steps:
        raise CheckpointError(f"{path} is at step {state['step']}, past steps={steps}: resume with steps >= "
                              f"{state['step']} (a run can be extended, not cut back), or use a new run_dir")


# -- one training per run directory ---------------------------------------------------------------
@contextmanager
def run_lock(run_dir: str | Path):
    """Hold run_dir/train.lock while training: a second training into the same directory (from
    another process, or another call in this one) stops with the holder's pid instead of racing
    for the checkpoint. An OS lock (flock), released when its holder exits, even killed: the file
    a dead process leaves behind is simply taken over. Under torchrun only rank 0 takes it."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown pid"
        f.close()
        raise RunDirLocked(f"{run_dir} is in use by another training ({holder}; lock file {path}): wait for it "
                           "to end (the lock goes with that process, even killed), or train into another run_dir"
                           ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def locks_run_dir(train):
    """Decorator: `train(..., run_dir, ...)` runs holding run_lock(run_dir)."""
    signature = inspect.signature(train)

    @functools.wraps(train)
    def locked(*args, **kwargs):
        with run_lock(signature.bind(*args, **kwargs).arguments["run_dir"]):
            return train(*args, **kwargs)

    return locked
