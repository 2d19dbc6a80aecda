"""The depth head: what a factorised LM gives up within a step, measured, and a joint model in T steps.

A factorised pattern (parallel, delay) predicts the J codes of a step independently given the
past: p(step s) = Π_j p_j(x_j[s] | steps < s). For `delay` the tuple of a step is
(z_1[s], z_2[s-1], ..., z_K[s-K+1]), the tuple the MMD's delay alignment pairs; for `parallel`
it is the frame. A depth head models that tuple jointly. It reads the trunk's hidden state h[s]
of a trained LM (frozen: the trunk does not change) and the codes of the step's earlier slots:

    c_j      = W_h h[s] + e_slot[j] + Σ_{i<j} E_i[x_i[s]]          (without the prefix: no Σ term)
    logits_j = LM head_j(h[s]) + W_out MLP(c_j)                     [b, j, s, v]

W_out starts at zero, so an untrained head is the LM's own factorised model. The instrument
trains two heads alike (same data, budget, early stopping on a validation split), one with the
prefix and one without, and reports on held-out clips, in bits per frame,

    gap = NLL(head without prefix) - NLL(head with prefix)

the conditional dependence within a step that the factorised model gives up. The head without the
prefix gets the same extra capacity on h, so the difference is the prefix's information alone
(against the LM's own heads, `gap_vs_lm_bits`, a head also gains by refitting the marginals).

The same head is a joint model in T trunk steps: `generate_depth` samples the codes of a step one
slot after another (cf. RQ-Transformer, Lee et al. 2022; Moshi's depth transformer, 2024). Here the
trunk is trained factorised and frozen, the head trained on top: a two-stage joint model, not one
trained end to end.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from mmdlib.lm.model import KVCache, TokenLM, cell_nll, windows
from mmdlib.lm.sampling import check_sampling, sample_checked
from mmdlib.patterns import Pattern


@dataclass(frozen=True)
class DepthConfig:
    hidden: int = 128            # width of the head's MLP
    n_layers: int = 1            # hidden layers of the MLP (each one costs K matmuls per generated step)
    lr: float = 3e-3             # 1e-2 stopped after one epoch on real codes and found almost no gap
    batch_size: int = 64         # windows per optimiser step
    max_epochs: int = 10
    patience: int = 2            # epochs without a better validation NLL before stopping
    max_train_windows: int = 4096  # training windows drawn (seeded) from the train clips: bounds the cost
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden", "n_layers", "batch_size", "max_epochs", "patience", "max_train_windows"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"depth head parameter {name}={v!r} must be an integer >= 1")
        if not (self.lr > 0):
            raise ValueError(f"depth head parameter lr={self.lr!r} must be > 0")


DEPTH_PRESETS = {
    # a 2-core CPU: ~60-90 s per head on 4,096 windows of 50 frames (K = 4, v = 256, 1 thread); finite
    # data make it understate a strong dependence (bench gap: 89 % of a 9-bit copy dependence recovered)
    "tiny": DepthConfig(),
    # GPUs, the paper's LM (dim 1024, 4 x 2048 codes)
    # (the train windows' hidden states are kept in host memory: 1,024 windows of 1,500 frames x 1,024
    # dims are 6.3 GB in float32)
    "paper": DepthConfig(hidden=1024, n_layers=2, lr=5e-4, batch_size=64, max_epochs=40, patience=3,
                         max_train_windows=1024),
}


class DepthHead(nn.Module):
    """Corrections [b, j, s, v] to an LM's logits from its hidden states and each step's earlier slots."""

    def __init__(self, model: TokenLM, cfg: DepthConfig, prefix: bool = True):
        super().__init__()
        if model.cfg.n_classes:
            raise ValueError("DepthHead: class-conditional LMs are not supported")
        self.prefix, self.n_slots, self.v = prefix, model.n_slots, model.cfg.codebook_size
        self.inp = nn.Linear(model.cfg.dim, cfg.hidden)
        self.slot = nn.Parameter(torch.zeros(self.n_slots, cfg.hidden))
        self.tok = nn.Embedding(self.n_slots * (self.v + 1), cfg.hidden)  # per slot: the codes and pad
        nn.init.normal_(self.tok.weight, std=0.02)
        layers = []
        for _ in range(cfg.n_layers):
            layers += [nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden)]
        self.mlp = nn.Sequential(*layers, nn.GELU())
        self.out = nn.Linear(cfg.hidden, self.v)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("tok_offset", torch.arange(self.n_slots) * (self.v + 1), persistent=False)

    def code_embedding(self, x: torch.Tensor, slot: int | torch.Tensor) -> torch.Tensor:
        """Codes x (pad = v) of a slot -> their rows of the slot's table."""
        return self.tok(x + (self.tok_offset[slot] if isinstance(slot, int) else slot))

    def forward(self, h: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """h [b, s, d], the step's codes seq [b, j, s] (pad in empty cells) -> corrections [b, j, s, v];
        slot j sees only the codes of slots i < j of its step."""
        c = self.inp(h)[:, None] + self.slot[None, :, None]               # [b, j, s, e]
        if self.prefix:
            e = self.code_embedding(seq, self.tok_offset[None, :, None])  # [b, j, s, e]
            c = c + (e.cumsum(1) - e)                                     # sum over the slots before j
        return self.out(self.mlp(c))


# ----------------------------------------------------------------------------------------------
# Trunk features, NLL, training


@torch.no_grad()
def trunk_features(model: TokenLM, tokens: torch.Tensor, window: int | None = None,
                   batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, Pattern]:
    """Codes [n, k, t] -> (hidden states h [m, s, d], pattern sequences seq [m, j, s], pattern) of
    the clips cut into windows of `window` frames (None: whole), as the LM scores them."""
    tokens = windows(tokens, window)
    device = next(model.parameters()).device
    pat = model.make_pattern(tokens.shape[-1]).to(device)
    was_training = model.training
    model.eval()
    hs, seqs = [], []
    for i in range(0, len(tokens), batch_size):
        seq = pat.build(tokens[i : i + batch_size].to(device), model.cfg.pad)
        hs.append(model.hidden(model.shift_right(seq), pat).cpu())
        seqs.append(seq.cpu())
    model.train(was_training)
    return torch.cat(hs), torch.cat(seqs), pat.to("cpu")


def item_nll(model: TokenLM, head: DepthHead | None, h: torch.Tensor, seq: torch.Tensor,
             pat: Pattern) -> torch.Tensor:
    """NLL in nats of each item [b], summed over its valid cells (each code once; lm.cell_nll) of
    the LM's heads plus the depth head's corrections (head None: the LM's own factorised heads)."""
    with torch.no_grad():
        logits = model.logits(h, pat.columns)                              # [b, j, s, v], frozen
    if head is not None:
        logits = logits + head(h, seq)
    return cell_nll(logits, seq, pat).sum((1, 2))


def per_item_bits(model: TokenLM, head: DepthHead | None, feats: tuple, batch_size: int = 64) -> torch.Tensor:
    """Bits per frame of each item [m] (windows) of trunk_features."""
    h, seq, pat = feats
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(h), batch_size):
            out.append(item_nll(model, head, h[i : i + batch_size].to(device), seq[i : i + batch_size].to(device),
                                pat.to(device)).cpu())
    frames = pat.revert(seq[:1]).shape[-1]
    return torch.cat(out) / math.log(2) / frames


def fit_head(model: TokenLM, prefix: bool, train: tuple, valid: tuple, cfg: DepthConfig,
             progress: bool = False) -> tuple[DepthHead, list[dict]]:
    """Train a depth head on trunk_features `train`, early-stopped on `valid`; returns the best
    head (eval mode) and one history row per epoch {"epoch", "train_bits", "valid_bits"}."""
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    head = DepthHead(model, cfg, prefix).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=0.0)
    h, seq, pat = train
    pat_d = pat.to(device)
    frames = pat.revert(seq[:1]).shape[-1]
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_epoch, best_state, history = math.inf, 0, copy.deepcopy(head.state_dict()), []
    bar = tqdm(total=cfg.max_epochs, desc=f"depth head ({'prefix' if prefix else 'blind'})", disable=not progress,
               leave=False)
    for epoch in range(1, cfg.max_epochs + 1):
        head.train()
        order, total = torch.randperm(len(h), generator=gen), 0.0
        for i in range(0, len(h), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = item_nll(model, head, h[idx].to(device), seq[idx].to(device), pat_d).sum() / (len(idx) * frames)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        head.eval()
        v = float(per_item_bits(model, head, valid).mean())
        history.append({"epoch": epoch, "train_bits": total / len(h) / math.log(2), "valid_bits": v})
        bar.update(1)
        bar.set_postfix(valid_bits=f"{v:.3f}", refresh=False)
        if v < best:
            best, best_epoch, best_state = v, epoch, copy.deepcopy(head.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            break
    bar.close()
    head.load_state_dict(best_state)
    return head.eval(), history


def factorization_gap(model: TokenLM, train: torch.Tensor, valid: torch.Tensor, test: torch.Tensor,
                      cfg: DepthConfig = DepthConfig(), window: int | None = None,
                      progress: bool = False) -> tuple[dict, DepthHead]:
    """The instrument: depth heads with and without the prefix trained on `train` codes [n, k, t]
    (at most cfg.max_train_windows of its windows), early-stopped on `valid`, scored on `test` (all
    in windows of `window` frames). Returns (metrics,
    the head with the prefix): bits per frame of the LM ("lm_bits"), of the head without the prefix
    ("factorised_bits"), of the depth head ("depth_bits"), and the gap (mean; standard error over
    the test clips, paired, each clip the mean of its windows) with the epochs each head trained."""
    train = windows(train, window)
    if len(train) > cfg.max_train_windows:
        train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.max_train_windows]]
    feats = {name: trunk_features(model, x, window) for name, x in (("train", train), ("valid", valid), ("test", test))}
    flat, h_flat = fit_head(model, False, feats["train"], feats["valid"], cfg, progress)
    deep, h_deep = fit_head(model, True, feats["train"], feats["valid"], cfg, progress)
    lm_b, flat_b, deep_b = (per_item_bits(model, hd, feats["test"]) for hd in (None, flat, deep))
    d = flat_b - deep_b
    per_clip = d.view(len(test), -1).mean(1)  # windows of a clip are neighbours, not independent draws
    n = len(per_clip)
    metrics = {"lm_bits": float(lm_b.mean()), "factorised_bits": float(flat_b.mean()), "depth_bits": float(deep_b.mean()),
               "gap_bits": float(d.mean()), "gap_se": float(per_clip.std() / math.sqrt(n)) if n > 1 else float("nan"),
               "gap_vs_lm_bits": float((lm_b - deep_b).mean()), "n_test_windows": len(d), "n_test_clips": n,
               "window": window, "epochs": {"factorised": len(h_flat), "depth": len(h_deep)},
               "config": dataclasses.asdict(cfg)}
    return metrics, deep


# ----------------------------------------------------------------------------------------------
# The joint model in T trunk steps


@torch.inference_mode()
def generate_depth(model: TokenLM, head: DepthHead, n_frames: int, batch_size: int = 1, temperature: float = 1.0,
                   top_k: int | None = None, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Sample codes [b, k, t] from trunk + depth head: one trunk step (KV cache) per pattern step,
    then the step's slots one after another, each conditioned on the codes drawn before it."""
    if n_frames < 1 or batch_size < 1:
        raise ValueError(f"n_frames={n_frames} and batch_size={batch_size} must be >= 1")
    if not head.prefix:
        raise ValueError("generate_depth: this head has no prefix (it is the factorised refit); use the depth head")
    check_sampling(temperature, top_k, None)
    was_training, head_training = model.training, head.training
    model.eval()
    head.eval()
    device = next(model.parameters()).device
    pat = model.make_pattern(n_frames).to(device)
    if pat.n_steps > model.cfg.max_steps:
        raise ValueError(f"n_frames={n_frames} needs {pat.n_steps} steps > LMConfig.max_steps={model.cfg.max_steps}")
    gen = torch.Generator(device=device).manual_seed(seed)
    cache = KVCache(model.cfg, batch_size, pat.n_steps, device, model.heads.dtype)
    out = torch.full((batch_size, pat.n_slots, pat.n_steps), model.cfg.pad, dtype=torch.long, device=device)
    tokens = torch.full((batch_size, pat.n_slots, 1), model.cfg.bos, dtype=torch.long, device=device)
    valid = pat.valid.T.tolist()                                                    # [s][j]
    for s in tqdm(range(pat.n_steps), desc="sample (depth)", disable=not progress, mininterval=2, leave=False):
        h = model.hidden(tokens, pat, s, cache)[:, 0]                              # [b, d]
        base = torch.einsum("bd,jvd->bjv", h, model.head(pat.columns[s]))          # [b, j, v]
        c = head.inp(h)
        for j in range(pat.n_slots):
            if valid[s][j]:
                logits = base[:, j] + head.out(head.mlp(c + head.slot[j]))
                out[:, j, s] = sample_checked(logits, temperature, top_k, None, gen)
            if j + 1 < pat.n_slots:
                c = c + head.code_embedding(out[:, j, s], j)
        tokens = out[:, :, s : s + 1]
    model.train(was_training)
    head.train(head_training)
    return pat.revert(out)


# ----------------------------------------------------------------------------------------------
# Ground truth for the instrument


def copy_tokens(n: int, n_q: int, n_frames: int, codebook_size: int, p: float, align: str = "none",
                seed: int = 0) -> torch.Tensor:
    """Codes [n, k, t] with a known dependence inside the tuple a pattern predicts at once:
    codebook 0 uniform and i.i.d.; codebook k copies codebook k-1 with probability p, else draws a
    uniform code. align "none": within a frame (z_k[t] copies z_{k-1}[t], the parallel tuple);
    "delay": along the delay tuple (z_k[t] copies z_{k-1}[t+1]; frames past the end draw uniformly).
    p = 0 gives independent codes."""
    if align not in ("none", "delay"):
        raise ValueError(f"align={align!r}: expected 'none' or 'delay'")
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, codebook_size, (n, n_q, n_frames), generator=g)
    for k in range(1, n_q):
        src = z[:, k - 1] if align == "none" else torch.cat([z[:, k - 1, 1:], z[:, k, -1:]], dim=-1)
        copy = torch.rand(n, n_frames, generator=g) < p
        z[:, k] = torch.where(copy, src, z[:, k])
    return z


def copy_gap_bits(codebook_size: int, p: float, n_q: int) -> float:
    """The exact within-step dependence of copy_tokens in bits per step: (K-1) I(z_k; z_{k-1}),
    with I = log2 v - H(z_k | z_{k-1}) (the chain is Markov and every marginal uniform)."""
    v = codebook_size
    hit, miss = p + (1 - p) / v, (1 - p) / v
    h = -hit * math.log2(hit) - ((v - 1) * miss * math.log2(miss) if miss > 0 else 0.0)
    return (n_q - 1) * (math.log2(v) - h)
