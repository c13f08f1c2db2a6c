"""The plan of a reconstruction: what to cut from one volume, decided once (:class:`Plan`)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from tomofield import distributed
from tomofield.errors import ComponentError, TomofieldError
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
        pad: int | Callable[[list[Directions]], int],
        slice_size: int,
        shard: bool = False,
        label: str = "the sampler",
    ) -> Plan:
        """The plan of a volume of spatial ``shape`` and ``spacing`` (mm per D, H, W axis).

        What the sampler raises or plans that is not direction groups is a
        :class:`~tomofield.errors.ComponentError` naming it (``label``).
        """
        shape = tuple(int(n) for n in shape)
        e = half_extents(shape, spacing, geometry)
        try:
            groups = sampler.plan(shape, e, sampling)
        except (TomofieldError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            raise ComponentError(f"{label} failed to plan the grid {shape}: {type(exc).__name__}: {exc}") from exc
        groups = _checked_groups(groups, label)
        if callable(pad):  # a filter whose padding follows the slice spacings: from every direction, all ranks alike
            pad = int(pad(groups))
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


def _checked_groups(groups: object, label: str) -> list[Directions]:
    """A sampler's plan, refused unless it is a non-empty list of :class:`Directions` that make sense.

    Cheap: types, shapes, and finite, positive extents of the few directions.
    """

    def refuse(what: str) -> ComponentError:
        return ComponentError(
            f"{label} planned {what}; a sampler's plan(shape, e, config) returns a non-empty list of "
            "tomofield.geometry.Directions (tomofield.protocols.Sampler): a fault of the sampler, not of the input"
        )

    if not isinstance(groups, (list, tuple)):
        raise refuse(ComponentError.got(groups))
    if not groups:
        raise refuse("no directions (an empty list)")
    for i, g in enumerate(groups):
        if not isinstance(g, Directions):
            raise refuse(f"{ComponentError.got(g)} as group {i}")
        frames, halves = (g.normals, g.u, g.v), (g.s_half, g.a_half, g.b_half)
        if not all(isinstance(t, Tensor) for t in (*frames, *halves)):
            raise refuse(f"directions whose fields are not all tensors (group {i})")
        n = g.normals.shape[0] if g.normals.dim() == 2 else -1
        if n < 1 or any(tuple(t.shape) != (n, 3) for t in frames) or any(tuple(t.shape) != (n,) for t in halves):
            shapes = ", ".join(str(tuple(t.shape)) for t in (*frames, *halves))
            raise refuse(f"directions of shapes {shapes} (group {i}): normals, u, v (L, 3), extents (L,), L >= 1")
        if not isinstance(g.num_slices, numbers.Integral) or isinstance(g.num_slices, bool) or g.num_slices < 1:
            raise refuse(f"{g.num_slices!r} slices per stack (group {i}; at least 1)")
        finite = all(bool(torch.isfinite(t).all()) for t in frames)
        if not (finite and all(bool((torch.isfinite(t) & (t > 0)).all()) for t in halves)):
            raise refuse(f"non-finite directions or extents that are not positive and finite (group {i})")
    return list(groups)
