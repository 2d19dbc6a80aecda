"""The λ sweep's bookkeeping: which codecs it trains, how seeds are aggregated and paired."""
import dataclasses
import math

import pytest

from mmdlib import experiment as ex
from mmdlib.pipeline import report
from mmdlib.pipeline import sweep as sw
from mmdlib.pipeline.params import PipelineError
from mmdlib.train.overrides import apply_overrides


def test_codecs_of_a_sweep_share_their_prefix_config():
    sweep = ex.SWEEP_PRESETS["tiny"]
    assert len(sweep.seeds) >= 4  # paired differences over at least four codec seeds
    cfg = ex.seed_config(sweep, "synthetic", 1)
    pairs = ex.codecs(sweep, cfg)
    names = [c.layout.codec(lam).name for c, lam in pairs]
    assert names == ["codec_lambda0", "codec_lambda1000", "codec_lambda1000_input", "codec_lambda1000_codeword",
                     "codec_lambda1000_clip", "codec_lambda1000_codeword_reference", "codec_lambda1000_none"]
    assert len(set(names)) == len(names) and cfg.run_dir.endswith("synthetic/seed1")
    mmds = {c.layout.codec_name(lam): c.codec.mmd for c, lam in pairs}
    assert mmds["codec_lambda1000_input"].streams == "input" and mmds["codec_lambda1000_clip"].shuffle == "clip"
    ref = mmds["codec_lambda1000_codeword_reference"]
    assert (ref.streams, ref.estimator, ref.normalize_distance) == ("codeword", "reference", False)  # the ICML code's
    lag0 = next(c for c, lam in pairs if c.align == "none")
    assert lag0.gap_models() == ["parallel"] and "parallel" in lag0.patterns  # the pattern its tuple is
    base = pairs[0][0]
    assert set(base.patterns) == {"parallel", "delay", "flatten"} and set(base.gap_models()) == {"parallel", "delay"}
    # every codec differs from the λ = 0 run only in its MMD settings: they can fork its prefix
    base = cfg.codec_config(0.0).to_dict()
    for c, lam in pairs:
        mine = c.codec_config(lam).to_dict()
        assert {k for k in mine if mine[k] != base[k]} <= {"mmd_weight", "mmd"}
    assert ex.seed_config(sweep, "data/external/supertux", 0).run_dir.endswith("supertux/seed0")


def _run(seed, nmi, sisnr, bits):
    """A fake sweep.json of one seed: codecs λ = 0 and λ = 10, patterns delay and flatten."""
    codecs = [{"codec": f"codec_lambda{lam}", "lambda": float(lam), "align": "delay", "nmi_delay": n,
               "mmd_delay": 0.01 / (1 + lam), "sisnr_db": s, "mel_distance": 1.0, "fad_logmel_recon": 1.0,
               "kbps": 1.6, "usage_perplexity_ratio_min": 0.5}
              for lam, n, s in zip((0, 10), nmi, sisnr)]
    lms = []
    for lam, (b_delay, b_flat) in zip((0, 10), bits):
        for p, b in (("delay", b_delay), ("flatten", b_flat)):
            lms.append({"codec": f"codec_lambda{lam}", "lambda": float(lam), "align": "delay", "pattern": p,
                        "bits_per_frame": b, "gap_vs_flatten": b - b_flat, "fad_logmel_gen": b,
                        "gen_steps": 10, "gen_seconds_per_audio_second": 0.1})
    return {"data": "synthetic", "tag": "synthetic", "seed": seed, "codecs": codecs, "lms": lms, "seconds": 1.0}


def test_aggregate_means_stds_and_paired_differences():
    runs = [_run(0, (0.30, 0.20), (3.0, 2.0), ((20.0, 18.0), (19.0, 18.5))),
            _run(1, (0.25, 0.27), (4.0, 3.0), ((21.0, 19.0), (22.0, 19.0)))]
    agg = report.aggregate(runs)["synthetic"]
    assert agg["seeds"] == [0, 1]
    c0 = agg["codecs"][0]
    assert c0["codec"] == "codec_lambda0"
    assert c0["nmi_delay"]["mean"] == pytest.approx(0.275)
    assert c0["nmi_delay"]["std"] == pytest.approx(math.sqrt(2) * 0.025)  # two values: |a − b| / √2
    assert c0["nmi_delay"]["values"] == [0.30, 0.25]
    gap = next(r for r in agg["lms"] if r["codec"] == "codec_lambda10" and r["pattern"] == "delay")["gap_vs_flatten"]
    assert gap["values"] == [0.5, 3.0]
    (pair,) = agg["paired"]                       # λ = 10 against λ = 0 of the same seed
    nmi = pair["nmi_delay"]                       # 0.20 − 0.30, 0.27 − 0.25
    assert nmi["values"] == pytest.approx({"0": -0.10, "1": 0.02}) and nmi["n_negative"] == 1
    assert nmi["mean"] == pytest.approx(-0.04)
    se = 0.12 / math.sqrt(2) / math.sqrt(2)       # SD of the two differences / √n
    assert nmi["ci95"] == pytest.approx([-0.04 - 12.7062 * se, -0.04 + 12.7062 * se], rel=1e-4)  # t(0.975, 1 df)
    t = -0.04 / se                                # paired t-test, 1 df: p = 1 − 2 atan(|t|) / π
    assert nmi["p_value"] == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi)
    assert pair["gap_vs_flatten_delay"]["values"] == pytest.approx({"0": -1.5, "1": 1.0})
    assert pair["visqol"]["n"] == 0               # a metric no run has is empty, not invented
    text = report.report_markdown(report.aggregate(runs), ["logmel"])
    assert "2 seeds: 0, 1" in text
    assert "| codec_lambda10 | -0.040 [" in text and ", 1/2 |" in text
    assert text.count("| codec_lambda0 |") == 3   # one row in the codec table, one per pattern in the LM table


def test_single_seed_has_no_std():
    agg = report.aggregate([_run(0, (0.3, 0.2), (3.0, 2.0), ((20.0, 18.0), (19.0, 18.5)))])
    assert agg["synthetic"]["codecs"][0]["sisnr_db"]["std"] is None
    assert "| 1.000 |" in report.report_markdown(agg, ["logmel"])  # mel distance, no ± with one seed


def test_report_without_runs_says_what_to_do(tmp_path):
    sweep = ex.SWEEP_PRESETS["smoke"]
    sweep = dataclasses.replace(sweep, pipeline=dataclasses.replace(sweep.pipeline, run_dir=str(tmp_path / "none")))
    with pytest.raises(PipelineError, match="experiment run"):
        ex.report(sweep)


def test_smoke_sweep_end_to_end(tmp_path):
    """One seed of the smoke preset through every stage (codecs forked from the shared prefix,
    evaluation, LMs, samples, FAD), then the report; a rerun reuses every artifact."""
    smoke = ex.SWEEP_PRESETS["smoke"]
    pipe = apply_overrides(smoke.pipeline, dict(
        run_dir=str(tmp_path / "runs"), fig_dir=str(tmp_path / "figs"), lm_steps=4,
        lm_warmup=1, lm_eval_every=4, codec_steps=9, codec_mmd_start=6, codec_eval_every=9, clip_seconds=1.0,
        n_token_train=8, n_token_valid=4, mmd_samples=100, lm_seq_frames=40, gen_seconds=0.5, n_gen=2))
    baseline = sw.Variant(0.0, None, ("parallel", "delay", "flatten"), ("delay",))
    sweep = dataclasses.replace(smoke, pipeline=pipe, baseline=baseline)
    out = ex.run_seed(sweep, "synthetic", 0)
    assert [c["codec"] for c in out["codecs"]] == ["codec_lambda0", "codec_lambda10", "codec_lambda10_codeword"]
    assert [c["streams"] for c in out["codecs"]] == [None, "residual", "codeword"]  # every row names its variant
    assert set(out["stage_seconds"]) == {"codecs", "evaluate", "LMs", "depth heads", "generate"}
    assert (tmp_path / "runs" / "synthetic" / "seed0" / "prefix_step6.pt").is_file()  # 2/3 of 9 steps
    for c in out["codecs"]:
        assert math.isfinite(c["sisnr_db"]) and c["fad_logmel_recon"] >= 0 and 0 <= c["nmi_delay"] <= 1
    flat = [r for r in out["lms"] if r["pattern"] == "flatten"]
    assert all(r["gap_vs_flatten"] == 0 for r in flat) and all(r["gen_steps"] == 4 * 25 for r in flat)
    lm = (tmp_path / "runs" / "synthetic" / "seed0" / "lm" / "codec_lambda10" / "delay" / "checkpoint.pt")
    mtime = lm.stat().st_mtime_ns
    again = ex.run_seed(sweep, "synthetic", 0)
    assert lm.stat().st_mtime_ns == mtime  # nothing retrained
    assert [r["bits_per_frame"] for r in again["lms"]] == [r["bits_per_frame"] for r in out["lms"]]
    agg = ex.report(sweep)
    assert (tmp_path / "figs" / "results.md").is_file() and (tmp_path / "figs" / "gap.png").is_file()
    assert (tmp_path / "figs" / "depth_gap.png").is_file()
    delay = [r for r in out["lms"] if r["pattern"] == "delay"]
    assert all(math.isfinite(r["depth_gap_bits"]) and r["depth_gap_se"] >= 0 for r in delay)
    assert [r["depth_gap_bits"] for r in again["lms"] if r["pattern"] == "delay"] == [r["depth_gap_bits"] for r in delay]
    assert agg["synthetic"]["seeds"] == [0]


def test_a_data_set_can_have_its_own_variants():
    sweep = dataclasses.replace(ex.SWEEP_PRESETS["tiny"], per_data={
        "supertux": {"variants": (sw.Variant(10.0), sw.Variant(30.0, dataclasses.replace(sw.TINY_MMD, align="none")))}})
    cfg = ex.seed_config(sweep, "data/external/supertux", 0)
    assert cfg.lambdas == (0.0, 10.0, 30.0)
    names = [c.layout.codec(lam).name for c, lam in ex.codecs(ex.for_data(sweep, "data/external/supertux"), cfg)]
    assert names == ["codec_lambda0", "codec_lambda10", "codec_lambda30_none"]
    assert ex.seed_config(sweep, "synthetic", 0).lambdas == (0.0, 1000.0)


def test_embedder_option_is_checked_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="NAME=CHECKPOINT"):
        ex.main(["report", "--embedder", "vggish"])
    with pytest.raises(SystemExit, match="not a file"):
        ex.main(["report", "--embedder", f"vggish={tmp_path / 'missing.pt'}"])


def test_all_gives_each_concurrent_run_its_own_gpu():
    """`experiment all --device cuda --jobs 2` put both runs on cuda:0; now one GPU per run."""
    assert ex.job_devices("cuda", 2, n_gpus=4) == ["cuda:0", "cuda:1"]
    assert ex.job_devices("cuda", 4, n_gpus=2) == ["cuda:0", "cuda:1"]   # no more runs than GPUs
    assert ex.job_devices("cuda:3", 2, n_gpus=4) == ["cuda:3"]           # a named GPU: one run at a time
    assert ex.job_devices(None, 2, n_gpus=0) == [None, None] and ex.job_devices("cpu", 3, 0) == ["cpu"] * 3
    with pytest.raises(ValueError, match="no CUDA GPU"):
        ex.job_devices("cuda", 2, n_gpus=0)
    with pytest.raises(ValueError, match="--jobs 0"):
        ex.job_devices("cpu", 0, n_gpus=0)


def test_claim2_verdicts_generation_sanity_and_lm_convergence():
    """A variant whose depth gap falls in every seed 'holds', one that rises is 'opposite'; the
    generation metric is used only when the joint model ranks at least as well as parallel."""
    def run(seed, gap_down, gap_up, fad_flat, fad_par):
        codecs = [{"codec": n, "lambda": lam, "variant": v, "nmi_delay": 0.1} for n, lam, v in (
            ("codec_lambda0", 0.0, "λ = 0"), ("codec_lambda10", 10.0, ""), ("codec_lambda10_clip", 10.0, "clip"))]
        lms = []
        for name, gap in (("codec_lambda0", 1.0), ("codec_lambda10", 1.0 - gap_down), ("codec_lambda10_clip", 1.0 + gap_up)):
            lms.append({"codec": name, "pattern": "delay", "lambda": 0.0, "bits_per_frame": 20.0, "depth_gap_bits": gap,
                        "fad_logmel_gen_vs_recon": 5.0, "lm_best_step": 500, "lm_steps_trained": 800, "lm_budget": 2000})
            lms.append({"codec": name, "pattern": "flatten", "lambda": 0.0, "bits_per_frame": 18.0,
                        "fad_logmel_gen_vs_recon": fad_flat, "lm_best_step": 2000, "lm_steps_trained": 2000,
                        "lm_budget": 2000})
        lms.append({"codec": "codec_lambda0", "pattern": "parallel", "lambda": 0.0, "bits_per_frame": 21.0,
                    "fad_logmel_gen_vs_recon": fad_par})
        report.add_gap(lms)
        return {"data": "synthetic", "tag": "synthetic", "seed": seed, "codecs": codecs, "lms": lms, "seconds": 1.0,
                "stage_seconds": {"codecs": 10.0, "LMs": 5.0}}

    agg = report.aggregate([run(s, 0.1 + 0.01 * s, 0.2 + 0.02 * s, 3.0, 4.0 + s) for s in range(4)])["synthetic"]
    verdicts = {d["codec"]: d["verdict"] for d in agg["paired"]}
    assert verdicts["codec_lambda10"]["depth_gap"] == "holds" and verdicts["codec_lambda10_clip"]["depth_gap"] == "opposite"
    assert verdicts["codec_lambda10"]["pattern"] == "delay" and verdicts["codec_lambda10"]["minus_flatten"] == "null"
    assert agg["generation_sanity"]["can_rank"] and verdicts["codec_lambda10"]["generation"] == "null"  # Δ = 0
    assert agg["lm_convergence"] | {"best_steps": None} == {"n": 8 * 3, "stopped_early": 12, "best_before_last": 12,
                                                             "best_steps": None}
    assert agg["stage_seconds"] == {"codecs": 40.0, "LMs": 20.0}
    assert [d["variant"] for d in agg["paired"]] == ["", "clip"]
    # flatten's samples worse than parallel's on the λ = 0 codec: the metric cannot rank, and is not used
    agg = report.aggregate([run(s, 0.1, 0.2, 6.0, 4.0 + 0.1 * s) for s in range(4)])["synthetic"]
    assert not agg["generation_sanity"]["can_rank"]
    assert {d["verdict"]["generation"] for d in agg["paired"]} == {"metric cannot rank"}
    text = report.report_markdown({"synthetic": agg}, ["logmel"])
    assert "the metric cannot rank" in text and "| codec_lambda10_clip | clip | delay |" in text
    assert report.verdict(None) == "n/a" and report.verdict({"ci95": [-2.0, -1.0]}) == "holds"


def test_variant_lambda_moves_every_variant_and_the_folders(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(ex, "run_seed", lambda sweep, d, seed, device=None: seen.setdefault("sweep", sweep))
    ex.main(["run", "--seeds", "0", "--variant-lambda", "100"])
    sweep = seen["sweep"]
    assert {v.lam for v in sweep.variants} == {100.0} and len(sweep.variants) == len(sw.GRID)
    assert sweep.pipeline.run_dir == "runs/sweep_lambda100" and sweep.pipeline.fig_dir == "figures/sweep_lambda100"
    with pytest.raises(SystemExit):
        ex.main(["run", "--variant-lambda", "0"])
