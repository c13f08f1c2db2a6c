"""Lesions: lobulated blobs of a drawn or a counted size, placed in the body, and the limits of their sizes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from tomofield.errors import InputError
from tomofield.synth.settings import LIMITS
from tomofield.synth.shapes import _REF, _ellipsoid_r, _Grid, _rotation, _smooth_noise


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
    d, h, w = g.shape
    mm = " x ".join(f"{float(v):g}" for v in tuple(g.sp)[::-1])
    raise InputError(
        f"no room for a lesion in a scan of {w} x {h} x {d} voxels at {mm} mm (i, j, k): the body is too thin "
        "at this grid size and spacing; give a larger --size (e.g. 24 or more) or a finer --spacing"
    )


def _voxel_counts(
    radius: tuple[float, float], target: float, spacing: Sequence[float] | np.ndarray
) -> tuple[int, int, int]:
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


def lesion_limits(shape: Sequence[int], spacing: Sequence[float] | np.ndarray, radius: float) -> tuple[float, int]:
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
    shape: Sequence[int], spacing: Sequence[float] | np.ndarray, lesion_radius, n_lesions, grid: str = ""
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
