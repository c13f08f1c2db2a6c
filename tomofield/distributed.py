"""torch.distributed glue: ranks from torchrun's environment, gloo on CPU, nccl on GPUs.

Launch with ``torchrun --nproc-per-node N -m tomofield ...``; a plain ``tomofield`` call
is rank 0 of a world of 1 and never touches torch.distributed.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tomofield.errors import InputError


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns ``(rank, world_size)``.

    The backend is nccl when this rank uses CUDA, gloo otherwise; each rank takes the GPU
    ``LOCAL_RANK``.
    """
    if not launched():
        return 0, 1
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device(device: str) -> str:
    """The device string of this rank: ``cuda:LOCAL_RANK`` for CUDA under torchrun."""
    if launched() and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a world of 1)."""
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a world of 1)."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def shard_indices(start: int, count: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s share of items ``start .. start + count - 1`` of a global round robin."""
    return slice((rank - start) % world, count, world)


def check_enough(n: int, world: int, what: str = "directions") -> None:
    if n < world:
        raise InputError(f"{n} {what} cannot be shared by {world} processes; use at least {world} or fewer processes")


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
