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
    kept_components,
    kept_over_grid,
    select_tau_prime,
    tau_prime_grid,
    tune_thresholds,
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


# -- fill_holes: each kept component's enclosed holes, in 3D ----------------------------------------
def radius(shape, centre) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    return np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))


def hollow(shape=(21, 21, 21), centre=(10, 10, 10), inner=5.0, outer=8.0, rim=1.0, core=0.1) -> np.ndarray:
    """A bright rim (``inner <= r <= outer``) around a weak core, 0 outside: a large lesion's ToNNO heatmap."""
    r = radius(shape, centre)
    return np.where((r >= inner) & (r <= outer), rim, np.where(r < inner, core, 0.0))


@pytest.mark.parametrize("conn", [6, 18, 26])
def test_fill_holes_turns_a_hollow_sphere_into_the_ball(conn):
    h = hollow()
    r = radius(h.shape, (10, 10, 10))
    shell, ball = (r >= 5) & (r <= 8), r <= 8
    np.testing.assert_array_equal(binarize(h, 0.5, 0.9, connectivity=conn), shell)
    np.testing.assert_array_equal(binarize(h, 0.5, 0.9, connectivity=conn, fill_holes=False), shell)
    np.testing.assert_array_equal(binarize(h, 0.5, 0.9, connectivity=conn, fill_holes=True), ball)
    labels, n = kept_components(h, 0.5, 0.9, connectivity=conn, fill_holes=True)
    assert n == 1 and np.array_equal(labels == 1, ball)


def test_fill_holes_keeps_a_shell_touching_the_volume_border_as_it_is():
    # closed cavity, but the rim reaches index 0 of the first axis
    touching = hollow(centre=(8, 10, 10))
    assert binarize(touching, 0.5, 0.9)[0].any() and binarize(touching, 0.5, 0.9)[1:].any()
    np.testing.assert_array_equal(binarize(touching, 0.5, 0.9, fill_holes=True), binarize(touching, 0.5, 0.9))
    # cut open by the last border of the last axis
    cut = hollow(centre=(10, 10, 15))
    np.testing.assert_array_equal(binarize(cut, 0.5, 0.9, fill_holes=True), binarize(cut, 0.5, 0.9))
    # the same shell one voxel away from the border is filled
    away = np.pad(touching, ((1, 0), (0, 0), (0, 0)))
    assert binarize(away, 0.5, 0.9, fill_holes=True).sum() > binarize(away, 0.5, 0.9).sum()


def test_fill_holes_changes_only_hollow_components_and_never_takes_another_components_voxels():
    shape = (24, 46, 24)
    ra, rb = radius(shape, (12, 11, 12)), radius(shape, (12, 34, 12))
    h = np.where((ra >= 5) & (ra <= 8), 1.0, 0.0) + np.where(rb <= 6, 1.0, 0.0)  # A hollow, B solid
    filled = binarize(h, 0.5, 0.9, fill_holes=True)
    np.testing.assert_array_equal(filled, (ra <= 8) | (rb <= 6))

    # nested: B (its own cavity, r < 3) sits in A's cavity; a weak blob C (max below tau) in the gap
    r = radius((25, 25, 25), (12, 12, 12))
    a, b = (r >= 8) & (r <= 10), (r >= 3) & (r <= 4)
    h = np.where(a | b, 1.0, 0.1)
    h[12, 12, 18] = 0.6  # C: above tau' = 0.5, but its max is below tau = 0.9
    labels, n = kept_components(h, 0.5, 0.9)
    assert n == 2 and not labels[12, 12, 18]
    la, lb = labels[12, 12, 21], labels[12, 12, 15]
    lab, n = kept_components(h, 0.5, 0.9, fill_holes=True)
    assert n == 2 and (lab[12, 12, 21], lab[12, 12, 15]) == (la, lb)
    np.testing.assert_array_equal(lab == la, (r <= 10) & (r > 4))  # A, the gap and the dropped C
    np.testing.assert_array_equal(lab == lb, r <= 4)  # B keeps its voxels and takes its own cavity
    np.testing.assert_array_equal(binarize(h, 0.5, 0.9, fill_holes=True), r <= 10)


def test_fill_holes_grid_search_fills_each_thresholds_own_components():
    """The cropped fast path of the tau' grid search gives binarize's filled mask at every candidate."""
    rng = np.random.default_rng(11)
    shape = (30, 28, 26)
    h = ndimage.gaussian_filter(rng.normal(size=shape), 1.0) * 0.15
    for centre, outer, rim in (((10, 9, 9), 7.0, 1.0), ((21, 19, 16), 5.0, 0.8), ((13, 10, 10), 2.0, 0.7)):
        r = radius(shape, centre)
        h = h + rim * np.exp(-(((r - outer + 1.5) / 1.2) ** 2))  # rims, one inside another's cavity
    tau = 0.9
    cands = np.linspace(-0.1, tau, 40)
    seen_fill = 0
    for conn in (6, 26):
        steps = list(kept_over_grid(h, cands, tau, conn, True))
        assert len(steps) == cands.size
        for k, labels, n, crop in steps:
            got = np.zeros(shape, bool)
            got[crop] = labels > 0
            want = binarize(h, cands[k], tau, connectivity=conn, fill_holes=True)
            np.testing.assert_array_equal(got, want, err_msg=f"tau' {cands[k]}, connectivity {conn}")
            assert n == kept_components(h, cands[k], tau, connectivity=conn)[1]
            seen_fill += int(want.sum() > binarize(h, cands[k], tau, connectivity=conn).sum())
    assert seen_fill >= 4  # the filling mattered at several thresholds


def hollow_lesions(n: int, rng: np.random.Generator):
    """Half positive volumes with one large lesion (mask: the ball r <= 7) whose heatmap is a rim (4 <= r <= 7)."""
    heatmaps, labels, masks = [], [], []
    for i in range(n):
        shape = (22, 22, 22)
        r = radius(shape, rng.integers(9, 13, 3))
        noise = 0.3 * rng.random(shape)
        if i % 2:
            heatmaps.append(np.where((r >= 4) & (r <= 7), 1.0, np.where(r < 4, 0.05, noise)))
            masks.append(r <= 7)
        else:
            heatmaps.append(noise)
            masks.append(np.zeros(shape, bool))
        labels.append(i % 2)
    return heatmaps, labels, masks


def test_fill_holes_in_the_evaluation_agrees_with_binarize():
    hs, ys, ms = hollow_lesions(12, np.random.default_rng(3))
    r = radius((15, 15, 15), (7, 7, 7))
    ball, shell = np.count_nonzero(r <= 7), np.count_nonzero((r >= 4) & (r <= 7))
    plain = evaluate(hs, ys, ms, folds=3, seed=2, grid=20)
    filled = evaluate(hs, ys, ms, folds=3, seed=2, grid=20, fill_holes=True)
    assert plain["dice"] == pytest.approx(2 * shell / (shell + ball))  # the shell of every lesion
    assert filled["dice"] == pytest.approx(1.0) and filled["f1"] == pytest.approx(1.0)
    assert filled["balanced_accuracy"] == plain["balanced_accuracy"] == 1.0
    # a fold's Dice is the mean Dice of binarize(fill_holes=True) at the fold's own thresholds
    test = range(6, 12)
    fold = evaluate_fold(hs, ys, range(6), test, ms, grid=20, fill_holes=True)
    want = [dice(binarize(hs[i], fold["tau_prime"], fold["tau"], fill_holes=True), ms[i]) for i in test if ys[i]]
    assert fold["n_test_segmentation"] == len(want) == 3 and fold["dice"] == pytest.approx(np.mean(want))
    # the thresholds for new volumes: tau' tuned on the filled binarization, tau unchanged
    t = tune_thresholds(hs, ys, ms, grid=20, fill_holes=True)
    u = tune_thresholds(hs, ys, ms, grid=20)
    assert t["tau"] == u["tau"] and set(t) == set(u) == {"tau", "tau_prime", "volumes"}
    for h, m, y in zip(hs, ms, ys, strict=True):
        if y:
            assert dice(binarize(h, t["tau_prime"], t["tau"], fill_holes=True), m) == 1.0
            assert dice(binarize(h, u["tau_prime"], u["tau"]), m) == pytest.approx(2 * shell / (shell + ball))


def test_fill_holes_default_is_the_plain_protocol_and_solid_lesions_do_not_change():
    hs, ys, ms = synthetic(8, np.random.default_rng(4))
    base = evaluate(hs, ys, ms, folds=2, seed=5, grid=8)
    assert evaluate(hs, ys, ms, folds=2, seed=5, grid=8, fill_holes=False) == base
    filled = evaluate(hs, ys, ms, folds=2, seed=5, grid=8, fill_holes=True)
    assert filled["folds"] == base["folds"]
