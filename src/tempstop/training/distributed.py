"""Distributed (DDP) helpers: set-up from torchrun's environment, rank queries, gathers.

Launch with ``torchrun --nproc_per_node N train_unified_model.py ...``: torchrun sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` and
:func:`init_distributed` joins the process group (``env://``; nccl on CUDA, gloo on CPU).
Without those variables everything here degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # The two methods of tempstop.inference.embed.Shards: evaluation embeds a share per rank.
    def indices(self, n: int) -> list[int]:
        """This rank's share of ``range(n)`` (:func:`shard_indices`)."""
        return shard_indices(n, self)

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's rows in order (:func:`gather_shards`)."""
        return gather_shards(local, n, self)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group if launched by torchrun (or already initialised); pick the device.

    ``device`` forces ``"cpu"`` or ``"cuda"``; by default CUDA when available. Each process
    uses GPU ``LOCAL_RANK``.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    elif launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    else:
        rank, world, local = 0, 1, 0
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps ranks in lock step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (a copy; identity in a single process)."""
    values = values.clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """This rank's share of ``range(n)`` for evaluation: strided, sizes differ by at most one."""
    return list(range(info.rank, n, info.world_size))


def gather_shards(local: torch.Tensor, n: int, info: DistInfo) -> torch.Tensor:
    """Inverse of :func:`shard_indices`: rows computed per rank -> all ``n`` rows in order.

    ``local`` holds the rows of ``shard_indices(n, info)``. Every rank gets the full tensor.
    """
    if not info.distributed:
        return local
    per_rank = -(-n // info.world_size)
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        count = len(range(r, n, info.world_size))
        out[r :: info.world_size] = part[:count]
    return out


def cleanup() -> None:
    """Leave the process group (call at the end of a torchrun process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
