"""Codec training loop: reconstruction (+ adversarial) losses, and the macro-batch MMD loss.

One code path for a single process and for DDP under torchrun:

    python -m mmdlib.train_codec --preset tiny --run-dir runs/codec
    torchrun --nproc_per_node 4 -m mmdlib.train_codec --preset paper --device cuda --run-dir runs/paper

Batches are a pure function of (seed, step, rank), so a run interrupted at any step and resumed
from its last checkpoint (model, optimisers, RNG states, balancer) continues exactly as the
uninterrupted run would.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmdlib import distributed as D
from mmdlib.train.checkpoint import (CHECKPOINT, RUN_NEUTRAL, all_rng_states, batch_seed, check_resume, check_same_config,
                         load_checkpoint, locks_run_dir, restore_rng_states, save_checkpoint)
from mmdlib.codec.model import Codec
from mmdlib.data.datasets import make_dataset
from mmdlib.codec.discriminator import MultiScaleSTFTDiscriminator
from mmdlib.eval.codec import evaluate_codec
from mmdlib.mmd.saturation import kernel_report
from mmdlib.codec.losses import (LossBalancer, MultiResolutionSTFTLoss, MultiScaleMelLoss, feature_matching_loss, hinge_d_loss,
                     hinge_g_loss, l1_wave)
from mmdlib.mmd.loss import MMDConfig, gather_streams, mmd_independence
from mmdlib.train.config import TRAIN_PRESETS, CodecTrainConfig, train_preset
from mmdlib.train.overrides import apply_overrides
from mmdlib.codec.spectral import spectral_losses


# -- data ------------------------------------------------------------------------------------------
class _Memo(torch.utils.data.Dataset):
    """Keeps items of a deterministic dataset (synthetic clips) after their first use."""

    def __init__(self, ds):
        self.ds, self.items = ds, {}

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        if i not in self.items:
            self.items[i] = self.ds[i]
        return self.items[i]


_batch_seed = batch_seed  # (seed, step, rank) -> seed, shared with train_lm (checkpoint.py)


def get_batch(ds, cfg: CodecTrainConfig, step: int, rank: int) -> torch.Tensor:
    """Training batch `b c n` as a pure function of (seed, step, rank)."""
    g = torch.Generator().manual_seed(_batch_seed(cfg.seed, step, rank))
    idx = torch.randint(len(ds), (cfg.batch_size,), generator=g).tolist()
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(step)
    return torch.stack([ds[i] for i in idx])


def make_datasets(cfg: CodecTrainConfig, sample_rate: int):
    kw = dict(sample_rate=sample_rate, seconds=cfg.segment_seconds, seed=cfg.seed, cache_dir=cfg.cache_dir)
    train = make_dataset(cfg.data, "train", n_items=cfg.n_train_items, **kw)
    valid = make_dataset(cfg.data, "valid", n_items=cfg.n_valid_items, **kw)
    if cfg.data == "synthetic":
        train = _Memo(train)
    return train, valid


def fork_checkpoint(src: str | Path, cfg: CodecTrainConfig, run_dir: str | Path) -> None:
    """Start the run `cfg` in `run_dir` from checkpoint `src` of a run that differs from it only in
    its MMD weight and settings, saved at a step <= cfg.mmd_start. Until mmd_start those settings
    change nothing, so the forked run is exactly the run `cfg` would be from scratch: a λ sweep
    trains the shared prefix once (tests/train/test_codec.py checks the equality)."""
    ckpt = load_checkpoint(src, "codec")
    check_same_config(ckpt["config"]["train"], cfg.to_dict(), ("mmd_weight", "mmd") + RUN_NEUTRAL,
                      f"cannot fork {src}: its run differs not only in the MMD settings")
    if ckpt["step"] > cfg.mmd_start:
        raise ValueError(f"cannot fork {src}: it is at step {ckpt['step']}, after mmd_start={cfg.mmd_start}")
    ckpt["config"]["train"] = cfg.to_dict()
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(run_dir) / CHECKPOINT, ckpt)


KERNELS = "mmd_kernels.json"  # the MMD kernels' saturation check at the first MMD step


def check_kernels(streams: torch.Tensor, mmd_cfg: MMDConfig, step: int, path: Path) -> dict:
    """Write kernel_report(streams) to `path`; warn when every kernel scale is saturated."""
    report = kernel_report(streams, mmd_cfg) | {"step": step}
    path.write_text(json.dumps(report, indent=1))
    if report["all_saturated"]:
        values = ", ".join(f"{m:.1e}" for m in report["mean_kernel"])
        why = ("the samples are (nearly) all alike: the residual streams barely vary, e.g. right after the "
               "k-means initialisation on these very vectors (fewer vectors than codes leave zero residuals)"
               if min(report["mean_kernel"]) > 0.5 else
               "the samples are all far apart for these scales: set mmd.normalize_distance=true or larger mmd.scales")
        warnings.warn(f"MMD loss at step {step}: every kernel scale is saturated (mean kernel values {values} for "
                      f"scales {report['scales']}, median squared distance {report['median_sq_dist']:.3g}), so the "
                      f"loss is ~0 whatever the dependence; {why} ({path})", stacklevel=2)
    return report


def learning_rate(cfg: CodecTrainConfig, step: int) -> float:
    """Cosine decay from cfg.lr at step 0 to cfg.lr·cfg.lr_final at the last step."""
    progress = step / max(1, cfg.steps - 1)
    return cfg.lr * (cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))


# -- the loop --------------------------------------------------------------------------------------
@locks_run_dir  # run_dir/train.lock: one training at a time per run directory
def train_codec(cfg: CodecTrainConfig, run_dir: str | Path,
                stop_at: int | None = None, progress: bool = True) -> dict:
    """Train (or resume) a codec in `run_dir`; returns {"history": [...], "final": metrics}.

    `run_dir/checkpoint.pt` holds everything needed to resume; `run_dir/codec.pt` the final codec
    (`Codec.load`); `run_dir/metrics.json` the validation history; `run_dir/mmd_kernels.json` the
    saturation check of the MMD's kernels at its first step (kernel_report). `stop_at` ends the
    run early at that step (after checkpointing), as an interruption would.
    """
    run_dir = Path(run_dir)
    device = D.setup(cfg.device)
    rank = D.rank()
    codec_cfg = cfg.model
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)

    model = Codec(codec_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    disc = opt_d = None
    if cfg.discriminator is not None:
        disc = MultiScaleSTFTDiscriminator(cfg.discriminator).to(device)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=cfg.betas)
    mel_loss = MultiScaleMelLoss(codec_cfg.sample_rate).to(device)
    stft_loss = MultiResolutionSTFTLoss().to(device)
    weights = {"l1": cfg.w_l1, "mel": cfg.w_mel, "stft": cfg.w_stft}  # the losses on the waveform
    if disc is not None:
        weights |= {"adv": cfg.w_adv, "feat": cfg.w_feat}
    weights = {k: w for k, w in weights.items() if w}  # a weight of 0 costs nothing (not computed)
    balancer = LossBalancer(weights) if cfg.balancer else None
    train_set, valid_set = make_datasets(cfg, codec_cfg.sample_rate)

    start, history = 0, []
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists():  # resume: same configuration (device, cache_dir, ckpt_every may change; steps may grow)
        ckpt = load_checkpoint(ckpt_path, "codec")
        check_resume(ckpt, {"model": codec_cfg.to_dict(), "train": cfg.to_dict()}, cfg.steps, ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if disc is not None:
            disc.load_state_dict(ckpt["discriminator"])
            opt_d.load_state_dict(ckpt["optimizer_d"])
        if balancer is not None:
            balancer.load_state_dict(ckpt["balancer"])
        restore_rng_states(ckpt["rng"])
        start, history = ckpt["step"], ckpt["history"]
    elif D.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)

    D.allow_tf32(device, cfg.amp)
    gen = D.wrap_ddp(model, device)
    disc_ddp = D.wrap_ddp(disc, device) if disc is not None else None
    M = cfg.mmd_macro_batches
    # macro-batches: blocks of M steps counted from mmd_start (rebuilt exactly on resume)
    first = cfg.mmd_start + max(0, start - cfg.mmd_start) // M * M
    pending = [get_batch(train_set, cfg, s, rank).to(device) for s in range(first, start)] if cfg.mmd_weight else []
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not (progress and D.is_main()),
               desc="codec", dynamic_ncols=True)
    t0, losses = time.time() - (history[-1]["seconds"] if history else 0.0), {}  # seconds: earlier sessions too
    for step in bar:
        model.train()
        for o in (opt, opt_d):  # a pure function of the step: nothing to save for an exact resume
            for group in (o.param_groups if o is not None else []):
                group["lr"] = learning_rate(cfg, step)
        with D.autocast(device, cfg.amp):  # bf16 forward when amp (quantizer and MMD stay float32)
            wav = get_batch(train_set, cfg, step, rank).to(device)
            out = gen(wav)
            losses = {k: fn(out.wav, wav) for k, fn in (("l1", l1_wave), ("mel", mel_loss), ("stft", stft_loss))
                      if k in weights}

            if disc is not None:
                # discriminator step on real and (detached) fake, one forward
                logits, _ = disc_ddp(torch.cat([wav, out.wav.detach()]))
                real = [l[: len(wav)] for l in logits]
                fake = [l[len(wav):] for l in logits]
                loss_d = hinge_d_loss(real, fake)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                # generator's adversarial and feature-matching losses, discriminator frozen
                disc.requires_grad_(False)
                logits, feats = disc(torch.cat([wav, out.wav]))
                disc.requires_grad_(True)
                losses["adv"] = hinge_g_loss([l[len(wav):] for l in logits])
                losses["feat"] = feature_matching_loss([[f[: len(wav)].detach() for f in fs] for fs in feats],
                                                       [[f[len(wav):] for f in fs] for fs in feats])
                losses["d"] = loss_d.detach()

            extra = cfg.w_commit * out.commit_loss
            if cfg.w_spec or cfg.w_advance:
                if out.logmag is None:
                    raise ValueError(f"w_spec={cfg.w_spec}, w_advance={cfg.w_advance} need a spectral codec (arch "
                                     f"'spectral'), not {codec_cfg.arch!r}")
                spectral = spectral_losses(out.logmag, out.advance, model._check(wav), codec_cfg.spectral,
                                           model.decoder.window)
                losses |= spectral
                extra = extra + cfg.w_spec * spectral["spec"] + cfg.w_advance * spectral.get("advance", 0.0)
            if cfg.mmd_weight and step >= cfg.mmd_start:
                pending.append(wav)
                if len(pending) == M:  # re-encode the macro-batch, encoder only, with checkpointing
                    streams = torch.cat([model.encode_streams(w, checkpoint=True) for w in pending])
                    pooled = gather_streams(streams)
                    mmd = mmd_independence(pooled, cfg.mmd, seed=_batch_seed(cfg.seed, step, 0))
                    if D.is_main() and not (run_dir / KERNELS).exists():
                        check_kernels(pooled, cfg.mmd, step, run_dir / KERNELS)
                    # DDP averages the ranks' gradients, each of which reaches only its own slot of the
                    # pooled streams: × world size gives the gradient of λ·MMD on the pooled macro-batch,
                    # as one process on the concatenated batch gets (tests/train/test_ddp.py)
                    extra = extra + cfg.mmd_weight * D.world_size() * mmd
                    losses["mmd"] = mmd.detach()
                    pending = []

        opt.zero_grad(set_to_none=True)
        rec = {k: losses[k] for k in weights}
        if balancer is not None:
            grad, _ = balancer.combine(rec, out.wav)
            torch.autograd.backward([out.wav, extra], [grad, torch.ones_like(extra)])
        else:
            (sum((weights[k] * v for k, v in rec.items()), extra)).backward()
        opt.step()
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()}, refresh=False)

        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            metrics = evaluate_codec(model, valid_set, cfg.mmd, device=device, seed=cfg.seed,
                                     n_visqol=cfg.eval_visqol if done == cfg.steps else 0)
            metrics |= {"step": done, "seconds": time.time() - t0,
                        **{f"train_{k}": v.item() for k, v in losses.items()}}
            history.append(metrics)
            if D.is_main():
                vq = f", ViSQOL {metrics['visqol']:.2f}" if "visqol" in metrics else ""
                bar.write(f"step {done}: SI-SNR {metrics['sisnr_db']:.2f} dB, mel {metrics['mel_distance']:.3f}{vq}, "
                          f"usage {metrics['usage_perplexity_ratio_min']:.2f}, NMI(delay) {metrics['nmi_delay']:.3f}, "
                          f"MMD {metrics['mmd']:.4f}")
        if done % cfg.ckpt_every == 0 or done == end:
            rngs = all_rng_states()
            if D.is_main():
                save_checkpoint(ckpt_path, {
                    "kind": "codec", "model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                    "history": history, "rng": rngs, "config": {"model": codec_cfg.to_dict(), "train": cfg.to_dict()},
                    "discriminator": disc.state_dict() if disc is not None else None,
                    "optimizer_d": opt_d.state_dict() if opt_d is not None else None,
                    "balancer": balancer.state_dict() if balancer is not None else None})
    bar.close()
    if D.is_main() and end == cfg.steps:
        model.save(run_dir / "codec.pt")
        (run_dir / "metrics.json").write_text(json.dumps({"config": cfg.to_dict(), "history": history}, indent=1))
    return {"history": history, "final": history[-1] if history else {}, "last_losses":
            {k: v.item() for k, v in losses.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    p.add_argument("--run-dir", required=True)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override training parameters, e.g. steps=300 mmd_weight=100 data=path/to/folder "
                        "mmd.align=none (typed by CodecTrainConfig's fields)")
    args = p.parse_args(argv)
    try:  # typed by the fields; nested MMD settings keep the preset's other values (mmd.align=none)
        cfg = apply_overrides(train_preset(args.preset), args.set)
    except ValueError as e:
        p.error(str(e))
    result = train_codec(cfg, args.run_dir)
    if D.is_main():
        print(json.dumps(result["final"]))
    D.cleanup()
