"""Synthetic weakly supervised lesion dataset, the project's built-in default data.

Every case is an anatomy-like volume (roughly CT / 1000, background ~0): a body with a fat
layer, textured soft tissue, plain and air-filled organs, one large enhancing organ, a vessel
tree, calcifications and cysts, drawn alike in both classes. Positives also carry 1-3
lobulated lesions with a mottled interior, 0.4-0.9 brighter than their surroundings. The
negative drawn from a generator state is the lesion-free twin of the positive drawn from the
same state. A per-volume random gain and offset, and bright distractors in both classes, keep
global intensity statistics from separating the classes. Sizes are in mm, relative to 48
reference voxels along the shortest physical axis, so anisotropic spacing still gives
physically round lesions. ``lesion_radius=(lo, hi)`` asks for lesion sizes instead: each
lesion's mask then has an equivalent radius in that range, in voxels of the finest spacing
(:func:`make_case`); ``synth.json`` beside a dataset's CSVs records how it was made.

``background="realistic"`` makes the same anatomy look like a stored scan instead of a
normalised one (:func:`as_scan`): finer multi-scale tissue texture, a smooth multiplicative
bias field (shading of +-15-40 %), Rician noise, and the intensities written in a
scanner's own unit and offset as int16: a dataset-wide gain of 50-3000 units per tissue
step and an offset of -1024 to +500, each volume's gain a further 0.6-1.6 times that
(arbitrary units that differ from scan to scan, as in MRI). Its grid keeps a roughly
cubic field of view whatever the spacing, so a thick-slice spacing gives fewer slices
along that axis: ``size`` voxels at most along the finest axis, each side 85-100 % of its
share.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = ["as_scan", "equivalent_radius", "lesion_limits", "make_case", "write_dataset"]

#: The looks :func:`write_dataset` can give its volumes.
BACKGROUNDS = ("plain", "realistic")

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
    pts, rad, con = [], [], []
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


def _lesion(rng, g: _Grid, center: np.ndarray, radius: float, edge: float, counts: tuple[int, int, int] | None = None):
    """One lobulated, boundary-perturbed ellipsoid: (slices, mask, soft weight, texture).

    ``counts``: ``(lo, target, hi)`` voxel counts: the boundary's level is chosen so that the
    mask holds ``target`` voxels (within ``lo..hi``; :func:`_counted`) instead of lying at the
    ellipsoid's surface (the default, which the built-in lesion sizes use).
    """
    axes = radius * rng.uniform(0.8, 1.2, 3)
    axes *= radius / np.prod(axes) ** (1 / 3)
    rot = _rotation(rng)
    lobes = [(rng.standard_normal(3), rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.6)) for _ in range(rng.integers(0, 4))]
    extent = max([1.25 * axes.max()] + [(d + 1.25 * r) * radius for _, d, r in lobes])
    sl, offs = g.box(center, extent + 2 * edge)
    r = _ellipsoid_r(offs, axes, rot)
    for direction, dist, lobe_r in lobes:
        c = direction / np.linalg.norm(direction) * dist * radius
        d2 = sum((offs[i] - c[i]) ** 2 for i in range(3))
        r = np.minimum(r, np.sqrt(d2) / (lobe_r * radius))
    shape = r.shape
    noise = np.clip(_smooth_noise(rng, shape, 0.35 * radius / g.sp), -2.0, 2.0)
    field = r + rng.uniform(0.05, 0.12) * noise
    mask = _one_blob(field < 1.0) if counts is None else _counted(field, counts)
    soft = ndi.gaussian_filter(mask.astype(np.float32), 0.6 * edge / g.sp)
    texture = _smooth_noise(rng, shape, 1.0 * edge / g.sp)
    return sl, mask, soft, texture


def _one_blob(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask``, its holes filled."""
    lab, n = ndi.label(mask)
    if n > 1:
        mask = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    return ndi.binary_fill_holes(mask)


def _counted(field: np.ndarray, counts: tuple[int, int, int]) -> np.ndarray:
    """The blob ``field <= level`` (:func:`_one_blob`) whose level gives it ``target`` voxels, within ``lo..hi``.

    The level is the ``want``-th smallest value of ``field``; dropping smaller components
    and filling holes changes the count a little, so ``want`` is corrected by the miss a few
    times. May return a count outside ``lo..hi`` (the caller draws again).
    """
    lo, target, hi = counts
    values = np.sort(field, axis=None)
    want, mask = target, np.zeros(field.shape, dtype=bool)
    for _ in range(8):
        if not 1 <= want <= values.size:
            break
        mask = _one_blob(field <= values[want - 1])
        n = int(mask.sum())
        if lo <= n <= hi:
            break
        want += target - n
    return mask


def _place(rng, g: _Grid, radius: float, edge: float, allowed: np.ndarray):
    """Draw a lesion of about ``radius`` mm inside ``allowed``; shrink it if there is no room."""
    room = ndi.distance_transform_edt(allowed, sampling=g.sp)
    for _ in range(60):
        cand = np.flatnonzero(room.ravel() > 1.15 * radius + edge)
        if cand.size:
            idx = np.unravel_index(rng.choice(cand), g.shape)
            center = (np.asarray(idx) - g.half + rng.uniform(-0.5, 0.5, 3)) * g.sp
            sl, m, soft, tex = _lesion(rng, g, center, radius, edge)
            if m.any() and not (m & ~allowed[sl]).any():
                return sl, m, soft, tex
        radius *= 0.95
    raise RuntimeError(f"no room for lesions in {g.shape} x {tuple(g.sp)} mm")


def _voxel_counts(radius: tuple[float, float], target: float, spacing: Sequence[float]) -> tuple[int, int, int]:
    """``(lo, target, hi)`` voxel counts of masks whose equivalent radius lies in ``radius`` (voxels of the finest spacing).

    A range too narrow to hold a whole voxel count gets the count nearest ``target``.
    """
    sp = np.asarray(spacing, dtype=float)
    per_voxel = float(np.prod(sp / sp.min()))  # a voxel's volume in finest-spacing voxels

    def count(r: float) -> float:
        return 4.0 / 3.0 * np.pi * r**3 / per_voxel

    lo, hi, want = int(np.ceil(count(radius[0]) - 1e-9)), int(np.floor(count(radius[1]) + 1e-9)), round(count(target))
    if lo > hi:
        lo = hi = max(1, want)
    return lo, min(max(want, lo), hi), hi


def equivalent_radius(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """``(3 V / 4 pi)^(1/3)`` of a mask, in voxels of the finest spacing (V: the mask's volume in those voxels)."""
    sp = np.asarray(spacing, dtype=float)
    return float(np.cbrt(3.0 * np.count_nonzero(mask) * np.prod(sp / sp.min()) / (4.0 * np.pi)))


def _place_sized(rng, g: _Grid, target: float, bounds: tuple[float, float], edge: float, allowed: np.ndarray):
    """A lesion whose mask's equivalent radius is ``target`` voxels (within ``bounds``), inside ``allowed``; None if none fits.

    Unlike :func:`_place` the size is never shrunk: another centre and shape are drawn until
    one fits.
    """
    radius = target * float(g.sp.min())  # mm; the counted boundary sets the volume exactly
    counts = _voxel_counts(bounds, target, g.sp)
    room = ndi.distance_transform_edt(allowed, sampling=g.sp)
    cand = np.flatnonzero(room.ravel() > _ROOM * radius + edge)
    for _ in range(_ATTEMPTS if cand.size else 0):
        idx = np.unravel_index(rng.choice(cand), g.shape)
        center = (np.asarray(idx) - g.half + rng.uniform(-0.5, 0.5, 3)) * g.sp
        sl, m, soft, tex = _lesion(rng, g, center, radius, edge, counts)
        if counts[0] <= np.count_nonzero(m) <= counts[2] and not (m & ~allowed[sl]).any():
            return sl, m, soft, tex
    return None


def _place_all(rng, g: _Grid, targets: np.ndarray, bounds: tuple[float, float], edge: float, inside: np.ndarray):
    """Lesions of equivalent radii ``targets`` (voxels) inside ``inside``, 2 voxels apart: a list of (slices, mask, soft, texture).

    When one does not fit beside those placed before, the whole set is placed again.

    Raises:
        InputError: no placement found (the settings' checks make this rare).
    """
    for _ in range(_SET_ATTEMPTS):
        mask, placed = np.zeros(g.shape, dtype=bool), []
        for target in targets:
            found = _place_sized(rng, g, target, bounds, edge, inside & ~ndi.binary_dilation(mask, iterations=2))
            if found is None:
                break
            placed.append(found)
            mask[found[0]] |= found[1]
        else:
            return placed
    from tomofield.errors import InputError

    raise InputError(
        f"no room for {len(targets)} lesion(s) of equivalent radius {', '.join(f'{t:.2f}' for t in targets)} voxels "
        f"(lesion_radius={bounds}) in the body of a {g.shape} grid of {tuple(float(v) for v in g.sp)} mm; ask fewer "
        "or smaller lesions, or a larger grid"
    )


#: Draws of a centre and shape per lesion, and of the whole set of a case, before giving up.
_ATTEMPTS, _SET_ATTEMPTS = 50, 20
#: A lesion's centre has this many radii (plus the partial-volume edge) of room.
_ROOM = 1.0
#: The lesions of one case hold at most the volume of a ball of this many reference voxels
#: (8 voxels on the default 48-voxel grid), or of one lesion if that is larger.
LESION_CAP = 8.0


def lesion_limits(shape: Sequence[int], spacing: Sequence[float], radius: float) -> tuple[float, int]:
    """The largest lesion that fits the body of any case on this grid, and how many of ``radius`` a case may hold.

    Sizes in the unit of ``lesion_radius`` (equivalent radius in voxels of the finest
    spacing). The body's core (inside the fat layer), a ball of its smallest semi-axis at
    the thinnest body and thickest fat :func:`make_case` draws (0.82 of the half-extent, 4
    reference voxels of fat), must hold a lesion's centre with :data:`_ROOM` radii plus the
    partial-volume edge of room, with 10 % to spare for the shape. The count is the
    smallest of: what keeps the lesions' total volume under :data:`LESION_CAP` (the
    built-in cap; at least 1), how many centres 2 radii plus 3 edges apart (the 2-voxel gap
    and the room) fit in the core with a quarter to spare (the Tammes numbers of points on a
    sphere), and the count's own limit.
    """
    sp = np.asarray(spacing, dtype=float)
    ext = np.asarray(shape, dtype=float) * sp
    unit, edge = ext.min() / _REF, float(sp.min())
    core = float((0.82 * ext / 2).min() - 4.0 * unit - edge)
    largest = 0.9 * max(0.0, core - edge) / _ROOM / edge
    most = max(1, int(np.floor((LESION_CAP * unit / edge) ** 3 / radius**3 + 1e-9)))
    rho = radius * edge
    spread = core - _ROOM * rho - edge  # the ball the centres lie in
    apart = 2 * rho + 3 * edge
    fits = [k for k, chord in enumerate(_TAMMES, start=1) if apart <= 0.75 * chord * spread]
    return largest, max(1, min(most, max(fits, default=1), LIMITS["n_lesions"][1]))


#: Largest smallest distance of k = 1, 2, ... points on a unit sphere (Tammes problem; k = 1: any).
_TAMMES = (np.inf, 2.0, 1.7321, 1.6330, 1.4142, 1.4142, 1.3066, 1.2156, 1.1547, 1.0914, 1.0515, 1.0515)


def _lesion_count(rng: np.random.Generator, n_lesions) -> int:
    """The number of lesions: ``n_lesions`` itself, or drawn from its ``(lo, hi)`` range (inclusive)."""
    if isinstance(n_lesions, (tuple, list)):
        return int(rng.integers(int(n_lesions[0]), int(n_lesions[1]) + 1))
    return int(n_lesions)


def _lesion_problems(
    shape: Sequence[int], spacing: Sequence[float], lesion_radius, n_lesions, grid: str = ""
) -> list[str]:
    """What is wrong with ``lesion_radius`` on this grid, with ``n_lesions`` lesions, in words (empty: nothing).

    The range itself, whether its largest lesion fits the body (:func:`lesion_limits`) and
    whether a given count keeps under the total-volume cap (the count itself is checked by
    the caller). ``grid`` names the grid in the messages (default: the shape and spacing).
    """
    problems: list[str] = []
    if lesion_radius is None:
        return problems
    hi_n = _count_range(n_lesions)[1] if n_lesions is not None else None
    try:
        lo, hi = (float(v) for v in lesion_radius)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    r_min = LIMITS["lesion_radius"][0]
    if not (np.isfinite(lo) and np.isfinite(hi) and r_min <= lo <= hi):
        problems.append(
            f"lesion_radius={_tuple(lesion_radius)} (valid: (LO, HI) with {r_min:g} <= LO <= HI voxels of the "
            "finest spacing)"
        )
        return problems
    where = grid or f"a {tuple(int(v) for v in shape)} grid of {tuple(float(v) for v in spacing)} mm"
    largest, most = lesion_limits(shape, spacing, hi)
    if hi > largest:
        problems.append(
            f"lesion_radius={_tuple(lesion_radius)}: a lesion of {hi:g} voxels does not fit in the body of {where}; "
            f"the largest that fits is {np.floor(largest * 10) / 10:g} voxels (or use a larger grid)"
        )
    elif hi_n is not None and hi_n > most:
        cap = LESION_CAP * float(np.min(np.asarray(shape) * np.asarray(spacing))) / _REF / float(np.min(spacing))
        problems.append(
            f"n_lesions={_tuple(n_lesions)} with lesion_radius={_tuple(lesion_radius)}: at most {most} lesion(s) "
            f"of {hi:g} voxels fit one case on {where} (the cap on a case's total lesion volume, a ball of "
            f"{cap:.1f} voxels' radius or one lesion, and the room in the thinnest body)"
        )
    return problems


def _count_range(n_lesions) -> tuple[int | None, int | None]:
    """``(lo, hi)`` of a lesion count or range; ``(None, None)`` when it is none of these."""
    if n_lesions is None:
        return 1, 3
    values = list(n_lesions) if isinstance(n_lesions, (tuple, list)) else [n_lesions]
    if len(values) not in (1, 2) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values
    ):
        return None, None
    return int(values[0]), int(values[-1])


def _tuple(value) -> str:
    return repr(tuple(value)) if isinstance(value, (tuple, list)) else repr(value)


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


def as_scan(
    img: np.ndarray,
    body: np.ndarray,
    rng: np.random.Generator,
    spacing: Sequence[float],
    gain: float,
    offset: float,
) -> np.ndarray:
    """A normalised case (:func:`make_case`'s image) as a scanner stores it: int16 in ``gain`` units plus ``offset``.

    Adds tissue texture at two fine scales inside ``body`` (the soft body weight), a smooth
    multiplicative bias field and Rician noise; ``gain`` units per unit of ``img``, air and
    the background at ``offset``.
    """
    sp = np.asarray(spacing, dtype=float)
    unit = (np.asarray(img.shape) * sp).min() / _REF
    tex = 0.05 * _smooth_noise(rng, img.shape, 1.5 * unit / sp) + 0.03 * _smooth_noise(rng, img.shape, 0.7 * unit / sp)
    signal = np.clip(img + SIGNAL_FLOOR * body + body * tex, 0.0, None)  # air 0, fat about 0.07, tissue about 0.4
    bias = np.exp(rng.uniform(0.15, 0.4) * _smooth_noise(rng, img.shape, 0.25 * np.asarray(img.shape)))
    sigma = rng.uniform(0.01, 0.03)
    noisy = np.hypot(signal * bias + rng.normal(0.0, sigma, img.shape), rng.normal(0.0, sigma, img.shape))
    raw = np.rint(offset + gain * noisy)
    return np.clip(raw, np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)


def scan_grid(size: int, spacing: Sequence[float], rng: np.random.Generator) -> tuple[int, int, int]:
    """A realistic case's grid: at most ``size`` voxels along the finest axis, a roughly cubic field of view."""
    sp = np.asarray(spacing, dtype=float)
    sides = np.rint(size * sp.min() / sp * rng.uniform(0.85, 1.0, 3))
    return tuple(int(v) for v in np.maximum(sides, 8))


def make_case(
    shape: Sequence[int] = (48, 48, 48),
    *,
    positive: bool,
    rng: np.random.Generator,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    n_lesions: int | tuple[int, int] | None = None,
    scan: tuple[float, float] | None = None,
    lesion_radius: tuple[float, float] | None = None,
    lesion_contrast: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic case.

    Args:
        shape: grid size (D, H, W).
        positive: whether the case carries lesions.
        rng: source of randomness; the case is a deterministic function of its state, and
            the negative drawn from a given state with the same settings is the anatomy of
            the positive drawn from it.
        spacing: voxel size in mm per (D, H, W) axis.
        n_lesions: number of lesions, or an inclusive range ``(lo, hi)`` to draw it from
            (default: 1 to 3 at random; with ``lesion_radius``, 1 to as many as the
            total-volume cap allows, at most 3). A negative draws them too, unrendered, so
            that it stays its positive twin's anatomy; 0 draws none (negatives only).
        scan: ``(gain, offset)``: return the image as a scanner stores it (:func:`as_scan`)
            instead of normalised.
        lesion_radius: ``(lo, hi)``: each lesion's size, drawn uniformly in this range, as
            the equivalent radius ``(3 V / 4 pi)^(1/3)`` of its mask in voxels of the
            grid's finest spacing (V: the mask's volume in those voxels; on an isotropic grid
            simply its voxel count). The mask's voxel count is set to it, so the radius
            measured from the returned mask lies in the range (:func:`equivalent_radius`;
            a range narrower than one voxel's volume gets the nearest count). Radii are never
            scaled or shrunk; the count is limited instead (:func:`lesion_limits`). Default
            (None): the built-in sizes, 3-8 reference voxels (1/48 of the shortest side),
            scaled down so that a case's lesions together hold at most a ball of 8 and
            shrunk where there is no room; unchanged draw for draw.
        lesion_contrast: ``(lo, hi)``: each lesion is ``1 + c`` times as bright as the tissue
            around it (its 90th percentile), ``c`` drawn uniformly in this range (0.35-0.7:
            35-70 % brighter, a faint lesion; measured on the stored signal of a
            ``scan``, on the image otherwise). Default (None): the built-in step of 0.4-0.9
            normalised units above the surroundings (about 2-3 times as bright), unchanged
            draw for draw.

    Returns:
        ``(image, mask)``: float32 image (roughly CT / 1000, background ~0; int16 in ``gain``
        units above ``offset`` with ``scan``) and uint8 lesion mask, both of shape (D, H, W);
        the mask is all zero for negatives.

    Raises:
        ValueError: an invalid lesion count or grid.
        InputError: ``lesion_radius`` out of range, a lesion that does not fit in the body or
            more lesions than the cap allows (:func:`_lesion_problems`), naming the largest
            that fits.
    """
    lo_n, hi_n = _count_range(n_lesions)
    if lo_n is None or not (1 if positive else 0) <= lo_n <= hi_n:
        raise ValueError(f"n_lesions={n_lesions} is invalid for positive={positive}")
    g = _Grid(shape, spacing)
    if len(g.shape) != 3 or min(g.shape) < 8 or (g.sp <= 0).any():
        raise ValueError(f"need a 3D shape of at least 8^3 and positive spacing, got {shape}")
    if lesion_radius is not None:
        from tomofield.errors import InputError

        problems = _lesion_problems(g.shape, g.sp, lesion_radius, n_lesions if hi_n else None)
        if problems:
            raise InputError("cannot draw these lesions: " + "; ".join(problems))
    ext = np.asarray(g.shape) * g.sp
    unit = ext.min() / _REF  # mm per reference voxel
    edge = float(g.sp.min())  # partial-volume ramp width (mm)
    _, (zz, yy, xx) = g.box(np.zeros(3), ext.max())

    # Body: ellipsoid with a fat layer; organs on a tissue level map.
    ctr = ext * rng.uniform(-0.03, 0.03, 3)
    b_ax = ext / 2 * rng.uniform(0.82, 0.94, 3)
    dist = _ellipsoid_r((zz - ctr[0], yy - ctr[1], xx - ctr[2]), b_ax, np.eye(3)) - 1.0
    dist *= b_ax.mean()  # approximate signed distance to the skin (mm)
    fat_mm = rng.uniform(2.0, 4.0) * unit
    body, core = _soft(dist, edge), _soft(dist + fat_mm, edge)
    tissue = rng.uniform(0.15, 0.3)
    level = np.full(g.shape, tissue, dtype=np.float32)
    for _ in range(rng.integers(2, 6)):  # plain (near tissue) or air-filled organs
        sl, w = _blob(rng, g, ctr + b_ax * _in_ball(rng) * 0.55, unit * rng.uniform(5, 11, 3), edge)
        air = rng.uniform() < 0.2
        value = rng.uniform(-0.75, -0.55) if air else tissue + rng.uniform(-0.15, 0.15)
        level[sl] += w * (value - level[sl])
    # Lesions are drawn in both classes (a negative is its positive twin's anatomy) and
    # rendered in positives only, as textured lobulated blobs brighter than their surroundings.
    obj_rng = np.random.default_rng(rng.integers(2**63))
    mask, lesions = np.zeros(g.shape, dtype=bool), []
    if lesion_radius is None:  # the built-in sizes, placed one by one as drawn (every default dataset's draws)
        n_obj = int(obj_rng.integers(1, 4)) if n_lesions is None else _lesion_count(obj_rng, n_lesions)
        radii = unit * obj_rng.uniform(3.0, 8.0, n_obj)
        radii *= min(1.0, 8.0 * unit / np.cbrt((radii**3).sum()))  # cap the total volume
        placed = (
            _place(obj_rng, g, radius, edge, (core > 0.999) & ~ndi.binary_dilation(mask, iterations=2))
            for radius in np.maximum(radii, max(2.5 * unit, 1.5 * edge))
        )
    else:  # sizes as asked, never scaled: the cap limits the count instead
        lo_r, hi_r = (float(v) for v in lesion_radius)
        count = (1, min(3, lesion_limits(g.shape, g.sp, hi_r)[1])) if n_lesions is None else n_lesions
        n_obj = _lesion_count(obj_rng, count)
        placed = _place_all(obj_rng, g, obj_rng.uniform(lo_r, hi_r, n_obj), (lo_r, hi_r), edge, core > 0.999)
    for sl, m, soft, tex in placed:
        mask[sl] |= m
        local = np.percentile(level[sl][ndi.binary_dilation(m, iterations=2)], 90)
        tex = np.clip(tex, -2.0, 2.0) * obj_rng.uniform(0.2, 0.35)
        if lesion_contrast is None:  # the built-in step above the surroundings (every earlier dataset's draws)
            lesions.append((sl, soft, local + obj_rng.uniform(0.4, 0.9) * (1.0 + tex)))
        else:  # a relative step: the lesion's signal (1 + c) times its surroundings' (a scan's adds SIGNAL_FLOOR)
            c, floor = obj_rng.uniform(*(float(v) for v in lesion_contrast)), SIGNAL_FLOOR if scan else 0.0
            lesions.append((sl, soft, local + c * (local + floor) * (1.0 + tex)))
    # One enhancing organ in every case, larger and smoother than lesions, away from them:
    # a bright blob alone does not make a positive. Lesions fill 1-5% of the body; this
    # organ, the other bright distractors and the per-volume random gain below keep global
    # statistics from separating the classes (tested; std and p99 keep a weak signal).
    r_eq, contrast = unit * rng.uniform(*ORGAN_RADIUS), rng.uniform(*ORGAN_CONTRAST)
    clear = ndi.distance_transform_edt(~mask, sampling=g.sp)
    cand = np.flatnonzero((clear > r_eq + 2 * edge) & (dist < -fat_mm - 0.6 * r_eq))
    cand = cand if cand.size else np.flatnonzero(clear == clear[dist < -fat_mm].max())
    center = (np.asarray(np.unravel_index(rng.choice(cand), g.shape)) - g.half) * g.sp
    ratios = rng.uniform(0.7, 1.3, 3)
    sl, w = _blob(rng, g, center, r_eq * ratios / np.cbrt(ratios.prod()), edge)
    level[sl] += w * (tissue + contrast - level[sl])
    fat = rng.uniform(-0.15, -0.08)
    img = fat * body + core * (level - fat)
    img += core * rng.uniform(0.04, 0.1) * _smooth_noise(rng, g.shape, 5.0 * unit / g.sp)

    img += core * _tubes(rng, g, ctr, b_ax, unit, edge)
    for _ in range(rng.integers(0, 4)):  # dark cysts
        sl, w = _blob(
            rng, g, ctr + b_ax * _in_ball(rng) * 0.7, unit * rng.uniform(2.0, 4.5) * rng.uniform(0.85, 1.15, 3), edge
        )
        img[sl] -= core[sl] * w * rng.uniform(0.3, 0.5)

    post_rng = np.random.default_rng(rng.integers(2**63))
    for sl, soft, target in lesions if positive else []:
        img[sl] += soft * (target - img[sl])
    mask &= positive
    img += post_rng.normal(0.0, 0.02, g.shape).astype(np.float32)
    img = np.clip(img, -1.0, 2.0) * post_rng.uniform(0.8, 1.2) + post_rng.uniform(-0.03, 0.03)
    if scan is not None:
        return as_scan(img, body, post_rng, g.sp, *scan), mask.astype(np.uint8)
    return img.astype(np.float32), mask.astype(np.uint8)


def _save(path: Path, array_dhw: np.ndarray, spacing: Sequence[float]) -> None:
    """Atomically write a (D, H, W) array as NIfTI (stored W, H, D; affine diag(sW, sH, sD))."""
    import nibabel as nib

    from tomofield.io import atomic_write

    path = Path(path)
    dtype = (
        np.uint8 if array_dhw.dtype in (np.bool_, np.uint8) else np.int16 if array_dhw.dtype == np.int16 else np.float32
    )
    s_d, s_h, s_w = (float(s) for s in spacing)
    affine = np.diag([s_w, s_h, s_d, 1.0])
    nii = nib.Nifti1Image(np.ascontiguousarray(array_dhw.astype(dtype).transpose(2, 1, 0)), affine)
    nii.set_data_dtype(dtype)
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    nii.header.set_xyzt_units("mm")
    atomic_write(path, lambda tmp: nib.save(nii, str(tmp)))


def _write_csv(path: Path, rows: list[tuple[str, int, str]]) -> None:
    """Atomically write an ``image,label,mask`` CSV (UTF-8)."""
    from tomofield.io import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "label", "mask"])
            writer.writerows(rows)

    atomic_write(path, write)


#: The file beside a dataset's CSVs that records how :func:`write_dataset` made it.
RECORD = "synth.json"


def _write_record(path: Path, settings: dict) -> None:
    """Atomically write the settings of :func:`write_dataset` as JSON, with the generator and its version."""
    import json
    from importlib.metadata import PackageNotFoundError, version

    from tomofield.io import atomic_write

    try:
        tomofield_version = version("tomofield")
    except PackageNotFoundError:  # a source tree that is not installed
        tomofield_version = "unknown"

    def plain(v):
        return (
            [plain(x) for x in v] if isinstance(v, (tuple, list, np.ndarray)) else v.item() if hasattr(v, "item") else v
        )

    record = {
        "generator": "tomofield.synth.write_dataset",
        "tomofield": tomofield_version,
        **{k: plain(v) for k, v in settings.items()},
        "lesion_radius_unit": LESION_RADIUS_UNIT,
    }
    text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


#: What ``lesion_radius`` measures, in words (help texts and the dataset's record).
LESION_RADIUS_UNIT = (
    "equivalent radius (3 V / 4 pi)^(1/3) of each lesion's mask, in voxels of the finest spacing "
    "(null: the built-in sizes, 3-8 voxels of a 48-voxel grid scaled with the grid, a case's lesions together "
    "at most a ball of 8)"
)


#: The ranges write_dataset takes: a few to many cases, grids a CPU writes in minutes.
LIMITS = {
    "n": (4, 100_000),
    "size": (16, 512),
    "spacing": (0.01, 100.0),
    "n_lesions": (1, 10),
    "lesion_radius": (1.0, None),  # voxels of the finest spacing: a lesion of one voxel's radius at least
    "lesion_contrast": (0.05, 10.0),  # relative step above the surroundings: faint to very bright
}


def check_settings(
    *,
    n: int,
    size: int,
    seed: int,
    spacing: Sequence[float],
    val_fraction: float,
    background: str = "plain",
    lesion_radius: Sequence[float] | None = None,
    n_lesions: int | Sequence[int] | None = None,
    lesion_contrast: Sequence[float] | None = None,
) -> None:
    """Refuse settings :func:`write_dataset` cannot honour, naming the value and the valid range.

    Lesion sizes are checked against the smallest grid the settings give (``realistic``
    grids vary per case: :func:`scan_grid`) and the thinnest body (:func:`lesion_limits`).
    """
    from tomofield.errors import InputError
    from tomofield.protocols import SEED_MAX

    def integer(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    (n_lo, n_hi), (s_lo, s_hi), (mm_lo, mm_hi) = LIMITS["n"], LIMITS["size"], LIMITS["spacing"]
    problems = []
    if not integer(n) or not n_lo <= n <= n_hi:
        problems.append(f"n={n!r} (valid: an integer in {n_lo}..{n_hi}; half the cases are positive)")
    if not integer(size) or not s_lo <= size <= s_hi:
        problems.append(f"size={size!r} (valid: an integer in {s_lo}..{s_hi} voxels)")
    if not integer(seed) or not 0 <= seed <= SEED_MAX:
        problems.append(f"seed={seed!r} (valid: an integer in 0..{SEED_MAX})")
    try:
        sp = [float(x) for x in spacing]
    except (TypeError, ValueError):
        sp = []
    if len(sp) != 3 or not all(mm_lo <= x <= mm_hi for x in sp):
        problems.append(
            f"spacing={tuple(spacing) if isinstance(spacing, (list, tuple)) else spacing!r} "
            f"(valid: three voxel sizes in {mm_lo}..{mm_hi} mm)"
        )
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
        problems.append(f"val_fraction={val_fraction!r} (valid: a number strictly between 0 and 1)")
    if background not in BACKGROUNDS:
        problems.append(f"background={background!r} (valid: {', '.join(BACKGROUNDS)})")
    c_lo, c_hi = _count_range(n_lesions)
    if c_lo is None or not LIMITS["n_lesions"][0] <= c_lo <= c_hi <= LIMITS["n_lesions"][1]:
        problems.append(
            f"n_lesions={_tuple(n_lesions)} (valid: a count N or a range (LO, HI) of counts per positive, "
            f"{LIMITS['n_lesions'][0]} <= LO <= HI <= {LIMITS['n_lesions'][1]})"
        )
    if lesion_contrast is not None:
        k_lo, k_hi = LIMITS["lesion_contrast"]
        try:
            c = [float(v) for v in lesion_contrast]
        except (TypeError, ValueError):
            c = []
        if len(c) != 2 or not all(np.isfinite(c)) or not k_lo <= c[0] <= c[1] <= k_hi:
            problems.append(
                f"lesion_contrast={_tuple(lesion_contrast)} (valid: (LO, HI) with {k_lo:g} <= LO <= HI <= {k_hi:g}; "
                "0.5 is 50 % brighter than the surroundings)"
            )
    if not problems:  # lesion sizes against a valid grid
        shape = _smallest_grid(size, sp, background)
        grid = f"{'x'.join(map(str, shape))} voxels of {'x'.join(f'{v:g}' for v in sp)} mm"
        if background == "realistic" and shape != (size,) * 3:
            grid += f" (the smallest case grid of size={size})"
        problems += _lesion_problems(shape, sp, lesion_radius, n_lesions, grid=grid)
    if problems:
        raise InputError("cannot synthesise this dataset: " + "; ".join(problems))


def _smallest_grid(size: int, spacing: Sequence[float], background: str = "plain") -> tuple[int, int, int]:
    """The smallest (D, H, W) grid a case of :func:`write_dataset` can have (``realistic``: :func:`scan_grid`'s least)."""
    if background != "realistic":
        return (int(size),) * 3
    sp = np.asarray(spacing, dtype=float)
    return tuple(int(v) for v in np.maximum(np.rint(size * sp.min() / sp * 0.85), 8))


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    n: int = 40,
    size: int = 48,
    seed: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    val_fraction: float = 0.25,
    background: str = "plain",
    lesion_radius: tuple[float, float] | None = None,
    n_lesions: int | tuple[int, int] | None = None,
    lesion_contrast: tuple[float, float] | None = None,
) -> dict[str, Path]:
    """Write ``n`` cases (half positive) as NIfTI plus ``dataset/train/val`` CSVs and ``synth.json``.

    Args:
        out_dir: new or empty directory; a non-empty one is refused.
        n: number of cases (at least 4).
        size: grid size along each axis.
        seed: seed of the case order, the contents and the split.
        spacing: voxel size in mm per (D, H, W) axis.
        val_fraction: fraction of each class held out for validation.
        background: ``plain`` (normalised intensities, a cubic grid) or ``realistic``
            (int16 in a scanner's unit and offset, texture, bias field, Rician noise, a grid
            that keeps the field of view cubic under anisotropic spacing; the module's doc).
        lesion_radius: ``(lo, hi)``: every lesion's equivalent radius ``(3 V / 4 pi)^(1/3)``
            as measured from its mask, in voxels of the finest spacing (:func:`make_case`);
            ``(8, 10)`` gives lesions of 8 to 10 voxels' radius, one per positive on the
            default grid. Default: the built-in sizes (3-8 voxels of a 48-voxel grid, scaled
            with the grid), the very datasets of earlier versions.
        n_lesions: lesions per positive, a count or an inclusive range (default 1 to 3; with
            ``lesion_radius``, 1 to as many as fit, at most 3).
        lesion_contrast: ``(lo, hi)``: each lesion ``1 + c`` times as bright as the tissue
            around it, ``c`` drawn in this range (:func:`make_case`; ``(0.35, 0.7)``: faint
            lesions). Default: the built-in step, about 2-3 times as bright.

    The settings are recorded in ``synth.json`` beside the CSVs (the generator, its version
    and every argument but ``out_dir``), so that the dataset says how it was made.

    Returns:
        Paths of the CSVs, keyed ``"dataset"``, ``"train"`` and ``"val"``.

    Raises:
        InputError: a setting out of range (:func:`check_settings`; lesions too large for the
            grid name the largest that fits), ``out_dir`` not an empty folder, a file or
            under one, or not writable (full disk, permissions); what was written is removed
            again.
    """
    from tomofield.errors import InputError
    from tomofield.io import write_error

    out = Path(out_dir)
    settings = {
        "n": n,
        "size": size,
        "seed": seed,
        "spacing": spacing,
        "val_fraction": val_fraction,
        "background": background,
        "lesion_radius": lesion_radius,
        "n_lesions": n_lesions,
        "lesion_contrast": lesion_contrast,
    }
    check_settings(**settings)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {str(out)!r} is a file; give a new or empty folder for the dataset")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"output directory {str(out)!r} is not empty; choose another")
    made = [p for p in (*reversed(out.parents), out) if not p.exists()]
    try:
        paths = _write_cases(
            out, n, size, seed, spacing, val_fraction, background, lesion_radius, n_lesions, lesion_contrast
        )
        _write_record(out / RECORD, settings)
        return paths
    except BaseException as exc:
        for p in [*sorted(out.rglob("*"), key=lambda q: len(q.parts), reverse=True), *reversed(made)]:
            with suppress(OSError):
                p.rmdir() if p.is_dir() else p.unlink()
        if isinstance(exc, OSError):
            raise write_error(out, exc) from exc
        raise


def _write_cases(
    out: Path,
    n: int,
    size: int,
    seed: int,
    spacing: Sequence[float],
    val_fraction: float,
    background: str,
    lesion_radius: tuple[float, float] | None = None,
    n_lesions: int | tuple[int, int] | None = None,
    lesion_contrast: tuple[float, float] | None = None,
) -> dict[str, Path]:
    """The work of :func:`write_dataset` in a checked ``out`` folder."""
    lesions = {}  # only what was given: the default call is the one earlier versions made
    if lesion_radius is not None:
        lesions["lesion_radius"] = tuple(float(v) for v in lesion_radius)
    if n_lesions is not None:  # negatives draw them too (unrendered), as their positive twins
        lesions["n_lesions"] = tuple(int(v) for v in n_lesions) if isinstance(n_lesions, (tuple, list)) else n_lesions
    if lesion_contrast is not None:
        lesions["lesion_contrast"] = tuple(float(v) for v in lesion_contrast)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    scanner = np.random.default_rng([seed, n, 1])  # the dataset's unit and offset
    gain0, offset0 = float(np.exp(scanner.uniform(np.log(50), np.log(3000)))), float(scanner.uniform(-1024, 500))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    width = max(3, len(str(n - 1)))
    rows = []
    for i, label in enumerate(labels):
        case_rng = np.random.default_rng([seed, i])
        if background == "realistic":
            shape = scan_grid(size, spacing, case_rng)
            scan = (gain0 * float(case_rng.uniform(0.6, 1.6)), offset0)
        else:
            shape, scan = (size,) * 3, None
        image, mask = make_case(shape, positive=bool(label), rng=case_rng, spacing=spacing, scan=scan, **lesions)
        name = f"case_{i:0{width}d}.nii.gz"
        _save(out / "images" / name, image, spacing)
        _save(out / "masks" / name, mask, spacing)
        rows.append((f"images/{name}", int(label), f"masks/{name}"))
    val = set()
    for c in (0, 1):
        members = np.flatnonzero(labels == c)
        k = min(max(1, round(val_fraction * len(members))), len(members) - 1)
        val.update(int(i) for i in rng.permutation(members)[:k])
    paths = {key: out / f"{key}.csv" for key in ("dataset", "train", "val")}
    _write_csv(paths["dataset"], rows)
    _write_csv(paths["train"], [r for i, r in enumerate(rows) if i not in val])
    _write_csv(paths["val"], [r for i, r in enumerate(rows) if i in val])
    return paths
