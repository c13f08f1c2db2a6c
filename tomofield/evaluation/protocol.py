"""The ToNNO evaluation protocol (paper, appendix A.7) as pure functions.

1. ``tau`` (:func:`detection_threshold`): a volume is predicted positive when its heatmap
   maximum is ``>= tau``; ``tau`` maximises ``(5 sens + spec) / 6``.
2. :func:`binarize`: threshold at ``tau' <= tau`` and keep the connected components that
   contain a voxel ``>= tau`` (component max ``>= tau``), so binarization never changes
   the volume-level decision. With ``fill_holes`` (an option, off by default and in the
   paper) each kept component that does not touch the volume's border also takes the
   background it encloses in 3D (:func:`_fill_holes`): a rim-bright heatmap of a large
   lesion binarizes to the lesion, not to a hollow shell.
3. ``tau'`` (:func:`select_tau_prime`): grid search maximising the mean Dice (or, for
   box-only data, the best bounding-box IoU) over at most 5 annotated positive volumes.
4. :func:`evaluate`: Monte-Carlo cross-validation. Each fold shuffles the volumes, tunes
   ``tau`` and ``tau'`` on the first half (``n // 2`` volumes) and measures the second.
   Given each volume's spacing (mm per (D, H, W) axis) and masks, each fold also measures
   the surface metrics beside Dice (not in the paper): HD95 in mm and the normalised
   surface Dice at a tolerance in mm (:func:`tomofield.evaluation.metrics.surface_scores`).

"Positive volume with ground truth" (used both for tuning ``tau'`` and for the
segmentation metrics) means: label 1 and a non-empty mask (or a box of positive volume).
Volumes without such a ground truth only count towards the balanced accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from tomofield.evaluation.metrics import (
    NSD_TOLERANCE_MM,
    Box,
    Components,
    balanced_accuracy,
    box_iou,
    box_lesion_scores,
    box_volume,
    component_boxes,
    components,
    lesion_scores,
    structure,
    surface_backend,
    surface_scores,
)

Grid = int | Sequence[float]
_TIE_TOL = 1e-12
#: The surface metrics a fold measures where it has spacings (:func:`evaluate`).
SURFACE_KEYS = ("hd95", "nsd")


def detection_threshold(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    w_sens: float = 5.0,
    w_spec: float = 1.0,
) -> float:
    """Choose ``tau`` maximising the weighted balanced accuracy of ``score >= tau``.

    ``scores`` are per-volume heatmap maxima, ``labels`` binary (nonzero = positive).
    Candidates are the observed scores and ``+inf`` (everything negative). Ties (within
    1e-12) go to the largest ``tau``, i.e. the fewest positive predictions; the result is
    then moved down to the midpoint between that score and the next lower observed one
    (same decisions on these volumes, largest margin). With only
    negatives the result is ``+inf``; with only positives it is the lowest score.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() != 0
    if s.size == 0 or s.size != y.size:
        raise ValueError(f"need equal, non-zero numbers of scores and labels, got {s.size} and {y.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    cands = np.append(np.unique(s), np.inf)
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    # count of positives >= t, and of negatives < t, for every candidate t
    tp = pos.size - np.searchsorted(pos, cands, side="left")
    tn = np.searchsorted(neg, cands, side="left")
    if pos.size and neg.size:
        wba = (w_sens * tp / pos.size + w_spec * tn / neg.size) / (w_sens + w_spec)
    else:
        wba = tp / pos.size if pos.size else tn / neg.size
    best = np.flatnonzero(wba >= wba.max() - _TIE_TOL)[-1]
    if best == 0 or not np.isfinite(cands[best]):
        return float(cands[best])
    # every tau in (cands[best - 1], cands[best]] decides the tuning volumes alike: take the
    # midpoint, the largest margin to both, so that an unseen volume just below the lowest
    # tuning positive is not rejected by construction
    return float((cands[best - 1] + cands[best]) / 2)


def _fill_holes(labels: np.ndarray, n: int, crop, shape, connectivity: int) -> np.ndarray:
    """``labels`` (components 1..n of ``volume[crop]``, ``shape`` the volume's) with each one's holes filled.

    A component's holes are the background voxels it encloses on its own (3D
    ``binary_fill_holes`` of the component alone on its bounding box, the background
    connected with the connectivity complementary to ``connectivity``: 26 for 6, else 6).
    Only background (label 0: below ``tau'``, or a component dropped for a max below
    ``tau``) becomes part of a component, never another kept component's voxels; background enclosed by several (a component inside another's cavity, with a
    cavity of its own) goes to the innermost one: the filled regions are nested or disjoint,
    so they are written largest first. A component touching the volume's border is kept as
    it is (a shell cut open by the border is no closed shell; filling against the border
    would invent tissue). Each component stays inside its own bounding box, so the crops of
    :func:`kept_over_grid` stay valid. Returns ``labels`` itself when nothing is filled.
    """
    back = structure(26 if connectivity == 6 else 6)
    fills = []
    for j, box in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if box is None:
            continue
        if any(o.start + b.start == 0 or o.start + b.stop == d for o, b, d in zip(crop, box, shape, strict=True)):
            continue  # touches the volume's border (not merely the crop's)
        filled = ndimage.binary_fill_holes(labels[box] == j, structure=back)
        holes = filled & (labels[box] == 0)
        if holes.any():  # the filled region's size, other components inside it included, orders the nesting
            fills.append((int(np.count_nonzero(filled)), j, box, holes))
    if not fills:
        return labels
    out = labels.copy()
    for _, j, box, holes in sorted(fills, key=lambda f: -f[0]):  # innermost (smallest filled region) last
        out[box][holes] = j
    return out


def kept_over_grid(heatmap: np.ndarray, cands, tau: float, connectivity: int, fill_holes: bool = False):
    """Yield ``(k, labels, n, crop)``: components kept at ascending ``cands[k] <= tau``.

    A component of ``h >= c`` holding a seed (voxel ``>= tau``) lies inside a kept
    component at any lower threshold, so each step labels only the bounding box of the
    previous kept region; ``labels`` (relabelled 1..n) covers ``heatmap[crop]``. Nothing
    is yielded for a volume whose max is below ``tau`` (empty predictions). With
    ``fill_holes`` each step's components are filled (:func:`_fill_holes`) from that
    step's own components; a filled component keeps its bounding box, so the next crop is
    the same as without filling.
    """
    if not heatmap.max() >= tau:
        return
    crop = tuple(slice(0, d) for d in heatmap.shape)
    for k, c in enumerate(cands):
        sub = heatmap[crop]
        labels, n = components(sub >= c, connectivity)
        keep = np.unique(labels[sub >= tau])
        keep = keep[keep > 0]
        lut = np.zeros(n + 1, dtype=np.int32)
        lut[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
        labels = lut[labels]
        if fill_holes:
            labels = _fill_holes(labels, int(keep.size), crop, heatmap.shape, connectivity)
        yield k, labels, int(keep.size), crop
        kept = labels > 0
        box = [np.flatnonzero(kept.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
        crop = tuple(slice(o.start + int(b[0]), o.start + int(b[-1]) + 1) for o, b in zip(crop, box, strict=True))


def _kept(heatmap: np.ndarray, tau_prime: float, tau: float, connectivity: int, fill_holes: bool = False) -> Components:
    for _, labels, n, _ in kept_over_grid(heatmap, [tau_prime], tau, connectivity, fill_holes):
        return labels, n  # first step: the crop is the whole volume
    return np.zeros(heatmap.shape, dtype=np.int32), 0


def binarize(
    heatmap: np.ndarray, tau_prime: float, tau: float, *, connectivity: int = 26, fill_holes: bool = False
) -> np.ndarray:
    """Boolean mask of the components of ``heatmap >= tau_prime`` whose max is ``>= tau``.

    Requires ``tau_prime <= tau``; ``connectivity`` is 6, 18 or 26. ``fill_holes``: each
    kept component not touching the volume's border also takes the background it encloses
    (3D; see the module's step 2).
    """
    return kept_components(heatmap, tau_prime, tau, connectivity=connectivity, fill_holes=fill_holes)[0] > 0


def kept_components(
    heatmap: np.ndarray, tau_prime: float, tau: float, *, connectivity: int = 26, fill_holes: bool = False
) -> Components:
    """:func:`binarize`'s components as ``(labels, n)``, the ones the protocol's lesion metrics match.

    They differ from the components of the boolean mask only with ``fill_holes``, when a
    kept component lies in another's cavity: filled, the two touch, yet each keeps its own
    label.
    """
    if tau_prime > tau:
        raise ValueError(f"tau_prime ({tau_prime}) must not exceed tau ({tau})")
    structure(connectivity)  # validate even when nothing is labelled
    return _kept(np.asarray(heatmap), tau_prime, tau, connectivity, fill_holes)


def tau_prime_grid(heatmaps: Sequence[np.ndarray], tau: float, n: int = 50) -> np.ndarray:
    """Candidate ``tau'`` values in ``[min over heatmaps, tau)``, ascending.

    ``n // 2`` values are evenly spaced from the minimum up to ``tau`` (excluded) and the
    rest are quantiles of the voxel values below ``tau`` (sub-sampled to ~1e6 voxels);
    duplicates are dropped. Returns ``[tau]`` when no voxel lies below ``tau``.
    """
    below = [b for b in (np.asarray(h)[np.asarray(h) < tau] for h in heatmaps) if b.size]
    if not below or n < 1:
        return np.array([float(tau)])
    lo = min(float(b.min()) for b in below)
    vals = np.concatenate(below)
    vals = vals[:: max(1, vals.size // 1_000_000)]
    lin: np.ndarray | list[float] = np.linspace(lo, tau, n // 2, endpoint=False) if np.isfinite(tau) else []
    quant = np.quantile(vals, np.linspace(0.0, 1.0, n - n // 2))
    cands = np.unique(np.concatenate([lin, quant, [lo]]).astype(np.float64))
    return cands[cands < tau]


def _has_target(target, is_box: bool) -> bool:
    if target is None:
        return False
    return box_volume(target) > 0 if is_box else bool(np.any(target))


def select_tau_prime(
    heatmaps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None,
    tau: float,
    *,
    boxes: Sequence[Box | None] | None = None,
    n_select: int = 5,
    grid: Grid = 50,
    rng: np.random.Generator | None = None,
    connectivity: int = 26,
    fill_holes: bool = False,
) -> float:
    """Grid-search ``tau' <= tau`` maximising mean Dice (or mean best box IoU).

    Pass ``masks`` (entries may be None) or, for box-only data, ``masks=None`` and
    ``boxes`` ``(d0, h0, w0, d1, h1, w1)``. Only volumes with a non-empty mask (or a box)
    take part: at most ``n_select`` (paper: 5), drawn with ``rng`` (the first ones in
    order if ``rng`` is None). ``grid`` is a number of candidates (:func:`tau_prime_grid`)
    or explicit candidates (those above ``tau`` are dropped). Each candidate is scored on
    :func:`binarize`'s mask with the same ``connectivity`` and ``fill_holes``.

    Returns:
        The best ``tau'``, ties going to the largest; ``tau`` itself when no volume has a
        ground truth, ``tau`` is not finite, or no candidate lies at or below it.
    """
    structure(connectivity)
    return _select_tau_prime(heatmaps, masks, boxes, tau, n_select, grid, rng, connectivity, fill_holes)[0]


def _select_tau_prime(heatmaps, masks, boxes, tau, n_select, grid, rng, connectivity, fill_holes=False):
    """:func:`select_tau_prime`, also returning the indices of the volumes used."""
    is_box = masks is None
    targets = boxes if is_box else masks
    if targets is None or not np.isfinite(tau):
        return float(tau), []
    idx = [i for i, t in enumerate(targets) if _has_target(t, is_box)]
    if len(idx) > n_select:
        idx = idx[:n_select] if rng is None else sorted(int(i) for i in rng.choice(idx, n_select, replace=False))
    hs = [np.asarray(heatmaps[i]) for i in idx]
    if isinstance(grid, int | np.integer):
        cands = tau_prime_grid(hs, tau, int(grid))
    else:
        cands = np.unique(np.asarray(grid, dtype=np.float64))
        cands = cands[cands <= tau]
    if not idx or cands.size == 0:
        return float(tau), idx
    totals = np.zeros(cands.size)
    for h, i in zip(hs, idx, strict=True):
        gt = None if is_box else np.asarray(targets[i]) != 0
        for k, labels, n, crop in kept_over_grid(h, cands, tau, connectivity, fill_holes):
            if is_box:
                pred_boxes = component_boxes(labels, n) + [sl.start for sl in crop] * 2
                totals[k] += float(np.max(box_iou(pred_boxes, targets[i])))
            else:
                inter = np.count_nonzero((labels > 0) & gt[crop])
                totals[k] += 2.0 * inter / (np.count_nonzero(labels) + np.count_nonzero(gt))
    best = np.flatnonzero(totals >= totals.max() - _TIE_TOL)[-1]
    return float(cands[best]), idx


class _Dataset:
    """Validated inputs plus per-volume caches (maxima, ground-truth components)."""

    def __init__(
        self,
        heatmaps,
        labels,
        masks,
        boxes,
        connectivity: int,
        fill_holes: bool = False,
        spacings=None,
        nsd_tolerance: float = NSD_TOLERANCE_MM,
        surface: str = "auto",
    ) -> None:
        structure(connectivity)  # validate early
        if masks is not None and boxes is not None:
            raise ValueError("give masks or boxes, not both")
        self.is_box = masks is None and boxes is not None
        self.targets = boxes if self.is_box else masks
        self.heatmaps = [np.asarray(h) for h in heatmaps]
        self.labels = np.asarray(labels).ravel()
        n = len(self.heatmaps)
        if len(self.labels) != n or (self.targets is not None and len(self.targets) != n):
            raise ValueError(
                f"{n} heatmaps, {len(self.labels)} labels and "
                f"{'-' if self.targets is None else len(self.targets)} targets"
            )
        if not np.isin(self.labels, (0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        self.labels = self.labels.astype(bool)
        for i, h in enumerate(self.heatmaps):
            m = None if self.is_box or self.targets is None else self.targets[i]
            if h.ndim != 3 or h.size == 0 or (m is not None and np.shape(m) != h.shape):
                raise ValueError(
                    f"heatmap {i} (shape {h.shape}) must be a non-empty "
                    f"(D, H, W) array matching its mask ({np.shape(m)})"  # type: ignore[arg-type]  # np.shape(None) is ()
                )
        self.scores = np.array([float(h.max()) for h in self.heatmaps])
        if np.isnan(self.scores).any():
            raise ValueError(f"heatmaps {np.flatnonzero(np.isnan(self.scores)).tolist()} contain NaN")
        targets = self.targets if self.targets is not None else [None] * n
        self.has_target = np.array(
            [y and _has_target(t, self.is_box) for y, t in zip(self.labels, targets, strict=True)]
        )
        self.connectivity = connectivity
        self.fill_holes = bool(fill_holes)
        self._gt: dict[int, Components] = {}
        # the surface metrics: with masks and a spacing per volume only (boxes have no surface)
        self.spacings: list[tuple[float, ...] | None] | None = None  # None: a volume without a mask
        if spacings is not None and not self.is_box and self.targets is not None:
            if len(spacings) != n:
                raise ValueError(f"{n} heatmaps but {len(spacings)} spacings")
            self.spacings = [None if sp is None else tuple(float(v) for v in sp) for sp in spacings]
        if not (np.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
            raise ValueError(f"nsd_tolerance must be >= 0 mm, got {nsd_tolerance!r}")
        self.nsd_tolerance = float(nsd_tolerance)
        # one implementation for every fold; MONAI is imported only where it will be used
        self.surface = surface_backend(surface) if self.spacings is not None else surface

    def gt_components(self, i: int) -> Components:
        if i not in self._gt:
            self._gt[i] = components(self.targets[i], self.connectivity)
        return self._gt[i]


def _stat(x: Sequence[float], fn) -> float:
    """``fn`` of the non-NaN values of ``x``; NaN if there are none."""
    a = np.asarray(x, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(fn(a)) if a.size else float("nan")


def _evaluate_fold(data: _Dataset, tune, test, rng, iou_threshold, n_select, grid) -> dict:
    tune, test = np.asarray(tune, dtype=np.int64), np.asarray(test, dtype=np.int64)
    if tune.size == 0 or test.size == 0:
        raise ValueError("tuning and test sets must both be non-empty")
    tau = detection_threshold(data.scores[tune], data.labels[tune])
    sub = [data.targets[i] if data.has_target[i] else None for i in tune]
    tau_prime, used = _select_tau_prime(
        [data.heatmaps[i] for i in tune],
        None if data.is_box else sub,
        sub if data.is_box else None,
        tau,
        n_select,
        grid,
        rng,
        data.connectivity,
        data.fill_holes,
    )
    rows = []
    for i in test[data.has_target[test]]:
        pc = _kept(data.heatmaps[i], tau_prime, tau, data.connectivity, data.fill_holes)
        rows.append(
            box_lesion_scores(None, data.targets[i], iou_threshold, pred_components=pc)
            if data.is_box
            else lesion_scores(None, None, iou_threshold, pred_components=pc, gt_components=data.gt_components(i))
        )
        if data.spacings is not None:
            rows[-1].update(
                surface_scores(pc[0], data.targets[i], data.spacings[i], data.nsd_tolerance, backend=data.surface)
            )
    seg_key = "max_iou" if data.is_box else "dice"
    out = {"tau": tau, "tau_prime": tau_prime}
    out.update({k: _stat([r[k] for r in rows], np.mean) for k in ("precision", "recall", "f1", seg_key)})
    out["balanced_accuracy"] = balanced_accuracy(data.labels[test], data.scores[test] >= tau)
    out.update(
        n_tune=int(tune.size),
        n_test=int(test.size),
        n_test_segmentation=len(rows),
        tau_prime_volumes=sorted(int(tune[j]) for j in used),
    )
    if data.spacings is not None:  # after the paper's keys; NaN volumes (an empty prediction's HD95) skipped
        out.update({k: _stat([r[k] for r in rows], np.mean) for k in SURFACE_KEYS})
        out["n_test_hd95"] = int(sum(np.isfinite(r["hd95"]) for r in rows))
    return out


def evaluate_fold(
    heatmaps: Sequence[np.ndarray],
    labels: Sequence[int],
    tune_idx: Sequence[int],
    test_idx: Sequence[int],
    masks: Sequence[np.ndarray | None] | None = None,
    boxes: Sequence[Box | None] | None = None,
    *,
    iou_threshold: float = 1 / 8,
    n_select: int = 5,
    grid: Grid = 50,
    rng: np.random.Generator | None = None,
    connectivity: int = 26,
    fill_holes: bool = False,
    spacings: Sequence[Sequence[float] | None] | None = None,
    nsd_tolerance: float = NSD_TOLERANCE_MM,
    surface: str = "auto",
) -> dict:
    """Tune ``tau`` and ``tau'`` on ``tune_idx``, measure on ``test_idx``.

    ``fill_holes`` binarizes with filled components (:func:`binarize`), both to tune
    ``tau'`` and to measure. ``spacings`` (mm per (D, H, W) axis of each volume; with
    ``masks``) adds the surface metrics of the same binarization, at ``nsd_tolerance`` mm,
    by the ``surface`` implementation (:func:`tomofield.evaluation.metrics.surface_backend`).

    Returns:
        Dict with ``tau``, ``tau_prime``, ``precision``, ``recall``, ``f1``, ``dice`` (or
        ``max_iou`` for boxes), ``balanced_accuracy``, ``n_tune``, ``n_test``,
        ``n_test_segmentation`` (volumes in the segmentation means; these are NaN when it
        is 0) and ``tau_prime_volumes`` (indices used to tune ``tau'``); with ``spacings``
        also ``hd95`` (mm; the mean over the volumes with a non-empty prediction, whose
        number is ``n_test_hd95``: an empty prediction has no HD95) and ``nsd`` (over the
        same volumes as ``dice``, an empty prediction scoring 0).
    """
    data = _Dataset(heatmaps, labels, masks, boxes, connectivity, fill_holes, spacings, nsd_tolerance, surface)
    return _evaluate_fold(data, tune_idx, test_idx, rng, iou_threshold, n_select, grid)


def tune_thresholds(
    heatmaps: Sequence[np.ndarray],
    labels: Sequence[int],
    masks: Sequence[np.ndarray | None] | None = None,
    boxes: Sequence[Box | None] | None = None,
    *,
    n_select: int = 5,
    grid: Grid = 50,
    seed: int = 0,
    connectivity: int = 26,
    fill_holes: bool = False,
) -> dict[str, float]:
    """``tau`` and ``tau'`` tuned on every volume, as one fold tunes them: the thresholds of a mask.

    The Monte-Carlo folds of :func:`evaluate` measure how well tuned thresholds transfer;
    these are the thresholds to apply to new volumes (:func:`binarize`, with the same
    ``fill_holes``: ``tau'`` is tuned on that binarization).

    Returns:
        ``{"tau": ..., "tau_prime": ..., "volumes": n}``.
    """
    data = _Dataset(heatmaps, labels, masks, boxes, connectivity, fill_holes)
    everything = np.arange(len(data.heatmaps))
    tau = detection_threshold(data.scores, data.labels)
    sub = [data.targets[i] if data.has_target[i] else None for i in everything]
    tau_prime, _ = _select_tau_prime(
        data.heatmaps,
        None if data.is_box else sub,
        sub if data.is_box else None,
        tau,
        n_select,
        grid,
        np.random.default_rng(seed),
        connectivity,
        data.fill_holes,
    )
    return {"tau": float(tau), "tau_prime": float(tau_prime), "volumes": int(everything.size)}


def evaluate(
    heatmaps: Sequence[np.ndarray],
    labels: Sequence[int],
    masks: Sequence[np.ndarray | None] | None = None,
    boxes: Sequence[Box | None] | None = None,
    *,
    folds: int = 10,
    iou_threshold: float = 1 / 8,
    seed: int = 0,
    n_select: int = 5,
    grid: Grid = 50,
    connectivity: int = 26,
    fill_holes: bool = False,
    spacings: Sequence[Sequence[float] | None] | None = None,
    nsd_tolerance: float = NSD_TOLERANCE_MM,
    surface: str = "auto",
) -> dict:
    """Monte-Carlo cross-validated evaluation of heatmaps (paper, A.7).

    Each fold draws a permutation from ``np.random.default_rng(seed)``, tunes on the first
    ``n // 2`` volumes and tests on the rest (see :func:`evaluate_fold`). Heatmaps may
    have different shapes; each mask must match its heatmap. Give ``masks`` or ``boxes``
    (with neither, only the balanced accuracy is defined). ``fill_holes`` binarizes with
    filled components (:func:`binarize`) throughout. ``spacings`` (each volume's mm per
    (D, H, W) axis, ``Volume.spacing``; with ``masks``) adds HD95 and the normalised
    surface Dice at ``nsd_tolerance`` mm to every fold (:func:`evaluate_fold`).

    Returns:
        Dict with the fold means (NaN folds skipped) of ``precision``, ``recall``, ``f1``,
        ``dice`` (or ``max_iou`` for boxes), ``balanced_accuracy``, ``tau`` and
        ``tau_prime`` (with ``spacings``, then ``hd95`` and ``nsd``); ``std`` (population
        std over folds of the same keys); ``folds`` (per-fold dicts);
        ``segmentation_metric`` (``"dice"`` or ``"max_iou"``); ``n_folds``.
    """
    data = _Dataset(heatmaps, labels, masks, boxes, connectivity, fill_holes, spacings, nsd_tolerance, surface)
    n = len(data.heatmaps)
    if folds < 1 or n < 2:
        raise ValueError(f"need folds >= 1 and at least 2 volumes, got {folds} and {n}")
    rng = np.random.default_rng(seed)
    per_fold = []
    for _ in range(folds):
        perm = rng.permutation(n)
        per_fold.append(_evaluate_fold(data, perm[: n // 2], perm[n // 2 :], rng, iou_threshold, n_select, grid))
    seg_key = "max_iou" if data.is_box else "dice"
    keys: tuple[str, ...] = ("precision", "recall", "f1", seg_key, "balanced_accuracy", "tau", "tau_prime")
    if data.spacings is not None:
        keys += SURFACE_KEYS
    out: dict = {k: _stat([f[k] for f in per_fold], np.mean) for k in keys}
    out["std"] = {k: _stat([f[k] for f in per_fold], np.std) for k in keys}
    out.update(folds=per_fold, segmentation_metric=seg_key, n_folds=folds)
    return out
