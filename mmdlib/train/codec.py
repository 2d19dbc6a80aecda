"""Codec training loop: reconstruction (+ adversarial) losses, and the macro-batch MMD loss.

One code path for a single process and for DDP under torchrun:

    python -m mmdlib.train_codec --preset tiny --run-dir runs/codec
    torchrun --nproc_per_node 4 -m mmdlib.train_codec --preset paper --device cuda --run-dir runs/paper

Read top to bottom: the data, the MMD on macro-batches (MacroBatchMMD), the training state
(CodecTraining), one step (train_step: discriminator_step, reconstruction_losses, the MMD), and the
loop (train_codec: evaluation, checkpoints). Batches are a pure function of (seed, step, rank), so a
run interrupted at any step and resumed from its last checkpoint (model, optimisers, RNG states,
balancer) continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mmdlib import distributed as D
from mmdlib.codec.discriminator import MultiScaleSTFTDiscriminator
from mmdlib.codec.losses import (
    LossBalancer,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    l1_wave,
)
from mmdlib.codec.model import Codec
from mmdlib.codec.spectral import spectral_losses
from mmdlib.data.datasets import make_dataset
from mmdlib.eval.codec import evaluate_codec
from mmdlib.mmd.loss import MMDConfig, mmd_independence
from mmdlib.mmd.saturation import kernel_report
from mmdlib.train.checkpoint import (
    CHECKPOINT,
    RUN_NEUTRAL,
    batch_seed,
    check_same_config,
    load_checkpoint,
    locks_run_dir,
    save_checkpoint,
    write_json,
)
from mmdlib.train.config import TRAIN_PRESETS, CodecTrainConfig, train_preset
from mmdlib.train.loop import log_metrics, log_tensorboard, restore, save, tensorboard_writer
from mmdlib.train.overrides import apply_overrides


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


def get_batch(ds, cfg: CodecTrainConfig, step: int, rank: int) -> torch.Tensor:
    """Training batch `b c n` as a pure function of (seed, step, rank)."""
    g = torch.Generator().manual_seed(batch_seed(cfg.seed, step, rank))
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
    write_json(path, report)
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


# -- the MMD on macro-batches ----------------------------------------------------------------------
class MacroBatchMMD:
    """The MMD loss on macro-batches: blocks of M = cfg.mmd_macro_batches steps counted from
    mmd_start. Each step's batch waits in `pending`; the M-th re-encodes them all (encoder only, with
    activation checkpointing) and gives the MMD of their streams pooled over the DDP ranks. At its
    first MMD step a run writes the kernels' saturation check (check_kernels) to `kernels_path`."""

    def __init__(self, cfg: CodecTrainConfig, model: Codec, kernels_path: Path):
        self.cfg, self.model, self.kernels_path = cfg, model, kernels_path
        self.pending: list[torch.Tensor] = []  # batches `b c n` on the model's device

    def rebuild(self, train_set, start: int, device: torch.device) -> None:
        """Resuming at step `start`: the batches of the macro-batch in progress, again (get_batch)."""
        cfg, m = self.cfg, self.cfg.mmd_macro_batches
        first = cfg.mmd_start + max(0, start - cfg.mmd_start) // m * m
        self.pending = ([get_batch(train_set, cfg, s, D.rank()).to(device) for s in range(first, start)]
                        if cfg.mmd_weight else [])

    def add(self, wav: torch.Tensor, step: int) -> torch.Tensor | None:
        """The batch of `step`; returns the MMD (a scalar with gradient to the encoder) when it
        completes a macro-batch, else None."""
        cfg = self.cfg
        if not (cfg.mmd_weight and step >= cfg.mmd_start):
            return None
        self.pending.append(wav)
        if len(self.pending) < cfg.mmd_macro_batches:
            return None
        streams = torch.cat([self.model.encode_streams(w, checkpoint=True, streams=cfg.mmd.streams)  # (m b) k d t
                             for w in self.pending])
        pooled = D.gather_with_grad(streams)                                                       # (w m b) k d t
        mmd = mmd_independence(pooled, cfg.mmd, seed=batch_seed(cfg.seed, step, 0))
        if D.is_main() and not self.kernels_path.exists():
            check_kernels(pooled, cfg.mmd, step, self.kernels_path)
        self.pending = []
        return mmd


# -- the training state and one step -------------------------------------------------------------
@dataclass
class CodecTraining:
    """What a step reads and changes. `gen` and `disc_ddp` are the DDP wrappers of `model` and
    `disc` (themselves in one process); `losses`: the waveform losses in use, fn(fake, real), by
    weight name; `state()`: the parts a checkpoint holds, by checkpoint key."""
    cfg: CodecTrainConfig
    device: torch.device
    train_set: torch.utils.data.Dataset
    valid_set: torch.utils.data.Dataset
    model: Codec
    opt: torch.optim.Optimizer
    disc: MultiScaleSTFTDiscriminator | None
    opt_d: torch.optim.Optimizer | None
    losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    weights: dict[str, float]
    balancer: LossBalancer | None
    mmd: MacroBatchMMD
    gen: nn.Module | None = None
    disc_ddp: nn.Module | None = None

    @classmethod
    def create(cls, cfg: CodecTrainConfig, device: torch.device, run_dir: Path) -> CodecTraining:
        """Models, optimisers, losses, then the data, in this order (it fixes what the seeded RNG draws)."""
        if (cfg.w_spec or cfg.w_advance) and cfg.model.arch != "spectral":
            raise ValueError(f"w_spec={cfg.w_spec}, w_advance={cfg.w_advance} need a spectral codec (arch "
                             f"'spectral'), not {cfg.model.arch!r}")
        model = Codec(cfg.model).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
        disc = opt_d = None
        if cfg.discriminator is not None:
            disc = MultiScaleSTFTDiscriminator(cfg.discriminator).to(device)
            opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=cfg.betas)
        losses = {"l1": l1_wave, "mel": MultiScaleMelLoss(cfg.model.sample_rate).to(device),
                  "stft": MultiResolutionSTFTLoss().to(device)}
        weights = {"l1": cfg.w_l1, "mel": cfg.w_mel, "stft": cfg.w_stft}  # the losses on the waveform
        if disc is not None:
            weights |= {"adv": cfg.w_adv, "feat": cfg.w_feat}
        weights = {k: w for k, w in weights.items() if w}  # a weight of 0 costs nothing (not computed)
        balancer = LossBalancer(weights) if cfg.balancer else None
        train_set, valid_set = make_datasets(cfg, cfg.model.sample_rate)
        return cls(cfg, device, train_set, valid_set, model, opt, disc, opt_d,
                   {k: f for k, f in losses.items() if k in weights}, weights, balancer,
                   MacroBatchMMD(cfg, model, run_dir / KERNELS))

    def state(self) -> dict:
        return {"model": self.model, "optimizer": self.opt, "discriminator": self.disc, "optimizer_d": self.opt_d,
                "balancer": self.balancer}


def reconstruction_losses(t: CodecTraining, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """The waveform losses in use (l1, mel, stft) of the reconstruction `fake` of `real`, `b c n`."""
    return {k: fn(fake, real) for k, fn in t.losses.items()}


def discriminator_step(t: CodecTraining, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """One step of the discriminator on real and (detached) fake, one forward; then, discriminator
    frozen, the generator's adversarial ("adv") and feature-matching ("feat") losses; "d": its own."""
    b = len(real)
    logits, _ = t.disc_ddp(torch.cat([real, fake.detach()]))
    loss_d = hinge_d_loss([x[:b] for x in logits], [x[b:] for x in logits])
    t.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    t.opt_d.step()
    t.disc.requires_grad_(False)
    logits, feats = t.disc(torch.cat([real, fake]))
    t.disc.requires_grad_(True)
    adv = hinge_g_loss([x[b:] for x in logits])
    feat = feature_matching_loss([[f[:b].detach() for f in fs] for fs in feats], [[f[b:] for f in fs] for fs in feats])
    return {"adv": adv, "feat": feat, "d": loss_d.detach()}


def train_step(t: CodecTraining, step: int) -> dict[str, torch.Tensor]:
    """One optimiser step of the codec at `step` (after the discriminator's); returns its losses."""
    cfg = t.cfg
    t.model.train()
    for opt in (t.opt, t.opt_d):  # a pure function of the step: nothing to save for an exact resume
        for group in (opt.param_groups if opt is not None else []):
            group["lr"] = learning_rate(cfg, step)
    with D.autocast(t.device, cfg.amp):  # bf16 forward when amp (quantizer and MMD stay float32)
        wav = get_batch(t.train_set, cfg, step, D.rank()).to(t.device)
        out = t.gen(wav)
        losses = reconstruction_losses(t, out.wav, wav)
        if t.disc is not None:
            losses |= discriminator_step(t, wav, out.wav)
        extra = cfg.w_commit * out.commit_loss  # the losses outside the balancer
        if cfg.w_spec or cfg.w_advance:  # the spectral codec's own STFT: "spec" (and "advance")
            spectral = spectral_losses(out.logmag, out.advance, t.model._check(wav), cfg.model.spectral,
                                       t.model.decoder.window)
            losses |= spectral
            extra = extra + cfg.w_spec * spectral["spec"] + cfg.w_advance * spectral.get("advance", 0.0)
        mmd = t.mmd.add(wav, step)
        if mmd is not None:
            # DDP averages the ranks' gradients, each of which reaches only its own slot of the
            # pooled streams: × world size gives the gradient of λ·MMD on the pooled macro-batch,
            # as one process on the concatenated batch gets (tests/train/test_ddp.py)
            extra = extra + cfg.mmd_weight * D.world_size() * mmd
            losses["mmd"] = mmd.detach()
    t.opt.zero_grad(set_to_none=True)
    rec = {k: losses[k] for k in t.weights}
    if t.balancer is not None:
        grad, _ = t.balancer.combine(rec, out.wav)
        torch.autograd.backward([out.wav, extra], [grad, torch.ones_like(extra)])
    else:
        sum((t.weights[k] * v for k, v in rec.items()), extra).backward()
    t.opt.step()
    return losses


# -- the loop --------------------------------------------------------------------------------------
def evaluate(t: CodecTraining, done: int, losses: dict, t0: float) -> dict:
    """The validation metrics after `done` steps (ViSQOL at the last), with the time since `t0` and
    the last step's losses (train_*)."""
    metrics = evaluate_codec(t.model, t.valid_set, t.cfg.mmd, device=t.device, seed=t.cfg.seed,
                             n_visqol=t.cfg.eval_visqol if done == t.cfg.steps else 0)
    return metrics | {"step": done, "seconds": time.time() - t0, **{f"train_{k}": v.item() for k, v in losses.items()}}


@torch.no_grad()
def listen(writer, t: CodecTraining, step: int) -> None:
    """The first validation clip, original (once) and reconstructed, as audio and log spectrogram."""
    wav = t.valid_set[0][None].to(t.device)                       # 1 1 n
    sr = t.cfg.model.sample_rate
    was = t.model.training
    rec = t.model.eval()(wav).wav[0, 0].float().cpu().clamp(-1, 1)
    t.model.train(was)
    for name, x in (("original", wav[0, 0].cpu()), ("reconstruction", rec)) if step == t.cfg.eval_every else (
            ("reconstruction", rec),):
        writer.add_audio(f"audio/{name}", x[None], step, sample_rate=sr)
        mag = torch.stft(x, 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()
        img = (20 * mag.clamp_min(1e-5).log10()).clamp_min(-80).flip(0)  # low frequencies at the bottom
        writer.add_image(f"spectrogram/{name}", ((img + 80) / 80)[None], step)
    writer.flush()


def summary(m: dict) -> str:
    vq = f", ViSQOL {m['visqol']:.2f}" if "visqol" in m else ""
    return (f"step {m['step']}: SI-SNR {m['sisnr_db']:.2f} dB, mel {m['mel_distance']:.3f}{vq}, usage "
            f"{m['usage_perplexity_ratio_min']:.2f}, NMI(delay) {m['nmi_delay']:.3f}, MMD {m['mmd']:.4f}")


@locks_run_dir  # run_dir/train.lock: one training at a time per run directory
def train_codec(cfg: CodecTrainConfig, run_dir: str | Path,
                stop_at: int | None = None, progress: bool = True, tensorboard: bool = False) -> dict:
    """Train (or resume) a codec in `run_dir`; returns {"history": [...], "final": metrics,
    "last_losses": the last step's losses ({} when no step ran)}.

    `run_dir/checkpoint.pt` holds everything needed to resume; `run_dir/codec.pt` the final codec
    (`Codec.load`); `run_dir/metrics.json` the validation history; `run_dir/mmd_kernels.json` the
    saturation check of the MMD's kernels at its first step (kernel_report); `run_dir/metrics.jsonl` one
    line per evaluation as it happens. `stop_at` ends the run early at that step (after checkpointing),
    as an interruption would. `tensorboard`: the same scalars, the first validation clip's
    reconstruction (audio) and its log spectrogram, in run_dir/tensorboard (the `tensorboard` extra).
    """
    run_dir = Path(run_dir)
    device = D.setup(cfg.device)
    torch.manual_seed(cfg.seed + D.rank())
    np.random.seed(cfg.seed + D.rank())
    random.seed(cfg.seed + D.rank())
    t = CodecTraining.create(cfg, device, run_dir)
    ckpt_path, config = run_dir / CHECKPOINT, {"model": cfg.model.to_dict(), "train": cfg.to_dict()}
    # resume: same configuration (device, cache_dir, ckpt_every may change; steps may grow)
    start, history, _ = restore(ckpt_path, "codec", config, cfg.steps, **t.state())
    if D.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    D.allow_tf32(device, cfg.amp)
    t.gen = D.wrap_ddp(t.model, device)
    t.disc_ddp = D.wrap_ddp(t.disc, device) if t.disc is not None else None
    t.mmd.rebuild(t.train_set, start, device)

    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    writer = tensorboard_writer(run_dir) if tensorboard else None
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not (progress and D.is_main()),
               desc="codec", dynamic_ncols=True, mininterval=2)
    t0, losses = time.time() - (history[-1]["seconds"] if history else 0.0), {}  # seconds: earlier sessions too
    for step in bar:
        losses = train_step(t, step)
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()}, refresh=False)
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            history.append(evaluate(t, done, losses, t0))
            log_metrics(run_dir, history[-1])
            log_tensorboard(writer, history[-1], done, "codec")
            if writer is not None:
                listen(writer, t, done)
            if D.is_main():
                bar.write(summary(history[-1]))
        if done % cfg.ckpt_every == 0 or done == end:
            save(ckpt_path, "codec", done, history, config, **t.state())
    bar.close()
    if writer is not None:
        writer.close()
    if D.is_main() and end == cfg.steps:
        t.model.save(run_dir / "codec.pt")
        write_json(run_dir / "metrics.json", {"config": cfg.to_dict(), "history": history})
    return {"history": history, "final": history[-1] if history else {},
            "last_losses": {k: v.item() for k, v in losses.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    p.add_argument("--run-dir", required=True)
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the preset's); the same as --set device=...")
    p.add_argument("--seed", help="the run's seed (default 0); the same as --set seed=...")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override training parameters, e.g. steps=300 mmd_weight=100 data=path/to/folder "
                        "mmd.align=none model.quantizer.n_q=8 discriminator=paper (typed by CodecTrainConfig's fields)")
    p.add_argument("--tensorboard", action="store_true",
                   help="log the evaluations, a reconstruction and its spectrogram to RUN_DIR/tensorboard "
                        "(pip install -e '.[tensorboard]'; then tensorboard --logdir RUN_DIR)")
    args = p.parse_args(argv)
    shortcuts = [f"{k}={v}" for k, v in (("device", args.device), ("seed", args.seed)) if v is not None]
    try:  # typed by the fields; nested settings keep the preset's other values (mmd.align=none)
        cfg = apply_overrides(train_preset(args.preset), shortcuts + args.set)
    except ValueError as e:
        p.error(str(e))
    try:
        result = train_codec(cfg, args.run_dir, tensorboard=args.tensorboard)
    except ImportError as e:
        p.error(str(e))
    if D.is_main():
        print(json.dumps(result["final"]))
    D.cleanup()
