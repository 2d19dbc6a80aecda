"""The notebooks' parameters: presets, checks with messages that say what to do, shared set-up.

Every notebook (`notebooks/00_data` ... `05_report`) declares its parameters once, in its tagged
`parameters` cell (papermill overrides them), and hands them over in its first cell:

    P = notebook_params("03_train_lm", globals())

which resolves a preset (`PIPELINE_PRESETS`) with the parameters that are not None, and stops
with a `PipelineError` that says what to do (unknown preset, bad value, device `cuda` without a
GPU, a folder that cannot be written, a missing artifact of an earlier notebook). The stages that
do the work are in `mmdlib.pipeline.stages`, the paths in `mmdlib.pipeline.layout`, the report in `mmdlib.pipeline.report`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmdlib.train.checkpoint import MAX_SEED, valid_seed
from mmdlib.lm.depth import DEPTH_PRESETS
from mmdlib.pipeline.layout import RunLayout
from mmdlib.lm.model import LM_PRESETS
from mmdlib.mmd.loss import ALIGNS
from mmdlib.patterns import PATTERNS
from mmdlib.train.config import TRAIN_PRESETS
from mmdlib.train.config import LM_TRAIN_PRESETS

ROOT = Path(__file__).resolve().parents[2]  # the repository (relative paths are resolved here)
NOTEBOOKS = ("00_data", "01_train_codec", "02_dependence", "03_train_lm", "04_generate", "05_report")


class PipelineError(ValueError):
    """A bad notebook parameter or a missing artifact; the message says what to do."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"\x1b[31mPipelineError\x1b[0m: {self}"]


DEPTH_TRUNK = "parallel"  # the LM whose trunk and depth head make the joint model `depth` (stages.models)

@dataclass(frozen=True)
class PipelineConfig:
    """Everything a notebook run depends on. Presets fill it; notebook parameters override it."""

    # codecs (01): one per MMD weight λ, trained with mmdlib.train.codec
    codec_preset: str = "tiny"                  # train_codec.TRAIN_PRESETS (also the codec architecture)
    codec_steps: int | None = 1200              # None: the training preset's own (2400 for tiny)
    codec_mmd_start: int | None = 800           # step the MMD loss starts at (the λ > 0 codecs fork from the
                                                # λ = 0 one there); None: the preset's own
    codec_eval_every: int | None = 400          # None: the training preset's own
    lambdas: tuple[float, ...] = (0.0, 100.0)   # MMD weights; 0 is the baseline codec
    align: str = "delay"                        # MMD pairing of the streams: "delay" or "none"
    # data: "synthetic" or a folder of audio files
    data: str = "synthetic"
    cache_dir: str | None = None                # decoded-audio cache for folders (default data/cache)
    clip_seconds: float = 4.0                   # length of the tokenised clips (02, 03, 04)
    n_token_train: int = 256                    # clips tokenised for LM training
    n_token_valid: int = 64                     # held-out clips: dependence (02), LM early stopping (03);
                                                # as many test clips score the LMs (03)
    # dependence (02)
    mmd_samples: int = 4096                     # held-out frames for the MMD statistic (cost ∝ frames²)
    n_permutations: int = 100                   # permutation test of the MMD statistic
    perm_samples: int = 600                     # frames used by the permutation test
    # language models (03): one per (codec, pattern)
    patterns: tuple[str, ...] = ("parallel", "delay", "flatten")
    lm_preset: str = "small"                    # lm.LM_PRESETS ("small": 3x faster than "tiny"; the
                                                # whole `make run` stays under 20 min on 2 cores)
    lm_train_preset: str = "tiny"               # train_lm.LM_TRAIN_PRESETS
    lm_steps: int | None = 500                  # None: the training preset's own
    lm_seq_frames: int | None = 50              # training crop length; None: the preset's own
    lm_warmup: int | None = None                # learning-rate warm-up steps; None: the preset's own
    lm_eval_every: int | None = 125
    lm_patience: int = 2                        # early stopping: evaluations without a better held-out
                                                # loss before an LM stops (0: never); the best state is kept
    # the depth head (03): the factorisation gap of the LMs of these patterns (those among `patterns`)
    gap_patterns: tuple[str, ...] = ("parallel", "delay")
    depth_preset: str = "tiny"                  # depth.DEPTH_PRESETS
    # generation (04)
    gen_seconds: float = 4.0
    n_gen: int = 4                              # samples per (codec, pattern)
    temperature: float = 1.0
    top_k: int | None = 50
    # the run
    device: str = "cpu"
    seed: int = 0
    threads: int | None = 2                     # torch CPU threads (None: torch's default)
    run_dir: str = "runs/tiny"
    fig_dir: str = "figures"

    @property
    def run_path(self) -> Path:
        return resolve(self.run_dir)

    @property
    def fig_path(self) -> Path:
        return resolve(self.fig_dir)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_path, self.align)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PIPELINE_PRESETS: dict[str, PipelineConfig] = {
    # the whole sequence on a 2-core CPU in about a quarter of an hour
    "tiny": PipelineConfig(),
    # the plumbing only (every notebook end to end in a few minutes): numbers mean nothing
    "smoke": PipelineConfig(
        codec_steps=20, codec_mmd_start=13, codec_eval_every=10, clip_seconds=2.0, n_token_train=16, n_token_valid=8,
        mmd_samples=512, n_permutations=20, perm_samples=256, lm_steps=10, lm_seq_frames=50, lm_warmup=2, lm_eval_every=5,
        gen_seconds=1.0, n_gen=2, run_dir="runs/smoke", fig_dir="runs/smoke/figures",
    ),
    # the paper's scale, for GPUs: preset-length training, λ = 1000, 30 s token crops
    "paper": PipelineConfig(
        codec_preset="paper", codec_steps=None, codec_eval_every=None, lambdas=(0.0, 1000.0),
        clip_seconds=30.0, n_token_train=4096, n_token_valid=256, mmd_samples=16384, n_permutations=200,
        perm_samples=4096,
        lm_preset="paper", lm_train_preset="paper", lm_steps=None, lm_seq_frames=None, lm_eval_every=None,
        depth_preset="paper",
        gen_seconds=10.0, n_gen=8, top_k=250, device="cuda", threads=None, run_dir="runs/paper",
        fig_dir="figures/paper",
    ),
}


def resolve(path: str | Path) -> Path:
    """A path as given if absolute, else relative to the repository root (not the notebook's cwd)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def shown(path: str | Path) -> str:
    """A path for printing: relative to the repository root when inside it (outputs that are
    committed or shared carry no machine's absolute paths)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(ROOT.resolve()).as_posix()
    except ValueError:
        return str(p)


# ----------------------------------------------------------------------------------------------
# Parameters


def _as_list(name: str, value, kind):
    """A list from a list/tuple, a scalar, or a string "a,b" / "[a, b]" (papermill -p passes strings)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise PipelineError(f"{name}={value!r}: not a valid list; write e.g. {name}='[0, 100]'") from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    out = []
    for v in value:
        try:
            out.append(kind(v))
        except (TypeError, ValueError):
            raise PipelineError(f"{name}: {v!r} is not a {kind.__name__}") from None
    if not out:
        raise PipelineError(f"{name} is empty: give at least one value")
    return tuple(out)


def check_device(device: str) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'mps', and available here; else a PipelineError saying what to use."""
    if not isinstance(device, str):
        raise PipelineError(f"device={device!r}: expected a string such as 'cpu' or 'cuda'")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise PipelineError(f"device={device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(f"device={device!r} but torch sees no CUDA GPU on this machine; "
                                "use -p device cpu (papermill) or device = 'cpu' in the parameters cell")
        if index and int(index) >= torch.cuda.device_count():
            raise PipelineError(f"device={device!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"device={device!r} but MPS is not available here; use -p device cpu")
    return device


def _check_positive(name: str, value, allow_none: bool = True, kind=int):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise PipelineError(f"{name}={value!r}: expected a positive {kind.__name__}"
                            + (" or None (the preset's default)" if allow_none else ""))
    if not value > 0 or not math.isfinite(value):
        raise PipelineError(f"{name}={value!r} must be > 0")
    return kind(value)


def check_params(notebook: str, preset: str = "tiny", **params) -> PipelineConfig:
    """Resolve notebook parameters into a PipelineConfig, or stop with a PipelineError.

    `preset` picks PIPELINE_PRESETS[preset]; every other parameter that is not None replaces the
    preset's field (`steps`-like parameters left at None keep the preset's value). `lambdas` and
    `patterns` accept a list, a scalar or a comma-separated string. Then the artifacts that
    `notebook` needs from earlier notebooks must exist (see `required_artifacts`)."""
    if notebook not in NOTEBOOKS:
        raise PipelineError(f"notebook={notebook!r}: expected one of {NOTEBOOKS}")
    if preset not in PIPELINE_PRESETS:
        raise PipelineError(f"unknown preset {preset!r}; choose one of {sorted(PIPELINE_PRESETS)} "
                            "(e.g. -p preset tiny)")
    base = PIPELINE_PRESETS[preset]
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise PipelineError(f"unknown parameter(s) {unknown}; known: {sorted(fields)}")
    over = {k: v for k, v in params.items() if v is not None}
    if "lambdas" in over:
        over["lambdas"] = _as_list("lambdas", over["lambdas"], float)
    for name in ("patterns", "gap_patterns"):
        if name in over:
            over[name] = _as_list(name, over[name], str)
    for name in ("codec_steps", "codec_eval_every", "lm_steps", "lm_seq_frames", "lm_eval_every", "n_token_train",
                 "n_token_valid", "mmd_samples", "n_permutations", "perm_samples", "n_gen", "top_k", "threads"):
        if name in over:
            over[name] = _check_positive(name, over[name])
    for name in ("codec_mmd_start", "lm_warmup", "lm_patience"):  # counts that may be 0
        if name in over and (isinstance(over[name], bool) or not isinstance(over[name], int) or over[name] < 0):
            raise PipelineError(f"{name}={over[name]!r}: expected an integer >= 0 or None (the preset's default)")
    for name in ("clip_seconds", "gen_seconds", "temperature"):
        if name in over:
            over[name] = _check_positive(name, over[name], allow_none=False, kind=float)
    if "seed" in over and not valid_seed(over["seed"]):
        raise PipelineError(f"seed={over['seed']!r}: expected an integer in 0..{MAX_SEED - 1}")
    cfg = dataclasses.replace(base, **over)

    check_device(cfg.device)
    for lam in cfg.lambdas:
        if not (math.isfinite(lam) and lam >= 0):
            raise PipelineError(f"lambdas: {lam} is not a weight >= 0 (0 is the baseline codec)")
    if len(set(cfg.lambdas)) != len(cfg.lambdas):
        raise PipelineError(f"lambdas={list(cfg.lambdas)} lists a weight twice")
    bad = [p for p in cfg.patterns if p not in PATTERNS]
    if bad:
        raise PipelineError(f"patterns: unknown {bad}; choose from {list(PATTERNS)}")
    bad = [p for p in cfg.gap_patterns if p not in PATTERNS or p == "flatten"]
    if bad:
        raise PipelineError(f"gap_patterns: {bad} are not factorised patterns (flatten is already joint); "
                            f"choose from {[p for p in PATTERNS if p != 'flatten']}")
    if cfg.align not in ALIGNS:
        raise PipelineError(f"align={cfg.align!r}: choose 'delay' (as the delay pattern predicts) or 'none'")
    if cfg.data != "synthetic" and not resolve(cfg.data).is_dir():
        raise PipelineError(f"data={cfg.data!r} is neither 'synthetic' nor a folder of audio files "
                            "(scripts/get_supertux_music.sh fetches one into data/external/supertux)")
    if not isinstance(cfg.run_dir, str | Path) or not str(cfg.run_dir):
        raise PipelineError(f"run_dir={cfg.run_dir!r}: expected a folder path such as 'runs/tiny'")
    for name in ("run_dir", "fig_dir"):
        _check_writable(name, resolve(getattr(cfg, name)))
    _check_presets(cfg)

    missing = [(p, how) for p, how in required_artifacts(notebook, cfg) if not p.exists()]
    if missing:
        lines = "\n".join(f"  {p}  <- {how}" for p, how in missing)
        raise PipelineError(f"{notebook} needs artifacts of earlier notebooks that are not in "
                            f"run_dir={cfg.run_dir!r}:\n{lines}\nRun those notebooks first with the same "
                            "preset/run_dir/lambdas/patterns (or the whole sequence: make run).")
    return cfg


def notebook_params(notebook: str, namespace: dict) -> PipelineConfig:
    """check_params with the parameters a notebook declared: `preset` and every PipelineConfig
    field that `namespace` (the notebook's globals()) defines, so each is written once, in the
    parameters cell. Fields the notebook does not declare keep the preset's value."""
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    params = {k: v for k, v in namespace.items() if k in fields}
    return check_params(notebook, namespace.get("preset", "tiny"), **params)


def _check_writable(name: str, folder: Path) -> None:
    """Create `folder` if needed and write a probe file, or stop saying which parameter to change."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PipelineError(f"{name}={str(folder)!r} cannot be written ({e.strerror or e}); "
                            f"choose a folder you can write, e.g. -p {name} runs/mine") from None


def _check_presets(cfg: PipelineConfig) -> None:
    for name, value, known in (("codec_preset", cfg.codec_preset, TRAIN_PRESETS),
                               ("lm_preset", cfg.lm_preset, LM_PRESETS),
                               ("lm_train_preset", cfg.lm_train_preset, LM_TRAIN_PRESETS),
                               ("depth_preset", cfg.depth_preset, DEPTH_PRESETS)):
        if value not in known:
            raise PipelineError(f"{name}={value!r}: choose one of {sorted(known)}")


_HOW = {"codec": "notebooks/01_train_codec.ipynb", "lm": "notebooks/03_train_lm.ipynb",
        "gen": "notebooks/04_generate.ipynb"}


def required_artifacts(notebook: str, cfg: PipelineConfig) -> list[tuple[Path, str]]:
    """(path, the notebook that writes it) for what `notebook` reads from earlier ones."""
    need: list[tuple[Path, str]] = []
    idx, layout = NOTEBOOKS.index(notebook), cfg.layout
    if idx >= 2:  # 02, 03, 04, 05 read the trained codecs
        need += [(layout.codec(lam) / "codec.pt", f"run {_HOW['codec']} (lambdas={lam:g})") for lam in cfg.lambdas]
    if notebook == "04_generate":
        need += [(layout.lm(lam, p) / "checkpoint.pt", f"run {_HOW['lm']} (lambdas={lam:g}, patterns={p})")
                 for lam in cfg.lambdas for p in cfg.patterns]
        if DEPTH_TRUNK in cfg.patterns and DEPTH_TRUNK in cfg.gap_patterns:  # the `depth` model's head
            need += [(layout.lm(lam, DEPTH_TRUNK) / "depth_head.pt", f"run {_HOW['lm']} (lambdas={lam:g}, its depth gap)")
                     for lam in cfg.lambdas]
    return need


def init_notebook(cfg: PipelineConfig) -> None:
    """Side effects shared by all notebooks: thread count, seeds, plot defaults, output folders."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    cfg.fig_path.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": 80, "savefig.dpi": 100, "svg.hashsalt": "mmdlib",
                                    "axes.grid": True, "grid.alpha": 0.3})
    except ImportError:  # plots are optional for the library
        pass

