"""A decoder-only transformer over codebook interleaving patterns, its loss and evaluation (sampling: `sampling.py`).

The codes `b k t` of a codec are laid out by a pattern (see `patterns.py`) on `j` slots x `s`
steps: `seq [b, j, s]`. The model reads step s-1 (a BOS step before step 0) and predicts all
slots of step s at once:

    inputs  = [BOS, seq[..., 0], ..., seq[..., s-2]]     [b, j, s]
    logits  = model(inputs)                              [b, j, s, v]   (v = codebook_size)
    targets = seq                                        [b, j, s]      (loss on valid cells)

Input embedding of a step: sum over slots of the token's embedding in its codebook's table
(one table per codebook, vocab v + 2: the codes, `pad` = v for empty cells, `bos` = v + 1), plus
a learned embedding of which codebook each slot must predict at this step (or "nothing"): this
tells a flatten model which codebook is due and a coarse_first model which phase it is in.
Output: one head per codebook; slot j at step s uses the head of its cell's codebook.
Pre-norm blocks, causal self-attention with rotary position embeddings (RoPE), GELU MLP.
Optional class conditioning: a class embedding added at every step, replaced by a learned
"null" class with probability `cond_dropout` in training (classifier-free guidance).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmdlib.patterns import PATTERNS, Pattern, make_pattern, n_slots


@dataclass
class LMConfig:
    n_q: int = 4                 # codebooks K
    codebook_size: int = 256     # v codes per codebook
    pattern: str = "delay"       # one of patterns.PATTERNS
    dim: int = 192
    n_layers: int = 4
    n_heads: int = 4
    max_steps: int = 4096        # longest pattern sequence (steps) the model accepts
    dropout: float = 0.0
    group_size: int = 2          # grouped_delay only: codebooks per group
    n_classes: int = 0           # 0: unconditional; else class labels 0..n_classes-1
    cond_dropout: float = 0.1    # training probability of dropping the label (CFG)
    mlp_ratio: int = 4
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern={self.pattern!r}: expected one of {PATTERNS}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"dim={self.dim} must be n_heads={self.n_heads} x an even head size")
        if self.n_q < 1 or self.codebook_size < 1:
            raise ValueError(f"n_q={self.n_q} and codebook_size={self.codebook_size} must be >= 1")

    @property
    def pad(self) -> int:
        return self.codebook_size

    @property
    def bos(self) -> int:
        return self.codebook_size + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LMConfig:
        return cls(**d)


LM_PRESETS: dict[str, LMConfig] = {
    # ~2.2 M parameters; trains in minutes on a 2-core CPU (0.2 s/step delay, 0.6 s/step flatten).
    "tiny": LMConfig(n_q=4, codebook_size=256, dim=192, n_layers=4, n_heads=4, max_steps=4096),
    # ~0.6 M parameters, 3x faster than "tiny": the λ sweep trains 30 of them (mmdlib/experiment.py)
    "small": LMConfig(n_q=4, codebook_size=256, dim=128, n_layers=2, n_heads=4, max_steps=4096),
    # MusicGen-small-like scale (~320 M parameters), for a GPU: 4 x 2048 codes, 30 s at 50 Hz.
    "paper": LMConfig(n_q=4, codebook_size=2048, dim=1024, n_layers=24, n_heads=16,
                      max_steps=8192, dropout=0.1),
}


def lm_config(preset: str = "tiny", **overrides) -> LMConfig:
    """A preset with some fields replaced, e.g. lm_config("tiny", pattern="flatten")."""
    if preset not in LM_PRESETS:
        raise ValueError(f"preset={preset!r}: expected one of {list(LM_PRESETS)}")
    return dataclasses.replace(LM_PRESETS[preset], **overrides)


# ---------------------------------------------------------------------------------------------
# Transformer


def rope_tables(head_dim: int, n: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n, head_dim / 2] for positions 0..n-1."""
    freq = base ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    angle = torch.arange(n).float()[:, None] * freq[None]
    return angle.cos(), angle.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x [b, h, s, d] by position angles cos/sin [s, d/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Pre-allocated keys/values of every layer: [n_layers, b, h, max_len, head_dim] each."""

    def __init__(self, cfg: LMConfig, batch: int, max_len: int, device, dtype=torch.float32):
        shape = (cfg.n_layers, batch, cfg.n_heads, max_len, cfg.dim // cfg.n_heads)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, start: int = 0):
        """x [b, s, d] at positions start..start+s-1; with a cache, attends to all cached steps."""
        s = x.shape[1]
        q, k, v = rearrange(self.qkv(x), "b s (three h e) -> three b h s e", three=3, h=self.n_heads)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        p = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            end = start + s
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
            mask = None
            if s > 1:  # query i (position start+i) sees keys 0..start+i
                mask = torch.arange(end, device=x.device) <= torch.arange(start, end, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.proj(rearrange(y, "b h s e -> b s (h e)"))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim, bias=False), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim, bias=False))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0, start=0):
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, cache, layer, start))
        return x + self.drop(self.mlp(self.norm2(x)))


class TokenLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.n_slots = n_slots(cfg.pattern, cfg.n_q, cfg.group_size)
        self.tok_emb = nn.Embedding(cfg.n_q * (cfg.codebook_size + 2), cfg.dim)  # K tables, stacked
        self.due_emb = nn.Embedding(self.n_slots * (cfg.n_q + 1), cfg.dim)      # codebook due per slot
        self.cond_emb = nn.Embedding(cfg.n_classes + 1, cfg.dim) if cfg.n_classes else None  # last: null
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.heads = nn.Parameter(torch.empty(cfg.n_q, cfg.codebook_size, cfg.dim))  # [k, v, d]
        cos, sin = rope_tables(cfg.dim // cfg.n_heads, cfg.max_steps, cfg.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        due_offset = torch.arange(self.n_slots)[:, None] * (cfg.n_q + 1)       # [j, 1]: slot j's rows
        self.register_buffer("due_offset", due_offset, persistent=False)
        self.apply(self._init)
        nn.init.normal_(self.heads, std=0.02)
        for name, p in self.named_parameters():  # scaled residual projections (GPT-2)
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def make_pattern(self, n_frames: int) -> Pattern:
        return make_pattern(self.cfg.pattern, self.cfg.n_q, n_frames, self.cfg.group_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> TokenLM:
        """A model file {"config": LMConfig dict, "model": state_dict} (train_lm writes run_dir/lm.pt,
        the state with the lowest held-out loss), in eval mode on map_location."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LM file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # e.g. a training checkpoint (it holds RNG states)
            raise ValueError(f"{path} is not an LM file ({type(e).__name__}): train_lm writes run_dir/lm.pt") from None
        if not isinstance(state, dict) or "kind" in state or not {"config", "model"} <= state.keys():
            raise ValueError(f"{path} is not an LM file (a dict of 'config' and 'model'): train_lm writes run_dir/lm.pt")
        model = cls(LMConfig.from_dict(state["config"]))
        model.load_state_dict(state["model"])
        model.codec_record = state.get("codec")  # the codec of its tokens ({"path", "sha256"}), if recorded
        return model.to(map_location).eval()

    # The pattern-dependent index tables of the steps `at` = start..end-1, [j, s] long each.
    def in_index(self, pat: Pattern, at: slice) -> torch.Tensor:
        """Row of tok_emb for a token 0 at each input position: codebook of the previous step."""
        return pat.prev_codebook[:, at] * (self.cfg.codebook_size + 2)

    def due_index(self, pat: Pattern, at: slice) -> torch.Tensor:
        """Row of due_emb at each position: slot j predicts codebook c (or n_q: nothing)."""
        return pat.due[:, at] + self.due_offset

    def shift_right(self, seq: torch.Tensor) -> torch.Tensor:
        """Targets [b, j, s] -> inputs [b, j, s]: BOS, then steps 0..s-2."""
        return torch.cat([torch.full_like(seq[..., :1], self.cfg.bos), seq[..., :-1]], dim=-1)

    def cond_vector(self, cond: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """Class labels [b] (-1 or None: null class) -> [b, 1, d], or None if unconditional."""
        if self.cond_emb is None:
            if cond is not None:
                raise ValueError("cond given but LMConfig.n_classes == 0 (unconditional model)")
            return None
        if cond is None:
            cond = torch.full((batch,), -1, dtype=torch.long, device=device)
        if ((cond < -1) | (cond >= self.cfg.n_classes)).any():
            raise ValueError(f"cond: labels must be in 0..{self.cfg.n_classes - 1} (or -1 for none)")
        cond = torch.where(cond < 0, self.cfg.n_classes, cond)
        if self.training and self.cfg.cond_dropout > 0:
            drop = torch.rand(cond.shape, device=device) < self.cfg.cond_dropout
            cond = torch.where(drop, self.cfg.n_classes, cond)
        return self.cond_emb(cond)[:, None]

    def body(self, x, start: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """Step embeddings [b, s, d] at positions start.. -> normed hidden states [b, s, d]."""
        end = start + x.shape[1]
        if end > self.cfg.max_steps:
            raise ValueError(f"sequence of {end} steps exceeds LMConfig.max_steps={self.cfg.max_steps}")
        cos, sin = self.cos[start:end], self.sin[start:end]
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, start)
        return self.norm(x)

    def head(self, codebooks: tuple[int, ...]) -> torch.Tensor:
        """The heads [j, v, d] of these codebooks: a view of self.heads when evenly spaced."""
        a, z = codebooks[0], codebooks[-1]
        stride = codebooks[1] - a if len(codebooks) > 1 else 1
        if stride > 0 and codebooks == tuple(range(a, z + 1, stride)):
            return self.heads[a : z + 1 : stride]
        return self.heads[list(codebooks)]

    def logits(self, h: torch.Tensor, columns: list[tuple[int, ...]]) -> torch.Tensor:
        """h [b, s, d], the codebooks of each step's cells (Pattern.columns) -> logits [b, j, s, v]:
        slot j at step s uses the head of its cell's codebook."""
        distinct = list(dict.fromkeys(columns))
        if len(distinct) == 1:
            return torch.einsum("bsd,jvd->bjsv", h, self.head(distinct[0]))
        out = None
        for col in distinct:
            at = torch.tensor([i for i, c in enumerate(columns) if c == col], device=h.device)
            part = torch.einsum("bsd,jvd->bjsv", h[:, at], self.head(col))
            if out is None:  # the dtype the einsum gives (bf16 under autocast), not h's
                out = part.new_empty(h.shape[0], part.shape[1], h.shape[1], self.cfg.codebook_size)
            out[:, :, at] = part
        return out

    def hidden(self, tokens: torch.Tensor, pat: Pattern, start: int = 0, cache: KVCache | None = None,
               cond_vec: torch.Tensor | None = None) -> torch.Tensor:
        """The trunk at steps start..start+s-1 of `pat`: the tokens [b, j, s] read there -> hidden
        states [b, s, d] (what the heads, and a depth head, read). A step's embedding: sum over
        slots of the token's row in its codebook's table, plus the rows of the codebooks due in
        its slots, plus the class. cond_vec: cond_vector() of the labels, [b, 1, d], or None."""
        at = slice(start, start + tokens.shape[-1])
        x = (F.embedding(tokens + self.in_index(pat, at), self.tok_emb.weight).sum(1)     # [b, s, d]
             + F.embedding(self.due_index(pat, at), self.due_emb.weight).sum(0))
        if cond_vec is not None:
            x = x + cond_vec
        return self.body(x, start, cache)

    def step(self, tokens: torch.Tensor, pat: Pattern, start: int = 0, cache: KVCache | None = None,
             cond_vec: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [b, j, s, v] of the cells of steps start..start+s-1 (see `hidden`). With a KV
        cache, the steps before `start` come from the cache: `generate` calls this one step (s = 1)
        at a time, `forward` on whole sequences."""
        at = slice(start, start + tokens.shape[-1])
        return self.logits(self.hidden(tokens, pat, start, cache, cond_vec), pat.columns[at])

    def forward(self, inputs: torch.Tensor, pat: Pattern, start: int = 0, cache: KVCache | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """inputs [b, j, s] (shift_right of a pattern sequence) at steps start..start+s-1 of `pat`
        -> logits [b, j, s, v] for those steps' cells. cond: class labels [b] (see `step`)."""
        b, j, s = inputs.shape
        if j != self.n_slots:
            raise ValueError(f"inputs have {j} slots, pattern {self.cfg.pattern!r} has {self.n_slots}")
        if start + s > pat.n_steps:
            raise ValueError(f"inputs reach step {start + s - 1}, pattern {pat.name!r} has {pat.n_steps} steps")
        return self.step(inputs, pat.to(inputs.device), start, cache, self.cond_vector(cond, b, inputs.device))


# ---------------------------------------------------------------------------------------------
# Loss and evaluation


def sequence_nll(net: nn.Module, codes: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """codes [b, k, t] -> (summed NLL in nats over every code, number of codes b k t).

    The one loss of the LM: training calls it through `net` = the model's DistributedDataParallel
    wrapper (or the model) and divides by the count, evaluation (nll_sum) with the model."""
    model = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    pat = model.make_pattern(codes.shape[-1]).to(codes.device)
    seq = pat.build(codes, model.cfg.pad)                      # [b, j, s]
    logits = net(model.shift_right(seq), pat, cond=cond)       # [b, j, s, v]
    v = pat.valid.expand_as(seq)                               # each code in exactly one cell
    return F.cross_entropy(logits[v], seq[v], reduction="sum"), codes.numel()


def cell_nll(logits: torch.Tensor, seq: torch.Tensor, pat: Pattern) -> torch.Tensor:
    """logits [b, j, s, v] of a pattern sequence seq [b, j, s] -> NLL in nats of each cell [b, j, s],
    0 in the empty cells (so that each code counts once)."""
    target = seq.masked_fill(~pat.valid, 0)                                # pad cells: any code, not counted
    nll = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view(seq.shape)
    return nll * pat.valid


def windows(tokens: torch.Tensor, window: int | None) -> torch.Tensor:
    """Codes [n, k, t] -> the non-overlapping windows [n m, k, window] (m = t // window; a shorter
    tail is dropped): scoring at the training crop length, each window from its own start, as the
    LM saw its crops. None: the clips as they are."""
    if window is None or window >= tokens.shape[-1]:
        return tokens
    if window < 1:
        raise ValueError(f"window={window} must be >= 1 frame")
    m = tokens.shape[-1] // window
    return rearrange(tokens[..., : m * window], "n k (m w) -> (n m) k w", w=window)


@torch.no_grad()
def nll_sum(model: TokenLM, tokens: torch.Tensor, batch_size: int = 16,
            cond: torch.Tensor | None = None, window: int | None = None) -> tuple[float, int]:
    """tokens [n, k, t] -> (summed NLL in nats over all codes, number of frames scored), each
    clip scored in windows of `window` frames (None: whole)."""
    if tokens.ndim != 3 or tokens.shape[1] != model.cfg.n_q:
        raise ValueError(f"tokens: expected [n, {model.cfg.n_q}, t], got {list(tokens.shape)}")
    if cond is not None and window is not None and window < tokens.shape[-1]:
        cond = cond.repeat_interleave(tokens.shape[-1] // window)
    tokens = windows(tokens, window)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for i in range(0, len(tokens), batch_size):
        c = None if cond is None else cond[i : i + batch_size].to(device)
        total += float(sequence_nll(model, tokens[i : i + batch_size].to(device), c)[0])
    model.train(was_training)
    return total, tokens.shape[0] * tokens.shape[2]


def evaluate_bits_per_frame(model: TokenLM, tokens: torch.Tensor, batch_size: int = 16,
                            cond: torch.Tensor | None = None, window: int | None = None) -> float:
    """Held-out NLL in bits per frame: sum over the K codes of a frame, mean over frames, in
    windows of `window` frames (None: whole clips).

    Every code of every frame is counted once, whatever the pattern, so patterns compare."""
    nats, frames = nll_sum(model, tokens, batch_size, cond, window)
    return nats / math.log(2) / frames


@torch.no_grad()
def bits_per_codebook(model: TokenLM, tokens: torch.Tensor, batch_size: int = 16, window: int | None = None) -> torch.Tensor:
    """Held-out bits per code of each codebook [k] (in windows of `window` frames): where a
    pattern's bits go. They sum to evaluate_bits_per_frame; a joint pattern (flatten) gains over a
    factorised one (parallel) on the codebooks it predicts after others of the same frame."""
    if tokens.ndim != 3 or tokens.shape[1] != model.cfg.n_q:
        raise ValueError(f"tokens: expected [n, {model.cfg.n_q}, t], got {list(tokens.shape)}")
    if model.cfg.n_classes:
        raise ValueError("bits_per_codebook: class-conditional LMs are not supported (use nll_sum with cond)")
    tokens = windows(tokens, window)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pat = model.make_pattern(tokens.shape[-1]).to(device)
    total = torch.zeros(model.cfg.n_q, dtype=torch.float64)
    for i in range(0, len(tokens), batch_size):
        seq = pat.build(tokens[i : i + batch_size].to(device), model.cfg.pad)      # [b, j, s]
        nll = cell_nll(model(model.shift_right(seq), pat), seq, pat)              # [b, j, s]
        total += pat.revert(nll).sum((0, 2)).double().cpu()                      # [k]: each code once
    model.train(was_training)
    return (total / math.log(2) / (tokens.shape[0] * tokens.shape[-1])).float()
