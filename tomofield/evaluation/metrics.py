"""Lesion-wise segmentation and detection metrics on 3D volumes (ToNNO paper, A.7).

Every function is pure and works on numpy arrays of shape (D, H, W); nonzero voxels are
foreground. Connected components come from :func:`scipy.ndimage.label` with 6-, 18- or
26-connectivity (default 26).

Edge cases (a "component" is a connected component of a binary mask):

* ``n_gt > 0, n_pred == 0``: precision 0, recall 0, F1 0, Dice 0.
* ``n_gt == 0, n_pred > 0``: precision 0, recall 1 (nothing to miss), F1 0, Dice 0.
* ``n_gt == 0, n_pred == 0``: precision 1, recall 1, F1 1, Dice 1.
* F1 is 0 whenever precision + recall is 0.

The protocol (:mod:`tomofield.evaluation.protocol`) follows the paper and averages
segmentation metrics over positive volumes with a non-empty ground truth only, so the
empty-ground-truth values above never enter its averages.

Surface metrics (:func:`surface_scores`) are in millimetres, from a spacing per array axis
``(D, H, W)``: for a NIfTI that is the affine's column norms *reversed* (``D, H, W = k, j,
i``), ``Volume.spacing``. HD95 is NaN when either mask is empty (no surface to measure
from or to); NSD is 0 when exactly one mask is empty and NaN when both are (MONAI's
convention).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import cast

import numpy as np
from scipy import ndimage

Box = Sequence[int]
Components = tuple[np.ndarray, int]

_RANK = {6: 1, 18: 2, 26: 3}


def structure(connectivity: int = 26) -> np.ndarray:
    """Return the 3x3x3 structuring element for 6-, 18- or 26-connectivity."""
    if connectivity not in _RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return ndimage.generate_binary_structure(3, _RANK[connectivity])


def _as_volume(mask: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (D, H, W), got shape {arr.shape}")
    return arr


def components(mask: np.ndarray, connectivity: int = 26) -> Components:
    """Label the connected components of a binary volume.

    Args:
        mask: (D, H, W) array; nonzero voxels are foreground.
        connectivity: 6, 18 or 26.

    Returns:
        ``(labels, n)``: int32 labels (0 = background, 1..n = components) and ``n``.
    """
    arr = _as_volume(mask, "mask")
    labels, n = ndimage.label(arr != 0, structure=structure(connectivity))
    return labels.astype(np.int32, copy=False), int(n)


def lesion_matches(
    pred_mask: np.ndarray | None,
    gt_mask: np.ndarray | None,
    iou_threshold: float = 1 / 8,
    *,
    connectivity: int = 26,
    pred_components: Components | None = None,
    gt_components: Components | None = None,
) -> dict[str, int]:
    """Match predicted and ground-truth components by IoU.

    A predicted component is a true positive if some ground-truth component has an IoU
    with it strictly greater than ``iou_threshold``; otherwise it is a false positive. A
    ground-truth component is a false negative if no predicted component has an IoU with
    it strictly greater than ``iou_threshold``.

    Args:
        pred_mask: predicted binary volume (ignored if ``pred_components`` is given).
        gt_mask: ground-truth binary volume (ignored if ``gt_components`` is given).
        iou_threshold: matching threshold (paper: 1/8).
        connectivity: 6, 18 or 26.
        pred_components: precomputed ``components(pred_mask)``.
        gt_components: precomputed ``components(gt_mask)``.

    Returns:
        Dict with ``tp`` (matched predicted components), ``fp``, ``fn``, ``n_pred``, ``n_gt``.
    """
    # a mask may be None only where its components are given
    pl, n_pred = pred_components or components(cast(np.ndarray, pred_mask), connectivity)
    gl, n_gt = gt_components or components(cast(np.ndarray, gt_mask), connectivity)
    if pl.shape != gl.shape:
        raise ValueError(f"prediction shape {pl.shape} != ground-truth shape {gl.shape}")
    tp = gt_hit = 0
    if n_pred and n_gt:
        both = (pl > 0) & (gl > 0)
        pairs = pl[both].astype(np.int64) * (n_gt + 1) + gl[both]
        pair_ids, inter = np.unique(pairs, return_counts=True)
        p, g = pair_ids // (n_gt + 1), pair_ids % (n_gt + 1)
        size_p = np.bincount(pl.ravel(), minlength=n_pred + 1)
        size_g = np.bincount(gl.ravel(), minlength=n_gt + 1)
        iou = inter / (size_p[p] + size_g[g] - inter)
        hit = iou > iou_threshold
        tp, gt_hit = np.unique(p[hit]).size, np.unique(g[hit]).size
    return {"tp": tp, "fp": n_pred - tp, "fn": n_gt - gt_hit, "n_pred": n_pred, "n_gt": n_gt}


def _prf(m: dict[str, int]) -> dict[str, float]:
    n_pred, n_gt = m["n_pred"], m["n_gt"]
    precision = m["tp"] / n_pred if n_pred else float(n_gt == 0)
    recall = (n_gt - m["fn"]) / n_gt if n_gt else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice coefficient of two binary volumes; 1.0 when both are empty."""
    a, b = np.asarray(pred_mask) != 0, np.asarray(gt_mask) != 0
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} != ground-truth shape {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def lesion_scores(
    pred_mask: np.ndarray | None,
    gt_mask: np.ndarray | None,
    iou_threshold: float = 1 / 8,
    *,
    connectivity: int = 26,
    pred_components: Components | None = None,
    gt_components: Components | None = None,
) -> dict[str, float]:
    """Lesion-wise precision, recall, F1 and voxel-wise Dice of one volume.

    Recall counts matched ground-truth components (``(n_gt - fn) / n_gt``), precision
    matched predicted components (``tp / n_pred``); empty cases as in the module docstring.

    Returns:
        Dict with ``precision``, ``recall``, ``f1``, ``dice`` and the counts of
        :func:`lesion_matches`.
    """
    pc = pred_components or components(cast(np.ndarray, pred_mask), connectivity)
    gc = gt_components or components(cast(np.ndarray, gt_mask), connectivity)
    m = lesion_matches(None, None, iou_threshold, pred_components=pc, gt_components=gc)
    return {**_prf(m), "dice": dice(pc[0], gc[0]), **m}


def box_volume(box: Box) -> int:
    """Number of voxels in a ``(d0, h0, w0, d1, h1, w1)`` box (0 if degenerate)."""
    b = np.asarray(box, dtype=np.int64)
    return int(np.prod(np.clip(b[3:] - b[:3], 0, None)))


def box_iou(a: Box | np.ndarray, b: Box | np.ndarray) -> float | np.ndarray:
    """IoU of boxes ``(d0, h0, w0, d1, h1, w1)`` with inclusive-exclusive voxel bounds.

    Broadcasts over leading axes (e.g. ``(N, 6)`` against ``(6,)``). IoU is 0 when the
    union is empty.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[-1] != 6 or b.shape[-1] != 6:
        raise ValueError("boxes must have 6 values (d0, h0, w0, d1, h1, w1)")
    lo, hi = np.maximum(a[..., :3], b[..., :3]), np.minimum(a[..., 3:], b[..., 3:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    va = np.prod(np.clip(a[..., 3:] - a[..., :3], 0, None), axis=-1)
    vb = np.prod(np.clip(b[..., 3:] - b[..., :3], 0, None), axis=-1)
    union = va + vb - inter
    iou = np.divide(inter, union, out=np.zeros_like(union), where=union > 0)
    return float(iou) if iou.ndim == 0 else iou


def component_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """Bounding boxes ``(n, 6)`` of components ``1..n`` of a label volume."""
    out = np.zeros((n, 6), dtype=np.int64)
    for i, sl in enumerate(ndimage.find_objects(labels, max_label=n)):
        if sl is not None:
            out[i] = [s.start for s in sl] + [s.stop for s in sl]
    return out


def max_box_iou(
    pred_mask: np.ndarray,
    box: Box,
    *,
    connectivity: int = 26,
    pred_components: Components | None = None,
) -> float:
    """Best IoU between the bounding boxes of predicted components and a ground-truth box.

    Returns 0.0 for an empty prediction.
    """
    labels, n = pred_components or components(pred_mask, connectivity)
    if n == 0:
        return 0.0
    return float(np.max(box_iou(component_boxes(labels, n), box)))


def box_lesion_scores(
    pred_mask: np.ndarray | None,
    box: Box | None,
    iou_threshold: float = 1 / 8,
    *,
    connectivity: int = 26,
    pred_components: Components | None = None,
) -> dict[str, float]:
    """Lesion-wise scores against one ground-truth box (box-only data, e.g. Duke).

    Components are matched with the IoU of their bounding box against ``box`` (strictly
    greater than ``iou_threshold``); ``box=None`` means an empty ground truth.

    Returns:
        Dict with ``precision``, ``recall``, ``f1``, ``max_iou`` and the counts ``tp``,
        ``fp``, ``fn``, ``n_pred``, ``n_gt``.
    """
    labels, n = pred_components or components(cast(np.ndarray, pred_mask), connectivity)
    n_gt = int(box is not None and box_volume(box) > 0)
    # n_gt is 1 only for a box; (n, 6) boxes against one give an array
    ious = cast(np.ndarray, box_iou(component_boxes(labels, n), cast(Box, box))) if n and n_gt else np.zeros(0)
    tp = int(np.count_nonzero(ious > iou_threshold))
    m = {"tp": tp, "fp": n - tp, "fn": int(n_gt and tp == 0), "n_pred": n, "n_gt": n_gt}
    return {**_prf(m), "max_iou": float(ious.max()) if ious.size else 0.0, **m}


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Sensitivity and specificity of binary predictions (NaN when a class is absent)."""
    t = np.asarray(y_true).ravel() != 0
    p = np.asarray(y_pred).ravel() != 0
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty and equal length, got {t.size} and {p.size}")
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    sens = np.count_nonzero(t & p) / n_pos if n_pos else float("nan")
    spec = np.count_nonzero(~t & ~p) / n_neg if n_neg else float("nan")
    return float(sens), float(spec)


def weighted_balanced_accuracy(
    y_true: np.ndarray, y_pred: np.ndarray, w_sens: float = 5.0, w_spec: float = 1.0
) -> float:
    """``(w_sens * sensitivity + w_spec * specificity) / (w_sens + w_spec)``.

    If one class is absent from ``y_true`` the undefined term is dropped: the result is
    the specificity (no positives) or the sensitivity (no negatives).
    """
    sens, spec = sensitivity_specificity(y_true, y_pred)
    if np.isnan(sens):
        return spec
    if np.isnan(spec):
        return sens
    return (w_sens * sens + w_spec * spec) / (w_sens + w_spec)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``(sensitivity + specificity) / 2``; see :func:`weighted_balanced_accuracy`."""
    return weighted_balanced_accuracy(y_true, y_pred, 1.0, 1.0)


# -- surface metrics: HD95 and the normalised surface Dice ----------------------------------

#: Default tolerance of the normalised surface Dice, in mm. Two, not one: a tolerance at or
#: below a grid's voxel size forgives no boundary disagreement along that axis (on a 1 mm
#: grid, 1 mm admits the 6 face neighbours but not the diagonal ones at 1.41 and 1.73 mm,
#: so the score depends on how the boundary is oriented to the grid); 2 mm forgives one
#: voxel in any direction on 1 mm grids (the synthetic data's, brain MRI's).
NSD_TOLERANCE_MM = 2.0
#: The implementations of the surface metrics :func:`surface_scores` takes.
SURFACE_BACKENDS = ("auto", "monai", "scipy")


@functools.cache
def _monai_importable() -> bool:
    try:
        import monai.metrics  # noqa: F401
    except Exception:  # not installed, or an install that breaks on import: the own implementation then
        return False
    return True


def surface_backend(backend: str = "auto") -> str:
    """The implementation of the surface metrics: ``"monai"`` or ``"scipy"``.

    ``auto`` is MONAI's (``monai.metrics.compute_hausdorff_distance`` and
    ``compute_surface_dice``, the optional ``monai`` extra) where MONAI imports, else this
    module's own (surface voxels by erosion, distances by ``distance_transform_edt``); the
    two agree (tests/unit/test_surface_metrics.py).
    """
    if backend not in SURFACE_BACKENDS:
        raise ValueError(f"unknown surface-metric backend {backend!r}; valid: {', '.join(SURFACE_BACKENDS)}")
    if backend == "auto":
        return "monai" if _monai_importable() else "scipy"
    return backend


def _spacing(spacing: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).ravel())
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be 3 positive mm values per (D, H, W) axis, got {spacing!r}")
    return sp  # type: ignore[return-value]  # three, checked above


def _pair(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as booleans, cropped to their union's bounding box with one voxel of margin.

    The crop changes no surface voxel (the margin is background, and the volume's own edge
    stays the edge) and no distance between them: it only saves work.
    """
    a = _as_volume(pred_mask, "pred_mask") != 0
    b = _as_volume(gt_mask, "gt_mask") != 0
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} != ground-truth shape {b.shape}")
    either = a | b
    if not either.any():
        return a[:0, :0, :0], b[:0, :0, :0]
    box = []
    for ax in range(3):
        hit = np.flatnonzero(either.any(axis=tuple(o for o in range(3) if o != ax)))
        box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    crop = tuple(box)
    return a[crop], b[crop]


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean (D, H, W): the foreground voxels with a background 6-neighbour (outside the volume counts as background)."""
    m = _as_volume(mask, "mask") != 0
    return m & ~ndimage.binary_erosion(m, structure=structure(6), border_value=0)


def surface_distances(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of the prediction to the ground truth's surface, and back.

    Surface voxels as :func:`surface_voxels`; each distance is the Euclidean distance
    between voxel centres on the grid of ``spacing`` (mm per (D, H, W) axis:
    ``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``). Towards an empty
    mask every distance is ``inf``; from one, there is none (an empty array).
    """
    sp = _spacing(spacing)
    a, b = _pair(pred_mask, gt_mask)
    sa, sb = surface_voxels(a), surface_voxels(b)

    def to(surface: np.ndarray, at: np.ndarray) -> np.ndarray:
        if not at.any():
            return np.zeros(0)
        if not surface.any():
            return np.full(int(np.count_nonzero(at)), np.inf)
        return cast(np.ndarray, ndimage.distance_transform_edt(~surface, sampling=sp))[at]

    return to(sb, sa), to(sa, sb)


def _scipy_scores(a: np.ndarray, b: np.ndarray, sp, tolerance: float, percentile: float) -> tuple[float, float]:
    d_ab, d_ba = surface_distances(a, b, sp)
    hd = max(float(np.percentile(d_ab, percentile)), float(np.percentile(d_ba, percentile)))
    nsd = (np.count_nonzero(d_ab <= tolerance) + np.count_nonzero(d_ba <= tolerance)) / (d_ab.size + d_ba.size)
    return hd, float(nsd)


def _monai_scores(a: np.ndarray, b: np.ndarray, sp, tolerance: float, percentile: float) -> tuple[float, float]:
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    y_pred, y = (torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None] for m in (a, b))
    with warnings.catch_warnings():  # its deprecation notices are MONAI's own business
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        hd = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=percentile, spacing=list(sp))
        nsd = compute_surface_dice(y_pred, y, [tolerance], include_background=True, spacing=list(sp))
    return float(hd.reshape(-1)[0]), float(nsd.reshape(-1)[0])


def surface_scores(
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    tolerance: float = NSD_TOLERANCE_MM,
    *,
    percentile: float = 95.0,
    backend: str = "auto",
) -> dict[str, float]:
    """HD95 and the normalised surface Dice of two binary volumes, in mm.

    * ``hd95``: the larger of the two directed ``percentile``-th percentiles (linear
      interpolation) of the surface distances (:func:`surface_distances`), in mm.
    * ``nsd``: the fraction of both surfaces' voxels lying within ``tolerance`` mm of the
      other surface (Nikolov et al. 2021, counted in voxels, as MONAI's
      ``use_subvoxels=False``).

    ``spacing`` is mm per array axis (D, H, W), for a NIfTI the affine's column norms in
    reversed order (``Volume.spacing``). Empty masks: ``hd95`` is NaN when either mask is
    empty; ``nsd`` is 0.0 when exactly one is and NaN when both are. ``backend``: see
    :func:`surface_backend`.

    Returns:
        ``{"hd95": ..., "nsd": ...}``.
    """
    sp = _spacing(spacing)
    if not (math.isfinite(tolerance) and tolerance >= 0) or not 0 <= percentile <= 100:
        raise ValueError(f"need a tolerance >= 0 mm and a percentile in [0, 100], got {tolerance!r}, {percentile!r}")
    impl = surface_backend(backend)
    a, b = _pair(pred_mask, gt_mask)
    has_a, has_b = bool(a.any()), bool(b.any())
    if not (has_a and has_b):
        return {"hd95": float("nan"), "nsd": 0.0 if has_a or has_b else float("nan")}
    score = _monai_scores if impl == "monai" else _scipy_scores
    hd, nsd = score(a, b, sp, float(tolerance), float(percentile))
    return {"hd95": hd, "nsd": nsd}


def hd95(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float] | np.ndarray, *, backend: str = "auto"
) -> float:
    """95th-percentile Hausdorff distance in mm; NaN when either mask is empty (:func:`surface_scores`)."""
    return surface_scores(pred_mask, gt_mask, spacing, backend=backend)["hd95"]


def surface_dice(
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    tolerance: float = NSD_TOLERANCE_MM,
    *,
    backend: str = "auto",
) -> float:
    """Normalised surface Dice at ``tolerance`` mm; 0 when one mask is empty, NaN when both are (:func:`surface_scores`)."""
    return surface_scores(pred_mask, gt_mask, spacing, tolerance, backend=backend)["nsd"]
