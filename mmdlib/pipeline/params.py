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
import functools
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from mmdlib.lm.depth import DEPTH_PRESETS, DepthConfig
from mmdlib.lm.model import LM_PRESETS, LMConfig
from mmdlib.mmd.loss import ALIGNS, MMDConfig
from mmdlib.patterns import PATTERNS
from mmdlib.pipeline.layout import PipelineError, RunLayout
from mmdlib.train.checkpoint import MAX_SEED, valid_seed
from mmdlib.train.config import LM_TRAIN_PRESETS, TRAIN_PRESETS, CodecTrainConfig, LMTrainConfig
from mmdlib.train.config import check_device as check_device_name
from mmdlib.train.overrides import apply_overrides, convert, field_type

ROOT = Path(__file__).resolve().parents[2]  # the repository (relative paths are resolved here)
NOTEBOOKS = ("00_data", "01_train_codec", "02_dependence", "03_train_lm", "04_generate", "05_report")


DEPTH_TRUNK = "parallel"  # the LM whose trunk and depth head make the joint model `depth` (stages.models)


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"           # "synthetic" or a folder of audio files
    cache_dir: str | None = None        # decoded-audio cache for folders (default data/cache)
    clip_seconds: float = 4.0           # length of the tokenised clips (02, 03, 04)
    n_train: int = 256                  # clips tokenised for LM training
    n_heads: int = 512                  # clips the depth heads train on (03): train-split clips after the LM's
                                        # n_train, which it never saw (on its own clips an early-stopped LM is
                                        # over-confident and the heads find almost nothing); for a folder, other
                                        # random crops of the same train files
    n_valid: int = 64                   # held-out clips: dependence (02), LM early stopping (03); as many
                                        # test clips score the LMs (03)


@dataclass(frozen=True)
class DependenceConfig:
    mmd_samples: int = 4096             # held-out frames for the MMD statistic (cost ∝ frames²)
    n_permutations: int = 100           # permutation test of the MMD statistic
    perm_samples: int = 600             # frames used by the permutation test


@dataclass(frozen=True)
class GenerateConfig:
    seconds: float = 4.0
    n: int = 4                          # samples per (codec, pattern)
    temperature: float = 1.0
    top_k: int | None = 50


def _tiny_codec() -> CodecTrainConfig:
    # the λ > 0 codecs fork from the λ = 0 one at mmd_start (stages.forked_codec_run)
    return dataclasses.replace(TRAIN_PRESETS["tiny"], steps=1200, mmd_start=800, eval_every=400)


def _tiny_lm_train() -> LMTrainConfig:
    # early stopping: 2 evaluations without a better held-out loss stop an LM; the best state is kept
    return dataclasses.replace(LM_TRAIN_PRESETS["tiny"], steps=500, seq_frames=50, eval_every=125, patience=2)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a notebook run depends on, as one tree: a preset is a named instance of it, and
    `apply_overrides` (the notebooks' parameters, `-p`, `--set`) changes its leaves. The run's seed,
    device and data are set once here and handed to each stage's config (codec_config, lm_configs,
    depth_config)."""

    codec: CodecTrainConfig = field(default_factory=_tiny_codec)  # 01: one codec per λ (mmdlib.train.codec)
    lambdas: tuple[float, ...] = (0.0, 100.0)    # MMD weights; 0 is the baseline codec
    data: DataConfig = DataConfig()
    dependence: DependenceConfig = DependenceConfig()  # 02
    patterns: tuple[str, ...] = ("parallel", "delay", "flatten")  # 03: one LM per (codec, pattern)
    # its architecture ("small": 3x faster than "tiny"; `make run`
    lm: LMConfig = field(default_factory=lambda: LM_PRESETS["small"])
                                                 # stays under 20 min on 2 cores); pattern and codes set per LM
    lm_train: LMTrainConfig = field(default_factory=_tiny_lm_train)
    gap_patterns: tuple[str, ...] = ("parallel", "delay")  # 03: the factorisation gap of these LMs
    depth: DepthConfig = DEPTH_PRESETS["tiny"]   # their depth heads (mmdlib.lm.depth)
    generate: GenerateConfig = GenerateConfig()  # 04
    device: str = "cpu"
    seed: int = 0
    threads: int | None = 2                      # torch CPU threads (None: torch's default)
    progress: bool = True                        # tqdm bars (stderr): training, tokenising, depth heads, sampling
    run_dir: str = "runs/tiny"
    fig_dir: str | None = None                   # None: <run_dir>/figures (`make notebooks` copies them to figures/)

    # the notebooks' flat parameter names, as paths in the tree
    ALIASES: ClassVar[dict[str, str]] = {
        "codec_steps": "codec.steps", "codec_mmd_start": "codec.mmd_start", "codec_eval_every": "codec.eval_every",
        "align": "codec.mmd.align", "data": "data.source", "cache_dir": "data.cache_dir",
        "clip_seconds": "data.clip_seconds", "n_token_train": "data.n_train", "n_token_valid": "data.n_valid",
        "n_heads_clips": "data.n_heads",
        "mmd_samples": "dependence.mmd_samples", "n_permutations": "dependence.n_permutations",
        "perm_samples": "dependence.perm_samples", "lm_steps": "lm_train.steps", "lm_seq_frames": "lm_train.seq_frames",
        "lm_warmup": "lm_train.warmup", "lm_eval_every": "lm_train.eval_every", "lm_patience": "lm_train.patience",
        "gen_seconds": "generate.seconds", "n_gen": "generate.n", "temperature": "generate.temperature",
        "top_k": "generate.top_k",
    }

    @property
    def align(self) -> str:
        return self.codec.mmd.align

    @property
    def sample_rate(self) -> int:
        return self.codec.model.sample_rate

    @property
    def run_path(self) -> Path:
        return resolve(self.run_dir)

    @property
    def fig_path(self) -> Path:
        return resolve(self.fig_dir) if self.fig_dir else self.run_path / "figures"

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_path, variant_tag(self.codec.mmd))

    def data_source(self) -> str:
        """"synthetic", or the data folder as an absolute path (make_dataset's and the codec's `data`)."""
        return "synthetic" if self.data.source == "synthetic" else str(resolve(self.data.source))

    def data_cache_dir(self) -> str | None:
        return None if self.data.source == "synthetic" else str(resolve(self.data.cache_dir or "data/cache"))

    def codec_config(self, lam: float) -> CodecTrainConfig:
        """The training config of the codec with MMD weight `lam`: `codec` with λ and the run's seed,
        device and data; nothing else changed (`python -m mmdlib.train_codec --set steps=1200
        eval_every=400 mmd_start=800 mmd_weight=100` trains the tiny notebooks' λ = 100 codec)."""
        try:
            return dataclasses.replace(self.codec, mmd_weight=float(lam), seed=self.seed, device=self.device,
                                       data=self.data_source(), cache_dir=self.data_cache_dir())
        except ValueError as e:
            raise PipelineError(f"codec training settings: {e}") from None

    def lm_configs(self, pattern: str, n_q: int, codebook_size: int) -> tuple[LMConfig, LMTrainConfig]:
        """(LMConfig, LMTrainConfig) of the LM with `pattern` over a codec with n_q x codebook_size codes."""
        return (dataclasses.replace(self.lm, pattern=pattern, n_q=n_q, codebook_size=codebook_size),
                dataclasses.replace(self.lm_train, seed=self.seed, device=self.device, progress=False))

    def depth_config(self) -> DepthConfig:
        return dataclasses.replace(self.depth, seed=self.seed)

    def gap_models(self) -> list[str]:
        """The patterns whose factorisation gap 03 measures: gap_patterns among patterns."""
        return [p for p in self.gap_patterns if p in self.patterns]

    def models(self) -> list[str]:
        """What 04 samples from: every LM pattern, then `depth` (the joint model in T steps) when the
        parallel LM has a depth head."""
        return [*self.patterns] + (["depth"] if DEPTH_TRUNK in self.gap_models() else [])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PIPELINE_PRESETS: dict[str, PipelineConfig] = {
    # the whole sequence on a 2-core CPU in about a quarter of an hour
    "tiny": PipelineConfig(),
    # the plumbing only (every notebook end to end in a few minutes): numbers mean nothing
    "smoke": PipelineConfig(
        codec=dataclasses.replace(_tiny_codec(), steps=20, mmd_start=13, eval_every=10),
        data=DataConfig(clip_seconds=2.0, n_train=16, n_heads=8, n_valid=8),
        dependence=DependenceConfig(mmd_samples=512, n_permutations=20, perm_samples=256),
        lm_train=dataclasses.replace(_tiny_lm_train(), steps=10, warmup=2, eval_every=5),
        generate=GenerateConfig(seconds=1.0, n=2), run_dir="runs/smoke",
    ),
    # the paper's scale, for GPUs: preset-length training, λ = 1000, 30 s token crops
    "paper": PipelineConfig(
        codec=TRAIN_PRESETS["paper"], lambdas=(0.0, 1000.0),
        data=DataConfig(clip_seconds=30.0, n_train=4096, n_heads=512, n_valid=256),
        dependence=DependenceConfig(mmd_samples=16384, n_permutations=200, perm_samples=4096),
        lm=LM_PRESETS["paper"], lm_train=dataclasses.replace(LM_TRAIN_PRESETS["paper"], patience=2),
        depth=DEPTH_PRESETS["paper"], generate=GenerateConfig(seconds=10.0, n=8, top_k=250), device="cuda",
        threads=None, run_dir="runs/paper",
    ),
}


def variant_tag(mmd: MMDConfig) -> str:
    """The MMD settings that name a codec besides λ, '' for the defaults (residual streams, pooled
    shuffle, unbiased estimator, delay-aligned): e.g. 'codeword_reference', 'clip', 'none'."""
    parts = [mmd.streams if mmd.streams != "residual" else "", "clip" if mmd.shuffle == "clip" else "",
             mmd.estimator if mmd.estimator != "unbiased" else "", mmd.align if mmd.align != "delay" else ""]
    return "_".join(x for x in parts if x)


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


def check_device(device: str) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'mps', and available here; else a PipelineError saying what to use."""
    try:
        check_device_name(device, "")
    except ValueError as e:
        raise PipelineError(str(e).strip()) from None
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(f"device={device!r} but torch sees no CUDA GPU on this machine; "
                                "use -p device cpu (papermill) or device = 'cpu' in the parameters cell")
        if index and int(index) >= torch.cuda.device_count():
            raise PipelineError(f"device={device!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"device={device!r} but MPS is not available here; use -p device cpu")
    return device


# checks of the values given (by the name given: a flat notebook name or a dotted path)
POSITIVE_INTS = ("codec.steps", "codec.eval_every", "lm_train.steps", "lm_train.seq_frames", "lm_train.eval_every",
                 "data.n_train", "data.n_heads", "data.n_valid", "dependence.mmd_samples", "dependence.n_permutations",
                 "dependence.perm_samples", "generate.n", "generate.top_k", "threads")
COUNTS = ("codec.mmd_start", "lm_train.warmup", "lm_train.patience")  # may be 0
POSITIVE_FLOATS = ("data.clip_seconds", "generate.seconds", "generate.temperature")


def _check_range(name: str, path: str, value) -> None:
    if value is None:
        return
    if path in POSITIVE_INTS + POSITIVE_FLOATS and not value > 0:
        raise PipelineError(f"{name}={value!r} must be > 0")
    if path in COUNTS and value < 0:
        raise PipelineError(f"{name}={value!r}: expected an integer >= 0")


def check_params(notebook: str, preset: str = "tiny", **params) -> PipelineConfig:
    """Resolve notebook parameters into a PipelineConfig, or stop with a PipelineError.

    `preset` picks PIPELINE_PRESETS[preset]; every other parameter that is not None is applied to
    it with `apply_overrides` (a flat notebook name of PipelineConfig.ALIASES, a field, or a dotted
    path such as `codec.model.quantizer.n_q`), typed by the tree: `lambdas` and `patterns` accept a
    list, a scalar or a comma-separated string. Then the artifacts that `notebook` needs from
    earlier notebooks must exist (see `required_artifacts`)."""
    if notebook not in NOTEBOOKS:
        raise PipelineError(f"notebook={notebook!r}: expected one of {NOTEBOOKS}")
    if preset not in PIPELINE_PRESETS:
        raise PipelineError(f"unknown preset {preset!r}; choose one of {sorted(PIPELINE_PRESETS)} "
                            "(e.g. -p preset tiny)")
    known = {f.name for f in dataclasses.fields(PipelineConfig)} | set(PipelineConfig.ALIASES)
    unknown = sorted(k for k in params if k not in known and "." not in k)
    if unknown:
        raise PipelineError(f"unknown parameter(s) {unknown}; known: {sorted(known)}")
    base, over = PIPELINE_PRESETS[preset], {k: v for k, v in params.items() if v is not None}
    if "seed" in over and not valid_seed(over["seed"]) and not isinstance(over["seed"], str):
        raise PipelineError(f"seed={over['seed']!r}: expected an integer in 0..{MAX_SEED - 1}")
    try:
        for name, value in over.items():  # each value alone first, so that a message names what was given
            path = PipelineConfig.ALIASES.get(name, name)
            *groups, leaf = path.split(".")
            parent = functools.reduce(lambda obj, part: getattr(obj, part, None), groups, base)
            if dataclasses.is_dataclass(parent) and leaf in {f.name for f in dataclasses.fields(parent)}:
                _check_range(name, path, convert(name, value, field_type(parent, leaf)))
        if "seed" in over and not valid_seed(over["seed"]):
            raise PipelineError(f"seed={over['seed']!r}: expected an integer in 0..{MAX_SEED - 1}")
        cfg = apply_overrides(base, over)
    except ValueError as e:
        raise PipelineError(str(e)) from None

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
    if cfg.data.source != "synthetic" and not resolve(cfg.data.source).is_dir():
        raise PipelineError(f"data={cfg.data.source!r} is neither 'synthetic' nor a folder of audio files "
                            "(scripts/get_supertux_music.sh fetches one into data/external/supertux)")
    if not isinstance(cfg.run_dir, str) or not cfg.run_dir:
        raise PipelineError(f"run_dir={cfg.run_dir!r}: expected a folder path such as 'runs/tiny'")
    if cfg.fig_dir is None:  # an interactive run keeps its figures with its artifacts, not in the committed figures/
        cfg = dataclasses.replace(cfg, fig_dir=f"{cfg.run_dir}/figures")
    for name in ("run_dir", "fig_dir"):
        _check_writable(name, resolve(getattr(cfg, name)))

    missing = [(p, how) for p, how in required_artifacts(notebook, cfg) if not p.exists()]
    if missing:
        lines = "\n".join(f"  {p}  <- {how}" for p, how in missing)
        raise PipelineError(f"{notebook} needs artifacts of earlier notebooks that are not in "
                            f"run_dir={cfg.run_dir!r}:\n{lines}\nRun those notebooks first with the same "
                            "preset/run_dir/lambdas/patterns (or the whole sequence: make run).")
    return cfg


def notebook_params(notebook: str, namespace: dict) -> PipelineConfig:
    """check_params with the parameters a notebook declared: `preset` and every PipelineConfig
    field or flat name (PipelineConfig.ALIASES) that `namespace` (the notebook's globals()) defines,
    so each is written once, in the parameters cell. The others keep the preset's value."""
    known = {f.name for f in dataclasses.fields(PipelineConfig)} | set(PipelineConfig.ALIASES)
    params = {k: v for k, v in namespace.items() if k in known}
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


_HOW = {"codec": "notebooks/01_train_codec.ipynb", "lm": "notebooks/03_train_lm.ipynb",
        "gen": "notebooks/04_generate.ipynb"}


def required_artifacts(notebook: str, cfg: PipelineConfig) -> list[tuple[Path, str]]:
    """(path, the notebook that writes it) for what `notebook` reads from earlier ones."""
    need: list[tuple[Path, str]] = []
    idx, layout = NOTEBOOKS.index(notebook), cfg.layout
    if idx >= 2:  # 02, 03, 04, 05 read the trained codecs
        need += [(layout.codec(lam) / "codec.pt", f"run {_HOW['codec']} (lambdas={lam:g})") for lam in cfg.lambdas]
    if notebook == "04_generate":
        need += [(layout.lm(lam, p) / "lm.pt", f"run {_HOW['lm']} (lambdas={lam:g}, patterns={p})")
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

