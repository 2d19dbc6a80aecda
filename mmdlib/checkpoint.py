"""What exact resume needs, shared by the training loops: every RNG state, atomic writes."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import distributed as D


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


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


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: an interruption never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
