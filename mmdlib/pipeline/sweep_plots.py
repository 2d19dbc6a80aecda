"""The λ sweep's figures (mmdlib.experiment report): dependence against quality, bits above flatten and
sample quality, the depth gap per codec, and the claim-2 verdict per variant (paired differences)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

SHORT = {"": "residual", "clip": "within-clip", "codeword_reference": "ICML loss", "none": "lag 0"}  # variant tags


def _sweep_label(row: dict) -> str:
    """'λ=0', or the variant and its λ ('codeword λ=1000'; the default MMD: 'residual')."""
    lam = f"λ={row['lambda']:g}"
    if not row["lambda"]:
        return lam
    if "variant" not in row:  # a run of an earlier version: λ and alignment only
        return lam + (" (lag 0)" if row.get("align") == "none" else "")
    return f"{SHORT.get(row['variant'], row['variant'])} {lam}"


def sweep_tradeoff(agg: dict, y: str = "visqol"):
    """Dependence (NMI delay) against reconstruction quality (ViSQOL by default), one point per
    codec (mean ± std), faint points per seed; one panel per data set."""
    ylabels = {"visqol": "ViSQOL (MOS-LQO, higher is better)", "mel_distance": "mel distance (lower is better)",
               "sisnr_db": "SI-SNR (dB)"}
    fig, axes = plt.subplots(1, len(agg), figsize=(5.5 * len(agg), 4.2), squeeze=False)
    for ax, (tag, a) in zip(axes[0], agg.items()):
        for i, c in enumerate(a["codecs"]):
            color = f"C{i}"
            ax.scatter(c["nmi_delay"]["values"], c[y]["values"], color=color, alpha=0.3, s=15)
            ax.errorbar(c["nmi_delay"]["mean"], c[y]["mean"], xerr=c["nmi_delay"]["std"] or 0,
                        yerr=c[y]["std"] or 0, fmt="s" if c.get("align") == "none" else "o", color=color,
                        label=_sweep_label(c), capsize=3)
        ax.set(xlabel="delay-aligned NMI of the codes (lower: more independent)", ylabel=ylabels.get(y, y),
               title=f"{tag}: dependence vs reconstruction")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def t_interval(values) -> tuple[float, float]:
    """The 95 % t-interval of the mean of `values` (the seeds): what the sweep's figures draw."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float(v.mean())
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def sweep_gap(agg: dict, embedder: str = "logmel"):
    """Top: held-out bits/frame above flatten's (pattern − flatten) per codec; bottom: FAD of the samples
    to the codec's own reconstructions of held-out clips, per codec and pattern. Each seed a dot (seaborn's
    stripplot), the mean with its 95 % t-interval over
    seeds (pointplot); one column per data set."""
    import pandas as pd
    import seaborn as sns

    fig, axes = plt.subplots(2, len(agg), figsize=(5 * len(agg), 7), squeeze=False)
    for j, (tag, a) in enumerate(agg.items()):
        labels = {c["codec"]: _sweep_label(c).replace(" λ", "\nλ") for c in a["codecs"]}
        patterns = list(dict.fromkeys(r["pattern"] for r in a["lms"]))
        for key, ax in (("gap_vs_flatten", axes[0, j]), (f"fad_{embedder}_gen_vs_recon", axes[1, j])):
            shown = [p for p in patterns if not (key == "gap_vs_flatten" and p == "flatten")]
            seeds = pd.DataFrame([{"codec": labels[r["codec"]], "pattern": r["pattern"], "value": v}
                                  for r in a["lms"] if r["pattern"] in shown and r.get(key)
                                  for v in r[key]["values"]])
            if seeds.empty:
                continue
            palette = {p: f"C{patterns.index(p)}" for p in shown}
            common = dict(data=seeds, x="codec", y="value", hue="pattern", order=list(labels.values()),
                          hue_order=shown, palette=palette, ax=ax)
            # dodge as the stripplot's (0.8 wide, split among the hues), so each mean sits on its seeds
            sns.pointplot(**common, dodge=0.8 * (len(shown) - 1) / len(shown), errorbar=t_interval, linestyle="none",
                          markers="o", markersize=5, capsize=0.08, err_kws={"linewidth": 1.2})
            sns.stripplot(**common, dodge=True, jitter=0.05, size=4, alpha=0.6, edgecolor="white", linewidth=0.5,
                          legend=False)
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
            ax.set_xlabel("")
            ax.legend(fontsize=8)
        axes[0, j].axhline(0, color="k", lw=0.8)
        axes[0, j].set(ylabel="bits/frame − flatten's", title=f"{tag}: bits/frame above the flatten LM")
        axes[1, j].set(ylabel=f"FAD ({embedder}): samples vs the codec's reconstructions", title=f"{tag}: sample quality")
    fig.tight_layout()
    return fig


def sweep_depth_gap(agg: dict):
    """Per data set, per codec (λ = 0, then the variants): one panel per factorised pattern with its depth gap
    (bits/frame the LM gives up within a step; each its own scale), then NMI(delay) of the codes,
    then ViSQOL and code entropy, so that a gap that moves only because the codebooks collapsed
    shows. Points: mean over seeds, bars: 95 % t-interval over seeds; thin lines: each seed."""
    def gap_patterns(a):
        return [p for p in dict.fromkeys(r["pattern"] for r in a["lms"])
                if any(r.get("depth_gap_bits") for r in a["lms"] if r["pattern"] == p)]

    n_cols = max(len(gap_patterns(a)) for a in agg.values()) + 2
    fig, axes = plt.subplots(len(agg), n_cols, figsize=(4.3 * n_cols, 3.8 * len(agg)), squeeze=False)

    def draw(ax, xs, stat_rows, color, label):
        m = [s["mean"] if s and s["mean"] is not None else np.nan for s in stat_rows]
        half = [m_ - t_interval(s["values"])[0] if s and len(s.get("values") or []) > 1 else 0
                for m_, s in zip(m, stat_rows)]
        ax.errorbar(xs, m, yerr=half, fmt="o-", capsize=4, color=color, label=label)
        seeds = max((len(s["values"]) for s in stat_rows if s), default=0)
        for i in range(seeds):
            ax.plot(xs, [s["values"][i] if s and i < len(s["values"]) else np.nan for s in stat_rows],
                    color=color, lw=0.6, alpha=0.35)

    for j, (tag, a) in enumerate(agg.items()):
        codecs = a["codecs"]
        xs = np.arange(len(codecs))
        labels = [_sweep_label(c) for c in codecs]
        for k, p in enumerate(gap_patterns(a)):
            rows = [next((r.get("depth_gap_bits") for r in a["lms"] if r["codec"] == c["codec"] and r["pattern"] == p), None)
                    for c in codecs]
            draw(axes[j, k], xs, rows, f"C{k}", p)
            axes[j, k].set(ylabel="bits / frame", title=f"{tag}: depth gap, {p}")
        nmi_ax, q_ax = axes[j, -2], axes[j, -1]
        draw(nmi_ax, xs, [c.get("nmi_delay") for c in codecs], "C3", "NMI delay")
        nmi_ax.set(ylabel="NMI (bias-corrected)", title=f"{tag}: dependence of the codes")
        draw(q_ax, xs, [c.get("visqol") for c in codecs], "C2", "ViSQOL")
        q_ax.set(ylabel="ViSQOL (MOS-LQO)", title=f"{tag}: quality and code entropy")
        twin = q_ax.twinx()
        draw(twin, xs, [c.get("code_entropy_bits") for c in codecs], "C4", "code entropy (bits)")
        twin.set_ylabel("code entropy (bits)")
        twin.grid(False)
        lines = q_ax.get_legend_handles_labels()
        lines2 = twin.get_legend_handles_labels()
        q_ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower left")
        nmi_ax.legend(fontsize=8)
        for ax in axes[j]:
            ax.set_xticks(xs, labels, fontsize=7, rotation=35, ha="right")
            ax.margins(x=0.15)
    fig.tight_layout()
    return fig


def sweep_verdicts(agg: dict):
    """Claim 2 per variant: the paired difference against the λ = 0 codec of the same seed (mean, 95 %
    t-interval over seeds, each seed a dot) of the depth gap and the bits above flatten of the pattern the
    variant targets, of the generation metric, and of the codes' NMI (claim 1). Left of 0 is what the
    claims predict. One row per data set."""
    metric = next(iter(agg.values()))["generation_sanity"]["metric"]  # report.GEN_METRIC
    keys = (("depth_gap_bits_delay", "Δ depth gap, delay (bits/frame)"),
            ("depth_gap_bits_parallel", "Δ depth gap, parallel"), ("gap_vs_flatten_{p}", "Δ (pattern − flatten) bits/frame"),
            (metric + "_{p}", "Δ FAD samples vs reconstructions"), ("nmi_delay", "Δ NMI delay (claim 1)"))
    rows = max(len(a["paired"]) for a in agg.values())
    fig, axes = plt.subplots(len(agg), len(keys), figsize=(4.2 * len(keys), 0.5 + 0.55 * rows * len(agg)), squeeze=False)
    for j, (tag, a) in enumerate(agg.items()):
        labels = [f"{_sweep_label(d)} ({d['verdict']['pattern']})" for d in a["paired"]]
        for k, (key, title) in enumerate(keys):
            ax = axes[j, k]
            for i, d in enumerate(a["paired"]):
                s = d.get(key.format(p=d["verdict"]["pattern"]))
                if key.startswith("depth_gap") and not key.endswith(d["verdict"]["pattern"]):
                    s = None  # each variant's gap on the pattern it targets
                if not s or s["mean"] is None:
                    continue
                vals = list(s["values"].values())
                ax.scatter(vals, [i] * len(vals), color="0.5", s=12, alpha=0.6, zorder=2)
                lo, hi = s["ci95"] or (s["mean"], s["mean"])
                color = "C2" if hi < 0 else "C3" if lo > 0 else "C0"
                ax.errorbar(s["mean"], i, xerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="o", color=color, capsize=3, zorder=3)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(range(len(labels)), labels if k == 0 else [""] * len(labels), fontsize=8)
            ax.invert_yaxis()
            if key.startswith(metric) and not a["generation_sanity"]["can_rank"]:
                title += "\n(the metric cannot rank: not used)"
            ax.set_title(f"{tag}: {title}" if k == 0 else title, fontsize=9)
    fig.tight_layout()
    return fig
