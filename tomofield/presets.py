"""Presets: the directions L, slices M and slice size of a run, chosen together.

A preset fills the settings a run did not give explicitly (and, for the slice size, did
not inherit from a trained run, whose encoder was trained at its own size). ``default``
and ``paper`` are fixed counts. ``fast`` sizes itself to each volume by its longest side
in voxels, from a table (:data:`FAST_BY_SIZE`): a bigger grid gets finer slices and wider
slice images, at about the same number of encoder slices per volume, so that a CPU run
takes about a minute per volume (docs/benchmarks.md, "The presets, on the demo's held-out
volumes").

Why fine slicing is not bought with directions: the second difference of ``tomo`` divides
the slice scores by the slice spacing squared, and the backprojection averages over L
directions, so white-noise scores give a heatmap noise of ``(M - 1)^2 / sqrt(L)`` at a
fixed extent (tests/numeric/test_noise_law.py). A trained encoder's scores are smoother
from slice to slice, and their heatmap's noise grows about as ``M^1.1 / L^0.4``
(docs/benchmarks.md section 10, the noise figure), still faster in M than the lesions'
contrast. At a fixed number of encoder slices ``L x M`` coarse stacks of many directions
win until the slices stop resolving the lesions, so the table keeps ``M`` as small as the
grid allows.

Example:
    A 40-voxel volume gets the measured quality-cost point, 128 x 16 slices of 64 px; a
    512 x 512 x 300 CT gets finer stacks of 224-pixel slices:

    >>> PRESETS["fast"].for_volume((19, 36, 34))
    {'directions': 128, 'slices': 16, 'slice_size': 64}
    >>> PRESETS["fast"].for_volume((300, 512, 512))
    {'directions': 48, 'slices': 48, 'slice_size': 224}
    >>> PRESETS["paper"].for_volume((300, 512, 512))
    {'directions': 2000, 'slices': 100}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tomofield.errors import InputError

#: the last row of a size table: every grid larger than the row before
LARGER = 1 << 30
#: ``fast`` by the volume's longest side in voxels: (up to this many voxels, L, M, slice size).
#: The first row is measured (docs/benchmarks.md section 10: on 40-48 voxel grids 128 x 16
#: slices, 1/30 of the reference's, reconstruct at least as well as 1024 x 64); the others are
#: extrapolated from it: between 2,300 and 4,000 encoder slices (the largest row's 224-pixel
#: slices cost about 20 times a 48-pixel one on a CPU), M rising with the grid so that a
#: slice stays a few voxels thick.
FAST_BY_SIZE: tuple[tuple[int, int, int, int], ...] = (
    (64, 128, 16, 64),
    (128, 96, 32, 128),
    (256, 80, 48, 192),
    (LARGER, 48, 48, 224),
)
#: the settings a preset may choose
CHOSEN = ("directions", "slices", "slice_size")


@dataclass(frozen=True)
class Preset:
    """Directions, slices and slice size chosen together.

    Attributes:
        name: the preset's name.
        summary: one line for ``--help``.
        settings: fixed settings, for every volume.
        by_size: rows ``(longest side up to, L, M, slice size)``, first match wins; when
            given, the settings depend on the volume (:meth:`for_volume`).
    """

    name: str
    summary: str
    settings: Mapping[str, int] = field(default_factory=dict)
    by_size: tuple[tuple[int, int, int, int], ...] = ()

    @property
    def per_volume(self) -> bool:
        """Whether the settings depend on the volume's grid."""
        return bool(self.by_size)

    @property
    def chooses(self) -> tuple[str, ...]:
        """The settings this preset sets."""
        return CHOSEN if self.per_volume else tuple(self.settings)

    def for_volume(self, shape: Sequence[int]) -> dict[str, int]:
        """The settings for a volume of spatial ``shape`` (any axis order: only its longest side counts)."""
        if not self.per_volume:
            return dict(self.settings)
        if len(shape) != 3 or min(int(n) for n in shape) < 1:
            raise ValueError(f"a volume needs 3 spatial axes, got {tuple(shape)}")
        longest = max(int(n) for n in shape)
        for up_to, directions, slices, size in self.by_size:
            if longest <= up_to:
                return {"directions": directions, "slices": slices, "slice_size": size}
        raise ValueError(f"preset {self.name!r} has no row for a longest side of {longest} voxels")

    def describe(self) -> str:
        """What it chooses, in words (for ``--help`` and errors)."""
        if self.per_volume:
            rows = [
                f"{'up to ' + str(up) if up < LARGER else 'larger'}: L {L} x M {M}, {s} px"
                for up, L, M, s in self.by_size
            ]
            return f"{self.summary} (longest side in voxels {'; '.join(rows)})"
        fixed = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        return f"{self.summary} ({fixed})" if fixed else self.summary


#: ``Engine(preset=NAME)`` and ``tomofield run --preset NAME``.
PRESETS: dict[str, Preset] = {
    "fast": Preset("fast", "sized to the volume, about a minute per volume on a CPU", by_size=FAST_BY_SIZE),
    "default": Preset("default", "the engine's own defaults (--directions, --slices, --slice-size)"),
    "paper": Preset("paper", "the paper's counts", {"directions": 2000, "slices": 100}),
}


def resolve(preset: str | None) -> Preset | None:
    """The preset of a name (None: none), or an error that lists the valid ones."""
    if preset is None:
        return None
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[preset]


def settings_for(preset: Preset | None, chosen: Sequence[str], shape: Sequence[int]) -> dict[str, Any]:
    """The settings ``preset`` chooses for a volume of ``shape``, only those of ``chosen``."""
    if preset is None or not chosen:
        return {}
    got = preset.for_volume(shape)
    return {k: got[k] for k in chosen if k in got}
