"""`python -m mmdlib.bench codec`: train the tiny codec as `python -m mmdlib.train_codec` does, and
measure it where a listener would: are the notes there, and how does it sound, on held-out music,
beside Opus.

For each data set (synthetic music; the supertux soundtrack when `data/external/supertux` exists,
see scripts/get_supertux_music.sh) it trains the `tiny` preset on that data's train split and
scores it on `--clips` clips of 4 s of its test split (music it never trained on): fine-structure
correlation and chroma similarity (the notes), ViSQOL (audio mode, MOS-LQO), mel distance,
SI-SNR, smallest codebook usage. The same clips go through Opus at 6 and 12 kbps (the anchor rows;
skipped with a note when opus-tools are not installed), and, as a check of the metrics themselves,
through `envelope_noise` (the same clips with no notes at all: the note metrics must score it
near 0 and 0.5, whatever ViSQOL and the mel distance say). Training time, throughput and peak
memory are the synthetic run's. `--checkpoint` scores a trained codec.pt on synthetic music
instead of training.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmdlib.codec.model import Codec
from mmdlib.data.datasets import make_dataset
from mmdlib.eval.anchors import OPUS_INSTALL, opus_available, opus_roundtrip
from mmdlib.eval.codec import evaluate_codec
from mmdlib.eval.metrics import bitrate, chroma_similarity, envelope_noise, fine_structure_r, mel_distance, si_snr, visqol
from mmdlib.pipeline.params import resolve
from mmdlib.train.codec import train_codec
from mmdlib.train.config import train_preset

from .common import peak_rss_mib, report

SUPERTUX = "data/external/supertux"
OPUS_KBPS = (6, 12)


def held_out_clips(data: str, sample_rate: int, clips: int, seconds: float = 4.0, cache_dir: str | None = None):
    """The first `clips` clips of `seconds` of the test split: music no training run has seen."""
    test = make_dataset(data, "test", sample_rate, seconds, clips, seed=0, cache_dir=cache_dir)
    return torch.utils.data.Subset(test, range(min(clips, len(test))))


METRICS = ("fine_structure_r", "chroma", "visqol", "mel_distance")  # the columns, each with its SD over clips


def score(codec: Codec, clips) -> dict:
    m = evaluate_codec(codec, clips, batch_size=8, n_visqol=len(clips))
    q = codec.cfg.quantizer
    per_clip = {"fine_structure_r": "fine_structure_r_clips", "chroma": "chroma_clips", "visqol": "visqol_clips",
                "mel_distance": "mel_clips"}
    return {**{k: m[k] for k in METRICS}, **{f"{k}_sd": statistics.stdev(m[v]) for k, v in per_clip.items()},
            "sisnr_db": m["sisnr_db"], "usage_perplexity_ratio_min": m["usage_perplexity_ratio_min"],
            "kbps": bitrate(q.n_q, q.codebook_size, codec.frame_rate) / 1000, "clips": len(clips)}


def score_audio(y: torch.Tensor, x: torch.Tensor, sample_rate: int, kbps: float | None) -> dict:
    """The same columns for any audio `y` against the clips `x` (the anchors and the metric check)."""
    values = {"fine_structure_r": fine_structure_r(y, x, sample_rate), "chroma": chroma_similarity(y, x, sample_rate),
              "visqol": visqol(y, x, sample_rate), "mel_distance": mel_distance(y, x, sample_rate)}
    return {**{k: v.mean().item() for k, v in values.items()}, **{f"{k}_sd": v.std().item() for k, v in values.items()},
            "sisnr_db": si_snr(y, x).mean().item(), "kbps": kbps, "clips": len(x)}


def anchor_rows(clips, sample_rate: int) -> dict:
    """Opus at 6 and 12 kbps (when opus-tools are installed) and envelope-shaped noise of the same clips."""
    x = torch.stack([clips[i] for i in range(len(clips))])
    out = {"envelope noise (no notes)": score_audio(envelope_noise(x, sample_rate), x, sample_rate, None)}
    if opus_available():
        out |= {f"opus_{kbps}kbps": score_audio(opus_roundtrip(x, sample_rate, kbps), x, sample_rate, kbps)
                for kbps in OPUS_KBPS}
    return out


def train(data: str, args, cache_dir: str | None) -> tuple[Codec, dict]:
    overrides = dict(data=data, seed=args.seed, cache_dir=cache_dir)
    if args.steps:
        overrides["steps"] = args.steps
    cfg = train_preset(args.preset, **overrides)
    name = ("synthetic" if data == "synthetic" else Path(data).name) + ("" if args.preset == "tiny" else f"_{args.preset}")
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="mmdlib-bench-codec-")) / name
    done = (run_dir / "codec.pt").is_file()
    t0 = time.time()
    out = train_codec(cfg, run_dir)
    wall = out["final"]["seconds"] if done else time.time() - t0  # a finished run is reused
    info = {"run_dir": str(run_dir), "steps": cfg.steps, "train_seconds": wall,
            "audio_seconds_per_second": cfg.steps * cfg.batch_size * cfg.segment_seconds / wall}
    return Codec.load(run_dir / "codec.pt"), info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mmdlib.bench codec", description=__doc__)
    p.add_argument("--checkpoint", help="score this codec.pt on synthetic music instead of training")
    p.add_argument("--preset", default="tiny", choices=("tiny", "tiny_learned", "tiny_seanet"),
                   help="codec training preset (tiny_learned: the former tiny codec, to compare against)")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--clips", type=int, default=16, help="held-out clips of 4 s per data set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", help="where the runs live (default: a temporary folder); finished runs are reused")
    p.add_argument("--supertux", default=SUPERTUX, help="real-music folder (skipped when absent)")
    p.add_argument("--no-supertux", action="store_true")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sets = {"synthetic": ("synthetic", None)}
    folder = resolve(args.supertux)
    if not args.no_supertux and not args.checkpoint and folder.is_dir():
        sets["supertux"] = (str(folder), str(resolve("data/cache/supertux")))
    result, rows, notes = {}, [], []
    if args.no_supertux or args.checkpoint or not folder.is_dir():
        why = "not asked" if args.no_supertux or args.checkpoint else f"{folder} absent: run scripts/get_supertux_music.sh"
        notes.append(f"supertux: skipped ({why})")
    table = {}
    for tag, (data, cache) in sets.items():
        if args.checkpoint:
            codec, info = Codec.load(args.checkpoint), {"checkpoint": args.checkpoint}
        else:
            codec, info = train(data, args, cache)
        clips = held_out_clips(data, codec.cfg.sample_rate, args.clips, cache_dir=cache)
        table[f"{tag}/{args.preset} codec"] = score(codec, clips)
        table |= {f"{tag}/{k}": v for k, v in anchor_rows(clips, codec.cfg.sample_rate).items()}
        if tag == "synthetic":
            result |= info
            if not opus_available():
                notes.append(f"Opus rows skipped: {OPUS_INSTALL}")
    for key, r in table.items():
        rows.append((key, f"fine-structure r {r['fine_structure_r']:.3f} ± {r['fine_structure_r_sd']:.3f}, "
                          f"chroma {r['chroma']:.3f} ± {r['chroma_sd']:.3f}, ViSQOL {r['visqol']:.2f} ± {r['visqol_sd']:.2f}, "
                          f"mel {r['mel_distance']:.3f} ± {r['mel_distance_sd']:.3f}, SI-SNR {r['sisnr_db']:.1f} dB" +
                          (f", {r['kbps']:.1f} kbps" if r["kbps"] else "") +
                          (f", min usage {r['usage_perplexity_ratio_min']:.2f}" if "usage_perplexity_ratio_min" in r else "")))
    syn = table[f"synthetic/{args.preset} codec"]
    result |= {k: syn[k] for k in (*METRICS, "visqol_sd", "sisnr_db", "usage_perplexity_ratio_min", "kbps", "clips")}
    if f"supertux/{args.preset} codec" in table:
        st = table[f"supertux/{args.preset} codec"]
        result |= {f"{k}_supertux": st[k] for k in (*METRICS, "sisnr_db", "usage_perplexity_ratio_min")}
    for tag, suffix in (("synthetic", ""), ("supertux", "_supertux")):
        for name, prefix in [(f"opus_{kbps}kbps", f"opus_{kbps}kbps_") for kbps in OPUS_KBPS] + [
                ("envelope noise (no notes)", "envelope_noise_")]:
            if f"{tag}/{name}" in table:
                result |= {f"{prefix}{k}{suffix}": table[f"{tag}/{name}"][k] for k in METRICS}
    result |= {"peak_rss_mib": peak_rss_mib(), "table": table, "notes": notes}
    rows += [(k, result[k]) for k in ("train_seconds", "audio_seconds_per_second", "peak_rss_mib") if k in result]
    rows += [("note", n) for n in notes]
    return report(f"codec benchmark ({args.preset} preset; held-out test clips of 4 s)", rows, json.loads(json.dumps(result)))


if __name__ == "__main__":
    main()
