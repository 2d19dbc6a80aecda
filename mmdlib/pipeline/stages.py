"""The pipeline's stages: data, codecs, token caches, language models, generation, dependence.

Each stage takes the run's PipelineConfig (mmdlib.pipeline.params: the configs of its codecs, LMs
and depth heads, resolved with the run's seed, device and data) and the keys of what it makes (the
MMD weight λ of a codec, an LM's pattern), reads and writes under `cfg.layout`
(mmdlib.pipeline.layout), and reloads instead of recomputing what an earlier call finished
(`layout.cached`):

    train_codec_run(cfg, lam)          01: train (or resume, or reload) the codec of weight λ
    forked_codec_run(cfg, lam)         01: the same, the λ > 0 codecs forked from λ = 0 at mmd_start
    reconstruct_run(cfg, lam, clips)   01: its reconstructions of some clips, saved, with their scores
    tokens(cfg, lam, split)            02/03: the codes of the train/valid/test clips, cached
    dependence_run(cfg, lam)           02: MI/NMI of the codes, MMD² and permutation tests
    train_lm_run(cfg, lam, pattern)    03: one LM per (codec, pattern), early-stopped, scored on test clips
    depth_run(cfg, lam, pattern)       03: the factorisation gap of that LM (depth heads, mmdlib.lm.depth)
    generate_run(cfg, lam, pattern)    04: samples, timing, dependence of the generated codes
                                           (pattern "depth": the parallel trunk with its depth head)
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time

import torch
from tqdm import tqdm

from mmdlib.codec.model import Codec
from mmdlib.data.audio import save_audio
from mmdlib.data.datasets import clip_batches, make_dataset
from mmdlib.eval.metrics import chroma_similarity, fine_structure_r, mel_distance, si_snr, visqol
from mmdlib.lm.depth import DepthHead, factorization_gap, generate_depth
from mmdlib.lm.model import TokenLM, bits_per_codebook
from mmdlib.lm.sampling import generate
from mmdlib.mmd.dependence import dependence_summary, pairwise_mi
from mmdlib.mmd.loss import mmd_independence
from mmdlib.mmd.permutation import permutation_test
from mmdlib.pipeline.layout import PipelineError, cached, read_json
from mmdlib.pipeline.params import DEPTH_TRUNK, PipelineConfig
from mmdlib.train.checkpoint import (
    CHECKPOINT,
    RUN_NEUTRAL,
    CheckpointError,
    check_same_config,
    file_record,
    load_checkpoint,
    write_json,
)
from mmdlib.train.codec import fork_checkpoint, train_codec
from mmdlib.train.lm import MODEL_FILE, train_lm

# ----------------------------------------------------------------------------------------------
# Data and codecs


def dataset(cfg: PipelineConfig, split: str, n_items: int, seconds: float | None = None):
    """Clips `1 n` of the pipeline's data; folder valid/test splits are cut to `n_items`."""
    ds = make_dataset(cfg.data_source(), split, cfg.sample_rate, seconds or cfg.data.clip_seconds, n_items, cfg.seed,
                      cfg.data_cache_dir())
    if len(ds) > n_items:
        ds = torch.utils.data.Subset(ds, range(n_items))
    return ds


def train_codec_run(cfg: PipelineConfig, lam: float) -> dict:
    """Train (or resume, or just reload if finished) the codec of weight `lam` in its folder;
    {"config", "history", "final", "resumed"}."""
    tcfg, out = cfg.codec_config(lam), cfg.layout.codec(lam)
    result = cached(out / "metrics.json", {"config": tcfg.to_dict()},
                    lambda: {"history": train_codec(tcfg, out, progress=cfg.progress)["history"]}, needs=(out / "codec.pt",),
                    refuse=f"{out} holds a codec trained with another configuration; delete that folder or choose "
                           "another run_dir")
    return result | {"final": result["history"][-1]}


@torch.no_grad()
def reconstruct_run(cfg: PipelineConfig, lam: float, clips: list[torch.Tensor], codec: Codec | None = None
                    ) -> tuple[list[torch.Tensor], dict]:
    """Codec `lam`'s reconstructions of `clips` (each `1 n`), written to <codec folder>/recon/clip<i>.wav,
    and their scores against the clips: {"clip i": {"fine-structure r", "chroma", "ViSQOL", "mel distance",
    "SI-SNR (dB)"}}."""
    codec = codec or load_codec(cfg, lam)
    sr = codec.cfg.sample_rate
    folder = cfg.layout.codec(lam) / "recon"
    folder.mkdir(parents=True, exist_ok=True)
    recon, scores = [], {}
    for i, x in enumerate(clips):
        y = codec(x[None].to(cfg.device)).wav[0].cpu()
        save_audio(folder / f"clip{i}.wav", y, sr)
        scores[f"clip {i}"] = {"fine-structure r": fine_structure_r(y[None], x[None], sr).item(),
                               "chroma": chroma_similarity(y[None], x[None], sr).item(),
                               "ViSQOL": visqol(y[None], x[None], sr).item(),
                               "mel distance": mel_distance(y[None], x[None], sr).item(),
                               "SI-SNR (dB)": si_snr(y[None], x[None]).item()}
        recon.append(y)
    return recon, scores


def forked_codec_run(cfg: PipelineConfig, lam: float) -> dict | None:
    """train_codec_run, with the shared prefix trained once: the λ = 0 run saves its checkpoint at
    mmd_start (run_dir/prefix_step<mmd_start>.pt) on its way, and the λ > 0 codecs fork from it
    (until mmd_start their training is the same, `train_codec.fork_checkpoint`; without the prefix they
    train from scratch, to the same result). None when the codec was finished already."""
    out = cfg.layout.codec(lam)
    if (out / "codec.pt").is_file() and (out / "metrics.json").is_file():
        return None
    base, base_dir = cfg.codec_config(0.0), cfg.layout.codec(0.0)
    prefix = cfg.run_path / f"prefix_step{base.mmd_start}.pt"
    if base.mmd_start and not prefix.is_file() and not (base_dir / CHECKPOINT).is_file():
        train_codec(base, base_dir, stop_at=base.mmd_start, progress=cfg.progress)
        shutil.copyfile(base_dir / CHECKPOINT, prefix)
    if lam and prefix.is_file() and not (out / CHECKPOINT).is_file():
        fork_checkpoint(prefix, cfg.codec_config(lam), out)
    return train_codec_run(cfg, lam)


def load_codec(cfg: PipelineConfig, lam: float) -> Codec:
    path = cfg.layout.codec(lam) / "codec.pt"
    if not path.is_file():
        raise PipelineError(f"{path} is missing: run notebooks/01_train_codec.ipynb with lambdas={lam:g} first")
    return Codec.load(path, map_location=cfg.device).to(cfg.device)


@torch.no_grad()
def tokenize(codec: Codec, ds, batch_size: int = 16, device: str = "cpu", progress: bool = False) -> torch.Tensor:
    """Codes `n k t` (long, CPU) of every clip of a dataset of `1 n` clips."""
    batches = tqdm(clip_batches(ds, batch_size), desc="tokenise", total=-(-len(ds) // batch_size), disable=not progress,
                   mininterval=2, leave=False)
    codes = [codec.encode(wav.to(device)).cpu() for wav in batches]
    if not codes:
        raise PipelineError("tokenize: the dataset is empty")
    return torch.cat(codes)


def _token_meta(cfg: PipelineConfig, lam: float, split: str, n_items: int) -> dict:
    ckpt = cfg.layout.codec(lam) / "codec.pt"
    st = ckpt.stat()
    meta = {"data": cfg.data.source, "split": split, "n_items": n_items, "clip_seconds": cfg.data.clip_seconds,
            "seed": cfg.seed, "codec": str(ckpt), "codec_size": st.st_size, "codec_mtime_ns": st.st_mtime_ns}
    return meta | ({"first_item": cfg.data.n_train} if split == "heads" else {})


def tokens(cfg: PipelineConfig, lam: float, split: str, codec: Codec | None = None) -> torch.Tensor:
    """The codes `n k t` of the train, heads, valid or test clips under codec `lam` (test: as many clips
    as valid; heads: data.n_heads train-split clips after the LM's n_train, for the depth heads), cached
    in run_dir/tokens/ as `<split>.pt` (a plain long tensor, what `python -m mmdlib.train_lm
    --train/--valid` reads) and `<split>.json` (what it was computed from: recomputed when the codec or
    data parameters change)."""
    if split not in ("train", "heads", "valid", "test"):
        raise PipelineError(f"split={split!r}: expected 'train', 'heads', 'valid' or 'test'")
    n_items = {"train": cfg.data.n_train, "heads": cfg.data.n_heads}.get(split, cfg.data.n_valid)
    path = cfg.layout.tokens(lam, split)

    def compute() -> dict:
        if split == "heads":  # the train split continued: clips n_train .. n_train + n_heads - 1
            ds = torch.utils.data.Subset(dataset(cfg, "train", cfg.data.n_train + n_items),
                                         range(cfg.data.n_train, cfg.data.n_train + n_items))
        else:
            ds = dataset(cfg, split, n_items)
        codes = tokenize(codec or load_codec(cfg, lam), ds, device=cfg.device, progress=cfg.progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(codes, path)
        return {}

    cached(path.with_suffix(".json"), _token_meta(cfg, lam, split, n_items), compute, needs=(path,))
    return torch.load(path)


# ----------------------------------------------------------------------------------------------
# Language models


def train_lm_run(cfg: PipelineConfig, lam: float, pattern: str) -> dict:
    """Train (or resume, or reload if finished) the LM of (codec `lam`, `pattern`); writes
    lm_dir/metrics.json with the configs, history (train_lm's rows), training time and the bits per
    frame of its best state (early stopping on the valid clips): "valid_bits_per_frame" there, and
    "bits_per_frame" on the test clips, which chose nothing. Both score the clips in windows of the
    training crop length (`lm.windows`), the length every pattern trained on."""
    train, valid = tokens(cfg, lam, "train"), tokens(cfg, lam, "valid")
    codec_cfg = Codec.load(cfg.layout.codec(lam) / "codec.pt").cfg
    lm_cfg, tcfg = cfg.lm_configs(pattern, codec_cfg.quantizer.n_q, codec_cfg.quantizer.codebook_size)
    if train.shape[-1] < tcfg.seq_frames:
        raise PipelineError(f"clip_seconds={cfg.data.clip_seconds} gives {train.shape[-1]} frames, fewer than the "
                            f"LM's seq_frames={tcfg.seq_frames}: raise clip_seconds or lower lm_seq_frames")
    out = cfg.layout.lm(lam, pattern)
    key = {"lm_config": lm_cfg.to_dict(), "train_config": tcfg.to_dict(),
           "tokens": _token_meta(cfg, lam, "train", cfg.data.n_train)}
    ckpt = out / CHECKPOINT

    def compute() -> dict:
        if ckpt.is_file():  # interrupted, or trained outside (torchrun -m mmdlib.train_lm): resume the same run only
            state = load_checkpoint(ckpt, "lm")  # a corrupt file: CheckpointError with what to do
            try:
                check_same_config(state["config"], {"model": lm_cfg.to_dict(), "train": tcfg.to_dict()},
                                  tuple(f"train.{k}" for k in RUN_NEUTRAL),
                                  f"{ckpt} was written with another LM or training configuration")
            except CheckpointError as e:
                raise PipelineError(f"{e}. Delete that folder or choose another run_dir") from None
        t0 = time.time()
        model, history = train_lm(train, valid, lm_cfg, tcfg, out,  # its best state
                                  codec=file_record(cfg.layout.codec(lam) / "codec.pt"), progress=cfg.progress)
        evals = [row for row in history if "valid_bits_per_frame" in row]
        best = min(evals, key=lambda row: row["valid_bits_per_frame"])
        by_k = bits_per_codebook(model, tokens(cfg, lam, "test"), tcfg.eval_batch_size, window=tcfg.seq_frames)
        return {"history": history, "valid_bits_per_frame": best["valid_bits_per_frame"],
                "bits_per_frame": float(by_k.sum()),  # = evaluate_bits_per_frame on the same windows, one pass
                "bits_per_codebook": by_k.tolist(), "best_step": best["step"], "steps_trained": history[-1]["step"],
                "train_seconds": time.time() - t0, "n_params": model.num_params(),
                "codec": cfg.layout.codec_name(lam), "pattern": pattern, "lambda": lam}

    return cached(out / "metrics.json", key, compute, needs=(ckpt, out / MODEL_FILE),
                  refuse=f"{out} holds an LM trained with another configuration (or on other tokens); delete that "
                         "folder or choose another run_dir")


def lm_metrics(cfg: PipelineConfig, lam: float, pattern: str) -> dict:
    return read_json(cfg.layout.lm(lam, pattern) / "metrics.json",
                     f"run notebooks/03_train_lm.ipynb with lambdas={lam:g}, patterns={pattern}")


def depth_run(cfg: PipelineConfig, lam: float, pattern: str) -> dict:
    """The factorisation gap of the LM of (codec `lam`, `pattern`): depth heads with and without
    the step's earlier codes (mmdlib.lm.depth) trained on the codes of data.n_heads clips the LM never
    saw (tokens split "heads"), early-stopped on the valid clips, scored on the test clips, in windows
    of the LM's crop length. Writes lm_dir/depth.json
    and the depth head (lm_dir/depth_head.pt, what the `depth` generation samples with)."""
    out = cfg.layout.lm(lam, pattern)
    lm = lm_metrics(cfg, lam, pattern)
    dcfg = cfg.depth_config()

    def compute() -> dict:
        model = TokenLM.load(out / MODEL_FILE, map_location=cfg.device)
        t0 = time.time()
        gap, head = factorization_gap(model, tokens(cfg, lam, "heads"), tokens(cfg, lam, "valid"),
                                      tokens(cfg, lam, "test"), dcfg, lm["train_config"]["seq_frames"], cfg.progress)
        torch.save({"config": dataclasses.asdict(dcfg), "state": head.state_dict()}, out / "depth_head.pt")
        return gap | {"seconds": time.time() - t0, "codec": cfg.layout.codec_name(lam), "pattern": pattern,
                      "lambda": lam}

    key = {"depth_config": dataclasses.asdict(dcfg), "lm_train_seconds": lm["train_seconds"],
           "heads_tokens": _token_meta(cfg, lam, "heads", cfg.data.n_heads)}
    return cached(out / "depth.json", key, compute, needs=(out / "depth_head.pt",))


def load_depth(cfg: PipelineConfig, lam: float, base: str = DEPTH_TRUNK) -> tuple[TokenLM, DepthHead]:
    """The joint model `depth`: the LM of (codec `lam`, `base`) and its depth head (depth_run)."""
    out = cfg.layout.lm(lam, base)
    if not (out / "depth_head.pt").is_file():
        raise PipelineError(f"{out}/depth_head.pt is missing: run notebooks/03_train_lm.ipynb with "
                            f"patterns including {base} (its depth head is the `depth` model)")
    model = TokenLM.load(out / MODEL_FILE, map_location=cfg.device)
    saved = torch.load(out / "depth_head.pt", map_location=cfg.device)
    head = DepthHead(model, dataclasses.replace(cfg.depth, **saved["config"]))
    head.load_state_dict(saved["state"])
    return model, head.to(cfg.device).eval()


def generate_run(cfg: PipelineConfig, lam: float, pattern: str, codec: Codec | None = None) -> dict:
    """Sample cfg.generate.n clips of cfg.generate.seconds from the LM of (codec `lam`, `pattern`), decode them,
    write gen_dir/{codes.pt, sample*.wav, metrics.json}; returns the metrics (timing included).
    pattern "depth": the joint model in T steps, the parallel LM with its depth head."""
    codec = codec or load_codec(cfg, lam)
    if pattern == "depth":
        model, head = load_depth(cfg, lam)
        sample = lambda n, **kw: generate_depth(model, head, n, **kw)  # noqa: E731
    else:
        model = TokenLM.load(cfg.layout.lm(lam, pattern) / MODEL_FILE, map_location=cfg.device)
        sample = lambda n, **kw: generate(model, n, **kw)  # noqa: E731
    n_frames = max(1, round(cfg.generate.seconds * codec.frame_rate))
    sample(min(n_frames, 4), seed=cfg.seed)  # warm-up: allocator, kernels
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    codes = sample(n_frames, batch_size=cfg.generate.n, temperature=cfg.generate.temperature, top_k=cfg.generate.top_k,
                   seed=cfg.seed, progress=cfg.progress)
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    wav = codec.decode(codes.to(cfg.device)).cpu()[..., : round(cfg.generate.seconds * codec.cfg.sample_rate)]
    out = cfg.layout.gen(lam, pattern)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(codes.cpu(), out / "codes.pt")
    for i, w in enumerate(wav):
        save_audio(out / f"sample{i}.wav", w.clamp(-1, 1), codec.cfg.sample_rate)
    metrics = {"codec": cfg.layout.codec_name(lam), "lambda": lam, "pattern": pattern, "n_frames": n_frames,
               "n_steps": model.make_pattern(n_frames).n_steps, "batch_size": cfg.generate.n,
               "gen_seconds_wall": seconds, "audio_seconds": cfg.generate.seconds * cfg.generate.n,
               "real_time_factor": seconds / (cfg.generate.seconds * cfg.generate.n), "device": cfg.device}
    size = codec.cfg.quantizer.codebook_size
    dep = dependence_summary(codes.cpu(), size)
    # the same statistic on as many real held-out clips and frames (its bias depends on the sample size)
    real = tokens(cfg, lam, "valid", codec)[: cfg.generate.n, :, :n_frames]
    metrics |= {"nmi_lag0": dep["nmi_lag0"], "nmi_delay": dep["nmi_delay"],
                "real_nmi_delay": dependence_summary(real, size)["nmi_delay"], "real_clips": len(real)}
    write_json(out / "metrics.json", metrics)
    return metrics


def generated(cfg: PipelineConfig, lam: float, pattern: str) -> tuple[torch.Tensor, dict]:
    """(codes `b k t`, metrics) of an earlier generate_run."""
    out = cfg.layout.gen(lam, pattern)
    how = f"run notebooks/04_generate.ipynb with lambdas={lam:g}, patterns={pattern}"
    metrics = read_json(out / "metrics.json", how)
    return torch.load(out / "codes.pt"), metrics


# ----------------------------------------------------------------------------------------------
# Dependence between codebooks (02)


@torch.no_grad()
def residual_streams(codec: Codec, ds, n_items: int | None = None, batch_size: int = 16,
                     device: str = "cpu") -> torch.Tensor:
    """Residual streams `b k d t` (CPU) of the first n_items clips of a dataset."""
    return torch.cat([codec(wav.to(device)).streams.cpu() for wav in clip_batches(ds, batch_size, n_items)])


def dependence_run(cfg: PipelineConfig, lam: float, codec: Codec | None = None) -> dict:
    """Dependence between the codebooks of codec `lam` on the held-out clips: pairwise MI/NMI of
    the codes (lag 0 and delay-aligned), their summary, the MMD of the residual streams
    (delay-aligned and not) and permutation-test p-values. Written to dependence_path."""
    codec = codec or load_codec(cfg, lam)
    size = codec.cfg.quantizer.codebook_size
    codes = tokens(cfg, lam, "valid", codec)
    out = {"codec": cfg.layout.codec_name(lam), "lambda": lam, "n_clips": len(codes), "frames": codes.shape[-1]}
    for tag, align in (("lag0", "none"), ("delay", "delay")):
        r = pairwise_mi(codes, size, align)
        out[f"mi_{tag}"] = r["mi"].tolist()
        out[f"nmi_{tag}"] = r["nmi"].tolist()
        out["entropy"] = r["entropy"].tolist()
    out["summary"] = dependence_summary(codes, size)
    n_mmd = max(1, math.ceil(cfg.dependence.mmd_samples / codes.shape[-1]))  # whole clips, the first ones
    n_perm = max(1, math.ceil(cfg.dependence.perm_samples / codes.shape[-1]))
    streams = residual_streams(codec, dataset(cfg, "valid", cfg.data.n_valid), max(n_mmd, n_perm), device=cfg.device)
    out["mmd_samples"] = int(min(n_mmd, len(streams)) * streams.shape[-1])
    for tag, align in (("lag0", "none"), ("delay", "delay")):
        # the kernel the λ > 0 codecs train with, as an unbiased MMD² of the residual streams
        mcfg = dataclasses.replace(cfg.codec.mmd, align=align, estimator="unbiased", shuffle="pooled")
        out[f"mmd_{tag}"] = float(mmd_independence(streams[:n_mmd], mcfg, seed=cfg.seed))
        test = permutation_test(streams[:n_perm], mcfg, cfg.dependence.n_permutations, seed=cfg.seed)
        out[f"perm_{tag}"] = {"statistic": test["statistic"], "p_value": test["p_value"],
                              "null": test["null"].tolist(),
                              "n_samples": int(min(n_perm, len(streams)) * streams.shape[-1])}
    write_json(cfg.layout.dependence(lam), out)
    return out
