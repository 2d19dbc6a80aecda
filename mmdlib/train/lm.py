"""Train the token LM on codec tokens `[n_items, k, t]`: random crops, AdamW, warm-up + cosine.

Single process, or DDP under torchrun (same code path, see `distributed.py`). run_dir/checkpoint.pt
(the layout of `checkpoint.py`, shared with train_codec) holds everything needed to resume exactly:
model, optimiser, scheduler, step, history, best state and every rank's RNG states; a resume into
another configuration is refused, naming the settings that differ. run_dir/lm.pt (MODEL_FILE) holds
the model alone, its best state so far: `TokenLM.load(run_dir / "lm.pt")`. The batch of step i is
a pure function of (seed, i, rank): the items come from a DistributedSampler epoch permutation, the
crop offsets from a generator seeded with checkpoint.batch_seed(seed, i, rank), so resuming needs no
data-loader state.

    torchrun --nproc_per_node 2 -m mmdlib.train_lm --train train.pt --valid valid.pt --run-dir runs/lm
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from mmdlib import distributed as D
from mmdlib.codec.model import codec_file
from mmdlib.lm.model import LM_PRESETS, LMConfig, TokenLM, lm_config, nll_sum, sequence_nll
from mmdlib.train.checkpoint import CHECKPOINT, atomic_save, batch_seed, file_record, locks_run_dir
from mmdlib.train.config import LM_TRAIN_PRESETS, LMTrainConfig
from mmdlib.train.loop import log_metrics, log_tensorboard, restore, save, tensorboard_writer
from mmdlib.train.overrides import apply_overrides

MODEL_FILE = "lm.pt"  # in the run directory: {"config": LMConfig dict, "model": best state_dict} (TokenLM.load)


def lr_factor(step: int, cfg: LMTrainConfig) -> float:
    """Multiplier of cfg.lr at optimiser step `step` (0-based): linear warm-up, cosine decay."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: TokenLM, cfg: LMTrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms, not embeddings)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def get_batch(tokens: torch.Tensor, labels: torch.Tensor | None, step: int, cfg: LMTrainConfig,
              rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The crops [batch_size, k, seq_frames] (and their labels) of this rank at `step`."""
    n, _, t = tokens.shape
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    per_epoch = len(sampler)
    pos = range(step * cfg.batch_size, (step + 1) * cfg.batch_size)  # in an endless stream of epochs
    epochs = {}
    for p in pos:
        if p // per_epoch not in epochs:
            sampler.set_epoch(p // per_epoch)
            epochs[p // per_epoch] = list(sampler)
    items = torch.tensor([epochs[p // per_epoch][p % per_epoch] for p in pos])
    gen = torch.Generator().manual_seed(batch_seed(cfg.seed, step, rank))
    offsets = torch.randint(0, t - cfg.seq_frames + 1, (cfg.batch_size,), generator=gen)
    idx = offsets[:, None] + torch.arange(cfg.seq_frames)                 # [b, seq_frames]
    crops = tokens[items[:, None], :, idx]                                # [b, seq_frames, k]
    return crops.transpose(1, 2).contiguous(), None if labels is None else labels[items]


def _check_tokens(name: str, x: torch.Tensor, lm_cfg: LMConfig, min_frames: int):
    if x.ndim != 3 or x.shape[1] != lm_cfg.n_q or x.dtype != torch.long:
        raise ValueError(f"{name}: expected a long tensor [n, {lm_cfg.n_q}, t], got {x.dtype} {list(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name}: no items (the tensor is [0, {lm_cfg.n_q}, t]); tokenize some clips first")
    if x.shape[2] < min_frames:
        raise ValueError(f"{name}: {x.shape[2]} frames < seq_frames={min_frames}")
    if len(x) and (x.min() < 0 or x.max() >= lm_cfg.codebook_size):
        raise ValueError(f"{name}: codes must be in 0..{lm_cfg.codebook_size - 1}")


def save_model(path: Path, lm_cfg: LMConfig, model: TokenLM, best: dict | None, codec: dict | None = None) -> None:
    """The model file (MODEL_FILE): its best state so far (the last without an evaluation yet) and
    the codec its tokens came from (checkpoint.file_record: path and sha256, or None), atomically, rank 0."""
    if D.is_main():
        atomic_save({"config": lm_cfg.to_dict(), "model": best["model"] if best else model.state_dict(),
                     "codec": codec}, path)


@locks_run_dir
def train_lm(tokens_train: torch.Tensor, tokens_valid: torch.Tensor, lm_cfg: LMConfig,
             train_cfg: LMTrainConfig, run_dir: str | Path, *, labels_train: torch.Tensor | None = None,
             labels_valid: torch.Tensor | None = None, stop_after: int | None = None, codec: dict | None = None,
             progress: bool | None = None, tensorboard: bool = False) -> tuple[TokenLM, list[dict]]:
    """Train (or resume from run_dir/checkpoint.pt) and return (model, history).

    tokens_*: long [n, k, t]. labels_*: long [n] class labels for a conditional LM.
    stop_after: stop once this many steps are done (to simulate an interruption).
    codec: the codec of the tokens (checkpoint.file_record), kept in run_dir/lm.pt for `mmdlib generate`.
    progress: the tqdm bar, overriding train_cfg.progress (a display setting, not part of the run).
    tensorboard: the evaluations' scalars in run_dir/tensorboard too (the `tensorboard` extra).
    history: one row per step, {"step", "loss" (mean nats per code), "lr"}, plus
    "valid_bits_per_frame" at the evaluation steps (every eval_every, and the last step): the
    held-out clips scored in windows of seq_frames, the length the model trains on.
    Early stopping: the state with the lowest held-out loss is kept (checkpoint key "best"; the
    returned model and run_dir/lm.pt, written at every checkpoint and at the end, hold it); with
    patience > 0, training stops after that many evaluations without improvement.
    The run holds run_dir/train.lock; resuming checks the configuration (checkpoint.check_resume:
    only device, progress, eval_batch_size, ckpt_every and a `steps` not below the checkpoint's
    step may change)."""
    _check_tokens("tokens_train", tokens_train, lm_cfg, train_cfg.seq_frames)
    _check_tokens("tokens_valid", tokens_valid, lm_cfg, 1)
    if (labels_train is not None or labels_valid is not None) and not lm_cfg.n_classes:
        raise ValueError("labels given but lm_cfg.n_classes == 0")
    device = D.setup(train_cfg.device)
    rank, world = D.rank(), D.world_size()
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    config = {"model": lm_cfg.to_dict(), "train": train_cfg.to_dict()}
    if D.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(train_cfg.seed + rank)
    model = TokenLM(lm_cfg).to(device)
    opt = make_optimizer(model, train_cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, train_cfg))
    state = {"model": model, "optimizer": opt, "scheduler": sched}
    start, history, extras = restore(ckpt, "lm", config, train_cfg.steps, **state)
    step = start
    best = extras.get("best")  # {"step", "bits", "model", "stopped"}: the lowest held-out loss so far
    D.allow_tf32(device, train_cfg.amp)
    net = D.wrap_ddp(model, device)
    valid_items = torch.arange(rank, len(tokens_valid), world)  # each rank evaluates a shard

    def evaluate() -> float:
        lab = None if labels_valid is None else labels_valid[valid_items]
        nats, frames = nll_sum(model, tokens_valid[valid_items], train_cfg.eval_batch_size, lab, train_cfg.seq_frames)
        tot = torch.tensor([nats, frames], dtype=torch.float64, device=device)
        D.all_reduce(tot)
        return float(tot[0] / math.log(2) / tot[1])

    end = train_cfg.steps if stop_after is None else min(train_cfg.steps, stop_after)
    show = train_cfg.progress if progress is None else progress
    writer = tensorboard_writer(run_dir) if tensorboard else None
    bar = tqdm(total=end, initial=step, disable=not (show and D.is_main()), desc="lm", mininterval=2)
    model.train()
    while step < end and not (best and best["stopped"]):
        codes, labels = get_batch(tokens_train, labels_train, step, train_cfg, rank, world)
        with D.autocast(device, train_cfg.amp):  # bf16 forward when amp
            nll, n_codes = sequence_nll(net, codes.to(device), None if labels is None else labels.to(device))
        loss = nll / n_codes
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        step += 1
        loss_value = float(D.all_reduce_mean(loss.detach()))
        row = {"step": step, "loss": loss_value, "lr": lr}
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
            row["valid_bits_per_frame"] = bpf = evaluate()
            log_metrics(run_dir, row)
            log_tensorboard(writer, row, step, "lm")
            if best is None or bpf < best["bits"]:
                best = {"step": step, "bits": bpf, "stopped": False,
                        "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            evals_since = sum(1 for r in history if "valid_bits_per_frame" in r and r["step"] > best["step"])
            best["stopped"] = bool(train_cfg.patience) and evals_since >= train_cfg.patience
            if show and D.is_main():
                bar.write(f"step {step}: valid {bpf:.3f} bits/frame" + (" (stopping early)" if best["stopped"] else ""))
        if step % train_cfg.ckpt_every == 0 or step == end or (best and best["stopped"]):
            save(ckpt, "lm", step, history, config, extras={"best": best}, **state)
            save_model(run_dir / MODEL_FILE, lm_cfg, model, best, codec)
    bar.close()
    if writer is not None:
        writer.close()
    if step == start:  # nothing trained (a finished run): its model file, from the checkpoint
        save_model(run_dir / MODEL_FILE, lm_cfg, model, best, codec)
    if best is not None:
        model.load_state_dict(best["model"])
    return model, history


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="torch.save'd long tensor [n, k, t]")
    p.add_argument("--valid", required=True, help="torch.save'd long tensor [n, k, t]")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--lm", default="tiny", choices=sorted(LM_PRESETS), help="LM preset")
    p.add_argument("--train-preset", default="tiny", choices=sorted(LM_TRAIN_PRESETS))
    p.add_argument("--pattern", default=None)
    p.add_argument("--codebook-size", type=int, default=None)
    p.add_argument("--steps", help="the same as --set steps=...")
    p.add_argument("--device", help="the same as --set device=...")
    p.add_argument("--seed", help="the same as --set seed=...")
    p.add_argument("--amp", action="store_true", help="bf16 autocast of the forward pass (+ TF32 on CUDA)")
    p.add_argument("--tensorboard", action="store_true", help="the evaluations in RUN_DIR/tensorboard too "
                                                                "(pip install -e '.[tensorboard]')")
    p.add_argument("--codec", help="the codec (run dir or codec.pt) the tokens came from: recorded in lm.pt, "
                                   "`mmdlib generate` then decodes with it and refuses another")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override LMTrainConfig fields (lr=3e-4 patience=2) or, prefixed with model., LMConfig "
                        "fields (model.dim=256 model.n_layers=6)")
    a = p.parse_args(argv)
    tr, va = torch.load(a.train), torch.load(a.valid)
    if a.codebook_size is not None and a.codebook_size < 1:
        p.error(f"--codebook-size must be >= 1, got {a.codebook_size}")
    over = {"n_q": tr.shape[1]} | ({"pattern": a.pattern} if a.pattern else {})
    over |= {"codebook_size": a.codebook_size} if a.codebook_size is not None else {}
    shortcuts = [f"{k}={v}" for k, v in (("steps", a.steps), ("device", a.device), ("seed", a.seed)) if v is not None]
    shortcuts += ["amp=true"] if a.amp else []
    items = shortcuts + a.set
    try:  # one parser: model.* to the LM's architecture, the rest to its training
        lm_cfg = apply_overrides(lm_config(a.lm, **over), [i.removeprefix("model.") for i in items if i.startswith("model.")])
        train_cfg = apply_overrides(LM_TRAIN_PRESETS[a.train_preset], [i for i in items if not i.startswith("model.")])
    except ValueError as e:
        p.error(str(e))
    codec = None
    if a.codec:
        try:
            codec = file_record(codec_file(a.codec))
        except FileNotFoundError as e:
            p.error(f"--codec {e}")
    try:
        _, history = train_lm(tr, va, lm_cfg, train_cfg, a.run_dir, codec=codec, tensorboard=a.tensorboard)
    except ImportError as e:
        p.error(str(e))
    D.cleanup()
    return history
