"""The reports: one run's (notebook 05) in two tables, the λ sweep's over seeds, and the factorisation gap.

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

from .layout import write_json
from .params import PipelineConfig
from .stages import codec_history


def add_gap(rows: list[dict], key: str = "bits_per_frame") -> None:
    """rows[i]["gap_vs_flatten"] = rows[i][key] − the flatten LM's on the same codec: the
    factorisation gap (0 for the flatten rows; None where that codec has no flatten LM or a value
    is missing)."""
    flat = {r["codec"]: r[key] for r in rows if r["pattern"] == "flatten"}
    for r in rows:
        f, b = flat.get(r["codec"]), r[key]
        r["gap_vs_flatten"] = b - f if f is not None and b is not None else None


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
            lm_file, gen_file = cfg.layout.lm(lam, pattern) / "metrics.json", cfg.layout.gen(lam, pattern) / "metrics.json"
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
    add_gap(lms, "valid_bits_per_frame")
    for r in lms:  # the table shows no gap of flatten to itself
        if r["pattern"] == "flatten":
            r["gap_vs_flatten"] = None
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


# ----------------------------------------------------------------------------------------------
# The λ sweep (mmdlib.experiment): every seed of every data set


def _stats(values: list) -> dict:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": len(v), "values": v.tolist()}


def aggregate(runs: list[dict]) -> dict:
    """Per data set: codec rows and (codec, pattern) rows, each metric as mean/std/n/values over
    seeds, plus the per-seed paired comparisons against the λ = 0 codec of the same seed."""
    out = {}
    for tag in dict.fromkeys(r["tag"] for r in runs):
        mine = [r for r in runs if r["tag"] == tag]
        names = list(dict.fromkeys(c["codec"] for r in mine for c in r["codecs"]))
        patterns = list(dict.fromkeys(x["pattern"] for r in mine for x in r["lms"]))

        def rows(kind, key):
            return [x for r in mine for x in r[kind] if key(x)]

        codec_rows, lm_rows = [], []
        for name in names:
            xs = rows("codecs", lambda x: x["codec"] == name)
            keys = [k for k, v in xs[0].items() if isinstance(v, (int, float)) and k != "lambda"]
            codec_rows.append({"codec": name, "lambda": xs[0]["lambda"], "align": xs[0]["align"],
                               **{k: _stats([x[k] for x in xs]) for k in keys}})
            for p in patterns:
                ys = rows("lms", lambda x: x["codec"] == name and x["pattern"] == p)
                keys = [k for k, v in ys[0].items() if isinstance(v, (int, float)) and k != "lambda"]
                lm_rows.append({"codec": name, "lambda": ys[0]["lambda"], "pattern": p,
                                **{k: _stats([y[k] for y in ys]) for k in keys}})
        # paired by seed: is the λ > 0 codec better than the λ = 0 codec of the same seed?
        paired = []
        for r in mine:
            base = {c["codec"]: c for c in r["codecs"]}["codec_lambda0"]
            lms = {(x["codec"], x["pattern"]): x for x in r["lms"]}
            for c in r["codecs"]:
                if c["lambda"] == 0:
                    continue
                d = {"seed": r["seed"], "codec": c["codec"],
                     "nmi_delay_lower": c["nmi_delay"] < base["nmi_delay"],
                     "mmd_delay_lower": c["mmd_delay"] < base["mmd_delay"],
                     "sisnr_cost_db": base["sisnr_db"] - c["sisnr_db"]}
                for p in ("parallel", "delay"):
                    a, b = lms.get((c["codec"], p)), lms.get(("codec_lambda0", p))
                    if a and b and a["gap_vs_flatten"] is not None and b["gap_vs_flatten"] is not None:
                        d[f"gap_{p}_smaller"] = a["gap_vs_flatten"] < b["gap_vs_flatten"]
                    for k in a or {}:
                        if k.startswith("fad_") and b:
                            d[f"{k}_{p}_lower"] = a[k] < b[k]
                paired.append(d)
        out[tag] = {"data": mine[0]["data"], "seeds": sorted(r["seed"] for r in mine),
                    "codecs": codec_rows, "lms": lm_rows, "paired": paired,
                    "seconds": [r["seconds"] for r in mine]}
    return out


def _ms(s: dict | None, fmt: str) -> str:
    if not s or s["mean"] is None:
        return "–"
    return format(s["mean"], fmt) + (f" ± {s['std']:{fmt.lstrip('+')}}" if s["std"] is not None else "")


def report_markdown(agg: dict, embedders: list[str], run_dir: str = "runs/sweep") -> str:
    lines = [f"Generated by `python -m mmdlib.experiment report` from the sweep's run artifacts "
             f"(`{run_dir}/*/seed*/sweep.json`). Cells: mean ± standard deviation over seeds.", ""]
    for tag, a in agg.items():
        kbps = sorted({round(c["kbps"]["mean"], 2) for c in a["codecs"] if c.get("kbps")})
        lines += [f"### {tag} ({len(a['seeds'])} seeds: {', '.join(map(str, a['seeds']))})", "",
                  f"Codec bitrate {', '.join(map(str, kbps))} kbps; smallest codebook usage (perplexity / size) per codec: "
                  + ", ".join(f"{c['codec']} {_ms(c.get('usage_perplexity_ratio_min'), '.2f')}" for c in a["codecs"]) + ".", "",
                  "| codec | pattern | ViSQOL ↑ | mel ↓ | SI-SNR dB ↑ | NMI delay ↓ | MMD² delay ↓ | bits/frame ↓ | − flatten "
                  + "".join(f"| FAD {e} rec. ↓ | FAD {e} gen. ↓ " for e in embedders) + "| AR steps | gen. s / audio s |",
                  "|---" * (11 + 2 * len(embedders)) + "|"]
        codec_rows = {c["codec"]: c for c in a["codecs"]}
        for r in a["lms"]:
            c = codec_rows[r["codec"]]
            lines.append(
                f"| {r['codec']} | {r['pattern']} | {_ms(c.get('visqol'), '.2f')} | {_ms(c['mel_distance'], '.3f')} "
                f"| {_ms(c['sisnr_db'], '.2f')} "
                f"| {_ms(c['nmi_delay'], '.3f')} | {_ms(c['mmd_delay'], '.4f')} | {_ms(r['bits_per_frame'], '.2f')} "
                f"| {_ms(r.get('gap_vs_flatten'), '+.2f')} "
                + "".join(f"| {_ms(c.get(f'fad_{e}_recon'), '.2f')} | {_ms(r.get(f'fad_{e}_gen'), '.2f')} " for e in embedders)
                + f"| {_ms(r['gen_steps'], '.0f')} | {_ms(r['gen_seconds_per_audio_second'], '.3f')} |")
        lines += ["", "Paired with the λ = 0 codec of the same seed (count of seeds where it holds):", "",
                  "| codec | NMI delay lower | MMD² delay lower | SI-SNR cost dB | delay gap smaller | parallel gap smaller "
                  + "".join(f"| FAD {e} gen. lower (delay) " for e in embedders) + "|",
                  "|---" * (6 + len(embedders)) + "|"]
        for name in dict.fromkeys(p["codec"] for p in a["paired"]):
            ps = [p for p in a["paired"] if p["codec"] == name]

            def count(key):
                have = [p[key] for p in ps if key in p]
                return f"{sum(have)}/{len(have)}" if have else "–"

            cost = np.mean([p["sisnr_cost_db"] for p in ps])
            lines.append(f"| {name} | {count('nmi_delay_lower')} | {count('mmd_delay_lower')} | {cost:+.2f} "
                         f"| {count('gap_delay_smaller')} | {count('gap_parallel_smaller')} "
                         + "".join(f"| {count(f'fad_{e}_gen_delay_lower')} " for e in embedders) + "|")
        lines.append("")
    return "\n".join(lines)
