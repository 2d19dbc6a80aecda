"""Where a run's stages read and write: one object, `RunLayout(root, variant)`, that every stage asks; the
error they raise when something is missing (PipelineError); reload-or-compute of a result (cached).

    run_dir/
      data/                          00: example clips (wav)
      codec_lambda0/                 01: codec.pt, checkpoint.pt, metrics.json, recon/*.wav
      codec_lambda100/                   (one folder per MMD weight λ; a suffix names a variant of the MMD:
      codec_lambda100_codeword_none/      `_none` not delay-aligned, `_codeword`/`_input` its streams, `_clip`
                                          its within-clip shuffle, `_reference` the public code's value)
      tokens/codec_lambda0/{train,valid,test}.pt    02/03: cached codes `n k t` of the data sets
      dependence/codec_lambda0.json  02: MI/NMI matrices, MMD, permutation-test p-value
      lm/codec_lambda0/delay/        03: lm.pt (the best model), checkpoint.pt (train_lm), metrics.json (history, bits/frame),
                                         depth_head.pt, depth.json (the factorisation gap, mmdlib.lm.depth)
      generate/codec_lambda0/delay/  04: codes.pt, sample*.wav, metrics.json (timing, dependence);
      generate/codec_lambda0/depth/      the joint model: the parallel trunk with its depth head
      notebooks/                     executed copies written by scripts/run_pipeline.py
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmdlib.train.checkpoint import write_json


class PipelineError(ValueError):
    """A bad notebook parameter or a missing artifact; the message says what to do."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"\x1b[31mPipelineError\x1b[0m: {self}"]


def codec_name(lam: float, variant: str = "") -> str:
    """'codec_lambda0', 'codec_lambda100', 'codec_lambda100_none' (variant 'none': the MMD not
    delay-aligned; params.variant_tag names every variant). λ = 0 has no MMD, so no variant."""
    name = f"codec_lambda{lam:g}"
    return name if lam == 0 or not variant else f"{name}_{variant}"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory; `variant` names the λ > 0 codecs (see codec_name)."""

    root: Path
    variant: str = ""

    def codec_name(self, lam: float) -> str:
        return codec_name(lam, self.variant)

    def codec(self, lam: float) -> Path:
        """The codec's training folder (codec.pt, checkpoint.pt, metrics.json, recon/)."""
        return self.root / self.codec_name(lam)

    def tokens(self, lam: float, split: str) -> Path:
        return self.root / "tokens" / self.codec_name(lam) / f"{split}.pt"

    def dependence(self, lam: float) -> Path:
        return self.root / "dependence" / f"{self.codec_name(lam)}.json"

    def lm(self, lam: float, pattern: str) -> Path:
        return self.root / "lm" / self.codec_name(lam) / pattern

    def gen(self, lam: float, pattern: str) -> Path:
        return self.root / "generate" / self.codec_name(lam) / pattern


def read_json(path: Path, how: str = "") -> dict:
    """A JSON artifact, or a PipelineError saying how to make it."""
    if not path.is_file():
        raise PipelineError(f"{path} is missing" + (f": {how}" if how else ""))
    return json.loads(path.read_text())


def cached(path: Path, key: dict, compute: Callable[[], dict], needs: tuple[Path, ...] = (),
           refuse: str | None = None) -> dict:
    """Reload or compute: the JSON result at `path` when it and the files `needs` exist and its entries
    equal `key`'s (compared as JSON: tuples read back as lists); else `key | compute()`, written
    atomically. `refuse`: when a saved result of another key is there, raise PipelineError(refuse)
    instead of computing over it (a folder that holds another run)."""
    key = json.loads(json.dumps(key))
    if path.is_file() and all(p.is_file() for p in needs):
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in key} == key:
            return saved | {"resumed": True}
        if refuse:
            raise PipelineError(refuse)
    result = key | compute()
    write_json(path, result)
    return result | {"resumed": False}
