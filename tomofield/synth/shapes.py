"""The anatomy's shapes: a grid in millimetres, smooth noise, ellipsoids, blobs, a vessel tree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

_REF = 48.0


ORGAN_RADIUS = (7.0, 14.0)  # equivalent radius of the enhancing organ, reference voxels


ORGAN_CONTRAST = (0.4, 0.9)  # above tissue; lesions are 0.4-0.9 above their surroundings


#: What a realistic scan adds to the normalised image inside the body (:func:`as_scan`): its
#: stored signal is about ``img + SIGNAL_FLOOR`` there.
SIGNAL_FLOOR = 0.2


def _soft(signed_dist: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume weight: 1 inside (distance < 0), 0 outside, linear ramp of ``width``."""
    return np.clip(0.5 - signed_dist / width, 0.0, 1.0).astype(np.float32)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3D rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _in_ball(rng: np.random.Generator) -> np.ndarray:
    """Uniform random point in the unit ball."""
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v) * rng.uniform() ** (1 / 3)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox) -> np.ndarray:
    """Gaussian-filtered white noise normalised to unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), sigma_vox)
    return n / max(float(n.std()), 1e-6)


class _Grid:
    """Physical (mm) coordinates of a (D, H, W) grid, centred on the volume."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float]):
        self.shape = tuple(int(s) for s in shape)
        self.sp = np.asarray(spacing, dtype=float)
        self.half = (np.asarray(self.shape) - 1) / 2

    def box(self, center: np.ndarray, radius: float):
        """Index box of half-size ``radius`` mm around ``center`` and its local mm offsets."""
        sl, offs = [], []
        for ax in range(3):
            c = center[ax] / self.sp[ax] + self.half[ax]
            lo = max(int(np.floor(c - radius / self.sp[ax])), 0)
            hi = min(int(np.ceil(c + radius / self.sp[ax])) + 1, self.shape[ax])
            sl.append(slice(lo, max(hi, lo)))
            offs.append(((np.arange(lo, max(hi, lo)) - c) * self.sp[ax]).astype(np.float32))
        return tuple(sl), np.ix_(*offs)


def _ellipsoid_r(offs, axes: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Normalised radius (1 on the surface) of a rotated ellipsoid at local offsets."""
    q = 0.0
    for i in range(3):
        u = rot[i, 0] * offs[0] + rot[i, 1] * offs[1] + rot[i, 2] * offs[2]
        q = q + (u / axes[i]) ** 2
    return np.sqrt(q)


def _bezier(p0, p1, p2, step: float) -> np.ndarray:
    """Quadratic Bezier curve sampled every ~``step`` mm."""
    n = int((np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)) / step) + 2
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2


def _vessels(rng, ctr, axes, unit: float, step: float):
    """A vessel tree: long curved trunks crossing the body and thinner branches off them.

    Returns the centre-line points (mm) and the radius (mm) and contrast at each point.
    """
    pts: list[np.ndarray] = []
    rad: list[np.ndarray] = []
    con: list[np.ndarray] = []
    for i in range(rng.integers(2, 4) + rng.integers(1, 4)):
        if i < 2 or rng.uniform() < 0.3 or not pts:  # trunk
            u = rng.standard_normal(3)
            v = -u + 0.6 * rng.standard_normal(3)
            p0 = ctr + 0.9 * axes * u / np.linalg.norm(u)
            p2 = ctr + 0.9 * axes * v / np.linalg.norm(v)
            r0 = rng.uniform(1.2, 1.8) * unit
        else:  # branch from a point of an earlier vessel
            trunk = pts[rng.integers(len(pts))]
            p0 = trunk[rng.integers(len(trunk))]
            p2 = ctr + 0.85 * axes * _in_ball(rng)
            r0 = rng.uniform(0.7, 1.2) * unit
        p = _bezier(p0, (p0 + p2) / 2 + 0.35 * axes * _in_ball(rng), p2, step)
        pts.append(p)
        rad.append(np.linspace(r0, r0 * rng.uniform(0.6, 0.9), len(p)))
        con.append(np.full(len(p), rng.uniform(0.4, 0.8)))
    return pts, rad, con


def _blob(rng, g: _Grid, center: np.ndarray, axes: np.ndarray, edge: float):
    """Smooth rotated ellipsoid: (slices, partial-volume weight)."""
    sl, offs = g.box(center, axes.max() + 2 * edge)
    r = _ellipsoid_r(offs, axes, _rotation(rng))
    return sl, _soft((r - 1.0) * axes.mean(), 1.5 * edge)


def _tubes(rng, g: _Grid, ctr: np.ndarray, b_ax: np.ndarray, unit: float, edge: float):
    """Vessel tree and calcification dots, rendered from one distance transform."""
    pts, rad, con = _vessels(rng, ctr, b_ax, unit, 0.4 * edge)
    n_dots = rng.integers(3, 9)
    pts.append(ctr + b_ax * 0.8 * np.stack([_in_ball(rng) for _ in range(n_dots)]))
    rad.append(rng.uniform(0.6, 1.1, n_dots) * unit)
    con.append(rng.uniform(0.9, 1.4, n_dots))
    pts, rad, con = np.concatenate(pts), np.concatenate(rad), np.concatenate(con)
    idx = np.clip(np.rint(pts / g.sp + g.half).astype(int), 0, np.asarray(g.shape) - 1)
    owner = np.full(g.shape, -1, dtype=np.int64)
    owner[tuple(idx.T)] = np.arange(len(pts))
    _, near = ndi.distance_transform_edt(owner < 0, sampling=g.sp, return_indices=True)
    k = owner[tuple(near)]
    _, coords = g.box(np.zeros(3), float(np.max(np.asarray(g.shape) * g.sp)))
    d = np.sqrt(sum((coords[i] - pts[k, i]) ** 2 for i in range(3)))
    return con[k].astype(np.float32) * _soft(d - rad[k], edge)
