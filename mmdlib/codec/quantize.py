"""Residual vector quantization (RVQ) with k-means init, EMA codebooks and dead-code restarts.

Shapes: latents `b d t`, flat vectors `n d` (n = b * t), codes `b k t` (k stages),
residual streams `b k d t`; a codebook is `v d` (v = codebook_size).

One stage (`VectorQuantizer`) maps each vector to its nearest codebook entry (squared Euclidean).
Its codebook is not a parameter: it is a buffer, initialised by k-means (greedy k-means++ seeding,
then Lloyd iterations) on the first training batch and then moved by exponential moving averages
(EMA) of the vectors assigned to each code.
Codes whose EMA count falls under a threshold are restarted on random vectors of the batch.

`ResidualVQ` chains K stages: stage k quantizes what stages < k left over,
    r_0 = x,   q_k = Q_k(r_{k-1}),   r_k = r_{k-1} - sg(q_k),   quantized = sum_k q_k,
where sg is stop-gradient. The residuals r_1..r_K are the "streams" that the MMD independence
loss (mmdlib.codec.losses) compares; since only the quantized part is detached, their gradient reaches
the encoder through x with an identity Jacobian.

Under torch.distributed the batch statistics are all-reduced before each EMA update, and k-means
init and dead-code restarts are computed on rank 0 (from rank 0's batch) and broadcast, as is the
quantizer-dropout stage count, so every rank keeps the same codebooks without broadcasting buffers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmdlib import distributed as D


@dataclass
class QuantizerConfig:
    dim: int = 64                           # d, size of each latent vector
    n_q: int = 4                            # K, number of residual stages (codebooks)
    codebook_size: int = 256                # v, entries per codebook
    kmeans_init: bool = True                # k-means on the first training batch
    kmeans_iters: int = 10                  # Lloyd iterations of that k-means
    ema_decay: float = 0.99                 # decay of the EMA codebook statistics
    epsilon: float = 1e-5                   # Laplace smoothing of the EMA counts
    threshold_ema_dead_code: float = 2.0    # restart codes whose EMA count is below this (0: never)
    commitment_weight: float = 1.0          # weight of ||x - sg(q)||^2
    quantizer_dropout: bool = False         # training: use a random number of stages per batch

    def __post_init__(self):
        for name in ("dim", "n_q", "codebook_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"QuantizerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.kmeans_iters < 0:
            raise ValueError(f"QuantizerConfig.kmeans_iters must be >= 0, got {self.kmeans_iters}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"QuantizerConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.epsilon <= 0:
            raise ValueError(f"QuantizerConfig.epsilon must be > 0, got {self.epsilon}")
        if self.threshold_ema_dead_code < 0 or self.commitment_weight < 0:
            raise ValueError("QuantizerConfig.threshold_ema_dead_code and commitment_weight must be >= 0, "
                             f"got {self.threshold_ema_dead_code} and {self.commitment_weight}")


STREAMS = ("residual", "input", "codeword")  # what ResidualVQ.forward returns as the MMD's streams


def nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """`n d, v d -> n`: index of the closest codebook row, ||x||^2 - 2 x.c + ||c||^2 via a matmul."""
    dist2 = x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(1)
    return dist2.argmin(dim=1)


def _sample_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """`n d -> k d`: k random rows of x, distinct when there are enough (torch's global RNG)."""
    n = x.shape[0]
    idx = torch.randperm(n, device=x.device)[:k] if n >= k else torch.randint(n, (k,), device=x.device)
    return x[idx]


def kmeans_plusplus(x: torch.Tensor, k: int) -> torch.Tensor:
    """`n d -> k d`: greedy k-means++ seeding. Each step draws 2 + log(k) candidates with
    probability ~ squared distance to the nearest centre so far (uniformly once every row is a
    centre) and keeps the one that lowers the total squared distance most."""
    n_candidates = 2 + int(math.log(k))
    centres = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centres[0] = _sample_rows(x, 1)[0]
    d2 = (x - centres[0]).pow(2).sum(1)                                    # n
    for i in range(1, k):
        weights = d2 if bool(d2.sum() > 0) else torch.ones_like(d2)
        candidates = x[torch.multinomial(weights, n_candidates, replacement=True)]  # c d
        cand_d2 = torch.minimum(d2, torch.cdist(candidates, x).pow(2))     # c n
        best = cand_d2.sum(1).argmin()
        centres[i], d2 = candidates[best], cand_d2[best]
    return centres


def kmeans(x: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding then `iters` Lloyd iterations. `n d -> (centres k d, counts k)`;
    empty clusters are re-seeded on random rows. Uses torch's global RNG."""
    centres = kmeans_plusplus(x, k)
    for _ in range(iters):
        codes = nearest(x, centres)
        counts = torch.bincount(codes, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, codes, x)
        centres = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        empty = counts == 0
        if empty.any():
            centres[empty] = _sample_rows(x, int(empty.sum()))
    counts = torch.bincount(nearest(x, centres), minlength=k).to(x.dtype)
    return centres, counts


# -- one codebook ---------------------------------------------------------------------------------
class VectorQuantizer(nn.Module):
    """One codebook `v d` with EMA updates. Works on flat float32 vectors `n d`.

    In training mode a forward may change the buffers: k-means init on the first call, then
    (with `update=True`) an EMA step and dead-code restarts. In eval mode it never does.
    `cfg` supplies the k-means/EMA/restart settings (its dim, n_q, codebook_size are ignored)."""

    def __init__(self, dim: int, codebook_size: int, cfg: QuantizerConfig | None = None):
        super().__init__()
        self.cfg = cfg or QuantizerConfig(dim=dim, codebook_size=codebook_size)
        self.dim, self.codebook_size = dim, codebook_size
        codebook = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", codebook)                       # v d
        self.register_buffer("ema_count", torch.ones(codebook_size))     # v
        self.register_buffer("ema_sum", codebook.clone())                # v d  (codebook = sum / count)
        self.register_buffer("initialised", torch.tensor(not self.cfg.kmeans_init))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """`... -> ... d`: codebook rows (no gradient: the codebook is a buffer)."""
        return F.embedding(codes, self.codebook)

    @torch.no_grad()
    def _kmeans_init(self, x: torch.Tensor) -> None:
        centres = torch.empty_like(self.codebook)
        counts = torch.empty_like(self.ema_count)
        if D.is_main():
            centres, counts = kmeans(x, self.codebook_size, self.cfg.kmeans_iters)
        D.broadcast(centres)
        D.broadcast(counts)
        self.codebook.copy_(centres)
        self.ema_count.copy_(counts)
        self.ema_sum.copy_(centres * counts.unsqueeze(1))
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        v, decay, eps = self.codebook_size, self.cfg.ema_decay, self.cfg.epsilon
        batch_count = torch.bincount(codes, minlength=v).to(x.dtype)      # v
        batch_sum = torch.zeros_like(self.ema_sum).index_add_(0, codes, x)  # v d
        D.all_reduce(batch_count)
        D.all_reduce(batch_sum)
        self.ema_count.mul_(decay).add_(batch_count, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(batch_sum, alpha=1 - decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + eps) / (total + v * eps) * total      # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self._restart_dead_codes(x)

    @torch.no_grad()
    def _restart_dead_codes(self, x: torch.Tensor) -> None:
        threshold = self.cfg.threshold_ema_dead_code
        dead = self.ema_count < threshold  # identical on every rank: the counts were all-reduced
        n_dead = int(dead.sum())
        if threshold <= 0 or n_dead == 0:
            return
        new = torch.empty(n_dead, self.dim, device=x.device, dtype=x.dtype)
        if D.is_main():
            new = _sample_rows(x, n_dead)
        D.broadcast(new)
        self.codebook[dead] = new
        self.ema_count[dead] = threshold  # a restarted code must be used to survive the next decay
        self.ema_sum[dead] = new * threshold

    def forward(self, x: torch.Tensor, update: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`n d -> (q n d, codes n, commit_loss scalar)`.

        `q` is the codebook rows themselves, without gradient: for a straight-through estimator
        use `x + (q - x).detach()`. `commit_loss` = mean((x - sg(q))^2), unweighted, gradient to x.
        Codes and q come from the codebook as it was before this call's EMA step."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [n, {self.dim}], got {list(x.shape)}")
        x = x.float()
        if self.training and not bool(self.initialised):
            self._kmeans_init(x.detach())
        codes = nearest(x.detach(), self.codebook)
        q = self.lookup(codes)
        if self.training and update:
            self._ema_update(x.detach(), codes)
        return q, codes, F.mse_loss(x, q)


# -- K stages ---------------------------------------------------------------------------------------
@dataclass
class QuantizerOutput:
    quantized: torch.Tensor    # b d t, sum of the first n_q stages, straight-through to x
    codes: torch.Tensor        # b k t (long), all K stages (see ResidualVQ.forward)
    streams: torch.Tensor      # b k d t (float32), r_k after stage k (or r_{k-1}, q_k: `streams`), gradient to x
    commit_loss: torch.Tensor  # scalar, commitment_weight * mean over the n_q used stages
    n_q: int                   # stages summed into `quantized`


class ResidualVQ(nn.Module):
    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(VectorQuantizer(cfg.dim, cfg.codebook_size, cfg) for _ in range(cfg.n_q))

    def _check_latents(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.cfg.dim:
            raise ValueError(f"x must be [b, {self.cfg.dim}, t], got {list(x.shape)}")

    def _check_n_q(self, n_q: int) -> None:
        if not 1 <= n_q <= self.cfg.n_q:
            raise ValueError(f"n_q must be in [1, {self.cfg.n_q}], got {n_q}")

    def _sample_n_q(self, device: torch.device) -> int:
        """Quantizer dropout: n uniform in [1, K] from torch's global RNG, rank 0's on every rank."""
        n = torch.randint(1, self.cfg.n_q + 1, (1,)).to(device)
        D.broadcast(n)
        return int(n)

    def forward(self, x: torch.Tensor, n_q: int | None = None, streams: str = "residual") -> QuantizerOutput:
        """`b d t -> QuantizerOutput`.

        streams (STREAMS: the three definitions in the history of the paper's public code, each with
        its gradient path; every one reaches x as the identity): "residual" r_k = r_{k-1} - sg(q_k),
        the residual after stage k (its final code); "input" r_{k-1}, what stage k quantizes; "codeword"
        the value q_k with the gradient of r_k (straight through; the code of the ICML runs).

        n_q: stages summed into `quantized` (default: all K, or, in training with
        quantizer_dropout, a random n in [1, K] per call). Whatever n_q, all K stages run on the
        real residual chain, so `codes` is always `b K t` and `streams` always `b K d t`; stages
        >= n_q only look up their codebook (no EMA update, no restart, no commitment loss) and
        do not contribute to `quantized`. In training, every stage still gets its k-means init.
        """
        self._check_latents(x)
        if streams not in STREAMS:
            raise ValueError(f"streams={streams!r}: expected one of {STREAMS}")
        if n_q is None:
            dropout = self.training and self.cfg.quantizer_dropout
            n_q = self._sample_n_q(x.device) if dropout else self.cfg.n_q
        self._check_n_q(n_q)
        b = x.shape[0]
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = rearrange(x.float(), "b d t -> (b t) d")
            residual, quantized = z, torch.zeros_like(z)
            codes, kept, losses = [], [], []
            for k, layer in enumerate(self.layers):
                used = k < n_q
                q, c, loss = layer(residual, update=used)
                before, residual = residual, residual - q  # r_k = r_{k-1} - sg(q_k): q has no grad
                codes.append(c)
                kept.append(residual if streams == "residual" else before if streams == "input"
                            else residual + (q - residual).detach())  # codeword: value q_k, gradient of r_k
                if used:
                    quantized = quantized + q
                    losses.append(loss)
            quantized = z + (quantized - z).detach()      # straight-through
        return QuantizerOutput(
            quantized=rearrange(quantized, "(b t) d -> b d t", b=b).to(x.dtype),
            codes=rearrange(torch.stack(codes, 1), "(b t) k -> b k t", b=b),
            streams=rearrange(torch.stack(kept, 1), "(b t) k d -> b k d t", b=b),
            commit_loss=self.cfg.commitment_weight * torch.stack(losses).mean(),
            n_q=n_q,
        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """`b d t -> b k t` (long), k = n_q (default K). Never changes the buffers."""
        self._check_latents(x)
        n_q = self.cfg.n_q if n_q is None else n_q
        self._check_n_q(n_q)
        b = x.shape[0]
        residual = rearrange(x.float(), "b d t -> (b t) d")
        codes = []
        for layer in self.layers[:n_q]:
            c = nearest(residual, layer.codebook)
            residual = residual - layer.lookup(c)
            codes.append(c)
        return rearrange(torch.stack(codes, 1), "(b t) k -> b k t", b=b)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """`b k t -> b d t` (float32): sum of the first k codebooks' rows, 1 <= k <= K."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.cfg.n_q:
            raise ValueError(f"codes must be [b, k, t] with 1 <= k <= {self.cfg.n_q}, got {list(codes.shape)}")
        if codes.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"codes must be integer, got {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.cfg.codebook_size):
            raise ValueError(f"codes must be in [0, {self.cfg.codebook_size}), "
                             f"got range [{int(codes.min())}, {int(codes.max())}]")
        out = sum(layer.lookup(codes[:, k].long()) for k, layer in enumerate(self.layers[: codes.shape[1]]))
        return rearrange(out, "b t d -> b d t")
