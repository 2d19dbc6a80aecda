"""The λ sweep: tests the paper's three claims on synthetic and real music, over several seeds.

For each data set and seed it trains codecs with MMD weights λ (0, three delay-aligned values and
one non-aligned value), measures them on held-out clips (SI-SNR, mel distance, NMI, MMD², FAD of
the reconstructions), trains an LM per pattern (parallel, delay, flatten) on each codec's tokens
(held-out bits per frame), samples from each LM (AR steps, wall time, FAD of the samples), and
`report` aggregates every seed into one table and two figures (figures/sweep/).

    make experiment                                                  # tiny preset, CPU, both data sets
    python -m mmdlib.experiment all --preset paper --device cuda     # the same at paper scale
    python -m mmdlib.experiment run --data synthetic --seeds 0       # one data set, one seed
    python -m mmdlib.experiment report

The codecs of one (data, seed) share their first `mmd_start` steps: the λ = 0 run is trained to
mmd_start once and the λ > 0 runs fork from that checkpoint (`train_codec.fork_checkpoint`,
exactly the run from scratch, since λ does nothing before mmd_start). Every stage resumes: a
rerun reuses finished codecs and LMs and continues interrupted ones from their checkpoints.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmdlib.pipeline import plots
from mmdlib.data.audio import load_audio
from mmdlib.eval.codec import evaluate_codec
from mmdlib.eval.fad import embed_audio, fad, get_embedder
from mmdlib.train.checkpoint import write_json
from mmdlib.pipeline.params import DEPTH_TRUNK, PIPELINE_PRESETS, PipelineConfig, PipelineError, resolve
from mmdlib.pipeline.report import add_gap, aggregate, report_markdown
from mmdlib.pipeline.stages import dataset, depth_run, forked_codec_run, generate_run, load_codec, train_lm_run
from mmdlib.train.overrides import apply_overrides


@dataclass(frozen=True)
class SweepConfig:
    lambdas: tuple[float, ...] = (0.0, 100.0, 1000.0)   # delay-aligned MMD weights (0: the baseline)
    lambdas_nonaligned: tuple[float, ...] = ()           # MMD on lag-0 tuples (no delay alignment)
    seeds: tuple[int, ...] = (0, 1, 2, 3)                # codec seeds: paired differences against λ = 0
    datasets: tuple[str, ...] = ("synthetic",)
    # other λ grids per data set (by data_tag), e.g. {"supertux": {"lambdas": (0.0, 10.0, 30.0)}}
    per_data: dict = field(default_factory=dict)
    embedders: dict = field(default_factory=lambda: {"logmel": {}})
    n_visqol: int = 8                # held-out clips scored with ViSQOL per codec (~0.5 s of CPU each)
    # per (data, seed): codecs, tokens, LMs, generation; run_dir/fig_dir are the sweep's roots
    # LMs: up to 1,000 steps, early stopping on the valid clips (evaluated every 100 steps, patience 2),
    # 1,024 fresh training clips (the former 256 were over-fitted within 2,000 steps)
    pipeline: PipelineConfig = apply_overrides(PipelineConfig(), dict(
        codec_steps=600, codec_mmd_start=300, codec_eval_every=300, lm_steps=1000, lm_warmup=60, lm_eval_every=100,
        lm_patience=2, n_token_train=1024, n_gen=8, threads=None, run_dir="runs/sweep", fig_dir="figures/sweep"))


SWEEP_PRESETS: dict[str, SweepConfig] = {
    # synthetic music x 4 seeds x 3 codecs x (3 LMs + depth heads) on a 2-core CPU in about 105 minutes (`make experiment`)
    "tiny": SweepConfig(),
    # the plumbing only, in a minute or two: numbers mean nothing
    "smoke": SweepConfig(lambdas=(0.0, 10.0), seeds=(0,), datasets=("synthetic",), per_data={},
                         embedders={"logmel": {}},
                         pipeline=apply_overrides(PIPELINE_PRESETS["smoke"], dict(
                             n_gen=2, threads=None, run_dir="runs/sweep_smoke", fig_dir="runs/sweep_smoke/figures"))),
    # GPU: the paper's codec and LM presets, λ around the paper's 1000
    "paper": SweepConfig(lambdas=(0.0, 100.0, 1000.0, 10000.0), lambdas_nonaligned=(1000.0,), seeds=(0, 1, 2, 3), per_data={},
                         pipeline=apply_overrides(PIPELINE_PRESETS["paper"], dict(
                             run_dir="runs/sweep_paper", fig_dir="figures/sweep_paper"))),
}


def data_tag(data: str) -> str:
    return "synthetic" if data == "synthetic" else Path(data).name


def for_data(sweep: SweepConfig, data: str) -> SweepConfig:
    """The sweep with the λ grid of this data set."""
    return dataclasses.replace(sweep, **sweep.per_data.get(data_tag(data), {}))


def seed_config(sweep: SweepConfig, data: str, seed: int, device: str | None = None) -> PipelineConfig:
    sweep = for_data(sweep, data)
    run_dir = f"{sweep.pipeline.run_dir}/{data_tag(data)}/seed{seed}"
    return apply_overrides(sweep.pipeline, dict(data=data, seed=seed, run_dir=run_dir, lambdas=sweep.lambdas,
                                                device=device or sweep.pipeline.device))


def codecs(sweep: SweepConfig, cfg: PipelineConfig) -> list[tuple[PipelineConfig, float]]:
    """(config, λ) of every codec of the sweep: the aligned ones, then the non-aligned ones."""
    other = dataclasses.replace(apply_overrides(cfg, {"align": "none"}), lambdas=sweep.lambdas_nonaligned)
    return [(cfg, lam) for lam in sweep.lambdas] + [(other, lam) for lam in sweep.lambdas_nonaligned if lam]


# ----------------------------------------------------------------------------------------------
# One (data, seed)


def train_codecs(sweep: SweepConfig, cfg: PipelineConfig) -> None:
    """Train every codec of (data, seed), the λ > 0 ones forked from the λ = 0 run at mmd_start."""
    for c, lam in codecs(sweep, cfg):
        if forked_codec_run(c, lam):
            print(f"  codec {c.layout.codec_name(lam)} done", flush=True)


def _embed(embedders: dict, wav: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
    return {name: embed_audio(e, wav, sample_rate) for name, e in embedders.items()}


def run_seed(sweep: SweepConfig, data: str, seed: int, device: str | None = None) -> dict:
    """Everything for one (data, seed); written to <run_dir>/sweep.json and returned."""
    sweep = for_data(sweep, data)
    cfg = seed_config(sweep, data, seed, device)
    t0 = time.time()
    train_codecs(sweep, cfg)
    embedders = {name: get_embedder(name, **kw) for name, kw in sweep.embedders.items()}
    valid = dataset(cfg, "valid", cfg.data.n_valid)
    real = torch.stack([valid[i] for i in range(len(valid))])  # `b 1 n`, made (decoded) once for every codec
    sr = cfg.sample_rate
    real_emb = _embed(embedders, real, sr)
    rows_codec, rows_lm = [], []
    for c, lam in codecs(sweep, cfg):
        codec = load_codec(c, lam)
        mmd = c.codec.mmd  # the statistic as the λ > 0 codecs train on it
        ev = evaluate_codec(codec, real, {"mmd_delay": dataclasses.replace(mmd, align="delay"),
                                           "mmd_lag0": dataclasses.replace(mmd, align="none")},
                            device=c.device, seed=seed, mmd_frames=c.dependence.mmd_samples, keep_audio=True,
                            n_visqol=min(sweep.n_visqol, len(real)))
        rec = _embed(embedders, ev.pop("audio"), sr)
        q = codec.cfg.quantizer
        name = c.layout.codec_name(lam)
        rows_codec.append({"codec": name, "lambda": lam, "align": c.align, **ev,
                           "kbps": codec.frame_rate * q.n_q * np.log2(q.codebook_size) / 1000,
                           **{f"fad_{k}_recon": fad(rec[k], real_emb[k]) for k in embedders}})
        for pattern in c.models():  # the patterns, then `depth` when the parallel LM has a depth head
            row = {"codec": name, "lambda": lam, "align": c.align, "pattern": pattern}
            if pattern == "depth":  # the joint model in T steps: the parallel LM's trunk with its depth head
                d = depth_run(c, lam, DEPTH_TRUNK)
                row |= {"bits_per_frame": d["depth_bits"], "depth_seconds": d["seconds"]}
            else:
                lm = train_lm_run(c, lam, pattern)
                row |= {"bits_per_frame": lm["bits_per_frame"], "valid_bits_per_frame": lm["valid_bits_per_frame"],
                        "lm_best_step": lm["best_step"], "lm_train_seconds": lm["train_seconds"],
                        **{f"bits_codebook{k + 1}": b for k, b in enumerate(lm["bits_per_codebook"])}}
                if pattern in cfg.gap_patterns:
                    d = depth_run(c, lam, pattern)
                    row |= {"depth_gap_bits": d["gap_bits"], "depth_gap_se": d["gap_se"],
                            "depth_bits": d["depth_bits"], "factorised_bits": d["factorised_bits"],
                            "depth_gap_vs_lm_bits": d["gap_vs_lm_bits"]}
            gen = generate_run(c, lam, pattern, codec)
            wav = torch.stack([load_audio(p, sr) for p in sorted(c.layout.gen(lam, pattern).glob("sample*.wav"))])
            emb = _embed(embedders, wav, sr)
            rows_lm.append(row | {"gen_steps": gen["n_steps"], "gen_seconds_per_audio_second": gen["real_time_factor"],
                                  "gen_nmi_delay": gen["nmi_delay"],
                                  **{f"fad_{k}_gen": fad(emb[k], real_emb[k]) for k in embedders}})
        print(f"  {name}: evaluated, LMs trained, samples drawn", flush=True)
    add_gap(rows_lm)
    out = {"data": data, "tag": data_tag(data), "seed": seed, "config": cfg.to_dict(),
           "sweep": {k: v for k, v in dataclasses.asdict(sweep).items() if k != "pipeline"},
           "codecs": rows_codec, "lms": rows_lm, "seconds": time.time() - t0}
    write_json(cfg.run_path / "sweep.json", out)
    return out


def lm_study(sweep: SweepConfig, data: str, seed: int, lambdas: list[float], lm_steps: int,
             n_token_train: int | None = None, device: str | None = None) -> list[dict]:
    """LMs trained longer and/or on more token clips, on codecs the sweep already trained: does the
    factorisation gap change sign with more LM training? They go to <seed run_dir>/lm_steps<N>[_clips<M>]/,
    whose codec folders link (symlink) to the sweep's. Returns one row per (codec, pattern)."""
    sweep = for_data(sweep, data)
    cfg = seed_config(sweep, data, seed, device)
    n_token_train = n_token_train or cfg.data.n_train
    name = f"lm_steps{lm_steps}" + (f"_clips{n_token_train}" if n_token_train != cfg.data.n_train else "")
    study = apply_overrides(cfg, dict(run_dir=f"{cfg.run_dir}/{name}", lm_steps=lm_steps, n_token_train=n_token_train,
                                      lm_eval_every=max(1, lm_steps // 4)))
    rows = []
    for lam in lambdas:
        src = cfg.layout.codec(lam)
        if not (src / "codec.pt").is_file():
            raise PipelineError(f"{src}/codec.pt is missing: run the sweep for {data_tag(data)} seed {seed} first")
        link = study.layout.codec(lam)
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("..") / src.name)
        for pattern in cfg.patterns:
            lm = train_lm_run(study, lam, pattern)
            curve = [r["valid_bits_per_frame"] for r in lm["history"] if "valid_bits_per_frame" in r]
            rows.append({"codec": cfg.layout.codec_name(lam), "lambda": lam, "pattern": pattern,
                         "lm_steps": lm_steps, "n_token_train": n_token_train, "bits_per_frame": lm["bits_per_frame"],
                         "curve": curve, "train_seconds": lm["train_seconds"]})
    add_gap(rows)
    write_json(study.run_path / "lm_study.json", {"data": data, "seed": seed, "rows": rows})
    return rows


# ----------------------------------------------------------------------------------------------
# The report: every seed of every data set (aggregation in mmdlib.pipeline.report, figures in mmdlib.pipeline.plots)


def report(sweep: SweepConfig) -> dict:
    """Aggregate every finished (data, seed) of the sweep into fig_dir/{results.md, results.json,
    tradeoff.*, gap.*, depth_gap.*}."""
    root = resolve(sweep.pipeline.run_dir)
    runs = [json.loads(p.read_text()) for p in sorted(root.glob("*/seed*/sweep.json"))]
    runs.sort(key=lambda r: (r["tag"] != "synthetic", r["tag"], r["seed"]))  # synthetic first
    if not runs:
        raise PipelineError(f"no finished sweep runs under {root}: run `python -m mmdlib.experiment run` first")
    agg = aggregate(runs)
    fig_dir = resolve(sweep.pipeline.fig_dir)
    write_json(fig_dir / "results.json", agg)
    (fig_dir / "results.md").write_text(report_markdown(agg, list(sweep.embedders), sweep.pipeline.run_dir))
    plots.save_figure(plots.sweep_tradeoff(agg), fig_dir, "tradeoff")
    plots.save_figure(plots.sweep_gap(agg), fig_dir, "gap")
    plots.save_figure(plots.sweep_depth_gap(agg), fig_dir, "depth_gap")
    return agg


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mmdlib.experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("run", "report", "all", "lm-study"),
                   help="run: one data set; report: aggregate; all: every data set (in parallel), then report; "
                        "lm-study: retrain the LMs of some codecs of a finished run for --lm-steps")
    p.add_argument("--preset", default="tiny", choices=sorted(SWEEP_PRESETS))
    p.add_argument("--data", help="'synthetic' or a folder of audio files (run; default: the preset's data sets)")
    p.add_argument("--seeds", type=int, nargs="*", help="default: the preset's")
    p.add_argument("--device", help="default: the preset's")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--embedder", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="one more FAD embedder from a TorchScript file, e.g. vggish=checkpoints/vggish.ts.pt")
    p.add_argument("--lambdas", type=float, nargs="*", default=[0.0], help="lm-study: codecs (aligned λ)")
    p.add_argument("--lm-steps", type=int, default=2000, help="lm-study: LM training steps")
    p.add_argument("--token-clips", type=int, help="lm-study: LM training clips (default: the sweep's)")
    p.add_argument("--codecs-only", action="store_true", help="run: train the codecs and stop (the LMs later)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override the sweep's pipeline settings (as the notebooks name them, or dotted paths), "
                        "e.g. codec_steps=300 lm.dim=64 codec.model.quantizer.n_q=8")
    p.add_argument("--jobs", type=int, default=2, help="all: (data set, seed) runs at once (CPU: threads split among them)")
    args = p.parse_args(argv)
    sweep = SWEEP_PRESETS[args.preset]
    try:
        sweep = dataclasses.replace(sweep, pipeline=apply_overrides(sweep.pipeline, args.set))
    except ValueError as e:
        p.error(str(e))
    if args.seeds:
        sweep = dataclasses.replace(sweep, seeds=tuple(args.seeds))
    for spec in args.embedder:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise SystemExit(f"--embedder {spec!r}: expected NAME=CHECKPOINT, e.g. vggish=checkpoints/vggish.ts.pt")
        try:  # a wrong name or file stops here, before any training
            get_embedder(name, checkpoint=path)
        except (ValueError, ImportError, TypeError) as e:
            raise SystemExit(f"--embedder {spec!r}: {e}") from None
        sweep = dataclasses.replace(sweep, embedders={**sweep.embedders, name: {"checkpoint": path}})
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = [args.data] if args.data else list(sweep.datasets)
    for d in datasets:
        if d != "synthetic" and not resolve(d).is_dir():
            raise SystemExit(f"data folder {d} does not exist (for supertux: bash scripts/get_supertux_music.sh)")
    if args.command == "run":
        for d in datasets:
            for seed in sweep.seeds:
                print(f"[{data_tag(d)} seed {seed}]", flush=True)
                if args.codecs_only:
                    train_codecs(for_data(sweep, d), seed_config(sweep, d, seed, args.device))
                else:
                    run_seed(sweep, d, seed, args.device)
    elif args.command == "lm-study":
        for d in datasets:
            for seed in sweep.seeds:
                for r in lm_study(sweep, d, seed, args.lambdas, args.lm_steps, args.token_clips, args.device):
                    curve = " ".join(f"{b:.2f}" for b in r["curve"])
                    print(f"{data_tag(d)} seed {seed} {r['codec']:>20} {r['pattern']:>8}: {r['bits_per_frame']:.2f} "
                          f"bits/frame, gap {r['gap_vs_flatten']:+.2f} (held-out curve {curve}; {r['train_seconds']:.0f} s)",
                          flush=True)
    elif args.command == "all":  # one process per (data set, seed), one per slot of `job_devices` at a time
        t0, procs = time.time(), []
        cuda = bool(args.device) and args.device.startswith("cuda") and torch.cuda.is_available()
        slots = job_devices(args.device, args.jobs, torch.cuda.device_count() if cuda else 0)
        threads = args.threads or max(1, torch.get_num_threads() // len(slots))
        for d in datasets:
            for seed in sweep.seeds:
                if len(procs) >= len(slots):
                    _wait(procs)
                device = next(x for x in slots if x not in [p[2] for p in procs]) if cuda else args.device
                log = resolve(sweep.pipeline.run_dir) / f"{data_tag(d)}_seed{seed}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, "-m", "mmdlib.experiment", "run", "--preset", args.preset, "--data", d,
                       "--seeds", str(seed), "--threads", str(threads)] + (["--device", device] if device else [])
                cmd += [f"--embedder={e}" for e in args.embedder] + (["--set", *args.set] if args.set else [])
                print(f"{' '.join(cmd[1:])}  > {log}", flush=True)
                procs.append((subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), log, device))
        while procs:
            _wait(procs)
        print(f"all data sets and seeds done in {(time.time() - t0) / 60:.1f} min", flush=True)
    if args.command in ("report", "all"):
        report(sweep)
        print((resolve(sweep.pipeline.fig_dir) / "results.md").read_text())


def job_devices(device: str | None, jobs: int, n_gpus: int) -> list[str | None]:
    """The device of each of the runs `all` keeps going at once: on CUDA one GPU per run ("cuda": cuda:0,
    cuda:1, ..., at most one run per GPU; "cuda:N": that GPU alone), else `jobs` runs on `device`
    (None: the preset's). Two runs never share a GPU."""
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: need at least 1")
    if not device or not device.startswith("cuda"):
        return [device] * jobs
    if n_gpus < 1:
        raise ValueError(f"--device {device}: no CUDA GPU is visible")
    if torch.device(device).index is not None:
        return [device]
    return [f"cuda:{i}" for i in range(min(jobs, n_gpus))]


def _wait(procs: list) -> None:
    """Wait for the first of `procs` [(Popen, log, device)] to end, drop it; stop everything if it failed."""
    while True:
        for i, (proc, log, _) in enumerate(procs):
            if proc.poll() is not None:
                procs.pop(i)
                if proc.returncode:
                    for other, *_ in procs:
                        other.terminate()
                    raise SystemExit(f"{' '.join(map(str, proc.args[1:]))} failed (exit {proc.returncode}); see {log}")
                return
        time.sleep(1)


if __name__ == "__main__":
    main()
