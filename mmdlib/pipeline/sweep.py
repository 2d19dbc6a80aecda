"""The sweep's configuration: the codecs it trains besides λ = 0 (`Variant`: an MMD weight and the
whole MMD setting, the LMs on its codes), the claim-2 grid (GRID), the presets, and each (data set,
seed)'s pipeline config. The runs, the report and the command line are `mmdlib.experiment`'s."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mmdlib.mmd.loss import MMDConfig
from mmdlib.pipeline.params import PIPELINE_PRESETS, PipelineConfig
from mmdlib.train.config import TRAIN_PRESETS
from mmdlib.train.overrides import apply_overrides


@dataclass(frozen=True)
class Variant:
    """A codec of the sweep besides λ = 0: its MMD weight and settings (the whole `codec.mmd`; None: the
    pipeline's), the LMs trained on its codes and the patterns whose depth gap is measured. Its codec
    is named by λ and the settings that differ from the defaults (params.variant_tag)."""
    lam: float
    mmd: MMDConfig | None = None
    patterns: tuple[str, ...] = ("delay", "flatten")
    gap_patterns: tuple[str, ...] = ("delay",)


TINY_MMD = TRAIN_PRESETS["tiny"].mmd  # unbiased estimator, residual streams, distances / K·D, delay-aligned
# The claim-2 grid: the three streams of the authors' commits, the conditional (within-clip) shuffle,
# the ICML code's loss (codeword streams, the reference's value: raw distances, sums / clips) at the
# paper's λ, and the lag-0 MMD with the pattern whose tuple it targets (parallel)
GRID = (Variant(1000.0, TINY_MMD),
        Variant(1000.0, dataclasses.replace(TINY_MMD, streams="input")),
        Variant(1000.0, dataclasses.replace(TINY_MMD, streams="codeword")),
        Variant(1000.0, dataclasses.replace(TINY_MMD, shuffle="clip")),
        Variant(1000.0, MMDConfig(streams="codeword", estimator="reference")),
        Variant(1000.0, dataclasses.replace(TINY_MMD, align="none"), ("parallel", "flatten"), ("parallel",)))


@dataclass(frozen=True)
class SweepConfig:
    variants: tuple[Variant, ...] = GRID     # every one paired with the λ = 0 codec of its seed
    baseline: Variant = Variant(0.0, None, ("parallel", "delay", "flatten"), ("parallel", "delay"))  # λ = 0
    seeds: tuple[int, ...] = (0, 1, 2, 3)    # codec seeds: paired differences against λ = 0
    datasets: tuple[str, ...] = ("synthetic",)
    # other variants per data set (by data_tag), e.g. {"supertux": {"variants": (Variant(10.0),)}}
    per_data: dict = field(default_factory=dict)
    embedders: dict = field(default_factory=lambda: {"logmel": {}})
    n_visqol: int = 8                # held-out clips scored with ViSQOL per codec (~0.5 s of CPU each)
    n_boot: int = 200                # bootstrap resamples of the generated clips (FAD interval)
    # per (data, seed): codecs, tokens, LMs, generation; run_dir/fig_dir are the sweep's roots.
    # LMs: up to 2,000 steps, early stopping on the valid clips (every 100 steps, patience 3) on 256 clips
    # (they reach their best held-out loss in ~500-1,000 steps: converged, not stopped by the budget);
    # 64 samples per LM at the length it trained on (50 frames)
    pipeline: PipelineConfig = apply_overrides(PipelineConfig(), {
        "codec_steps": 600, "codec_mmd_start": 300, "codec_eval_every": 300, "lm_steps": 2000, "lm_warmup": 60,
        "lm_eval_every": 100, "lm_patience": 3, "n_token_train": 256, "n_gen": 64, "gen_seconds": 1.0,
        "depth.max_train_windows": 2048, "threads": None, "progress": False, "run_dir": "runs/sweep", "fig_dir": "figures/sweep"})


SWEEP_PRESETS: dict[str, SweepConfig] = {
    # synthetic music x 4 seeds x 7 codecs (λ = 0 and the grid) x (2-3 LMs + depth heads + 64 samples each)
    # on a 2-core CPU (`make experiment`; its time per stage in figures/sweep/results.json)
    "tiny": SweepConfig(),
    # the plumbing only, in a minute or two: numbers mean nothing
    "smoke": SweepConfig(variants=(Variant(10.0), Variant(10.0, dataclasses.replace(TINY_MMD, streams="codeword"))),
                         seeds=(0,), n_boot=20,
                         pipeline=apply_overrides(PIPELINE_PRESETS["smoke"], dict(
                             n_gen=2, threads=None, run_dir="runs/sweep_smoke", fig_dir="runs/sweep_smoke/figures"))),
    # GPU: the paper's codec and LM presets, the ICML code's loss at λ around the paper's 1000, and lag 0
    "paper": SweepConfig(variants=(Variant(100.0), Variant(1000.0), Variant(10000.0),
                                   Variant(1000.0, dataclasses.replace(PIPELINE_PRESETS["paper"].codec.mmd, align="none"),
                                           ("parallel", "flatten"), ("parallel",))),
                         pipeline=apply_overrides(PIPELINE_PRESETS["paper"], dict(
                             run_dir="runs/sweep_paper", fig_dir="figures/sweep_paper"))),
}


def data_tag(data: str) -> str:
    return "synthetic" if data == "synthetic" else Path(data).name


def for_data(sweep: SweepConfig, data: str) -> SweepConfig:
    """The sweep with the variants of this data set."""
    return dataclasses.replace(sweep, **sweep.per_data.get(data_tag(data), {}))


def seed_config(sweep: SweepConfig, data: str, seed: int, device: str | None = None) -> PipelineConfig:
    sweep = for_data(sweep, data)
    run_dir = f"{sweep.pipeline.run_dir}/{data_tag(data)}/seed{seed}"
    lambdas = tuple(dict.fromkeys((0.0, *(v.lam for v in sweep.variants))))
    return apply_overrides(sweep.pipeline, dict(data=data, seed=seed, run_dir=run_dir, lambdas=lambdas,
                                                device=device or sweep.pipeline.device))


def codecs(sweep: SweepConfig, cfg: PipelineConfig) -> list[tuple[PipelineConfig, float]]:
    """(config, λ) of every codec of the sweep: λ = 0, then each variant, its config holding the
    variant's MMD settings, LM patterns and depth-gap patterns."""
    return [(dataclasses.replace(cfg, codec=dataclasses.replace(cfg.codec, mmd=v.mmd or cfg.codec.mmd),
                                 patterns=v.patterns, gap_patterns=v.gap_patterns), v.lam)
            for v in (sweep.baseline, *sweep.variants)]
