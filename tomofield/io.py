"""NIfTI in and out with nibabel, keeping the input's affine and header geometry.

Convention: nibabel's data array is indexed ``(i, j, k[, c])``; tomofield's tensors
are ``(C, D, H, W)`` with ``D = k``, ``H = j``, ``W = i`` (the slice axis of an axial
scan first), so ``tensor[c] = array[..., c].transpose(2, 1, 0)``. The spacing of a
volume is given in the tensor's axis order (d, h, w).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tomofield.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Volume:
    """A loaded volume: data (C, D, H, W) float32, the affine and header of its first file."""

    data: Tensor
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: object
    paths: list[Path]
    replaced: int = 0  #: non-finite voxels set to 0 under nan_policy="zero"


@dataclass
class Heatmap:
    """A reconstruction that knows its grid: data (K, D, H, W) on the grid of the volume it came from.

    Attributes:
        data: the heatmap, one channel per head output.
        affine: the input's voxel-to-world affine (NIfTI's (i, j, k) convention, RAS mm).
        spacing: voxel size per (d, h, w) axis in mm.
        header: the input's NIfTI header (its geometry is written back), or None.
    """

    data: Tensor
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: object = None

    @classmethod
    def on(cls, data: Tensor, volume: Volume) -> Heatmap:
        """``data`` on the grid of ``volume`` (refused when the grids differ)."""
        if tuple(data.shape[-3:]) != tuple(volume.data.shape[1:]):
            raise InputError(
                f"heatmap grid {tuple(data.shape[-3:])} differs from the input grid {tuple(volume.data.shape[1:])}"
            )
        return cls(data, volume.affine, volume.spacing, volume.header)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write as NIfTI with the input's affine and header geometry (atomic; no overwrite unless asked)."""
        return save_nifti(
            path, self.data.detach().cpu(), self.affine, self.header, overwrite, description="tomofield heatmap"
        )


def cache_dir() -> Path:
    """tomofield's cache directory: compiled kernels, converted weights.

    ``TOMOFIELD_CACHE`` when set, else ``tomofield`` under ``XDG_CACHE_HOME`` (default
    ``~/.cache``, so ``~/.cache/tomofield``). Nothing is created here.
    """
    base = os.environ.get("TOMOFIELD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tomofield"
    )
    return Path(base)


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def spacing_from_affine(affine: np.ndarray, source: str = "") -> tuple[float, float, float]:
    """Voxel size per (d, h, w) axis: the column norms of the affine's 3x3 block."""
    block = np.asarray(affine, dtype=np.float64)[:3, :3]
    ijk = np.linalg.norm(block, axis=0)
    degenerate = not np.all(np.isfinite(ijk)) or np.any(ijk <= 0)
    if not degenerate:  # columns (nearly) linearly dependent, whatever their lengths
        degenerate = abs(np.linalg.det(block)) / float(np.prod(ijk)) < 1e-6
    if degenerate:
        raise InputError(
            f"{source}: the affine is not invertible (voxel sizes {ijk.tolist()}); cannot place voxels in space"
        )
    return float(ijk[2]), float(ijk[1]), float(ijk[0])


def _load_one(path: Path) -> tuple[np.ndarray, object]:
    import nibabel as nib

    if not path.exists():
        raise InputError(f"input file {str(path)!r} does not exist")
    if not is_nifti(path):
        raise InputError(f"input file {str(path)!r} is not NIfTI; valid suffixes: {', '.join(NIFTI_SUFFIXES)}")
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel, gzip and zlib raise many types on corrupt files
        raise InputError(f"cannot read {str(path)!r} as NIfTI ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 5 and arr.shape[3] == 1:  # (i, j, k, 1, c): NIfTI vector images
        arr = arr[:, :, :, 0, :]
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise InputError(f"{str(path)!r} has shape {arr.shape}: expected a 3D volume or 4D (channels last)")
    if min(arr.shape[:3]) < 2:
        raise InputError(
            f"{str(path)!r} has shape {arr.shape[:3]}: a 2D image, not a volume (every axis needs >= 2 voxels)"
        )
    return arr, img


NAN_POLICIES = ("refuse", "zero")
#: Voxel sizes (mm) outside this range are taken for a broken header.
SPACING_RANGE = (1e-3, 1e3)


def load_volume(
    paths: str | Path | Sequence[str | Path], nan_policy: str = "refuse", check_content: bool = False
) -> Volume:
    """Load one NIfTI (3D, or 4D with channels last) or several, stacked as channels.

    Several files must share their grid: same shape and affine.

    Args:
        nan_policy: ``refuse`` NaN/Inf voxels, or replace them by ``zero`` (the count is
            kept in ``Volume.replaced``).
        check_content: also refuse constant volumes (nothing to reconstruct).
    """
    if nan_policy not in NAN_POLICIES:
        raise InputError(f"unknown NaN policy {nan_policy!r}; valid: {', '.join(NAN_POLICIES)}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no input file given")
    arrays, first = [], None
    for p in paths:
        arr, img = _load_one(p)
        if first is None:
            first = (p, arr.shape[:3], img)
        else:
            p0, shape0, img0 = first
            if arr.shape[:3] != shape0:
                raise InputError(
                    f"{str(p)!r} has grid {arr.shape[:3]} but {str(p0)!r} has {shape0}: channels must share a grid"
                )
            if not np.allclose(img.affine, img0.affine, atol=1e-3):
                raise InputError(f"{str(p)!r} and {str(p0)!r} have different affines: channels must be co-registered")
        arrays.append(arr)
    assert first is not None
    data = np.concatenate(arrays, axis=3)
    bad = ~np.isfinite(data)
    replaced = int(bad.sum())
    if replaced and nan_policy == "refuse":
        raise InputError(
            f"{', '.join(map(str, paths))}: {replaced} non-finite voxel(s) (NaN or Inf); fix them first or "
            "pass --nan-policy zero to replace them by 0"
        )
    if replaced:
        data = np.where(bad, np.float32(0), data)
    if check_content:
        for c in range(data.shape[3]):
            lo, hi = float(data[..., c].min()), float(data[..., c].max())
            if lo == hi:
                raise InputError(
                    f"{', '.join(map(str, paths))}: channel {c} is constant ({lo}): nothing to reconstruct"
                )
    img = first[2]
    spacing = spacing_from_affine(img.affine, str(paths[0]))
    lo, hi = SPACING_RANGE
    if not all(lo <= s <= hi for s in spacing):
        raise InputError(
            f"{paths[0]}: voxel size {tuple(round(s, 6) for s in spacing)} mm is outside [{lo}, {hi}] mm; "
            "the header's affine is probably wrong (fix it, e.g. in 3D Slicer, or use --geometry normalized)"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(data.transpose(3, 2, 1, 0)))
    return Volume(tensor, np.asarray(img.affine), spacing, img.header, paths, replaced)


def check_output_path(path: str | Path, overwrite: bool = False, suffixes: Sequence[str] = NIFTI_SUFFIXES) -> Path:
    """Refuse early an output that would overwrite a file or has the wrong suffix."""
    path = Path(path)
    if not str(path).lower().endswith(tuple(suffixes)):
        raise InputError(f"output {str(path)!r} must end with one of: {', '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise InputError(f"output {str(path)!r} exists; pass --overwrite to replace it")
    if path.exists() and path.is_dir():
        raise InputError(f"output {str(path)!r} is a directory")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it into place.

    Nothing appears at ``path`` unless ``write`` succeeds; an existing file is kept
    unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"output {str(path)!r} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if str(path).lower().endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def to_nifti_array(data: Tensor | np.ndarray) -> np.ndarray:
    """(K, D, H, W) -> nibabel array (i, j, k) when K == 1, else (i, j, k, K)."""
    arr = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
    if arr.ndim == 3:
        arr = arr[None]
    arr = arr.transpose(3, 2, 1, 0)
    return np.ascontiguousarray(arr[..., 0] if arr.shape[3] == 1 else arr)


def save_nifti(
    path: str | Path,
    data: Tensor | np.ndarray,
    affine: np.ndarray,
    header: object | None = None,
    overwrite: bool = False,
    dtype: type = np.float32,
    description: str = "tomofield",
) -> Path:
    """Write ``data`` (K, D, H, W) or (D, H, W) atomically as NIfTI.

    With a reference ``header``, its geometry (qform, sform and their codes, units) is
    kept and only the data type, shape, scaling and description change.
    """
    import nibabel as nib

    arr = to_nifti_array(data).astype(dtype)
    if header is not None:
        hdr = header.copy()
        hdr.set_data_dtype(dtype)
        img = nib.Nifti1Image(arr, None, header=hdr)
        img.set_qform(*header.get_qform(coded=True)) if header.get_qform(coded=True)[0] is not None else None
        img.set_sform(*header.get_sform(coded=True)) if header.get_sform(coded=True)[0] is not None else None
        if header.get_sform(coded=True)[0] is None and header.get_qform(coded=True)[0] is None:
            img.set_sform(np.asarray(affine), code=2)
    else:
        img = nib.Nifti1Image(arr, np.asarray(affine))
        img.set_qform(np.asarray(affine), code=1)
        img.set_sform(np.asarray(affine), code=1)
    img.header.set_slope_inter(None, None)
    img.header["descrip"] = description.encode()[:79]
    if np.issubdtype(arr.dtype, np.floating) and arr.size:
        img.header["cal_min"], img.header["cal_max"] = float(arr.min()), float(arr.max())
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)), overwrite=overwrite)


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
    return heatmap.save(path, overwrite)


def affine_for_spacing(spacing: Sequence[float]) -> np.ndarray:
    """A diagonal affine for a (d, h, w) spacing (RAS, origin at voxel 0)."""
    sd, sh, sw = (float(s) for s in spacing)
    return np.diag([sw, sh, sd, 1.0])
