"""HD95 and the normalised surface Dice (tomofield.evaluation.metrics.surface_scores): analytic
answers on anisotropic grids, a brute-force reference, MONAI against the own implementation,
empty masks, and the protocol's folds."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from tomofield.evaluation import evaluate, evaluate_fold
from tomofield.evaluation.metrics import (
    NSD_TOLERANCE_MM,
    hd95,
    surface_backend,
    surface_dice,
    surface_distances,
    surface_scores,
    surface_voxels,
)

BACKENDS = ["scipy", pytest.param("monai", marks=pytest.mark.skipif(surface_backend() != "monai", reason="no MONAI"))]
SPACING = (4.0, 2.0, 0.5)  # mm per (D, H, W): every axis different, so a reversed order gives other numbers


def box(shape=(16, 12, 12), lo=(4, 3, 3), hi=(12, 9, 9)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def brute_force(pred: np.ndarray, gt: np.ndarray, spacing, tolerance: float) -> dict[str, float]:
    """Surface voxels by looking at the 6 neighbours, distances between every pair of them, in mm."""

    def surface(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m, 1)
        out = []
        for p in np.argwhere(m):
            q = p + 1
            if any(not padded[tuple(q + s * e)] for e in np.eye(3, dtype=int) for s in (-1, 1)):
                out.append(p * np.asarray(spacing, dtype=float))
        return np.array(out)

    a, b = surface(pred), surface(gt)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    d_ab, d_ba = d.min(1), d.min(0)
    return {
        "hd95": max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)),
        "nsd": (np.sum(d_ab <= tolerance) + np.sum(d_ba <= tolerance)) / (d_ab.size + d_ba.size),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("axis", "shift"), [(0, 2), (1, 3), (2, 3)])
def test_hd95_of_a_shifted_box_is_the_shift_in_mm_along_its_axis(backend, axis, shift):
    """Shifted by n voxels along one axis: the far faces (over 5% of each surface) are n voxels apart."""
    gt = box()
    pred = np.roll(gt, shift, axis=axis)
    got = hd95(pred, gt, SPACING, backend=backend)
    assert got == pytest.approx(shift * SPACING[axis], rel=1e-6)
    if axis != 1:  # the (i, j, k) order of the affine's columns measures D as W and W as D (H stays H)
        assert got != pytest.approx(shift * SPACING[::-1][axis], rel=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_masks_give_hd95_0_and_nsd_1(backend):
    m = box() | np.roll(box(lo=(1, 1, 1), hi=(5, 5, 4)), 1, axis=2)
    assert surface_scores(m, m, SPACING, backend=backend) == {"hd95": 0.0, "nsd": 1.0}
    assert surface_dice(m, m, SPACING, 0.0, backend=backend) == 1.0


def test_surface_voxels_are_those_with_a_background_face_neighbour_the_volume_edge_included():
    m = box(lo=(0, 3, 3), hi=(16, 9, 9))  # spans D from edge to edge
    s = surface_voxels(m)
    assert s[0, 5, 5] and s[15, 5, 5]  # the volume's edge is background
    assert not s[5, 5, 5] and s[5, 3, 5] and s[5, 8, 8]
    assert np.count_nonzero(s) == m.sum() - 14 * 4 * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_own_implementation_and_monai_equal_a_brute_force_reference(backend):
    rng = np.random.default_rng(0)
    for _ in range(4):
        shape = (9, 11, 10)
        pred = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52
        gt = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52
        spacing = tuple(rng.uniform(0.4, 3.0, 3))
        tol = float(rng.uniform(0.5, 4.0))
        want = brute_force(pred, gt, spacing, tol)
        got = surface_scores(pred, gt, spacing, tol, backend=backend)
        assert got["hd95"] == pytest.approx(want["hd95"], rel=1e-5)
        assert got["nsd"] == pytest.approx(want["nsd"], abs=1e-6)


@pytest.mark.skipif(surface_backend() != "monai", reason="no MONAI")
def test_monai_and_the_own_implementation_agree():
    """Blobs (some touching the volume's edge) on anisotropic grids, tolerances off the distances' values."""
    rng = np.random.default_rng(1)
    for k in range(8):
        shape = (14, 20, 17)
        pred = ndimage.gaussian_filter(rng.random(shape), 2) > 0.51
        gt = ndimage.gaussian_filter(rng.random(shape), 2) > 0.51
        spacing = (3.3, 1.1, 0.7) if k % 2 else (0.8, 0.8, 2.5)
        ours = surface_scores(pred, gt, spacing, 1.7, backend="scipy")
        theirs = surface_scores(pred, gt, spacing, 1.7, backend="monai")
        assert theirs["hd95"] == pytest.approx(ours["hd95"], rel=1e-5)  # MONAI computes in float32
        assert theirs["nsd"] == pytest.approx(ours["nsd"], abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nsd_counts_the_surface_voxels_within_the_tolerance_inclusive(backend):
    gt = box()
    pred = np.roll(gt, 2, axis=0)  # 2 voxels of 4 mm along D: the far faces are 8 mm apart
    d = np.concatenate(surface_distances(pred, gt, SPACING))
    assert d.max() == pytest.approx(8.0) and set(np.round(d, 9)) >= {0.0, 0.5, 4.0, 8.0}
    for t in (0.0, 0.4, 0.5, 3.9, 4.0, 7.9):
        assert surface_dice(pred, gt, SPACING, t, backend=backend) == pytest.approx(np.mean(d <= t)), t
    assert surface_dice(pred, gt, SPACING, 0.0, backend=backend) < surface_dice(pred, gt, SPACING, 4.0, backend=backend)
    assert surface_dice(pred, gt, SPACING, 8.0, backend=backend) == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_masks_give_nan_hd95_and_nsd_0_or_nan_without_a_warning(backend):
    empty, gt = np.zeros((8, 8, 8), bool), box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        missed = surface_scores(empty, gt, SPACING, backend=backend)
        spurious = surface_scores(gt, empty, SPACING, backend=backend)
        nothing = surface_scores(empty, empty, SPACING, backend=backend)
    assert math.isnan(missed["hd95"]) and missed["nsd"] == 0.0
    assert math.isnan(spurious["hd95"]) and spurious["nsd"] == 0.0
    assert math.isnan(nothing["hd95"]) and math.isnan(nothing["nsd"])


def test_inputs_are_checked():
    m = box()
    for bad in ((1.0, 1.0), (1.0, 0.0, 1.0), (1.0, float("nan"), 1.0)):
        with pytest.raises(ValueError, match="spacing"):
            surface_scores(m, m, bad)
    with pytest.raises(ValueError, match="shape"):
        surface_scores(m, m[:-1], SPACING)
    with pytest.raises(ValueError, match="tolerance"):
        surface_scores(m, m, SPACING, -1.0)
    with pytest.raises(ValueError, match="backend"):
        surface_scores(m, m, SPACING, backend="sklearn")
    assert NSD_TOLERANCE_MM == 2.0 and surface_backend("scipy") == "scipy"


# -- in the protocol's folds ---------------------------------------------------------------------
def shifted_boxes(n: int, rng: np.random.Generator):
    """Positives: a heatmap that binarizes to the ground-truth box shifted by 2 voxels along D; negatives: noise."""
    heatmaps, labels, masks = [], [], []
    for i in range(n):
        gt = box() if i % 2 else np.zeros((16, 12, 12), bool)
        pred = np.roll(gt, 2, axis=0)
        heatmaps.append(np.maximum(pred.astype(float), 0.3 * rng.random(gt.shape)))
        labels.append(i % 2)
        masks.append(gt)
    return heatmaps, labels, masks


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_adds_hd95_and_nsd_and_changes_nothing_else(backend):
    hs, ys, ms = shifted_boxes(8, np.random.default_rng(0))
    plain = evaluate(hs, ys, ms, folds=3, seed=1, grid=10)
    spacings = [SPACING] * len(hs)
    r = evaluate(hs, ys, ms, folds=3, seed=1, grid=10, spacings=spacings, nsd_tolerance=5.0, surface=backend)
    new = {"hd95", "nsd", "n_test_hd95"}
    assert set(r) == set(plain) | {"hd95", "nsd"} and set(r["std"]) == set(plain["std"]) | {"hd95", "nsd"}
    np.testing.assert_equal({k: v for k, v in r.items() if k not in new | {"std", "folds"}}, without(plain))
    np.testing.assert_equal({k: v for k, v in r["std"].items() if k not in new}, plain["std"])
    for f, g in zip(r["folds"], plain["folds"], strict=True):
        assert set(f) == set(g) | new
        np.testing.assert_equal({k: v for k, v in f.items() if k not in new}, g)
        assert f["n_test_hd95"] == f["n_test_segmentation"]  # every positive detected
    assert r["hd95"] == pytest.approx(8.0) and r["std"]["hd95"] == pytest.approx(0.0)
    gt, pred = ms[1], np.roll(ms[1], 2, axis=0)
    assert r["nsd"] == pytest.approx(surface_dice(pred, gt, SPACING, 5.0, backend="scipy"))
    assert 0 < r["nsd"] < 1


def without(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("std", "folds")}


def test_evaluate_leaves_a_missed_lesion_out_of_hd95_and_scores_its_nsd_0():
    hs, ys, ms = shifted_boxes(8, np.random.default_rng(0))
    hs[7] = 0.3 * np.random.default_rng(9).random(hs[7].shape)  # positive, but nothing above the negatives
    f = evaluate_fold(hs, ys, [0, 1, 2, 3], [4, 5, 6, 7], ms, grid=10, spacings=[SPACING] * 8, surface="scipy")
    assert f["n_test_segmentation"] == 2 and f["n_test_hd95"] == 1
    assert f["hd95"] == pytest.approx(8.0)  # the found one only
    assert f["nsd"] == pytest.approx(surface_dice(np.roll(ms[5], 2, axis=0), ms[5], SPACING) / 2)
    assert f["dice"] == pytest.approx(0.75 / 2)  # the paper's Dice counts the miss as 0 too


def test_boxes_and_volumes_without_masks_get_no_surface_metrics():
    hs, ys, ms = shifted_boxes(6, np.random.default_rng(3))
    boxes = [(4, 3, 3, 12, 9, 9) if y else None for y in ys]
    r = evaluate(hs, ys, boxes=boxes, folds=2, grid=8, spacings=[SPACING] * 6)
    assert "hd95" not in r and "nsd" not in r["folds"][0]
    spacings = [SPACING if y else None for y in ys]  # negatives: no mask, no spacing needed
    r = evaluate(hs, ys, [m if y else None for m, y in zip(ms, ys, strict=True)], folds=2, grid=8, spacings=spacings)
    assert r["hd95"] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="spacings"):
        evaluate(hs, ys, ms, spacings=[SPACING] * 5)


def test_brute_force_reference_itself_on_a_shifted_box():
    gt = box((8, 7, 7), (2, 2, 2), (5, 5, 5))
    assert brute_force(np.roll(gt, 1, axis=1), gt, SPACING, 1.0)["hd95"] == pytest.approx(2.0)


def test_the_reports_default_tolerance_is_the_librarys():
    from tomofield.report import NSD_TOLERANCE_MM as REPORTED  # a copy: tomofield.report imports no scipy at load

    assert REPORTED == NSD_TOLERANCE_MM


def test_without_monai_the_own_implementation_is_used():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['monai'] = None\n"  # as if not installed: its import raises ImportError
        "import numpy as np\n"
        "from tomofield.evaluation import surface_backend, surface_scores\n"
        "m = np.zeros((8, 8, 8), bool); m[2:6, 2:6, 2:6] = True\n"
        "print(surface_backend(), surface_scores(np.roll(m, 1, 0), m, (3.0, 1.0, 1.0))['hd95'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "scipy" and float(out[1]) == pytest.approx(3.0)
