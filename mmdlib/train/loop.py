"""Restore and save a training over named state, shared by train_codec and train_lm.

    step, history, extras = restore(path, "lm", config, cfg.steps, model=model, optimizer=opt, scheduler=sched)
    ...
    save(path, "lm", step, history, config, extras={"best": best}, model=model, optimizer=opt, scheduler=sched)

Each name is a checkpoint key (mmdlib.train.checkpoint: KEYS and each loop's extras) and each object
has state_dict / load_state_dict; None stands for a part the run does not use (saved as None, not
restored). `extras` are plain values saved beside them (train_lm's "best").
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from mmdlib import distributed as D
from mmdlib.train.checkpoint import KEYS, all_rng_states, check_resume, load_checkpoint, restore_rng_states, save_checkpoint


def restore(path: str | Path, kind: str, config: dict, steps: int, **state) -> tuple[int, list[dict], dict]:
    """Resume from the checkpoint `path` of loop `kind`, if there is one: check that it was written
    with `config` ({"model": ..., "train": ...}; check_resume) and is not past `steps`, load each named
    object's state and this rank's RNG states. Returns (steps done, history, the checkpoint's other
    keys), or (0, [], {}) without a checkpoint."""
    path = Path(path)
    if not path.exists():
        return 0, [], {}
    ckpt = load_checkpoint(path, kind)
    check_resume(ckpt, config, steps, path)
    for name, obj in state.items():
        if obj is not None:
            obj.load_state_dict(ckpt[name])
    restore_rng_states(ckpt["rng"])
    extras = {k: v for k, v in ckpt.items() if k not in KEYS and k not in state}
    return ckpt["step"], ckpt["history"], extras


def save(path: str | Path, kind: str, step: int, history: list[dict], config: dict, extras: dict | None = None,
         **state) -> None:
    """Write the checkpoint of loop `kind` at `step`: each named object's state_dict (None: None),
    `extras`, and every rank's RNG states. A collective under DDP (every rank calls it; rank 0 writes,
    atomically, keeping the file it replaces as path.prev)."""
    rng = all_rng_states()
    if D.is_main():
        save_checkpoint(path, {"kind": kind, "step": step, "history": history, "rng": rng, "config": config,
                               **{name: None if obj is None else obj.state_dict() for name, obj in state.items()},
                               **(extras or {})})


METRICS_LOG = "metrics.jsonl"  # in the run dir: one line per evaluation, appended as it happens


def log_metrics(run_dir: str | Path, row: dict) -> None:
    """Append the scalars of an evaluation row to run_dir/metrics.jsonl (rank 0; lists are left out,
    non-finite values written as null), flushed: a running training can be plotted from it. A resumed
    run appends again from its checkpoint's step (keep the last line of a step)."""
    if not D.is_main():
        return
    scalars = {k: (v if math.isfinite(v) else None) if isinstance(v, float) else v
               for k, v in row.items() if isinstance(v, (int, float, str, bool))}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / METRICS_LOG, "a") as f:
        f.write(json.dumps(scalars) + "\n")


def tensorboard_writer(run_dir: str | Path):
    """A SummaryWriter on run_dir/tensorboard (rank 0; None elsewhere), or an ImportError saying what to install."""
    if not D.is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'") from None
    return SummaryWriter(str(Path(run_dir) / "tensorboard"))


def log_tensorboard(writer, row: dict, step: int, prefix: str) -> None:
    """The scalars of an evaluation row as `prefix/key` at `step` (no-op without a writer)."""
    if writer is None:
        return
    for k, v in row.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(v):
            writer.add_scalar(f"{prefix}/{k}", v, step)
    writer.flush()
