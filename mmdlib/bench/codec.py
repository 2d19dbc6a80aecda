"""`python -m mmdlib.bench codec`: train the tiny codec as `python -m mmdlib.train_codec` does, and
measure it where a listener would: ViSQOL and mel distance on held-out music, beside Opus.

For each data set (synthetic music; the supertux soundtrack when `data/external/supertux` exists,
see scripts/get_supertux_music.sh) it trains the `tiny` preset on that data's train split and
scores it on `--clips` clips of 4 s of its test split (music it never trained on): ViSQOL (audio
mode, MOS-LQO), mel distance, SI-SNR, smallest codebook usage. The same clips go through Opus
at 6 and 12 kbps (the anchor rows; skipped with a note when opus-tools are not installed).
Training time, throughput and peak memory are the synthetic run's. `--checkpoint` scores a
trained codec.pt on synthetic music instead of training.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..anchors import OPUS_INSTALL, opus_available, opus_roundtrip
from ..codec import Codec
from ..data import make_dataset
from ..evaluate import evaluate_codec
from ..metrics import bitrate, mel_distance, si_snr, visqol
from ..params import resolve
from ..train_codec import train_codec, train_preset
from .common import peak_rss_mib, report

SUPERTUX = "data/external/supertux"
OPUS_KBPS = (6, 12)


def held_out_clips(data: str, sample_rate: int, clips: int, seconds: float = 4.0, cache_dir: str | None = None):
    """The first `clips` clips of `seconds` of the test split: music no training run has seen."""
    test = make_dataset(data, "test", sample_rate, seconds, clips, seed=0, cache_dir=cache_dir)
    return torch.utils.data.Subset(test, range(min(clips, len(test))))


def score(codec: Codec, clips) -> dict:
    m = evaluate_codec(codec, clips, batch_size=8, n_visqol=len(clips))
    q = codec.cfg.quantizer
    return {"visqol": m["visqol"], "visqol_sd": statistics.stdev(m["visqol_clips"]),
            "mel_distance": m["mel_distance"], "mel_sd": statistics.stdev(m["mel_clips"]),
            "sisnr_db": m["sisnr_db"], "usage_perplexity_ratio_min": m["usage_perplexity_ratio_min"],
            "kbps": bitrate(q.n_q, q.codebook_size, codec.frame_rate) / 1000, "clips": len(clips)}


def opus_rows(clips, sample_rate: int) -> dict:
    x = torch.stack([clips[i] for i in range(len(clips))])
    out = {}
    for kbps in OPUS_KBPS:
        y = opus_roundtrip(x, sample_rate, kbps)
        v, m = visqol(y, x, sample_rate), mel_distance(y, x, sample_rate)
        out[f"opus_{kbps}kbps"] = {"visqol": v.mean().item(), "visqol_sd": v.std().item(),
                                   "mel_distance": m.mean().item(), "mel_sd": m.std().item(),
                                   "sisnr_db": si_snr(y, x).mean().item(), "kbps": kbps, "clips": len(x)}
    return out


def train(data: str, args, cache_dir: str | None) -> tuple[Codec, dict]:
    overrides = dict(data=data, seed=args.seed, cache_dir=cache_dir)
    if args.steps:
        overrides["steps"] = args.steps
    cfg = train_preset("tiny", **overrides)
    name = "synthetic" if data == "synthetic" else Path(data).name
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
        notes.append(f"supertux: skipped ({'not asked' if args.no_supertux or args.checkpoint else f'{folder} absent: run scripts/get_supertux_music.sh'})")
    table = {}
    for tag, (data, cache) in sets.items():
        if args.checkpoint:
            codec, info = Codec.load(args.checkpoint), {"checkpoint": args.checkpoint}
        else:
            codec, info = train(data, args, cache)
        clips = held_out_clips(data, codec.cfg.sample_rate, args.clips, cache_dir=cache)
        table[f"{tag}/tiny codec"] = score(codec, clips)
        if opus_available():
            table |= {f"{tag}/{k}": v for k, v in opus_rows(clips, codec.cfg.sample_rate).items()}
        elif tag == "synthetic":
            notes.append(f"Opus rows skipped: {OPUS_INSTALL}")
        if tag == "synthetic":
            result |= info
    for key, r in table.items():
        rows.append((key, f"ViSQOL {r['visqol']:.2f} ± {r['visqol_sd']:.2f}, mel {r['mel_distance']:.3f} ± {r['mel_sd']:.3f}, "
                          f"SI-SNR {r['sisnr_db']:.1f} dB, {r['kbps']:.1f} kbps" +
                          (f", min usage {r['usage_perplexity_ratio_min']:.2f}" if "usage_perplexity_ratio_min" in r else "")))
    syn = table["synthetic/tiny codec"]
    result |= {"visqol": syn["visqol"], "visqol_sd": syn["visqol_sd"], "mel_distance": syn["mel_distance"],
               "sisnr_db": syn["sisnr_db"], "usage_perplexity_ratio_min": syn["usage_perplexity_ratio_min"],
               "kbps": syn["kbps"], "clips": syn["clips"]}
    if "supertux/tiny codec" in table:
        st = table["supertux/tiny codec"]
        result |= {"visqol_supertux": st["visqol"], "mel_distance_supertux": st["mel_distance"],
                   "sisnr_db_supertux": st["sisnr_db"], "usage_perplexity_ratio_min_supertux": st["usage_perplexity_ratio_min"]}
    for kbps in OPUS_KBPS:
        if f"synthetic/opus_{kbps}kbps" in table:
            result[f"opus_{kbps}kbps_visqol"] = table[f"synthetic/opus_{kbps}kbps"]["visqol"]
            result[f"opus_{kbps}kbps_mel_distance"] = table[f"synthetic/opus_{kbps}kbps"]["mel_distance"]
        if f"supertux/opus_{kbps}kbps" in table:
            result[f"opus_{kbps}kbps_visqol_supertux"] = table[f"supertux/opus_{kbps}kbps"]["visqol"]
            result[f"opus_{kbps}kbps_mel_distance_supertux"] = table[f"supertux/opus_{kbps}kbps"]["mel_distance"]
    result |= {"peak_rss_mib": peak_rss_mib(), "table": table, "notes": notes}
    rows += [(k, result[k]) for k in ("train_seconds", "audio_seconds_per_second", "peak_rss_mib") if k in result]
    rows += [("note", n) for n in notes]
    return report("codec benchmark (tiny preset; held-out test clips of 4 s)", rows, json.loads(json.dumps(result)))


if __name__ == "__main__":
    main()
