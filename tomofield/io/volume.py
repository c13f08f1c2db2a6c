"""The data types: a :class:`Volume`, the :class:`Heatmap` made from it, and the :class:`Reorientation` between frames."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tomofield.errors import InputError
from tomofield.io.nifti import VALUE_LIMIT, save_nifti, spacing_from_affine

#: Array layouts :meth:`Volume.from_array` takes: ``ijk`` is the affine's voxel order
#: (nibabel, MONAI, torchio), ``dhw`` tomofield's (and SimpleITK's ``GetArrayFromImage``).
LAYOUTS = ("ijk", "dhw")
#: The frames :class:`~tomofield.EngineConfig` ``orientation`` offers (see :class:`Reorientation`).
ORIENTATIONS = ("canonical", "stored")


@dataclass
class Volume:
    """A volume: data (C, D, H, W) float32, the affine and header of its first file.

    ``affine`` maps ``(i, j, k) = (w, h, d)`` voxel indices to millimetres; ``spacing``
    is per ``(d, h, w)`` axis and must be the affine's column norms in that order. Build
    one from a nibabel, MONAI or torchio array with :meth:`from_array`.
    """

    data: Tensor
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: object = None
    paths: list[Path] = dataclasses.field(default_factory=list)
    replaced: int = 0  #: non-finite voxels set to 0 under nan_policy="zero"

    def __post_init__(self) -> None:
        if not isinstance(self.data, Tensor) or self.data.ndim != 4:
            shape = tuple(getattr(self.data, "shape", ()))
            raise InputError(
                f"Volume.data must be a (C, D, H, W) tensor, got {type(self.data).__name__} of shape {shape}; "
                "Volume.from_array(array, affine, layout='ijk') takes a nibabel/MONAI/torchio array"
            )
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise InputError(f"Volume.affine must be 4 x 4, got shape {self.affine.shape}")
        from_affine = spacing_from_affine(self.affine, "Volume")
        spacing = tuple(float(s) for s in self.spacing)
        if not np.allclose(spacing, from_affine, rtol=1e-4):
            hint = (
                "; it is the affine's (i, j, k) order, but tomofield's spacing is per (d, h, w) = (k, j, i)"
                if np.allclose(spacing, from_affine[::-1], rtol=1e-4)
                else ""
            )
            raise InputError(
                f"Volume.spacing {spacing} contradicts the affine, whose voxel sizes per (d, h, w) are "
                f"{tuple(round(v, 6) for v in from_affine)}{hint}; omit it: Volume.from_array(array, affine, layout=...) "
                "reads it from the affine"
            )
        self.spacing = spacing  # type: ignore[assignment]
        data_shape = getattr(self.header, "get_data_shape", None)
        if data_shape is not None:
            ijk = tuple(int(n) for n in data_shape()[:3])
            if ijk[::-1] != tuple(self.data.shape[1:]):
                raise InputError(
                    f"Volume.data has grid (D, H, W) = {tuple(self.data.shape[1:])} but its header's (i, j, k) grid "
                    f"{ijk} is {ijk[::-1]} as (D, H, W) = (k, j, i): the array is in another axis order; "
                    "Volume.from_array(array, affine, layout='ijk') converts a nibabel/MONAI/torchio array"
                )

    @property
    def grid_ijk(self) -> tuple[int, int, int]:
        """The grid as the viewers show it: sizes along the affine's ``(i, j, k)`` (the tensor's ``(W, H, D)``)."""
        d, h, w = self.data.shape[1:]
        return (int(w), int(h), int(d))

    @property
    def spacing_ijk(self) -> tuple[float, float, float]:
        """The voxel sizes in mm along ``(i, j, k)``, as the viewers show them."""
        d, h, w = self.spacing
        return (w, h, d)

    def describe(self) -> str:
        """``grid 20 x 24 x 28, spacing 1 x 1.5 x 2 mm (i, j, k)``: what nibabel, ITK-SNAP and 3D Slicer show."""
        grid = " x ".join(map(str, self.grid_ijk))
        mm = " x ".join(f"{round(v, 3):g}" for v in self.spacing_ijk)
        return f"grid {grid}, spacing {mm} mm (i, j, k)"

    @classmethod
    def from_array(
        cls,
        array: Tensor | np.ndarray,
        affine: np.ndarray,
        layout: str = "ijk",
        *,
        channels: bool | None = None,
        header: object = None,
    ) -> Volume:
        """A volume from an array and its affine, in the array's axis order ``layout``.

        Args:
            array: ``(i, j, k)`` or channel-first ``(C, i, j, k)`` for ``layout="ijk"``
                (nibabel's ``get_fdata()``, a MONAI ``MetaTensor`` or torchio image without
                the batch axis); ``(D, H, W)`` or ``(C, D, H, W)`` for ``"dhw"``.
            affine: the 4 x 4 voxel-to-world matrix of the ``(i, j, k)`` indices (MONAI's
                ``meta["affine"]``, nibabel's ``img.affine``).
            channels: whether the first axis holds channels; default: when ``array`` is 4-D.
        """
        if layout not in LAYOUTS:
            raise InputError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        data = torch.as_tensor(np.asarray(array) if not isinstance(array, Tensor) else array.as_subclass(Tensor))
        channels = data.ndim == 4 if channels is None else channels
        if data.ndim != 3 + int(channels):
            want = "(C, i, j, k)" if layout == "ijk" else "(C, D, H, W)"
            raise InputError(f"expected a 3-D array or a 4-D channel-first {want} one, got shape {tuple(data.shape)}")
        if not channels:
            data = data[None]
        if layout == "ijk":
            data = data.permute(0, 3, 2, 1)
        affine = np.asarray(affine.detach().cpu() if isinstance(affine, Tensor) else affine, dtype=np.float64)
        spacing = spacing_from_affine(affine, "Volume.from_array")
        return cls(data.to(torch.float32).contiguous(), affine, spacing, header)


@dataclass(frozen=True)
class Reorientation:
    """The flips and axis swaps that turn a (..., D, H, W) tensor to the canonical frame, and back.

    Canonical is the closest RAS storage: ``W`` runs to the Right, ``H`` to Anterior, ``D``
    to Superior (nibabel's ``as_closest_canonical``, on the tensor). The engine draws its
    directions and in-plane bases in this frame, so the copies of one scan stored in other
    orders (LPS, sagittal slices) give the same heatmap, voxel for voxel. No resampling:
    an oblique affine goes to its nearest axes.
    """

    #: canonical tensor axis t (0, 1, 2 = D, H, W) is stored axis ``order[t]``
    order: tuple[int, int, int] = (0, 1, 2)
    #: per stored axis: reversed on the way to the canonical frame
    flips: tuple[bool, bool, bool] = (False, False, False)

    @classmethod
    def of(cls, affine: np.ndarray) -> Reorientation:
        """The reorientation of a volume with ``affine`` (the identity for RAS storage)."""
        from nibabel.orientations import io_orientation

        ornt = io_orientation(np.asarray(affine, dtype=np.float64))  # per voxel axis (i, j, k): world axis, sign
        if not np.all(np.isfinite(ornt)):
            return cls()
        world_of_stored = [int(ornt[2 - t, 0]) for t in range(3)]  # stored tensor axis t is voxel axis 2 - t
        order = tuple(world_of_stored.index(2 - t) for t in range(3))  # canonical D, H, W = world S, A, R
        flips = tuple(bool(ornt[2 - t, 1] < 0) for t in range(3))
        return cls(order, flips)  # type: ignore[arg-type]

    @property
    def identity(self) -> bool:
        return self.order == (0, 1, 2) and not any(self.flips)

    def forward(self, data: Tensor) -> Tensor:
        """Stored (..., D, H, W) -> canonical."""
        if self.identity:
            return data
        lead = data.ndim - 3
        flipped = [lead + t for t in range(3) if self.flips[t]]
        data = data.flip(flipped) if flipped else data
        return data.permute(*range(lead), *(lead + t for t in self.order))

    def backward(self, data: Tensor) -> Tensor:
        """Canonical (..., D, H, W) -> stored: the inverse of :meth:`forward`."""
        if self.identity:
            return data
        lead = data.ndim - 3
        data = data.permute(*range(lead), *(lead + self.order.index(t) for t in range(3)))
        flipped = [lead + t for t in range(3) if self.flips[t]]
        return data.flip(flipped) if flipped else data

    def spacing(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """The (d, h, w) spacing of the canonical tensor."""
        return tuple(float(spacing[t]) for t in self.order)  # type: ignore[return-value]


@dataclass
class Heatmap:
    """A reconstruction that knows its grid: data (K, D, H, W) on the grid of the volume it came from.

    Attributes:
        data: the heatmap, one channel per head output.
        affine: the input's voxel-to-world affine (NIfTI's (i, j, k) convention, RAS mm).
        spacing: voxel size per (d, h, w) axis in mm.
        header: the input's NIfTI header (its geometry is written back), or None.
        sources: the input's files, which :meth:`save` never replaces.
    """

    data: Tensor
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: object = None
    sources: tuple[Path, ...] = ()

    @classmethod
    def on(cls, data: Tensor, volume: Volume) -> Heatmap:
        """``data`` on the grid of ``volume`` (refused when the grids differ)."""
        if tuple(data.shape[-3:]) != tuple(volume.data.shape[1:]):
            raise InputError(
                f"heatmap grid {tuple(data.shape[-3:])} differs from the input grid {tuple(volume.data.shape[1:])}"
            )
        return cls(data, volume.affine, volume.spacing, volume.header, tuple(volume.paths))

    def to_array(self, layout: str = "dhw") -> Tensor:
        """The data in ``layout``: ``dhw`` is tomofield's (K, D, H, W), ``ijk`` the affine's (K, i, j, k)
        (nibabel's order, MONAI's and torchio's channel-first one): the inverse of
        :meth:`Volume.from_array`'s ``layout``."""
        if layout not in LAYOUTS:
            raise InputError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        return self.data if layout == "dhw" else self.data.permute(0, 3, 2, 1)

    def save(self, path: str | Path, overwrite: bool = False, description: str = "tomofield heatmap") -> Path:
        """Write as NIfTI with the input's affine and header geometry (atomic; no overwrite unless asked).

        Refused: replacing one of ``sources`` (even with ``overwrite``), and a heatmap with
        NaN or infinite values (a reconstruction that overflowed float32).
        """
        data = self.data.detach().cpu()
        bad = int((~torch.isfinite(data)).sum())
        if bad:
            raise InputError(
                f"not writing {str(path)!r}: the heatmap holds {bad} NaN or infinite value(s) of {data.numel()}, "
                "as when the reconstruction overflows float32; rescale the input so that its values stay within "
                f"+-{VALUE_LIMIT:g} (load_volume(..., check_content=True) checks this)"
            )
        return save_nifti(path, data, self.affine, self.header, overwrite, description=description, inputs=self.sources)


def save_heatmap(
    path: str | Path, heatmap: Tensor | Heatmap, reference: Volume | None = None, overwrite: bool = False
) -> Path:
    """Write a heatmap on the reference volume's grid with its affine and header geometry.

    ``heatmap`` is a :class:`Heatmap` (``reference`` then unneeded) or a (K, D, H, W)
    tensor on ``reference``'s grid.
    """
    if not isinstance(heatmap, Heatmap):
        if reference is None:
            raise InputError("save_heatmap needs the reference volume for a plain tensor heatmap")
        heatmap = Heatmap.on(heatmap, reference)
    elif reference is not None:
        heatmap = dataclasses.replace(heatmap, sources=(*heatmap.sources, *reference.paths))
    return heatmap.save(path, overwrite)
