"""Sampling from a token LM: logit filters (temperature, top-k, top-p) and KV-cached generation.

`generate` runs the model's own step function (`TokenLM.step`) one pattern step at a time with a
pre-allocated key/value cache; `mmdlib.lm.depth.generate_depth` does the same with a depth head.
"""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

from mmdlib.lm.model import KVCache, TokenLM


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling settings that would silently sample garbage (a negative temperature samples
    the least likely tokens) or fail obscurely deep in the loop."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0: greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an integer >= 1 or None")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] or None")


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [..., v] -> sampled ids [...]. temperature 0 is greedy (argmax)."""
    check_sampling(temperature, top_k, top_p)
    return sample_checked(logits, temperature, top_k, top_p, generator)


def sample_checked(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                   generator: torch.Generator | None) -> torch.Tensor:
    """sample_logits with settings already checked (check_sampling): for loops that sample often."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        srt, idx = logits.sort(-1, descending=True)
        p = srt.softmax(-1)
        drop = p.cumsum(-1) - p > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, idx, srt.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:-1])


@torch.inference_mode()
def generate(model: TokenLM, n_frames: int, batch_size: int = 1, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             cond: torch.Tensor | None = None, cfg_coef: float | None = None,
             prompt: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Sample codes [b, k, t] (t = n_frames) step by step with a pre-allocated KV cache.

    cond: class labels [b] (conditional models). cfg_coef: classifier-free guidance,
    logits = null + cfg_coef (cond - null), computed on a doubled batch. prompt: codes [b or 1, k, t0]
    (t0 < n_frames) that the output starts with: they are fed, not sampled (a continuation). progress: a
    tqdm bar over the steps (stderr)."""
    cfg = model.cfg
    if n_frames < 1 or batch_size < 1:
        raise ValueError(f"n_frames={n_frames} and batch_size={batch_size} must be >= 1")
    check_sampling(temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pat = model.make_pattern(n_frames).to(device)
    n_steps = pat.n_steps
    if n_steps > cfg.max_steps:
        raise ValueError(f"n_frames={n_frames} needs {n_steps} steps > LMConfig.max_steps={cfg.max_steps}")
    guided = cfg_coef is not None
    if guided and model.cond_emb is None:
        raise ValueError("cfg_coef given but LMConfig.n_classes == 0 (unconditional model)")
    if cond is not None:
        cond = cond.to(device)
        if cond.shape != (batch_size,):
            raise ValueError(f"cond: expected labels of shape [{batch_size}], got {list(cond.shape)}")
    known = None
    if prompt is not None:  # the prompt's codes in the pattern's cells: forced where known[j, s]
        if prompt.dim() != 3 or prompt.shape[0] not in (1, batch_size) or prompt.shape[1] != cfg.n_q \
                or not 1 <= prompt.shape[2] < n_frames:
            raise ValueError(f"prompt: expected codes [1 or {batch_size}, {cfg.n_q}, t0 < {n_frames}], "
                             f"got {list(prompt.shape)}")
        if prompt.min() < 0 or prompt.max() >= cfg.codebook_size:
            raise ValueError(f"prompt: codes must be in 0..{cfg.codebook_size - 1}")
        known = pat.valid & (pat.frame < prompt.shape[2])                  # [j, s]
        frame = pat.frame.clamp(0, prompt.shape[2] - 1)
        forced = prompt.to(device).expand(batch_size, -1, -1)[:, pat.codebook, frame]  # [b, j, s]
    if guided:
        null = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        cond = torch.cat([null if cond is None else cond, null])
    rows = 2 * batch_size if guided else batch_size
    gen = torch.Generator(device=device).manual_seed(seed)

    cond_vec = model.cond_vector(cond, rows, device)                        # [rows, 1, d] or None
    pad = torch.full((batch_size, pat.n_slots), cfg.pad, device=device)
    valid = pat.valid.T                                                     # [s, j]
    cache = KVCache(cfg, rows, n_steps, device, model.heads.dtype)
    out = torch.empty(batch_size, pat.n_slots, n_steps, dtype=torch.long, device=device)
    tokens = torch.full((rows, pat.n_slots, 1), cfg.bos, dtype=torch.long, device=device)
    for s in tqdm(range(n_steps), desc=f"sample ({cfg.pattern})", disable=not progress, mininterval=2, leave=False):
        logits = model.step(tokens, pat, s, cache, cond_vec)[:, :, 0]      # [rows, j, v]
        if guided:
            c, u = logits.chunk(2)
            logits = u + cfg_coef * (c - u)
        nxt = torch.where(valid[s], sample_logits(logits, temperature, top_k, top_p, gen), pad)
        if known is not None:
            nxt = torch.where(known[:, s], forced[:, :, s], nxt)
        out[:, :, s] = nxt
        tokens = (torch.cat([nxt, nxt]) if guided else nxt)[..., None]
    model.train(was_training)
    return pat.revert(out)
