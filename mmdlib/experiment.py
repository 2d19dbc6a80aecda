"""The sweep: tests the paper's three claims on synthetic and real music, over several seeds, for
each variant of the loss.

For each data set and seed it trains the λ = 0 codec and one codec per `Variant` of the loss (an MMD
weight and the whole MMD setting: streams, estimator, shuffle, alignment; mmdlib.pipeline.sweep),
measures them on held-out clips (notes, quality, NMI, MMD², FAD of the reconstructions), trains the
variant's LMs (delay and flatten, parallel where its tuple is the target) to early stopping, the depth
gap of its target pattern, samples 64 clips per LM at the length it trained on (FAD to the codec's
reconstructions, bootstrap interval), and `report` pools the seeds into a table, the paired
differences against λ = 0 with a claim-2 verdict per variant, and figures (figures/sweep/).

    make experiment                                                  # tiny preset, CPU
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
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmdlib.data.audio import load_audio
from mmdlib.eval.codec import evaluate_codec
from mmdlib.eval.fad import embed_audio, fad, fad_interval, get_embedder
from mmdlib.pipeline import plots, sweep_plots
from mmdlib.pipeline.params import DEPTH_TRUNK, PipelineConfig, PipelineError, resolve
from mmdlib.pipeline.report import add_gap, aggregate, report_markdown
from mmdlib.pipeline.stages import dataset, depth_run, forked_codec_run, generate_run, load_codec, train_lm_run
from mmdlib.pipeline.sweep import SWEEP_PRESETS, SweepConfig, codecs, data_tag, for_data, seed_config
from mmdlib.train.checkpoint import write_json
from mmdlib.train.overrides import apply_overrides

WALL_FILE = "all_seconds.json"  # in the sweep's run_dir: the wall time of every `all` on it


def record_launch(path: Path, launch: dict) -> None:
    """Add one `all` launch to `path` ({"launches": [...], "seconds": their sum}): a sweep resumed
    (after an interruption or a changed stage) reports the time of every launch, not only the last's."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    launches = old.get("launches", [old] if "seconds" in old else []) + [launch]
    write_json(path, {"launches": launches, "seconds": sum(x["seconds"] for x in launches), "jobs": launch["jobs"]})

# ----------------------------------------------------------------------------------------------
# One (data, seed)


def train_codecs(sweep: SweepConfig, cfg: PipelineConfig) -> None:
    """Train every codec of (data, seed), the λ > 0 ones forked from the λ = 0 run at mmd_start."""
    for c, lam in codecs(sweep, cfg):
        if forked_codec_run(c, lam):
            print(f"  codec {c.layout.codec_name(lam)} done", flush=True)


def _embed(embedders: dict, wav: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
    return {name: embed_audio(e, wav, sample_rate) for name, e in embedders.items()}


@contextmanager
def timed(seconds: dict[str, float], stage: str):
    """Add the wall seconds of the `with` block to seconds[stage]."""
    t0 = time.time()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.time() - t0


def mmd_settings(c: PipelineConfig, lam: float) -> dict:
    """What names a codec's row: its variant and MMD settings (λ = 0: none)."""
    fields = ("streams", "estimator", "shuffle", "align", "normalize_distance")
    return {"variant": c.layout.variant if lam else "λ = 0", **{k: getattr(c.codec.mmd, k) if lam else None for k in fields}}


def generation_scores(embedders: dict, wav: torch.Tensor, sr: int, real_emb: dict, rec_emb: dict,
                      n_boot: int, seed: int) -> dict:
    """FAD of the generated clips `b 1 n` to the held-out clips (fad_<e>_gen) and to the codec's own
    reconstructions of them (fad_<e>_gen_vs_recon: what the LM adds, the codec's loss apart), the latter
    with a bootstrap interval over the generated clips (_lo, _hi)."""
    out = {}
    for k, e in embedders.items():
        emb = embed_audio(e, wav, sr)
        value, lo, hi = fad_interval(emb, len(wav), rec_emb[k], n_boot, seed=seed)
        out |= {f"fad_{k}_gen": fad(emb, real_emb[k]), f"fad_{k}_gen_vs_recon": value,
                f"fad_{k}_gen_vs_recon_lo": lo, f"fad_{k}_gen_vs_recon_hi": hi}
    return out


def run_seed(sweep: SweepConfig, data: str, seed: int, device: str | None = None) -> dict:
    """Everything for one (data, seed); written to <run_dir>/sweep.json and returned, with the wall
    seconds of each stage (`stage_seconds`)."""
    sweep = for_data(sweep, data)
    cfg = seed_config(sweep, data, seed, device)
    t0, stages = time.time(), {}
    with timed(stages, "codecs"):
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
        with timed(stages, "evaluate"):
            ev = evaluate_codec(codec, real, {"mmd_delay": dataclasses.replace(mmd, align="delay"),
                                               "mmd_lag0": dataclasses.replace(mmd, align="none")},
                                device=c.device, seed=seed, mmd_frames=c.dependence.mmd_samples, keep_audio=True,
                                n_visqol=min(sweep.n_visqol, len(real)))
            rec = _embed(embedders, ev.pop("audio"), sr)
        q = codec.cfg.quantizer
        name = c.layout.codec_name(lam)
        rows_codec.append({"codec": name, "lambda": lam, **mmd_settings(c, lam), **ev,
                           "kbps": codec.frame_rate * q.n_q * np.log2(q.codebook_size) / 1000,
                           **{f"fad_{k}_recon": fad(rec[k], real_emb[k]) for k in embedders}})
        for pattern in c.models():  # the patterns, then `depth` when the parallel LM has a depth head
            row = {"codec": name, "lambda": lam, "variant": rows_codec[-1]["variant"], "pattern": pattern}
            if pattern == "depth":  # the joint model in T steps: the parallel LM's trunk with its depth head
                with timed(stages, "depth heads"):
                    d = depth_run(c, lam, DEPTH_TRUNK)
                row |= {"bits_per_frame": d["depth_bits"], "depth_seconds": d["seconds"]}
            else:
                with timed(stages, "LMs"):
                    lm = train_lm_run(c, lam, pattern)
                row |= {"bits_per_frame": lm["bits_per_frame"], "valid_bits_per_frame": lm["valid_bits_per_frame"],
                        "lm_best_step": lm["best_step"], "lm_steps_trained": lm["steps_trained"],
                        "lm_budget": c.lm_train.steps, "lm_train_seconds": lm["train_seconds"],
                        **{f"bits_codebook{k + 1}": b for k, b in enumerate(lm["bits_per_codebook"])}}
                if pattern in c.gap_models():
                    with timed(stages, "depth heads"):
                        d = depth_run(c, lam, pattern)
                    row |= {"depth_gap_bits": d["gap_bits"], "depth_gap_se": d["gap_se"],
                            "depth_bits": d["depth_bits"], "factorised_bits": d["factorised_bits"],
                            "depth_gap_vs_lm_bits": d["gap_vs_lm_bits"]}
            with timed(stages, "generate"):
                gen = generate_run(c, lam, pattern, codec)
                wav = torch.stack([load_audio(p, sr) for p in sorted(c.layout.gen(lam, pattern).glob("sample*.wav"))])
                scores = generation_scores(embedders, wav, sr, real_emb, rec, sweep.n_boot, seed)
            rows_lm.append(row | {"gen_steps": gen["n_steps"], "gen_seconds_per_audio_second": gen["real_time_factor"],
                                  "gen_nmi_delay": gen["nmi_delay"], "gen_clips": len(wav), **scores})
        print(f"  {name}: evaluated, LMs trained, samples drawn", flush=True)
    add_gap(rows_lm)
    out = {"data": data, "tag": data_tag(data), "seed": seed, "config": cfg.to_dict(),
           "sweep": {k: v for k, v in dataclasses.asdict(sweep).items() if k != "pipeline"},
           "codecs": rows_codec, "lms": rows_lm, "seconds": time.time() - t0, "stage_seconds": stages}
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
    tradeoff.*, gap.*, depth_gap.*, verdicts.*}."""
    root = resolve(sweep.pipeline.run_dir)
    runs = [json.loads(p.read_text()) for p in sorted(root.glob("*/seed*/sweep.json"))]
    runs.sort(key=lambda r: (r["tag"] != "synthetic", r["tag"], r["seed"]))  # synthetic first
    if not runs:
        raise PipelineError(f"no finished sweep runs under {root}: run `python -m mmdlib.experiment run` first")
    agg = aggregate(runs)
    wall = root / WALL_FILE
    for a in agg.values():  # every `all` that ran on this run_dir (each resumes the last), end to end
        a["wall_seconds_all"] = json.loads(wall.read_text()) if wall.is_file() else None
    fig_dir = resolve(sweep.pipeline.fig_dir)
    write_json(fig_dir / "results.json", agg)
    (fig_dir / "results.md").write_text(report_markdown(agg, list(sweep.embedders), sweep.pipeline.run_dir))
    for name, draw in (("tradeoff", sweep_plots.sweep_tradeoff), ("gap", sweep_plots.sweep_gap),
                       ("depth_gap", sweep_plots.sweep_depth_gap), ("verdicts", sweep_plots.sweep_verdicts)):
        plots.save_figure(draw(agg), fig_dir, name)
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
    p.add_argument("--variant-lambda", type=float, metavar="LAMBDA",
                   help="every variant of the grid at this MMD weight instead of its own, in run_dir and fig_dir "
                        "+ _lambda<LAMBDA> (e.g. runs/sweep_lambda100, figures/sweep_lambda100)")
    p.add_argument("--jobs", type=int, default=2, help="all: (data set, seed) runs at once (CPU: threads split among them)")
    args = p.parse_args(argv)
    sweep = SWEEP_PRESETS[args.preset]
    try:
        sweep = dataclasses.replace(sweep, pipeline=apply_overrides(sweep.pipeline, args.set))
    except ValueError as e:
        p.error(str(e))
    if args.seeds:
        sweep = dataclasses.replace(sweep, seeds=tuple(args.seeds))
    if args.variant_lambda is not None:
        if not args.variant_lambda > 0:
            p.error(f"--variant-lambda {args.variant_lambda}: an MMD weight > 0 (λ = 0 is the baseline, always trained)")
        tag = f"_lambda{args.variant_lambda:g}"
        sweep = dataclasses.replace(sweep, variants=tuple(dataclasses.replace(v, lam=args.variant_lambda)
                                                          for v in sweep.variants),
                                    pipeline=dataclasses.replace(sweep.pipeline, run_dir=sweep.pipeline.run_dir + tag,
                                                                 fig_dir=sweep.pipeline.fig_dir + tag))
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
        bar = tqdm(total=len(datasets) * len(sweep.seeds), desc="sweep: (data set, seed) runs done", unit="run")
        cuda = bool(args.device) and args.device.startswith("cuda") and torch.cuda.is_available()
        slots = job_devices(args.device, args.jobs, torch.cuda.device_count() if cuda else 0)
        threads = args.threads or max(1, torch.get_num_threads() // len(slots))
        for d in datasets:
            for seed in sweep.seeds:
                if len(procs) >= len(slots):
                    _wait(procs, bar)
                device = next(x for x in slots if x not in [p[2] for p in procs]) if cuda else args.device
                log = resolve(sweep.pipeline.run_dir) / f"{data_tag(d)}_seed{seed}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, "-m", "mmdlib.experiment", "run", "--preset", args.preset, "--data", d,
                       "--seeds", str(seed), "--threads", str(threads)] + (["--device", device] if device else [])
                cmd += [f"--embedder={e}" for e in args.embedder] + (["--set", *args.set] if args.set else [])
                cmd += ["--variant-lambda", str(args.variant_lambda)] if args.variant_lambda is not None else []
                print(f"{' '.join(cmd[1:])}  > {log}", flush=True)
                procs.append((subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), log, device))
        while procs:
            _wait(procs, bar)
        print(f"all data sets and seeds done in {(time.time() - t0) / 60:.1f} min", flush=True)
        record_launch(resolve(sweep.pipeline.run_dir) / WALL_FILE, {
            "seconds": time.time() - t0, "jobs": len(slots), "datasets": [data_tag(d) for d in datasets],
            "seeds": list(sweep.seeds), "argv": sys.argv[1:] if argv is None else argv})
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


def _wait(procs: list, bar=None) -> None:
    """Wait for the first of `procs` [(Popen, log, device)] to end, drop it; stop everything if it failed."""
    while True:
        for i, (proc, log, _) in enumerate(procs):
            if proc.poll() is not None:
                procs.pop(i)
                if bar is not None and not proc.returncode:
                    bar.update(1)
                if proc.returncode:
                    for other, *_ in procs:
                        other.terminate()
                    raise SystemExit(f"{' '.join(map(str, proc.args[1:]))} failed (exit {proc.returncode}); see {log}")
                return
        time.sleep(1)


if __name__ == "__main__":
    main()
