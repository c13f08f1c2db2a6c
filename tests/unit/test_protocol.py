"""Hand-checked cases and synthetic end-to-end checks for tomofield.evaluation.protocol."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tomofield.evaluation.metrics import dice
from tomofield.evaluation.protocol import (
    binarize,
    detection_threshold,
    evaluate,
    evaluate_fold,
    select_tau_prime,
    tau_prime_grid,
)


def test_detection_threshold_weighted_vs_equal():
    scores = [0.9, 0.2, 0.3, 0.4, 0.5]
    labels = [1, 1, 0, 0, 0]
    # tau=0.2: sens 1, spec 0 -> wBA 5/6 (BA 1/2); tau=0.9: sens 1/2, spec 1 -> wBA 7/12 (BA 3/4)
    assert detection_threshold(scores, labels) == 0.2
    # best candidate 0.9, moved to the midpoint with the next lower score 0.5
    assert detection_threshold(scores, labels, w_sens=1, w_spec=1) == pytest.approx(0.7)


def test_detection_threshold_uses_ge_and_breaks_ties_upwards():
    scores = [0.1, 0.4, 0.35, 0.8]
    labels = [0, 0, 1, 1]
    # wBA: 0.1 -> 5/6, 0.35 -> 11/12, 0.4 -> 1/2 (0.4 itself counts positive), 0.8 -> 7/12
    # best candidate 0.35, moved to the midpoint with the next lower score 0.1
    assert detection_threshold(scores, labels) == pytest.approx(0.225)
    # equal weights: 0.35 and 0.8 both give 3/4; the larger wins, then the midpoint with 0.4
    assert detection_threshold(scores, labels, 1, 1) == pytest.approx(0.6)


def test_detection_threshold_single_class():
    assert detection_threshold([0.3, 0.7], [1, 1]) == 0.3
    assert detection_threshold([0.3, 0.7], [0, 0]) == np.inf
    with pytest.raises(ValueError):
        detection_threshold([0.1, float("nan")], [0, 1])


def two_blob_heatmap() -> np.ndarray:
    h = np.zeros((10, 10, 10))
    h[1:4, 1:4, 1:4] = 0.6
    h[2, 2, 2] = 0.9  # blob A: max 0.9
    h[6:9, 6:9, 6:9] = 0.6
    h[7, 7, 7] = 0.7  # blob B: max 0.7
    return h


def test_binarize_drops_component_below_tau():
    h = two_blob_heatmap()
    m = binarize(h, 0.5, 0.8)
    expected = np.zeros_like(m)
    expected[1:4, 1:4, 1:4] = True  # all of A, including its voxels below tau
    np.testing.assert_array_equal(m, expected)
    assert binarize(h, 0.5, 0.95).sum() == 0
    assert binarize(h, 0.5, 0.7).sum() == 54
    assert binarize(h, 0.8, 0.8).sum() == 1  # direct binarization at tau
    with pytest.raises(ValueError):
        binarize(h, 0.9, 0.8)


def test_binarize_connectivity():
    h = np.zeros((4, 4, 4))
    h[0, 0, 0] = 1.0
    h[1, 1, 1] = 0.5  # corner neighbour, below tau
    assert binarize(h, 0.4, 0.9, connectivity=26).sum() == 2
    assert binarize(h, 0.4, 0.9, connectivity=6).sum() == 1


def test_tau_prime_grid_is_below_tau():
    rng = np.random.default_rng(0)
    hs = [rng.random((5, 5, 5)), rng.random((4, 6, 3))]
    g = tau_prime_grid(hs, 0.7, 20)
    assert g.size > 10 and np.all(g < 0.7) and np.all(np.diff(g) > 0)
    assert g[0] == min(h.min() for h in hs)
    np.testing.assert_array_equal(tau_prime_grid(hs, -1.0, 20), [-1.0])


def test_select_tau_prime_recovers_lesion():
    gt = np.zeros((12, 12, 12), bool)
    gt[3:7, 3:7, 3:7] = True
    h = np.where(gt, 0.6, 0.05)
    h[4:6, 4:6, 4:6] = 1.0  # only the core reaches tau
    tau = 1.0
    tp = select_tau_prime([h], [gt], tau)
    assert 0.05 < tp <= 0.6
    assert dice(binarize(h, tp, tau), gt) == 1.0
    # explicit grid: 0.8 gives the core only (Dice 16/72), 0.5 the whole lesion
    assert select_tau_prime([h], [gt], tau, grid=[0.8, 0.5, 2.0]) == 0.5
    box = (3, 3, 3, 7, 7, 7)
    assert select_tau_prime([h], None, tau, boxes=[box], grid=[0.8, 0.5]) == 0.5
    # no usable ground truth: fall back to tau
    assert select_tau_prime([h], [np.zeros_like(gt)], tau) == tau


def test_select_tau_prime_ignores_components_below_tau():
    gt = np.zeros((14, 14, 14), bool)
    gt[2:6, 2:6, 2:6] = True
    h = np.where(gt, 0.6, 0.05)
    h[3:5, 3:5, 3:5] = 1.0
    h[9:13, :, :] = 0.55  # large distractor, max below tau, not touching the lesion
    # 0.5: whole lesion (Dice 1) once the distractor is dropped; 0.65: core only (2/9)
    assert select_tau_prime([h], [gt], 1.0, grid=[0.5, 0.65]) == 0.5


def test_select_tau_prime_matches_brute_force():
    rng = np.random.default_rng(7)
    hs, ms = [], []
    for _ in range(3):
        h = ndimage.gaussian_filter(rng.normal(size=(18, 16, 14)), 1.2)
        hs.append(h)
        ms.append(ndimage.gaussian_filter(h + 0.1 * rng.normal(size=h.shape), 1.0) > 0.15)
    tau = float(np.median([h.max() for h in hs]))
    grid = np.linspace(-0.2, tau, 25)
    for conn in (6, 26):
        mean_dice = [
            np.mean([dice(binarize(h, c, tau, connectivity=conn), m) for h, m in zip(hs, ms, strict=True)])
            for c in grid
        ]
        best = grid[np.flatnonzero(np.isclose(mean_dice, max(mean_dice), atol=1e-12))[-1]]
        assert select_tau_prime(hs, ms, tau, grid=grid, connectivity=conn) == best


def synthetic(n: int, rng: np.random.Generator, random_heatmaps: bool = False):
    """Half positive volumes with 1-2 separated cubes; heatmap = max(mask, noise)."""
    heatmaps, labels, masks = [], [], []
    for i in range(n):
        shape = (20, 20, 20) if i % 3 else (16, 20, 18)
        m = np.zeros(shape, bool)
        if i % 2:
            m[2:6, 2:6, 2:6] = True
            if i % 4 == 1:
                m[10:14, 10:15, 9:13] = True
        noise = 0.3 * rng.random(shape)
        if random_heatmaps:
            h = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
        else:
            h = np.maximum(m.astype(float), noise)
        heatmaps.append(h)
        labels.append(int(i % 2))
        masks.append(m)
    return heatmaps, labels, masks


def test_evaluate_perfect_heatmaps():
    hs, ys, ms = synthetic(16, np.random.default_rng(0))
    r = evaluate(hs, ys, ms, folds=4, seed=1, grid=20)
    for k in ("precision", "recall", "f1", "dice", "balanced_accuracy"):
        assert r[k] == pytest.approx(1.0), k
        assert r["std"][k] == pytest.approx(0.0), k
    # tau sits midway between the highest negative maximum (< 0.3) and the positives' 1.0
    assert 0.6 < r["tau"] < 0.65 and 0.3 <= r["tau_prime"] < r["tau"]
    assert r["segmentation_metric"] == "dice" and r["n_folds"] == 4
    assert len(r["folds"]) == 4
    f = r["folds"][0]
    assert f["n_tune"] == 8 and f["n_test"] == 8 and f["n_test_segmentation"] >= 1
    assert 1 <= len(f["tau_prime_volumes"]) <= 5
    assert all(ys[i] == 1 for i in f["tau_prime_volumes"])


def test_evaluate_with_boxes():
    hs, ys, ms = synthetic(12, np.random.default_rng(2))
    # one box per positive volume, around the first cube only (as in the Duke data)
    boxes = [(2, 2, 2, 6, 6, 6) if y else None for y in ys]
    r = evaluate(hs, ys, boxes=boxes, folds=3, grid=10)
    assert "dice" not in r and r["segmentation_metric"] == "max_iou"
    assert r["max_iou"] == pytest.approx(1.0) and r["recall"] == pytest.approx(1.0)
    # the second cube of two-cube volumes has no box: a false positive
    assert 0.5 <= r["precision"] < 1.0
    assert r["balanced_accuracy"] == pytest.approx(1.0)


def test_evaluate_random_heatmaps_score_low():
    hs, ys, ms = synthetic(24, np.random.default_rng(3), random_heatmaps=True)
    r = evaluate(hs, ys, ms, folds=4, grid=20)
    assert r["f1"] < 0.4
    assert r["dice"] < 0.3
    assert r["balanced_accuracy"] < 0.8


def test_evaluate_is_deterministic_and_validates():
    hs, ys, ms = synthetic(8, np.random.default_rng(4))
    a = evaluate(hs, ys, ms, folds=2, seed=5, grid=8)
    b = evaluate(hs, ys, ms, folds=2, seed=5, grid=8)
    assert a["folds"] == b["folds"]
    with pytest.raises(ValueError):
        evaluate(hs, ys[:-1], ms)
    with pytest.raises(ValueError):
        evaluate(hs, ys, ms, boxes=[None] * len(hs))
    with pytest.raises(ValueError):
        evaluate(hs, ys, [np.zeros((3, 3, 3), bool)] * len(hs))


def test_evaluate_fold_explicit_split():
    hs, ys, ms = synthetic(8, np.random.default_rng(6))
    f = evaluate_fold(hs, ys, [0, 1, 2, 3], [4, 5, 6, 7], ms, grid=10)
    assert 0.5 < f["tau"] < 0.65 and f["f1"] == 1.0 and f["n_test_segmentation"] == 2
    # labels only: segmentation metrics undefined, balanced accuracy still computed
    g = evaluate_fold(hs, ys, [0, 1, 2, 3], [4, 5, 6, 7])
    assert np.isnan(g["f1"]) and g["balanced_accuracy"] == 1.0
