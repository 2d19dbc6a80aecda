"""The reports: one run's (notebook 05) in two tables, the λ sweep's over seeds, and the gap to flatten.

`collect_results(cfg)` reads what the stages wrote (never recomputes, never invents: a missing
piece is None), `results_markdown` renders it, `write_results` saves figures/results.{md,json}.
`add_gap` is the one definition of the gap to the joint (flatten) model, used here, by notebook
03 and by the λ sweep (mmdlib.experiment), whose per-seed runs `aggregate` pools (mean, SD, values,
pairs with the λ = 0 codec of the same seed) and `report_markdown` renders.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmdlib.pipeline.layout import read_json
from mmdlib.pipeline.params import DEPTH_TRUNK, PipelineConfig
from mmdlib.train.checkpoint import write_json


def add_gap(rows: list[dict], key: str = "bits_per_frame") -> None:
    """rows[i]["gap_vs_flatten"] = rows[i][key] − the flatten LM's on the same codec: the bits above
    the joint pattern (not the depth gap of mmdlib.lm.depth, the instrument for factorising; 0 for the
    flatten rows; None where that codec has no flatten LM or a value
    is missing)."""
    flat = {r["codec"]: r[key] for r in rows if r["pattern"] == "flatten"}
    for r in rows:
        f, b = flat.get(r["codec"]), r[key]
        r["gap_vs_flatten"] = b - f if f is not None and b is not None else None


def codec_history(cfg: PipelineConfig, lam: float) -> list[dict]:
    """The evaluation rows of the codec of weight `lam` (its metrics.json)."""
    return read_json(cfg.layout.codec(lam) / "metrics.json", "run notebooks/01_train_codec.ipynb")["history"]


def collect_results(cfg: PipelineConfig) -> dict:
    """Every artifact of the run in two tables: one row per codec, one per (codec, pattern) LM.
    Missing pieces (e.g. a notebook not run) are None, never invented."""
    codecs, lms = [], []
    for lam in cfg.lambdas:
        name = cfg.layout.codec_name(lam)
        hist = codec_history(cfg, lam)
        final = hist[-1]
        dep_file = cfg.layout.dependence(lam)
        dep = json.loads(dep_file.read_text()) if dep_file.is_file() else None
        codecs.append({
            "codec": name, "lambda": lam, "align": cfg.align, "steps": final["step"],
            "fine_structure_r": final.get("fine_structure_r"), "chroma": final.get("chroma"),
            "visqol": final.get("visqol"), "sisnr_db": final["sisnr_db"], "mel_distance": final["mel_distance"],
            "usage_ratio_min": final["usage_perplexity_ratio_min"],
            "code_entropy_bits": dep["summary"]["entropy_mean"] if dep else None,
            "nmi_lag0": dep["summary"]["nmi_lag0"] if dep else final["nmi_lag0"],
            "nmi_delay": dep["summary"]["nmi_delay"] if dep else final["nmi_delay"],
            "mmd_delay": dep["mmd_delay"] if dep else None,
            "p_value_delay": dep["perm_delay"]["p_value"] if dep else None,
            "train_seconds": final["seconds"],
        })
        for pattern in cfg.models():
            lm_dir = cfg.layout.lm(lam, DEPTH_TRUNK if pattern == "depth" else pattern)
            lm_file, gen_file = lm_dir / "metrics.json", cfg.layout.gen(lam, pattern) / "metrics.json"
            lm = json.loads(lm_file.read_text()) if lm_file.is_file() else None
            gap = json.loads((lm_dir / "depth.json").read_text()) if (lm_dir / "depth.json").is_file() else None
            gen = json.loads(gen_file.read_text()) if gen_file.is_file() else None
            if pattern == "depth":
                bits = gap["depth_bits"] if gap else None
            else:
                bits = lm.get("bits_per_frame") if lm else None
            lms.append({
                "codec": name, "lambda": lam, "pattern": pattern, "bits_per_frame": bits,
                "lm_steps": lm.get("best_step") if lm else None,
                "depth_gap_bits": gap["gap_bits"] if gap and pattern != "depth" else None,
                "depth_gap_se": gap["gap_se"] if gap and pattern != "depth" else None,
                "gen_steps": gen["n_steps"] if gen else None,
                "gen_seconds_per_audio_second": gen["real_time_factor"] if gen else None,
                "gen_nmi_delay": gen.get("nmi_delay") if gen else None,
            })
    add_gap(lms, "bits_per_frame")
    for r in lms:  # the table shows no gap of flatten to itself
        if r["pattern"] == "flatten":
            r["gap_vs_flatten"] = None
    return {"preset_config": cfg.to_dict(), "codecs": codecs, "lms": lms}


def _cell(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt) if isinstance(v, float) else str(v)


def results_markdown(results: dict) -> str:
    """The two results tables as Markdown (written to figures/results.md)."""
    c = results["preset_config"]
    codec, q, lm = c["codec"], c["codec"]["model"]["quantizer"], c["lm"]
    lines = [f"Run `{c['run_dir']}`: {codec['model']['arch']} codec at {codec['model']['sample_rate']} Hz, "
             f"{q['n_q']} x {q['codebook_size']} codes, {codec['steps']} steps; LMs of dim {lm['dim']}, "
             f"{lm['n_layers']} layers; device `{c['device']}`, seed {c['seed']}. Generated from the run's artifacts by "
             "notebooks/05_report.ipynb.", "",
             "Codec scores on the validation clips of its last evaluation (fine-structure r and chroma: are the "
             "notes there, 1 = the original's, envelope-shaped noise ≈ 0 and 0.5; ViSQOL: MOS-LQO, 1 to 4.73, on "
             "the first clips; mel distance and SI-SNR on all).", "",
             "| codec | λ | fine-structure r ↑ | chroma ↑ | ViSQOL ↑ | mel dist. ↓ | SI-SNR (dB) ↑ | code entropy (bits) "
             "| NMI lag 0 ↓ | NMI delay ↓ | MMD² delay ↓ | p-value (indep.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["codecs"]:
        lines.append(f"| {r['codec']} | {r['lambda']:g} | {_cell(r.get('fine_structure_r'), '.3f')} "
                     f"| {_cell(r.get('chroma'), '.3f')} | {_cell(r.get('visqol'), '.2f')} | {_cell(r['mel_distance'], '.3f')} "
                     f"| {_cell(r['sisnr_db'], '.1f')} "
                     f"| {_cell(r['code_entropy_bits'], '.2f')} | {_cell(r['nmi_lag0'], '.3f')} "
                     f"| {_cell(r['nmi_delay'], '.3f')} | {_cell(r['mmd_delay'], '.4f')} "
                     f"| {_cell(r['p_value_delay'], '.3f')} |")
    lines += ["", "LMs: test-clip bits per frame in windows of the training crop (early stopping on the valid "
                  "clips; `lm steps`: the best state's); depth gap: what the factorised LM gives up within a step "
                  "(± standard error over test clips); `depth`: the parallel trunk with its depth head.", "",
              "| codec | pattern | test bits/frame ↓ | − flatten | depth gap (bits/frame) | lm steps | generation steps "
              "| generation s / audio s ↓ | NMI delay of generated codes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["lms"]:
        gap = (f"{r['depth_gap_bits']:.3f} ± {r['depth_gap_se']:.3f}" if r.get("depth_gap_bits") is not None else "–")
        lines.append(f"| {r['codec']} | {r['pattern']} | {_cell(r['bits_per_frame'], '.2f')} | "
                     f"{_cell(r['gap_vs_flatten'], '+.2f')} | {gap} | {_cell(r['lm_steps'], 'd')} | "
                     f"{_cell(r['gen_steps'], 'd')} | {_cell(r['gen_seconds_per_audio_second'], '.3f')} | "
                     f"{_cell(r['gen_nmi_delay'], '.3f')} |")
    return "\n".join(lines) + "\n"


def write_results(cfg: PipelineConfig, results: dict) -> tuple[Path, Path]:
    md, js = cfg.fig_path / "results.md", cfg.fig_path / "results.json"
    write_json(js, results)
    md.write_text(results_markdown(results))
    return md, js


# ----------------------------------------------------------------------------------------------
# The λ sweep (mmdlib.experiment): every seed of every data set


def _stats(values: list) -> dict:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": len(v), "values": v.tolist()}


PAIRED_CODEC = ("nmi_delay", "nmi_lag0", "mmd_delay", "fine_structure_r", "chroma", "visqol", "mel_distance",
                "code_entropy_bits", "usage_perplexity_ratio_min")
PAIRED_LM = ("bits_per_frame", "gap_vs_flatten", "depth_gap_bits", "fad_logmel_gen", "fad_logmel_gen_vs_recon")
SETTINGS = ("lambda", "variant", "streams", "estimator", "shuffle", "align", "normalize_distance")  # name a codec row
GEN_METRIC = "fad_logmel_gen_vs_recon"  # the generation metric of claim 2, if it passes generation_sanity


def _pick(rows: list[dict], codec: str, key: str, pattern: str | None = None):
    return next(x[key] for x in rows if x["codec"] == codec and x.get("pattern") == pattern)


def _has(rows: list[dict], codec: str, key: str, pattern: str | None = None) -> bool:
    return any(x["codec"] == codec and x.get("pattern") == pattern and x.get(key) is not None for x in rows)


def paired_stats(diffs: dict) -> dict:
    """Per-seed paired differences {seed: value} -> mean, 95 % confidence interval (Student t over
    seeds), two-sided paired t-test p-value, how many seeds are below 0, and the values."""
    from scipy import stats

    v = np.array(list(diffs.values()), dtype=float)
    out = {"mean": float(v.mean()) if len(v) else None, "n": len(v), "n_negative": int((v < 0).sum()),
           "values": {str(k): float(x) for k, x in diffs.items()}, "ci95": None, "p_value": None}
    if len(v) > 1:
        se = v.std(ddof=1) / np.sqrt(len(v))
        half = float(stats.t.ppf(0.975, len(v) - 1) * se)
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
        out["p_value"] = float(stats.ttest_1samp(v, 0.0).pvalue) if se > 0 else (0.0 if v.mean() else 1.0)
    return out


def _numeric_keys(rows: list[dict]) -> list[str]:
    """The numeric fields of any of the rows (seeds run by other versions may lack some: None there)."""
    return list(dict.fromkeys(k for r in rows for k, v in r.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "lambda"))


def aggregate(runs: list[dict]) -> dict:
    """Per data set: codec rows and (codec, pattern) rows, each metric as mean/std/n/values over
    seeds, plus the paired differences against the λ = 0 codec of the same seed (`paired_stats`
    of every PAIRED_CODEC metric, and of every PAIRED_LM metric per pattern as `<key>_<pattern>`)."""
    out = {}
    for tag in dict.fromkeys(r["tag"] for r in runs):
        mine = [r for r in runs if r["tag"] == tag]
        names = list(dict.fromkeys(c["codec"] for r in mine for c in r["codecs"]))
        patterns = list(dict.fromkeys(x["pattern"] for r in mine for x in r["lms"]))

        def rows(kind, codec, pattern=None, mine=mine):
            return [x for r in mine for x in r[kind] if x["codec"] == codec and x.get("pattern") == pattern]

        codec_rows, lm_rows = [], []
        for name in names:
            xs = rows("codecs", name)
            codec_rows.append({"codec": name, **{k: xs[0].get(k) for k in SETTINGS},
                               **{k: _stats([x.get(k) for x in xs]) for k in _numeric_keys(xs)}})
            for p in patterns:
                ys = rows("lms", name, p)
                if not ys:
                    continue
                lm_rows.append({"codec": name, "lambda": ys[0]["lambda"], "variant": ys[0].get("variant"), "pattern": p,
                                **{k: _stats([y.get(k) for y in ys]) for k in _numeric_keys(ys)}})
        # paired by seed: the λ > 0 codec minus the λ = 0 codec of the same seed, per metric
        paired = []
        for name in names:
            lam = next(c["lambda"] for r in mine for c in r["codecs"] if c["codec"] == name)
            if lam == 0:
                continue
            d = {"codec": name, "lambda": lam, "variant": next(c for c in codec_rows if c["codec"] == name)["variant"]}
            for key in PAIRED_CODEC:
                d[key] = paired_stats({r["seed"]: _pick(r["codecs"], name, key) - _pick(r["codecs"], "codec_lambda0", key)
                                       for r in mine if _has(r["codecs"], name, key) and _has(r["codecs"], "codec_lambda0", key)})
            for p in patterns:
                for key in PAIRED_LM:
                    vals = {r["seed"]: _pick(r["lms"], name, key, p) - _pick(r["lms"], "codec_lambda0", key, p)
                            for r in mine if _has(r["lms"], name, key, p) and _has(r["lms"], "codec_lambda0", key, p)}
                    if vals:
                        d[f"{key}_{p}"] = paired_stats(vals)
            paired.append(d)
        sanity = generation_sanity(mine)
        for d in paired:
            d["verdict"] = claim2_verdict(d, lm_rows, sanity["can_rank"])
        stages = [r.get("stage_seconds") or {} for r in mine]
        out[tag] = {"data": mine[0]["data"], "seeds": sorted(r["seed"] for r in mine),
                    "codecs": codec_rows, "lms": lm_rows, "paired": paired, "generation_sanity": sanity,
                    "lm_convergence": lm_convergence([x for r in mine for x in r["lms"]]),
                    "seconds": [r["seconds"] for r in mine],
                    "stage_seconds": {k: sum(s.get(k, 0.0) for s in stages) for k in dict.fromkeys(k for s in stages for k in s)}}
    return out


def verdict(s: dict | None) -> str:
    """A paired difference where lower is what claim 2 predicts: 'holds' (95 % CI below 0),
    'opposite' (above 0), 'null' (it holds 0), 'n/a' (fewer than two seeds)."""
    if not s or s.get("ci95") is None:
        return "n/a"
    lo, hi = s["ci95"]
    return "holds" if hi < 0 else "opposite" if lo > 0 else "null"


def target_pattern(codec: str, lm_rows: list[dict]) -> str | None:
    """The pattern whose tuple a codec's MMD targets: delay if its delay LM has a depth gap, else parallel."""
    gapped = [r["pattern"] for r in lm_rows if r["codec"] == codec and r.get("depth_gap_bits")]
    return "delay" if "delay" in gapped else gapped[0] if gapped else None


def claim2_verdict(d: dict, lm_rows: list[dict], can_rank: bool) -> dict:
    """Claim 2 for one variant, from its paired differences against λ = 0 (d): the depth gap and the
    bits above flatten of its target pattern, and the generation metric where that metric can rank."""
    p = target_pattern(d["codec"], lm_rows)
    return {"pattern": p, "depth_gap": verdict(d.get(f"depth_gap_bits_{p}")),
            "minus_flatten": verdict(d.get(f"gap_vs_flatten_{p}")),
            "generation": verdict(d.get(f"{GEN_METRIC}_{p}")) if can_rank else "metric cannot rank"}


def generation_sanity(runs: list[dict]) -> dict:
    """The generation metric's sanity row: on the λ = 0 codec of each seed, the joint model (flatten)
    minus parallel. A metric that ranks puts the joint model at least as well (mean <= 0); else it is
    declared unable to rank and claim 2 does not use it."""
    def value(r, p):
        return next((x.get(GEN_METRIC) for x in r["lms"] if x["codec"] == "codec_lambda0" and x["pattern"] == p), None)

    diffs = {r["seed"]: value(r, "flatten") - value(r, "parallel") for r in runs
             if value(r, "flatten") is not None and value(r, "parallel") is not None}
    s = paired_stats(diffs) if diffs else None
    return {"metric": GEN_METRIC, "flatten_minus_parallel": s,
            "can_rank": bool(s and s["mean"] is not None and s["mean"] <= 0)}


def lm_convergence(rows: list[dict]) -> dict:
    """How the LMs ended: stopped by early stopping before their step budget, best state before the last."""
    lms = [r for r in rows if r.get("lm_best_step") is not None and r.get("lm_steps_trained") is not None]
    return {"n": len(lms), "stopped_early": sum(r["lm_steps_trained"] < r.get("lm_budget", float("inf")) for r in lms),
            "best_before_last": sum(r["lm_best_step"] < r["lm_steps_trained"] for r in lms),
            "best_steps": [r["lm_best_step"] for r in lms]}


def _ms(s: dict | None, fmt: str) -> str:
    if not s or s["mean"] is None:
        return "–"
    return format(s["mean"], fmt) + (f" ± {s['std']:{fmt.lstrip('+')}}" if s["std"] is not None else "")


_PAIRED_SHOWN = (("nmi_delay", "Δ NMI delay"), ("visqol", "Δ ViSQOL"), ("mel_distance", "Δ mel"),
                 ("code_entropy_bits", "Δ code entropy (bits)"), ("depth_gap_bits_delay", "Δ depth gap, delay (bits/frame)"),
                 ("depth_gap_bits_parallel", "Δ depth gap, parallel"), ("gap_vs_flatten_delay", "Δ (delay − flatten)"),
                 ("bits_per_frame_depth", "Δ bits/frame, depth model"),
                 ("fad_logmel_gen_vs_recon_delay", "Δ FAD samples vs recon., delay"))


def _pair_cell(s: dict | None) -> str:
    if not s or s["mean"] is None:
        return "–"
    ci = f" [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]" if s["ci95"] else ""
    p = "" if s["p_value"] is None else ", p < 0.001" if s["p_value"] < 0.001 else f", p {s['p_value']:.3f}"
    return f"{s['mean']:+.3f}{ci}{p}, {s['n_negative']}/{s['n']}"


def report_markdown(agg: dict, embedders: list[str], run_dir: str = "runs/sweep") -> str:
    lines = [f"Generated by `python -m mmdlib.experiment report` from the sweep's run artifacts "
             f"(`{run_dir}/*/seed*/sweep.json`). Cells: mean ± standard deviation over seeds.", ""]
    for tag, a in agg.items():
        kbps = sorted({round(c["kbps"]["mean"], 2) for c in a["codecs"] if c.get("kbps")})
        lines += [f"### {tag} ({len(a['seeds'])} seeds: {', '.join(map(str, a['seeds']))})", "",
                  f"Codec bitrate {', '.join(map(str, kbps))} kbps; smallest codebook usage (perplexity / size) per codec: "
                  + ", ".join(f"{c['codec']} {_ms(c.get('usage_perplexity_ratio_min'), '.2f')}" for c in a["codecs"]) + ".", "",
                  "| codec | fine-structure r ↑ | chroma ↑ | ViSQOL ↑ | mel ↓ | code entropy (bits) | NMI delay ↓ | MMD² delay ↓ "
                  + "".join(f"| FAD {e} rec. ↓ " for e in embedders) + "|",
                  "|---" * (8 + len(embedders)) + "|"]
        for c in a["codecs"]:
            lines.append(
                f"| {c['codec']} | {_ms(c.get('fine_structure_r'), '.3f')} | {_ms(c.get('chroma'), '.3f')} "
                f"| {_ms(c.get('visqol'), '.2f')} | {_ms(c.get('mel_distance'), '.3f')} "
                f"| {_ms(c.get('code_entropy_bits'), '.2f')} "
                f"| {_ms(c.get('nmi_delay'), '.3f')} | {_ms(c.get('mmd_delay'), '.4f')} "
                + "".join(f"| {_ms(c.get(f'fad_{e}_recon'), '.2f')} " for e in embedders) + "|")
        lines += ["", "Bits/frame: test clips in windows of the LM's training crop; depth gap: bits/frame the factorised "
                      "LM gives up within a step; `depth`: the parallel trunk with its depth head, the joint model in T "
                      "steps; FAD of the samples to the codec's reconstructions.", "",
                  "| codec | pattern | bits/frame ↓ | − flatten | depth gap "
                  + "".join(f"| FAD {e} samples vs rec. ↓ " for e in embedders) + "| AR steps | gen. s / audio s |",
                  "|---" * (7 + len(embedders)) + "|"]
        for r in a["lms"]:
            lines.append(
                f"| {r['codec']} | {r['pattern']} | {_ms(r['bits_per_frame'], '.2f')} "
                f"| {_ms(r.get('gap_vs_flatten'), '+.2f')} | {_ms(r.get('depth_gap_bits'), '.3f')} "
                + "".join(f"| {_ms(r.get(f'fad_{e}_gen_vs_recon'), '.2f')} " for e in embedders)
                + f"| {_ms(r.get('gen_steps'), '.0f')} | {_ms(r.get('gen_seconds_per_audio_second'), '.3f')} |")
        lines += ["", "Paired differences, the codec minus the λ = 0 codec of the same seed: mean [95 % CI], "
                      "paired t-test p, seeds below 0 (a fall).", "",
                  "| codec | " + " | ".join(label for _, label in _PAIRED_SHOWN) + " |",
                  "|---" * (1 + len(_PAIRED_SHOWN)) + "|"]
        for d in a["paired"]:
            lines.append(f"| {d['codec']} | " + " | ".join(_pair_cell(d.get(key)) for key, _ in _PAIRED_SHOWN) + " |")
        lines += claim2_markdown(a)
        n_q = sum(1 for k in (a["lms"][0] if a["lms"] else {}) if k.startswith("bits_codebook"))
        if n_q:  # where the bits go: a joint model gains on the codebooks it predicts after others of the frame
            lines += ["", "Test bits per code of each codebook (they sum to bits/frame).", "",
                      "| codec | pattern | " + " | ".join(f"codebook {k + 1}" for k in range(n_q)) + " |",
                      "|---" * (2 + n_q) + "|"]
            lines += [f"| {r['codec']} | {r['pattern']} | "
                      + " | ".join(_ms(r.get(f"bits_codebook{k + 1}"), ".2f") for k in range(n_q)) + " |"
                      for r in a["lms"] if r.get("bits_codebook1")]
        lines.append("")
    return "\n".join(lines)


def claim2_markdown(a: dict) -> list[str]:
    """The verdict per variant, the generation metric's sanity row, how the LMs ended, the time per stage."""
    lines = ["", "Claim 2 per variant (the codec minus λ = 0 of the same seed, on the pattern whose tuple its MMD "
                 "targets; lower is what the claim predicts): holds = 95 % CI below 0, opposite = above, null = it "
                 "holds 0.", "", "| codec | variant | pattern | Δ depth gap | verdict | Δ (pattern − flatten) | verdict "
                 f"| Δ {GEN_METRIC} | verdict |", "|---" * 9 + "|"]
    for d in a["paired"]:
        v, p = d["verdict"], d["verdict"]["pattern"]
        lines.append(f"| {d['codec']} | {d['variant']} | {p} | {_pair_cell(d.get(f'depth_gap_bits_{p}'))} | {v['depth_gap']} "
                     f"| {_pair_cell(d.get(f'gap_vs_flatten_{p}'))} | {v['minus_flatten']} "
                     f"| {_pair_cell(d.get(f'{GEN_METRIC}_{p}'))} | {v['generation']} |")
    g, c = a.get("generation_sanity") or {}, a.get("lm_convergence") or {}
    lines += ["", f"Sanity row of the generation metric ({GEN_METRIC}: FAD of the samples to the codec's own "
                  f"reconstructions, at the LM's training length): on the λ = 0 codec flatten − parallel = "
                  f"{_pair_cell(g.get('flatten_minus_parallel'))}; "
                  + ("the joint model ranks at least as well: the metric is used." if g.get("can_rank") else
                     "the joint model does not rank at least as well as parallel: **the metric cannot rank**, "
                     "claim 2 does not use it.")]
    if c.get("n"):
        lines.append(f"LMs: {c['stopped_early']} of {c['n']} stopped by early stopping before their step budget, "
                     f"{c['best_before_last']} of {c['n']} with their best state before their last evaluation; "
                     f"best steps {min(c['best_steps'])}–{max(c['best_steps'])} (median {int(np.median(c['best_steps']))}).")
    st, wall = a.get("stage_seconds") or {}, a.get("wall_seconds_all")
    if st:
        text = "Time (process seconds summed over seeds): " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in st.items())
        if wall:
            launches = wall.get("launches", [])
            each = " (launches " + " + ".join(f"{x['seconds'] / 60:.1f}" for x in launches) + " min)" if len(launches) > 1 else ""
            text += f"; `all` {wall['seconds'] / 60:.1f} min wall in all, {wall['jobs']} processes{each}"
        lines.append(text + ".")
    return lines + [""]


def claim1_rows(agg: dict) -> list[dict]:
    """Claim 1 from the sweep's aggregate: per data set and λ > 0 codec, the paired differences
    against λ = 0 of the same seed (mean [95 % CI], p, seeds that fell) of the dependence and of
    what it may cost (ViSQOL, mel distance, code entropy)."""
    rows = []
    for tag, a in agg.items():
        for d in a["paired"]:
            rows.append({"data": tag, "codec": d["codec"], "seeds": d["nmi_delay"]["n"],
                         **{label: _pair_cell(d.get(key)) for key, label in (
                             ("nmi_delay", "Δ NMI delay"), ("nmi_lag0", "Δ NMI lag 0"), ("visqol", "Δ ViSQOL"),
                             ("mel_distance", "Δ mel"), ("code_entropy_bits", "Δ code entropy (bits)"))}})
    return rows
