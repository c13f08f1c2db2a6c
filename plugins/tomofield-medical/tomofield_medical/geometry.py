"""Grids in space: crops, resampling between affines, morphology with physical balls.

Convention (as :mod:`tomofield.io`): arrays are indexed (d, h, w) = NIfTI (k, j, i); an
affine is nibabel's 4 x 4 map from (i, j, k, 1) to RAS millimetres. Spacing is given in
(d, h, w) order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

# (d, h, w) <-> (i, j, k) = (w, h, d): the same permutation both ways
_PERM = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)

Box = tuple[int, int, int, int, int, int]
_EPS = 1e-6  # distances within this of the radius count as on the ball


def bounding_box(mask: np.ndarray) -> Box | None:
    """``(d0, h0, w0, d1, h1, w1)`` (inclusive-exclusive) of the true voxels, or None when none are."""
    if not mask.any():
        return None
    lo, hi = [], []
    for ax in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    return (*lo, *hi)  # type: ignore[return-value]


def shifted_affine(affine: np.ndarray, start_dhw: Sequence[float]) -> np.ndarray:
    """The affine of a sub-grid whose voxel 0 is voxel ``start_dhw`` of ``affine``'s grid."""
    d, h, w = (float(s) for s in start_dhw)
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, 3] = affine[:3, :3] @ np.array([w, h, d]) + affine[:3, 3]
    return out


def same_grid(shape_a, affine_a, shape_b, affine_b, atol: float = 1e-3) -> bool:
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=atol)


def resample(
    src: np.ndarray,
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """``src`` (D, H, W) resampled onto the grid ``(dst_shape, dst_affine)``.

    Every output voxel takes the value of ``src`` at the same point in space (trilinear for
    ``order=1``, nearest for ``order=0``); points outside ``src`` take ``cval``. When the
    grids differ only by a whole-voxel shift inside ``src``, the result is an exact copy.
    """
    src = np.asarray(src)
    m = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(dst_affine, dtype=np.float64)
    m = _PERM @ m @ _PERM  # dst (d, h, w) -> src (d, h, w)
    mat, off = m[:3, :3], m[:3, 3]
    shape = tuple(int(s) for s in dst_shape)
    r = np.round(off)
    if np.allclose(mat, np.eye(3), atol=1e-6) and np.allclose(off, r, atol=1e-4):
        lo = r.astype(int)
        hi = lo + np.array(shape)
        if np.all(lo >= 0) and np.all(hi <= np.array(src.shape)):
            return src[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].copy()
    out = ndi.affine_transform(
        src.astype(np.float32, copy=False),
        mat,
        offset=off,
        output_shape=shape,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
    )
    return out.astype(src.dtype, copy=False) if order == 0 else out


def _dilate(mask: np.ndarray, radius: float, sampling: Sequence[float]) -> np.ndarray:
    if not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(~mask, sampling=sampling) <= radius + _EPS


def _erode(mask: np.ndarray, radius: float, sampling: Sequence[float]) -> np.ndarray:
    if mask.all():
        return mask.copy()
    return ndi.distance_transform_edt(mask, sampling=sampling) > radius + _EPS


def ball_closing(mask: np.ndarray, radius: float, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Binary closing by the ball ``{v : |v * spacing| <= radius}``, outside the array empty.

    Computed with exact Euclidean distance transforms (dilation: distance to the set within
    ``radius``; erosion: distance to the complement beyond it), which equals the closing by
    that discrete ball and costs a few passes whatever the radius.
    """
    pad = _pad(radius, spacing)
    m = np.pad(np.asarray(mask, dtype=bool), [(p, p) for p in pad])
    out = _erode(_dilate(m, radius, spacing), radius, spacing)
    return out[tuple(slice(p, p + s) for p, s in zip(pad, mask.shape, strict=True))]


def ball_opening(mask: np.ndarray, radius: float, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Binary opening by the same ball as :func:`ball_closing`, outside the array empty."""
    pad = _pad(radius, spacing)
    m = np.pad(np.asarray(mask, dtype=bool), [(p, p) for p in pad])
    out = _dilate(_erode(m, radius, spacing), radius, spacing)
    return out[tuple(slice(p, p + s) for p, s in zip(pad, mask.shape, strict=True))]


def _pad(radius: float, spacing: Sequence[float]) -> list[int]:
    return [int(np.floor(radius / float(s))) + 1 for s in spacing]


def ball(radius: float, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The structuring element ``{v : |v * spacing| <= radius}`` as a boolean array."""
    half = [int(np.floor(radius / float(s))) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * float(s) for h, s in zip(half, spacing, strict=True)], indexing="ij")
    return np.sqrt(sum(g**2 for g in grids)) <= radius + _EPS
