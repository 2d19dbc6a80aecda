"""Codebook interleaving patterns.

The one definition of the delay pattern's per-stream offsets lives here, and both the
language model (delay pattern) and the MMD loss (delay alignment) use it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


def delay_offsets(n_q: int) -> list[int]:
    """Delay pattern: stream k (0-based) is shifted right by k frames."""
    return list(range(n_q))


def delay_align(x: torch.Tensor, offsets: list[int] | None = None) -> torch.Tensor:
    """Re-pair streams into the tuples a delay-pattern step predicts at once.

    x: [b, k, ..., t] (codes `b k t` or residual streams `b k d t`).
    Returns [b, k, ..., t - max(offsets)] where output frame j holds
    (x_1[j + m - o_1], ..., x_K[j + m - o_K]) with m = max(offsets): for the delay
    pattern (o_k = k) that is (z_1[s], z_2[s-1], ..., z_K[s-K+1]) at step s = j + K - 1.
    """
    n_q, t = x.shape[1], x.shape[-1]
    offsets = delay_offsets(n_q) if offsets is None else list(offsets)
    if len(offsets) != n_q:
        raise ValueError(f"delay_align: {len(offsets)} offsets for {n_q} streams")
    m = max(offsets)
    if t <= m:
        raise ValueError(f"delay_align: {t} frames is too short for a max offset of {m}")
    parts = [x[:, k : k + 1, ..., m - o : t - o] for k, o in enumerate(offsets)]
    return torch.cat(parts, dim=1)


# ----------------------------------------------------------------------------------------------
# Interleaving patterns for the token language model.
#
# A pattern lays the codes `b k t` of T frames out on a grid of `j` slots x `s` steps: the LM
# predicts all slots of one step at once (one output head per slot), steps one after another.
# Each code (k, t) sits in exactly one cell; the other cells are empty and hold `pad`.
# Every cell (slot j, step s) also has a codebook id, defined for empty cells too, which picks
# the embedding table of the token in it and the output head that predicts it.
#
#   parallel      j = K, s = T          code (k, t) at slot k, step t
#   delay         j = K, s = T + K - 1  code (k, t) at slot k, step t + delay_offsets(K)[k]
#   flatten       j = 1, s = K * T      code (k, t) at slot 0, step t * K + k  (the joint model)
#   coarse_first  j = K, s = 2 T        code (0, t) at slot 0, step t (all coarse codes first),
#                 (s = T if K = 1)      then code (k >= 1, t) at slot k, step T + t
#   grouped_delay j = ceil(K / g), s = g (T + j - 1), g = group_size: codebooks are cut into
#                 groups of g consecutive ones; group i is flattened within a frame and
#                 delayed by i frames: code (k, t) at slot k // g, step (t + k // g) g + k % g.
#                 g = 1 is delay, g = K is flatten; when g divides K it takes g (T + K/g - 1)
#                 steps (e.g. K = 4, g = 2: 2 T + 2), trailing all-empty steps are dropped.
# ----------------------------------------------------------------------------------------------

PATTERNS = ("parallel", "delay", "flatten", "coarse_first", "grouped_delay")


@dataclass(frozen=True)
class Pattern:
    """A codebook interleaving pattern for `n_q` codebooks over `n_frames` frames.

    codebook: [j, s] long, the codebook of cell (slot j, step s), in 0..n_q-1 (empty cells too).
    frame:    [j, s] long, the frame of the code in the cell, -1 for an empty cell.
    """

    name: str
    n_q: int
    n_frames: int
    codebook: torch.Tensor
    frame: torch.Tensor

    @property
    def n_slots(self) -> int:
        return self.codebook.shape[0]

    @property
    def n_steps(self) -> int:
        return self.codebook.shape[1]

    @property
    def valid(self) -> torch.Tensor:
        """[j, s] bool: the cell holds a code."""
        return self.frame >= 0

    @property
    def steps(self) -> list[list[tuple[int, int]]]:
        """For each step, the (k, t) coordinates of the codes predicted at that step."""
        cb, fr = self.codebook.T.tolist(), self.frame.T.tolist()
        return [[(k, t) for k, t in zip(cbs, frs) if t >= 0] for cbs, frs in zip(cb, fr)]

    def step_of(self) -> torch.Tensor:
        """[k, t] long: the step at which code (k, t) is predicted."""
        out = torch.full((self.n_q, self.n_frames), -1, dtype=torch.long)
        s = torch.arange(self.n_steps).expand_as(self.frame)
        v = self.valid
        out[self.codebook[v], self.frame[v]] = s[v]
        return out

    @functools.cached_property
    def due(self) -> torch.Tensor:
        """[j, s] long: the codebook predicted in each cell, n_q for an empty cell."""
        return torch.where(self.valid, self.codebook, self.n_q)

    @functools.cached_property
    def prev_codebook(self) -> torch.Tensor:
        """[j, s] long: the codebook of the cell each step reads as input, that of the step before
        (an LM reads step s-1 to predict step s; step 0 reads BOS, with its own codebooks)."""
        return torch.cat([self.codebook[:, :1], self.codebook[:, :-1]], dim=1)

    @functools.cached_property
    def columns(self) -> list[tuple[int, ...]]:
        """The codebooks of each step's cells, (codebook[0, s], ..., codebook[j-1, s]) for each s:
        Python ints read once, so that stepping through the pattern never waits on a device."""
        return [tuple(col) for col in self.codebook.T.tolist()]

    def to(self, device) -> Pattern:
        if self.codebook.device == torch.device(device):
            return self
        moved = Pattern(self.name, self.n_q, self.n_frames, self.codebook.to(device), self.frame.to(device))
        moved.__dict__["columns"] = self.columns  # read here, on the device the pattern was made on
        return moved

    def _flat_index(self) -> torch.Tensor:
        """[j, s] index of each cell's code in codes.flatten(1) (0 for empty cells)."""
        return torch.where(self.valid, self.codebook * self.n_frames + self.frame, 0)

    def build(self, codes: torch.Tensor, pad: int) -> torch.Tensor:
        """codes [b, k, t] -> interleaved sequence [b, j, s], `pad` in empty cells."""
        b, k, t = codes.shape
        if (k, t) != (self.n_q, self.n_frames):
            raise ValueError(f"build: codes have shape [b, {k}, {t}], pattern wants [b, {self.n_q}, {self.n_frames}]")
        idx = self._flat_index()
        seq = codes.reshape(b, k * t)[:, idx.flatten()].view(b, *idx.shape)
        return torch.where(self.valid, seq, torch.full_like(seq, pad))

    def revert(self, seq: torch.Tensor) -> torch.Tensor:
        """Interleaved sequence [b, j, s] -> codes [b, k, t] (inverse of `build`)."""
        b, j, s = seq.shape
        if (j, s) != (self.n_slots, self.n_steps):
            raise ValueError(f"revert: sequence has shape [b, {j}, {s}], pattern has [b, {self.n_slots}, {self.n_steps}]")
        v = self.valid
        codes = seq.new_zeros(b, self.n_q * self.n_frames)
        codes[:, self._flat_index()[v]] = seq[:, v]
        return codes.view(b, self.n_q, self.n_frames)


def n_slots(name: str, n_q: int, group_size: int = 2) -> int:
    """Number of slots (parallel streams) of a pattern, independent of the number of frames."""
    if name == "flatten":
        return 1
    if name == "grouped_delay":
        return -(-n_q // group_size)
    return n_q


def make_pattern(name: str, n_q: int, n_frames: int, group_size: int = 2) -> Pattern:
    """Build pattern `name` (one of PATTERNS) for n_q codebooks and n_frames frames."""
    if name not in PATTERNS:
        raise ValueError(f"pattern={name!r}: expected one of {PATTERNS}")
    if n_q < 1 or n_frames < 1:
        raise ValueError(f"make_pattern: n_q={n_q} and n_frames={n_frames} must be >= 1")
    if name == "flatten":
        group_size = n_q
    if name in ("flatten", "grouped_delay"):
        if group_size < 1:
            raise ValueError(f"group_size={group_size} must be >= 1")
        g = min(group_size, n_q)
        j = n_slots("grouped_delay", n_q, g)
        s = torch.arange(g * (n_frames + j - 1))
        slot = torch.arange(j)[:, None]
        codebook = slot * g + s % g                    # [j, s]
        frame = s // g - slot
        empty = (codebook >= n_q) | (frame < 0) | (frame >= n_frames)
        last = int(s[(~empty).any(0)].max()) + 1  # drop trailing empty steps (g not dividing K)
        codebook, frame = codebook.clamp(max=n_q - 1)[:, :last], frame.masked_fill(empty, -1)[:, :last]
        return Pattern(name, n_q, n_frames, codebook.contiguous(), frame.contiguous())
    slot = torch.arange(n_q)[:, None]
    if name == "parallel":
        s = torch.arange(n_frames)
        frame = s.expand(n_q, -1)
    elif name == "delay":
        offsets = torch.tensor(delay_offsets(n_q))[:, None]
        s = torch.arange(n_frames + int(offsets.max()))
        frame = s - offsets
    else:  # coarse_first
        s = torch.arange(n_frames * (2 if n_q > 1 else 1))
        frame = torch.where(slot == 0, s, s - n_frames)
        frame = frame.masked_fill((slot == 0) & (s >= n_frames), -1)
    frame = frame.masked_fill((frame < 0) | (frame >= n_frames), -1)
    return Pattern(name, n_q, n_frames, slot.expand(-1, len(s)).clone(), frame.contiguous())
