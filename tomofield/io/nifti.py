"""The NIfTI writer and the geometry of an affine (spacing, the affine of a spacing)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from tomofield.errors import InputError
from tomofield.io.files import NIFTI_SUFFIXES, atomic_write

#: float32's largest finite value: volumes are computed in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Voxel magnitudes above this are refused in volumes to reconstruct (``check_content``):
#: squares of values beyond ~1.8e19 overflow float32 (norm layers, attention), and a
#: reconstruction multiplies values by up to ~1e8 (filter, slice area, directions).
VALUE_LIMIT = 1e18


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


def _range(values: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of the finite values, in float64; None when there is none."""
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.any():
            return None
        if not finite.all():
            values = values[finite]
    elif values.size == 0:
        return None
    return float(values.min()), float(values.max())


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
    header: Any = None,  # a nibabel header (Nifti1Header) or None
    overwrite: bool = False,
    dtype: type = np.float32,
    description: str = "tomofield",
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Write ``data`` (K, D, H, W) or (D, H, W) atomically as NIfTI.

    With a reference ``header``, its geometry (qform, sform and their codes, units) is
    kept and only the data type, shape, scaling and description change. Values ``dtype``
    cannot hold (beyond float32's range; for an integer type, fractions or values out of
    its range) are refused, never rounded to infinity or wrapped. ``inputs`` are never
    replaced.
    """
    import nibabel as nib

    arr = _storable(to_nifti_array(data), np.dtype(dtype), path)
    if header is not None:
        hdr = header.copy()
        hdr.set_data_dtype(dtype)
        img = nib.Nifti1Image(arr, None, header=hdr)
        if header.get_qform(coded=True)[0] is not None:
            img.set_qform(*header.get_qform(coded=True))
        if header.get_sform(coded=True)[0] is not None:
            img.set_sform(*header.get_sform(coded=True))
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
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)), overwrite=overwrite, inputs=inputs)


def _storable(arr: np.ndarray, dtype: np.dtype, path: str | Path) -> np.ndarray:
    """``arr`` as ``dtype``, refused (naming ``path`` and the values) when the cast would change values."""
    if arr.dtype == dtype:
        return arr
    if np.iscomplexobj(arr):
        raise InputError(f"cannot write {str(path)!r}: complex data cannot be stored as {dtype}")
    span = _range(arr)
    if span is not None and dtype.kind == "f":
        limit = float(np.finfo(dtype).max)
        if max(abs(span[0]), abs(span[1])) > limit:
            raise InputError(
                f"cannot write {str(path)!r} as {dtype}: values span [{span[0]!r}, {span[1]!r}], beyond its "
                f"range of +-{limit:.4g}"
            )
    elif dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError(f"cannot write {str(path)!r} as {dtype}: the data hold NaN or infinite values")
        lo, hi = span if span is not None else (0.0, 0.0)
        if lo < info.min or hi > info.max or (arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr))):
            raise InputError(
                f"cannot write {str(path)!r} as {dtype}: values span [{lo!r}, {hi!r}]"
                + (" with fractions" if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)) else "")
                + f"; {dtype} holds the integers {info.min}..{info.max}"
            )
    return arr.astype(dtype)


def affine_for_spacing(spacing: Sequence[float]) -> np.ndarray:
    """A diagonal affine for a (d, h, w) spacing (RAS, origin at voxel 0)."""
    sd, sh, sw = (float(s) for s in spacing)
    return np.diag([sw, sh, sd, 1.0])
