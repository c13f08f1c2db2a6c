"""The plan of a reconstruction: what to cut from one volume, decided once (:class:`Plan`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from tomofield import distributed
from tomofield.geometry import Directions, half_extents
from tomofield.samplers import SamplingConfig

Tick = Callable[[int], None]

#: A chunk of directions holds at least this many slices (fewer Python round trips).
CHUNK_SLICES = 4096


@dataclass(frozen=True)
class Plan:
    """What to cut from one volume, decided once.

    Attributes:
        shape: the (D, H, W) grid.
        e: (3,) box half-extents, float64 on the host.
        groups: the direction groups this process reconstructs (all of them, or this
            rank's share when the directions are sharded).
        n_dirs: directions of the whole reconstruction (the 4 pi / L normalisation).
        pad: extra slices on each side of a stack (the filter's).
        size: slice size (h, w) in pixels.
    """

    shape: tuple[int, int, int]
    e: Tensor
    groups: list[Directions]
    n_dirs: int
    pad: int
    size: tuple[int, int]

    @classmethod
    def make(
        cls,
        shape: Sequence[int],
        spacing: Sequence[float],
        sampler,
        sampling: SamplingConfig,
        geometry: str,
        pad: int,
        slice_size: int,
        shard: bool = False,
    ) -> Plan:
        """The plan of a volume of spatial ``shape`` and ``spacing`` (mm per D, H, W axis)."""
        shape = tuple(int(n) for n in shape)
        e = half_extents(shape, spacing, geometry)
        groups = sampler.plan(shape, e, sampling)
        n_dirs = sum(len(g) for g in groups)
        rank, world = distributed.rank_world() if shard else (0, 1)
        if world > 1:  # each rank takes every world-th direction; the sums meet in an all-reduce
            distributed.check_enough(n_dirs, world)
            starts = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]
            groups = [
                g[distributed.shard_indices(st, len(g), rank, world)] for g, st in zip(groups, starts, strict=True)
            ]
            groups = [g for g in groups if len(g)]
        return cls(cast("tuple[int, int, int]", shape), e, groups, n_dirs, pad, (slice_size, slice_size))

    @property
    def total_slices(self) -> int:
        """Slices this process scores (or skips as empty)."""
        return sum(len(g) * (g.num_slices + 2 * self.pad) for g in self.groups)

    def chunks(
        self, group: Directions, batch_size: int, device: torch.device
    ) -> Iterator[tuple[Directions, Directions]]:
        """``(host, on device)`` chunks of directions of a group, sized for ``batch_size`` slices."""
        gdev = group.to(device)
        per_dir = group.num_slices + 2 * self.pad
        chunk = max(1, math.ceil(batch_size / per_dir), CHUNK_SLICES // per_dir)
        for start in range(0, len(gdev), chunk):
            yield group[start : start + chunk], gdev[start : start + chunk]
