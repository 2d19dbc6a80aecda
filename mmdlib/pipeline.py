"""Glue for the numbered notebooks (`notebooks/00_data` ... `05_report`): presets, parameter checks,
the layout of a run directory, token caches, and small loaders of earlier artifacts.

The notebooks hold the story and the plots; everything they compute goes through here, so that
papermill, nbval and a reader in JupyterLab run the same code. A run directory looks like:

    run_dir/
      data/                          00: example clips (wav)
      codec_lambda0/                 01: codec.pt, checkpoint.pt, metrics.json, recon/*.wav
      codec_lambda100/                   (one folder per MMD weight λ; `_none` suffix if not delay-aligned)
      tokens/codec_lambda0/{train,valid}.pt    02/03: cached codes `n k t` of the data sets
      dependence/codec_lambda0.json  02: MI/NMI matrices, MMD, permutation-test p-value
      lm/codec_lambda0/delay/        03: checkpoint.pt (train_lm), metrics.json (history, bits/frame)
      generate/codec_lambda0/delay/  04: codes.pt, sample*.wav, metrics.json (timing, dependence)
      notebooks/                     executed copies written by scripts/run_pipeline.py
    figures/                         PNG/SVG figures, results.md and results.json (05)

`check_params(notebook, ...)` is the first thing every notebook calls: it resolves a preset
(`PIPELINE_PRESETS`) with explicit overrides, and stops with a `PipelineError` that says what to do
(unknown preset, device `cuda` without a GPU, missing artifact of an earlier notebook).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import save_audio
from .codec import Codec
from .data import make_dataset
from .patterns import PATTERNS

ROOT = Path(__file__).resolve().parents[1]  # the repository (relative paths are resolved here)
NOTEBOOKS = ("00_data", "01_train_codec", "02_dependence", "03_train_lm", "04_generate", "05_report")
ALIGNS = ("delay", "none")


class PipelineError(ValueError):
    """A bad notebook parameter or a missing artifact; the message says what to do."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"\x1b[31mPipelineError\x1b[0m: {self}"]


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a notebook run depends on. Presets fill it; notebook parameters override it."""

    # codecs (01): one per MMD weight λ, trained with mmdlib.train_codec
    codec_preset: str = "tiny"                  # train_codec.TRAIN_PRESETS (also the codec architecture)
    codec_steps: int | None = 600               # None: the training preset's own
    codec_eval_every: int | None = 200          # None: the training preset's own
    lambdas: tuple[float, ...] = (0.0, 100.0)   # MMD weights; 0 is the baseline codec
    align: str = "delay"                        # MMD pairing of the streams: "delay" or "none"
    # data: "synthetic" or a folder of audio files
    data: str = "synthetic"
    cache_dir: str | None = None                # decoded-audio cache for folders (default data/cache)
    clip_seconds: float = 4.0                   # length of the tokenised clips (02, 03, 04)
    n_token_train: int = 256                    # clips tokenised for LM training
    n_token_valid: int = 64                     # held-out clips: dependence (02), bits/frame (03)
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
    lm_eval_every: int | None = 125
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PIPELINE_PRESETS: dict[str, PipelineConfig] = {
    # the whole sequence on a 2-core CPU in about a quarter of an hour
    "tiny": PipelineConfig(),
    # the plumbing only (every notebook end to end in a few minutes): numbers mean nothing
    "smoke": PipelineConfig(
        codec_steps=20, codec_eval_every=10, clip_seconds=2.0, n_token_train=16, n_token_valid=8,
        mmd_samples=512, n_permutations=20, perm_samples=256, lm_steps=10, lm_seq_frames=50, lm_eval_every=5,
        gen_seconds=1.0, n_gen=2, run_dir="runs/smoke", fig_dir="runs/smoke/figures",
    ),
    # the paper's scale, for GPUs: preset-length training, λ = 1000, 30 s token crops
    "paper": PipelineConfig(
        codec_preset="paper", codec_steps=None, codec_eval_every=None, lambdas=(0.0, 1000.0),
        clip_seconds=30.0, n_token_train=4096, n_token_valid=256, mmd_samples=16384, n_permutations=200,
        perm_samples=4096,
        lm_preset="paper", lm_train_preset="paper", lm_steps=None, lm_seq_frames=None, lm_eval_every=None,
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


MAX_SEED = 2**31  # seeds are mixed into batch seeds (checkpoint.batch_seed) that must fit 64 bits


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
    if "patterns" in over:
        over["patterns"] = _as_list("patterns", over["patterns"], str)
    for name in ("codec_steps", "codec_eval_every", "lm_steps", "lm_seq_frames", "lm_eval_every",
                 "n_token_train", "n_token_valid", "mmd_samples", "n_permutations", "perm_samples", "n_gen", "top_k", "threads"):
        if name in over:
            over[name] = _check_positive(name, over[name])
    for name in ("clip_seconds", "gen_seconds", "temperature"):
        if name in over:
            over[name] = _check_positive(name, over[name], allow_none=False, kind=float)
    if "seed" in over and (isinstance(over["seed"], bool) or not isinstance(over["seed"], int)
                           or not 0 <= over["seed"] < MAX_SEED):
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
                            "preset/run_dir/lambdas/patterns (or the whole sequence: make pipeline).")
    return cfg


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
    from .lm import LM_PRESETS
    from .train_lm import LM_TRAIN_PRESETS
    from .train_codec import TRAIN_PRESETS

    for name, value, known in (("codec_preset", cfg.codec_preset, TRAIN_PRESETS),
                               ("lm_preset", cfg.lm_preset, LM_PRESETS),
                               ("lm_train_preset", cfg.lm_train_preset, LM_TRAIN_PRESETS)):
        if value not in known:
            raise PipelineError(f"{name}={value!r}: choose one of {sorted(known)}")


_HOW = {"codec": "notebooks/01_train_codec.ipynb", "lm": "notebooks/03_train_lm.ipynb",
        "gen": "notebooks/04_generate.ipynb"}


def required_artifacts(notebook: str, cfg: PipelineConfig) -> list[tuple[Path, str]]:
    """(path, the notebook that writes it) for what `notebook` reads from earlier ones."""
    need: list[tuple[Path, str]] = []
    idx = NOTEBOOKS.index(notebook)
    if idx >= 2:  # 02, 03, 04, 05 read the trained codecs
        need += [(codec_dir(cfg, lam) / "codec.pt", f"run {_HOW['codec']} (lambdas={lam:g})") for lam in cfg.lambdas]
    if notebook == "04_generate":
        need += [(lm_dir(cfg, lam, p) / "checkpoint.pt", f"run {_HOW['lm']} (lambdas={lam:g}, patterns={p})")
                 for lam in cfg.lambdas for p in cfg.patterns]
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


# ----------------------------------------------------------------------------------------------
# Run-directory layout


def codec_name(lam: float, align: str = "delay") -> str:
    """'codec_lambda0', 'codec_lambda100', 'codec_lambda100_none' (MMD not delay-aligned)."""
    name = f"codec_lambda{lam:g}"
    return name if lam == 0 or align == "delay" else f"{name}_{align}"


def codec_dir(cfg: PipelineConfig, lam: float) -> Path:
    return cfg.run_path / codec_name(lam, cfg.align)


def token_path(cfg: PipelineConfig, lam: float, split: str) -> Path:
    return cfg.run_path / "tokens" / codec_name(lam, cfg.align) / f"{split}.pt"


def dependence_path(cfg: PipelineConfig, lam: float) -> Path:
    return cfg.run_path / "dependence" / f"{codec_name(lam, cfg.align)}.json"


def lm_dir(cfg: PipelineConfig, lam: float, pattern: str) -> Path:
    return cfg.run_path / "lm" / codec_name(lam, cfg.align) / pattern


def gen_dir(cfg: PipelineConfig, lam: float, pattern: str) -> Path:
    return cfg.run_path / "generate" / codec_name(lam, cfg.align) / pattern


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def read_json(path: Path, how: str = "") -> dict:
    if not path.is_file():
        raise PipelineError(f"{path} is missing" + (f": {how}" if how else ""))
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------
# Data and codecs


def sample_rate(cfg: PipelineConfig) -> int:
    from .codec import codec_preset
    from .train_codec import TRAIN_PRESETS

    return codec_preset(TRAIN_PRESETS[cfg.codec_preset].preset).sample_rate


def data_cache_dir(cfg: PipelineConfig) -> str | None:
    if cfg.data == "synthetic":
        return None
    return str(resolve(cfg.cache_dir or "data/cache"))


def dataset(cfg: PipelineConfig, split: str, n_items: int, seconds: float | None = None):
    """Clips `1 n` of the pipeline's data; folder valid/test splits are cut to `n_items`."""
    ds = make_dataset(str(resolve(cfg.data)) if cfg.data != "synthetic" else "synthetic", split,
                      sample_rate(cfg), seconds or cfg.clip_seconds, n_items, cfg.seed, data_cache_dir(cfg))
    if len(ds) > n_items:
        ds = torch.utils.data.Subset(ds, range(n_items))
    return ds


def codec_train_config(cfg: PipelineConfig, lam: float):
    """The CodecTrainConfig of the codec with MMD weight `lam`: train_preset(cfg.codec_preset) with
    this run's steps, λ, alignment, data, seed and device."""
    from .train_codec import TRAIN_PRESETS, train_preset

    base = TRAIN_PRESETS[cfg.codec_preset]
    over = dict(mmd_weight=float(lam), mmd=dataclasses.replace(base.mmd, align=cfg.align), seed=cfg.seed,
                device=cfg.device, data=str(resolve(cfg.data)) if cfg.data != "synthetic" else "synthetic",
                cache_dir=data_cache_dir(cfg))
    if cfg.codec_steps is not None:
        over["steps"] = cfg.codec_steps
        over["mmd_start"] = min(base.mmd_start, 2 * cfg.codec_steps // 3)  # short runs: the MMD still gets steps
    if cfg.codec_eval_every is not None:
        over["eval_every"] = min(cfg.codec_eval_every, over.get("steps", base.steps))
    return train_preset(cfg.codec_preset, **over)


def train_codec_run(cfg: PipelineConfig, lam: float) -> dict:
    """Train (or resume, or just reload if finished) the codec of weight `lam` in codec_dir."""
    from .train_codec import train_codec

    tcfg = codec_train_config(cfg, lam)
    out = codec_dir(cfg, lam)
    done = out / "metrics.json"
    if done.is_file() and (out / "codec.pt").is_file():
        saved = json.loads(done.read_text())
        if saved["config"] == json.loads(json.dumps(tcfg.to_dict())):
            return {"history": saved["history"], "final": saved["history"][-1], "resumed": True}
        raise PipelineError(f"{out} holds a codec trained with another configuration; delete that folder "
                            "or choose another run_dir")
    result = train_codec(tcfg, out, progress=False)
    return result | {"resumed": False}


def load_codec(cfg: PipelineConfig, lam: float) -> Codec:
    path = codec_dir(cfg, lam) / "codec.pt"
    if not path.is_file():
        raise PipelineError(f"{path} is missing: run notebooks/01_train_codec.ipynb with lambdas={lam:g} first")
    return Codec.load(path, map_location=cfg.device).to(cfg.device)


def codec_history(cfg: PipelineConfig, lam: float) -> list[dict]:
    return read_json(codec_dir(cfg, lam) / "metrics.json", "run notebooks/01_train_codec.ipynb")["history"]


@torch.no_grad()
def tokenise(codec: Codec, ds, batch_size: int = 16, device: str = "cpu") -> torch.Tensor:
    """Codes `n k t` (long, CPU) of every clip of a dataset of `1 n` clips."""
    codes = []
    for i in range(0, len(ds), batch_size):
        wav = torch.stack([ds[j] for j in range(i, min(i + batch_size, len(ds)))]).to(device)
        codes.append(codec.encode(wav).cpu())
    if not codes:
        raise PipelineError("tokenise: the dataset is empty")
    return torch.cat(codes)


def _token_meta(cfg: PipelineConfig, lam: float, split: str, n_items: int) -> dict:
    ckpt = codec_dir(cfg, lam) / "codec.pt"
    st = ckpt.stat()
    return {"data": cfg.data, "split": split, "n_items": n_items, "clip_seconds": cfg.clip_seconds,
            "seed": cfg.seed, "codec": str(ckpt), "codec_size": st.st_size, "codec_mtime_ns": st.st_mtime_ns}


def tokens(cfg: PipelineConfig, lam: float, split: str, codec: Codec | None = None) -> torch.Tensor:
    """The codes `n k t` of the train or valid clips under codec `lam`, cached in run_dir/tokens/
    as `<split>.pt` (a plain long tensor, what `python -m mmdlib.train_lm --train/--valid` reads) and
    `<split>.json` (what it was computed from: recomputed when the codec or data parameters change)."""
    if split not in ("train", "valid"):
        raise PipelineError(f"split={split!r}: expected 'train' or 'valid'")
    n_items = cfg.n_token_train if split == "train" else cfg.n_token_valid
    meta = _token_meta(cfg, lam, split, n_items)
    path = token_path(cfg, lam, split)
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return torch.load(path)
    codec = codec or load_codec(cfg, lam)
    codes = tokenise(codec, dataset(cfg, split, n_items), device=cfg.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(codes, path)
    write_json(meta_path, meta)
    return codes


# ----------------------------------------------------------------------------------------------
# Language models


def lm_configs(cfg: PipelineConfig, pattern: str, n_q: int, codebook_size: int):
    """(LMConfig, LMTrainConfig) of the LM with `pattern` over a codec with n_q x codebook_size codes."""
    from .lm import lm_config
    from .train_lm import LM_TRAIN_PRESETS

    lm_cfg = lm_config(cfg.lm_preset, pattern=pattern, n_q=n_q, codebook_size=codebook_size)
    over = dict(seed=cfg.seed, device=cfg.device, progress=False)
    for name, value in (("steps", cfg.lm_steps), ("seq_frames", cfg.lm_seq_frames),
                        ("eval_every", cfg.lm_eval_every)):
        if value is not None:
            over[name] = value
    tcfg = dataclasses.replace(LM_TRAIN_PRESETS[cfg.lm_train_preset], **over)
    tcfg = dataclasses.replace(tcfg, warmup=min(tcfg.warmup, max(1, tcfg.steps // 5)),
                               ckpt_every=min(tcfg.ckpt_every, tcfg.steps))
    return lm_cfg, tcfg


def train_lm_run(cfg: PipelineConfig, lam: float, pattern: str) -> dict:
    """Train (or resume, or reload if finished) the LM of (codec `lam`, `pattern`); writes
    lm_dir/metrics.json with the configs, history (train_lm's rows), held-out bits per frame and
    training time."""
    from .checkpoint import CHECKPOINT, RUN_NEUTRAL, CheckpointError, check_same_config, history_rows, load_checkpoint
    from .train_lm import train_lm

    train, valid = tokens(cfg, lam, "train"), tokens(cfg, lam, "valid")
    codec_cfg = Codec.load(codec_dir(cfg, lam) / "codec.pt").cfg
    lm_cfg, tcfg = lm_configs(cfg, pattern, codec_cfg.quantizer.n_q, codec_cfg.quantizer.codebook_size)
    if train.shape[-1] < tcfg.seq_frames:
        raise PipelineError(f"clip_seconds={cfg.clip_seconds} gives {train.shape[-1]} frames, fewer than the LM's "
                            f"seq_frames={tcfg.seq_frames}: raise clip_seconds or lower lm_seq_frames")
    out = lm_dir(cfg, lam, pattern)
    configs = {"lm_config": lm_cfg.to_dict(), "train_config": tcfg.to_dict(),
               "tokens": _token_meta(cfg, lam, "train", cfg.n_token_train)}
    configs = json.loads(json.dumps(configs))
    metrics_path, ckpt = out / "metrics.json", out / CHECKPOINT
    if metrics_path.is_file() and ckpt.is_file():
        saved = json.loads(metrics_path.read_text())
        if {k: saved.get(k) for k in configs} == configs:
            return saved | {"history": history_rows(saved["history"]), "resumed": True}
        raise PipelineError(f"{out} holds an LM trained with another configuration (or on other tokens); "
                            "delete that folder or choose another run_dir")
    if ckpt.is_file():  # interrupted, or trained outside (torchrun -m mmdlib.train_lm): resume the same run only
        state = load_checkpoint(ckpt, "lm")  # a corrupt file: CheckpointError with what to do
        try:
            check_same_config(state["config"], {"model": lm_cfg.to_dict(), "train": tcfg.to_dict()},
                              tuple(f"train.{k}" for k in RUN_NEUTRAL),
                              f"{ckpt} was written with another LM or training configuration")
        except CheckpointError as e:
            raise PipelineError(f"{e}. Delete that folder or choose another run_dir") from None
    t0 = time.time()
    model, history = train_lm(train, valid, lm_cfg, tcfg, out)
    final = [row["valid_bits_per_frame"] for row in history if "valid_bits_per_frame" in row][-1]
    result = configs | {"history": history, "valid_bits_per_frame": final,
                        "train_seconds": time.time() - t0, "n_params": model.num_params(),
                        "codec": codec_name(lam, cfg.align), "pattern": pattern, "lambda": lam}
    write_json(metrics_path, result)
    return result | {"resumed": False}


def lm_metrics(cfg: PipelineConfig, lam: float, pattern: str) -> dict:
    return read_json(lm_dir(cfg, lam, pattern) / "metrics.json",
                     f"run notebooks/03_train_lm.ipynb with lambdas={lam:g}, patterns={pattern}")


def generate_run(cfg: PipelineConfig, lam: float, pattern: str, codec: Codec | None = None) -> dict:
    """Sample cfg.n_gen clips of cfg.gen_seconds from the LM of (codec `lam`, `pattern`), decode them,
    write gen_dir/{codes.pt, sample*.wav, metrics.json}; returns the metrics (timing included)."""
    from .dependence import dependence_summary
    from .lm import TokenLM, generate

    codec = codec or load_codec(cfg, lam)
    model = TokenLM.load(lm_dir(cfg, lam, pattern) / "checkpoint.pt", map_location=cfg.device)
    n_frames = max(1, round(cfg.gen_seconds * codec.frame_rate))
    generate(model, min(n_frames, 4), seed=cfg.seed)  # warm-up: allocator, kernels
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    codes = generate(model, n_frames, batch_size=cfg.n_gen, temperature=cfg.temperature, top_k=cfg.top_k,
                     seed=cfg.seed)
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    wav = codec.decode(codes.to(cfg.device)).cpu()[..., : round(cfg.gen_seconds * codec.cfg.sample_rate)]
    out = gen_dir(cfg, lam, pattern)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(codes.cpu(), out / "codes.pt")
    for i, w in enumerate(wav):
        save_audio(out / f"sample{i}.wav", w.clamp(-1, 1), codec.cfg.sample_rate)
    metrics = {"codec": codec_name(lam, cfg.align), "lambda": lam, "pattern": pattern, "n_frames": n_frames,
               "n_steps": model.make_pattern(n_frames).n_steps, "batch_size": cfg.n_gen,
               "gen_seconds_wall": seconds, "audio_seconds": cfg.gen_seconds * cfg.n_gen,
               "real_time_factor": seconds / (cfg.gen_seconds * cfg.n_gen), "device": cfg.device}
    dep = dependence_summary(codes.cpu(), codec.cfg.quantizer.codebook_size)
    metrics |= {"nmi_lag0": dep["nmi_lag0"], "nmi_delay": dep["nmi_delay"]}
    write_json(out / "metrics.json", metrics)
    return metrics


def generated(cfg: PipelineConfig, lam: float, pattern: str) -> tuple[torch.Tensor, dict]:
    """(codes `b k t`, metrics) of an earlier generate_run."""
    out = gen_dir(cfg, lam, pattern)
    how = f"run notebooks/04_generate.ipynb with lambdas={lam:g}, patterns={pattern}"
    metrics = read_json(out / "metrics.json", how)
    return torch.load(out / "codes.pt"), metrics


# ----------------------------------------------------------------------------------------------
# Audio for the notebooks


def audio_bytes(wav: torch.Tensor, sample_rate: int, fmt: str = "ogg") -> bytes:
    """Encoded audio `1 n` or `n` (ogg vorbis: ~10x smaller than wav inside a saved notebook)."""
    import io

    import soundfile as sf

    x = wav.detach().cpu().float().reshape(-1).clamp(-1, 1).numpy()
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format=fmt.upper(), subtype="VORBIS" if fmt == "ogg" else "PCM_16")
    return buf.getvalue()


def player(wav: torch.Tensor, sample_rate: int):
    """An IPython audio player (embedded ogg) for `1 n` audio; renders in JupyterLab and HTML."""
    from IPython.display import Audio

    audio = Audio(data=audio_bytes(wav, sample_rate))
    audio.mimetype = "audio/ogg"  # IPython assumes wav for raw bytes
    return audio


# ----------------------------------------------------------------------------------------------
# Dependence between codebooks (02)


@torch.no_grad()
def residual_streams(codec: Codec, ds, n_items: int | None = None, batch_size: int = 16,
                     device: str = "cpu") -> torch.Tensor:
    """Residual streams `b k d t` (CPU) of the first n_items clips of a dataset."""
    n = len(ds) if n_items is None else min(n_items, len(ds))
    out = []
    for i in range(0, n, batch_size):
        wav = torch.stack([ds[j] for j in range(i, min(i + batch_size, n))]).to(device)
        out.append(codec(wav).streams.cpu())
    return torch.cat(out)


def dependence_run(cfg: PipelineConfig, lam: float, codec: Codec | None = None) -> dict:
    """Dependence between the codebooks of codec `lam` on the held-out clips: pairwise MI/NMI of
    the codes (lag 0 and delay-aligned), their summary, the MMD of the residual streams
    (delay-aligned and not) and permutation-test p-values. Written to dependence_path."""
    from .dependence import dependence_summary, pairwise_mi, permutation_test
    from .mmd import mmd_independence

    codec = codec or load_codec(cfg, lam)
    size = codec.cfg.quantizer.codebook_size
    codes = tokens(cfg, lam, "valid", codec)
    out = {"codec": codec_name(lam, cfg.align), "lambda": lam, "n_clips": len(codes), "frames": codes.shape[-1]}
    for tag, align in (("lag0", "none"), ("delay", "delay")):
        r = pairwise_mi(codes, size, align)
        out[f"mi_{tag}"] = r["mi"].tolist()
        out[f"nmi_{tag}"] = r["nmi"].tolist()
        out["entropy"] = r["entropy"].tolist()
    out["summary"] = dependence_summary(codes, size)
    n_mmd = max(1, math.ceil(cfg.mmd_samples / codes.shape[-1]))  # whole clips, the first ones
    n_perm = max(1, math.ceil(cfg.perm_samples / codes.shape[-1]))
    streams = residual_streams(codec, dataset(cfg, "valid", cfg.n_token_valid), max(n_mmd, n_perm), device=cfg.device)
    out["mmd_samples"] = int(min(n_mmd, len(streams)) * streams.shape[-1])
    for tag, align in (("lag0", "none"), ("delay", "delay")):
        mcfg = dataclasses.replace(codec_train_config(cfg, lam).mmd, align=align)  # as the λ > 0 codecs train
        out[f"mmd_{tag}"] = float(mmd_independence(streams[:n_mmd], mcfg, seed=cfg.seed))
        test = permutation_test(streams[:n_perm], mcfg, cfg.n_permutations, seed=cfg.seed)
        out[f"perm_{tag}"] = {"statistic": test["statistic"], "p_value": test["p_value"],
                              "null": test["null"].tolist(),
                              "n_samples": int(min(n_perm, len(streams)) * streams.shape[-1])}
    write_json(dependence_path(cfg, lam), out)
    return out


# ----------------------------------------------------------------------------------------------
# The report (05)


def collect_results(cfg: PipelineConfig) -> dict:
    """Every artifact of the run in two tables: one row per codec, one per (codec, pattern) LM.
    Missing pieces (e.g. a notebook not run) are None, never invented."""
    codecs, lms = [], []
    for lam in cfg.lambdas:
        name = codec_name(lam, cfg.align)
        hist = codec_history(cfg, lam)
        final = hist[-1]
        dep_file = dependence_path(cfg, lam)
        dep = json.loads(dep_file.read_text()) if dep_file.is_file() else None
        codecs.append({
            "codec": name, "lambda": lam, "align": cfg.align, "steps": final["step"],
            "visqol": final.get("visqol"), "sisnr_db": final["sisnr_db"], "mel_distance": final["mel_distance"],
            "usage_ratio_min": final["usage_perplexity_ratio_min"],
            "code_entropy_bits": dep["summary"]["entropy_mean"] if dep else None,
            "nmi_lag0": dep["summary"]["nmi_lag0"] if dep else final["nmi_lag0"],
            "nmi_delay": dep["summary"]["nmi_delay"] if dep else final["nmi_delay"],
            "mmd_delay": dep["mmd_delay"] if dep else None,
            "p_value_delay": dep["perm_delay"]["p_value"] if dep else None,
            "train_seconds": final["seconds"],
        })
        for pattern in cfg.patterns:
            lm_file, gen_file = lm_dir(cfg, lam, pattern) / "metrics.json", gen_dir(cfg, lam, pattern) / "metrics.json"
            lm = json.loads(lm_file.read_text()) if lm_file.is_file() else None
            gen = json.loads(gen_file.read_text()) if gen_file.is_file() else None
            lms.append({
                "codec": name, "lambda": lam, "pattern": pattern,
                "valid_bits_per_frame": lm["valid_bits_per_frame"] if lm else None,
                "lm_steps": lm["train_config"]["steps"] if lm else None,
                "gen_steps": gen["n_steps"] if gen else None,
                "gen_seconds_per_audio_second": gen["real_time_factor"] if gen else None,
                "gen_nmi_delay": gen.get("nmi_delay") if gen else None,
            })
    flat = {r["codec"]: r["valid_bits_per_frame"] for r in lms if r["pattern"] == "flatten"}
    for r in lms:
        f, b = flat.get(r["codec"]), r["valid_bits_per_frame"]
        r["gap_vs_flatten"] = b - f if f is not None and b is not None and r["pattern"] != "flatten" else None
    return {"preset_config": cfg.to_dict(), "codecs": codecs, "lms": lms}


def _cell(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt) if isinstance(v, float) else str(v)


def results_markdown(results: dict) -> str:
    """The two results tables as Markdown (written to figures/results.md)."""
    c = results["preset_config"]
    lines = [f"Run `{c['run_dir']}`: codec preset `{c['codec_preset']}`, LM preset `{c['lm_preset']}`, "
             f"device `{c['device']}`, seed {c['seed']}. Generated from the run's artifacts by "
             "notebooks/05_report.ipynb.", "",
             "Codec scores on the validation clips of its last evaluation (ViSQOL: MOS-LQO, 1 to 4.73, "
             "on the first of them; mel distance and SI-SNR on all).", "",
             "| codec | λ | ViSQOL ↑ | mel dist. ↓ | SI-SNR (dB) ↑ | code entropy (bits) | NMI lag 0 ↓ | NMI delay ↓ "
             "| MMD² delay ↓ | p-value (indep.) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["codecs"]:
        lines.append(f"| {r['codec']} | {r['lambda']:g} | {_cell(r.get('visqol'), '.2f')} | {_cell(r['mel_distance'], '.3f')} "
                     f"| {_cell(r['sisnr_db'], '.1f')} "
                     f"| {_cell(r['code_entropy_bits'], '.2f')} | {_cell(r['nmi_lag0'], '.3f')} | {_cell(r['nmi_delay'], '.3f')} | {_cell(r['mmd_delay'], '.4f')} "
                     f"| {_cell(r['p_value_delay'], '.3f')} |")
    lines += ["", "| codec | pattern | held-out bits/frame ↓ | − flatten | generation steps | generation s / audio s ↓ "
                  "| NMI delay of generated codes |", "|---|---|---|---|---|---|---|"]
    for r in results["lms"]:
        lines.append(f"| {r['codec']} | {r['pattern']} | {_cell(r['valid_bits_per_frame'], '.2f')} | "
                     f"{_cell(r['gap_vs_flatten'], '+.2f')} | "
                     f"{_cell(r['gen_steps'], 'd')} | {_cell(r['gen_seconds_per_audio_second'], '.3f')} | "
                     f"{_cell(r['gen_nmi_delay'], '.3f')} |")
    return "\n".join(lines) + "\n"


def write_results(cfg: PipelineConfig, results: dict) -> tuple[Path, Path]:
    md, js = cfg.fig_path / "results.md", cfg.fig_path / "results.json"
    write_json(js, results)
    md.write_text(results_markdown(results))
    return md, js


def audio_html(wav: torch.Tensor, sample_rate: int) -> str:
    """An <audio> element with the clip embedded as ogg (base64)."""
    import base64

    data = base64.b64encode(audio_bytes(wav, sample_rate)).decode()
    return f'<audio controls preload="none" style="width: 210px" src="data:audio/ogg;base64,{data}"></audio>'


def players_table(rows: dict[str, dict[str, torch.Tensor]], sample_rate: int):
    """An HTML table of audio players: rows[row label][column label] = clip `1 n` (missing cells
    stay empty). One display output that JupyterLab and nbconvert's HTML both render."""
    from html import escape

    from IPython.display import HTML

    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        f"<tr><th>{escape(name)}</th>"
        + "".join(f"<td>{audio_html(r[c], sample_rate) if c in r else ''}</td>" for c in cols) + "</tr>"
        for name, r in rows.items())
    return HTML(f"<table><tr><th></th>{head}</tr>{body}</table>")
