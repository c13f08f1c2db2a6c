"""One case: the anatomy, its lesions and, for a realistic look, the scan a scanner would store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
from scipy import ndimage as ndi

from tomofield.synth.lesions import _count_range, _lesion_count, _lesion_problems, _place, _place_all, lesion_limits
from tomofield.synth.shapes import (
    _REF,
    ORGAN_CONTRAST,
    ORGAN_RADIUS,
    SIGNAL_FLOOR,
    _blob,
    _ellipsoid_r,
    _Grid,
    _in_ball,
    _smooth_noise,
    _soft,
    _tubes,
)


def as_scan(
    img: np.ndarray,
    body: np.ndarray,
    rng: np.random.Generator,
    spacing: Sequence[float] | np.ndarray,
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
    return cast("tuple[int, int, int]", tuple(int(v) for v in np.maximum(sides, 8)))


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
    if lo_n is None or hi_n is None or not (1 if positive else 0) <= lo_n <= hi_n:  # both None or neither
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
            c, floor = obj_rng.uniform(*(float(v) for v in lesion_contrast)), SIGNAL_FLOOR if scan else 0.0  # type: ignore[call-overload]
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
