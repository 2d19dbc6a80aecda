"""The run's report (notebook 05): every artifact of a run in two tables, and the factorisation gap.

`collect_results(cfg)` reads what the stages wrote (never recomputes, never invents: a missing
piece is None), `results_markdown` renders it, `write_results` saves figures/results.{md,json}.
`add_gap` is the one definition of the gap to the joint (flatten) model, used here, by notebook
03 and by the λ sweep (mmdlib.experiment).
"""
from __future__ import annotations

import json
from pathlib import Path

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
