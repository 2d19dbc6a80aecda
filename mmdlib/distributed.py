"""torch.distributed through torchrun, or a single process: one code path.

`torchrun --nproc_per_node N -m mmdlib.train_codec ...` sets WORLD_SIZE/RANK/LOCAL_RANK;
without them everything below is a no-op and the world has one rank. The one set of these helpers
(the loops, the quantizer and the MMD import it as `D`); it imports nothing from mmdlib.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> torch.device:
    """Initialise the process group when launched by torchrun; return this rank's device."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is visible: use device='cpu'")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    if device.startswith("cuda"):
        # under torchrun each rank takes its local GPU; one process takes the one asked for (cuda:N)
        index = int(os.environ["LOCAL_RANK"]) if is_distributed() else (torch.device(device).index or 0)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(device)


def cleanup() -> None:
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel when distributed, the model itself otherwise.

    Buffers start as rank 0's (broadcast here once: DDP copies only the parameters when it does not
    broadcast buffers, and a codebook initialised at random without k-means would differ per
    rank); after that the quantizer keeps its EMA codebooks in sync itself."""
    if not is_distributed():
        return model
    for buf in model.buffers():
        broadcast(buf)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def all_reduce(t: torch.Tensor) -> None:
    """Sum `t` over the ranks, in place."""
    if is_distributed():
        dist.all_reduce(t)


def broadcast(t: torch.Tensor) -> None:
    """Rank 0's `t` on every rank, in place."""
    if is_distributed():
        dist.broadcast(t, src=0)


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `t` (same shape on all ranks), rank order; detached copies, [t] in one process."""
    if not is_distributed():
        return [t]
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    return parts


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over the ranks (a new tensor; `x` itself in one process)."""
    if is_distributed():
        x = x.clone()
        dist.all_reduce(x)
        x /= world_size()
    return x


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when enabled (the training loops' `amp` setting), else a no-op.
    The quantizer and the MMD compute in float32 inside it (they upcast; tested)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def allow_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 matmuls and convolutions on CUDA (the `amp` setting); nothing elsewhere."""
    if enabled and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Pool `t` of every rank along dim 0 in rank order (identity in one process); only this rank's
    slot carries gradient, so DDP's mean gradient is the pooled loss's / world size (scale the loss
    weight by the world size for the sum). Same shape on every rank."""
    if not is_distributed():
        return t
    parts = all_gather(t)
    parts[rank()] = t
    return torch.cat(parts, dim=0)
