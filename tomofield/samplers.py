"""Slice samplers: which stacks of parallel slices to cut from a volume.

A sampler's ``plan(shape, e, config)`` returns a list of :class:`Directions` groups;
all stacks of a group have the same number of slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from tomofield.geometry import Directions, fibonacci_directions, random_bases, stack_extents


@dataclass(frozen=True)
class SamplingConfig:
    """Options a sampler may read. ``directions`` L, ``slices`` M per stack.

    No defaults here: the engine's settings of the same names (``EngineConfig``) are the
    declarations, and :meth:`of` copies them, so the two cannot disagree.
    """

    directions: int
    slices: int
    hemisphere: bool
    seed: int
    extent: str

    @classmethod
    def of(cls, settings: Any) -> SamplingConfig:
        """The sampling options of ``settings`` (an ``EngineConfig`` or anything with these attributes)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


class FibonacciSampler:
    """ToNNO's sampler: L Fibonacci-lattice normals, seeded random in-plane bases."""

    name = "fibonacci"

    def plan(self, shape: Sequence[int], e: Tensor, config: SamplingConfig) -> list[Directions]:
        normals = fibonacci_directions(config.directions, hemisphere=config.hemisphere)
        gen = torch.Generator().manual_seed(int(config.seed))
        u, v = random_bases(normals, gen)
        s_half, a_half, b_half = stack_extents(e, normals, u, v, config.extent)
        return [Directions(normals, u, v, s_half, a_half, b_half, config.slices)]


_AXES = torch.eye(3, dtype=torch.float64)


def _axis_stack(axis: int, shape: Sequence[int], e: Tensor) -> Directions:
    """The volume's own slices along ``axis``: one slice per voxel layer, no rotation."""
    others = [i for i in range(3) if i != axis]
    n, u, v = _AXES[axis][None], _AXES[others[0]][None], _AXES[others[1]][None]
    e = e.to(torch.float64)
    return Directions(n, u, v, e[axis : axis + 1], e[others[0]][None], e[others[1]][None], int(shape[axis]))


class AxialSampler:
    """Slice-wise baseline: the slices of the first (D) axis, resampled to the slice size."""

    name = "axial"

    def plan(self, shape: Sequence[int], e: Tensor, config: SamplingConfig) -> list[Directions]:
        return [_axis_stack(0, shape, e)]


class OrthogonalSampler:
    """Three-axis baseline: the slices of each of the three axes, averaged."""

    name = "orthogonal"

    def plan(self, shape: Sequence[int], e: Tensor, config: SamplingConfig) -> list[Directions]:
        return [_axis_stack(axis, shape, e) for axis in range(3)]
