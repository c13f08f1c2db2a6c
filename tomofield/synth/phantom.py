"""Analytic phantoms for checks and demos."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Default balls: centre (d, h, w) as a fraction of the half-extent, radius in mm, value.
DEFAULT_BALLS = (
    ((0.30, 0.10, -0.15), 14.0, 1.0),
    ((-0.35, -0.25, 0.20), 10.0, 0.7),
    ((0.00, 0.35, 0.35), 8.0, 1.4),
    ((-0.10, -0.30, -0.40), 6.0, 0.5),
)


def ball_phantom(
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (2.5, 1.0, 1.0),
    balls: Sequence[tuple[Sequence[float], float, float]] = DEFAULT_BALLS,
) -> Tensor:
    """A (D, H, W) volume of uniform balls, round in millimetres.

    Args:
        shape: grid (D, H, W).
        spacing: voxel size (d, h, w) in mm.
        balls: ``(centre, radius_mm, value)``; centres in [-1, 1] per axis, relative to
            the half-extent of the volume along that axis. Overlaps add up.
    """
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    half = [(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True)]
    d, h, w = torch.meshgrid(*axes, indexing="ij")
    vol = torch.zeros(tuple(shape), dtype=torch.float64)
    for centre, radius, value in balls:
        cd, ch, cw = (c * hh for c, hh in zip(centre, half, strict=True))
        inside = (d - cd) ** 2 + (h - ch) ** 2 + (w - cw) ** 2 <= radius**2
        vol += value * inside
    return vol.float()
