"""Hand-checked cases for tomofield.evaluation.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from tomofield.evaluation.metrics import (
    balanced_accuracy,
    box_iou,
    box_lesion_scores,
    components,
    dice,
    lesion_matches,
    lesion_scores,
    max_box_iou,
    sensitivity_specificity,
    weighted_balanced_accuracy,
)


def vol(shape=(6, 6, 6)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def test_corner_touching_voxels_depend_on_connectivity():
    m = vol()
    m[0, 0, 0] = m[1, 1, 1] = True  # share only a corner
    assert components(m, 26)[1] == 1
    assert components(m, 18)[1] == 2
    assert components(m, 6)[1] == 2


def test_edge_touching_voxels():
    m = vol()
    m[0, 0, 0] = m[0, 1, 1] = True  # share an edge
    assert components(m, 26)[1] == 1
    assert components(m, 18)[1] == 1
    assert components(m, 6)[1] == 2


def test_components_rejects_bad_connectivity_and_shape():
    with pytest.raises(ValueError):
        components(vol(), 8)
    with pytest.raises(ValueError):
        components(np.zeros((4, 4), bool))


def test_matching_with_touching_cubes_6_vs_26():
    m = vol()
    m[0:2, 0:2, 0:2] = True
    m[2:4, 2:4, 2:4] = True  # touches the first cube at one corner
    m26 = lesion_matches(m, m, connectivity=26)
    m6 = lesion_matches(m, m, connectivity=6)
    assert m26 == {"tp": 1, "fp": 0, "fn": 0, "n_pred": 1, "n_gt": 1}
    assert m6 == {"tp": 2, "fp": 0, "fn": 0, "n_pred": 2, "n_gt": 2}


def test_empty_prediction():
    gt = vol()
    gt[1:3, 1:3, 1:3] = True
    gt[4, 4, 4] = True
    s = lesion_scores(vol(), gt)
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"], s["n_gt"]) == (0, 0, 2, 0, 2)
    assert s["precision"] == 0 and s["recall"] == 0 and s["f1"] == 0 and s["dice"] == 0


def test_empty_ground_truth():
    pred = vol()
    pred[0, 0, 0] = pred[3, 3, 3] = True
    s = lesion_scores(pred, vol())
    assert (s["tp"], s["fp"], s["fn"]) == (0, 2, 0)
    assert s["precision"] == 0 and s["recall"] == 1 and s["f1"] == 0 and s["dice"] == 0


def test_both_empty():
    s = lesion_scores(vol(), vol())
    assert s["dice"] == 1 and s["precision"] == 1 and s["recall"] == 1 and s["f1"] == 1


def test_iou_exactly_one_eighth_is_not_a_match():
    gt = vol()
    gt[0, 0, 0] = True
    pred = vol()
    pred[0:2, 0:2, 0:2] = True  # 8 voxels holding the GT voxel: IoU = 1/8
    m = lesion_matches(pred, gt)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    assert lesion_matches(pred, gt, iou_threshold=0.12)["tp"] == 1


def test_iou_just_above_one_eighth_is_a_match():
    gt = vol()
    gt[0, 0, 0] = True
    pred = vol()
    pred[0:2, 0:2, 0:2] = True
    pred[1, 1, 1] = False  # 7 voxels: IoU = 1/7
    m = lesion_matches(pred, gt)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)


def test_one_prediction_covering_two_ground_truth_lesions():
    gt = vol((4, 4, 8))
    gt[0:2, 0:2, 0:2] = True
    gt[0:2, 0:2, 3:5] = True  # gap at w=2
    pred = vol((4, 4, 8))
    pred[0:2, 0:2, 0:5] = True  # 20 voxels; IoU 8/20 with each GT cube
    s = lesion_scores(pred, gt)
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"], s["n_gt"]) == (1, 0, 0, 1, 2)
    assert s["precision"] == 1 and s["recall"] == 1 and s["f1"] == 1
    assert s["dice"] == pytest.approx(2 * 16 / (20 + 16))


def test_one_prediction_covering_a_big_and_a_tiny_lesion():
    gt = vol((4, 4, 8))
    gt[0:2, 0:2, 0:2] = True  # IoU 8/20 with the prediction
    gt[0, 0, 4] = True  # IoU 1/20 < 1/8: missed
    pred = vol((4, 4, 8))
    pred[0:2, 0:2, 0:5] = True
    s = lesion_scores(pred, gt)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)
    assert s["precision"] == 1 and s["recall"] == 0.5
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["dice"] == pytest.approx(18 / 29)


def test_false_positive_next_to_true_positive():
    gt = vol()
    gt[0:2, 0:2, 0:2] = True
    pred = gt.copy()
    pred[5, 5, 5] = True
    s = lesion_scores(pred, gt)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 0)
    assert s["precision"] == 0.5 and s["recall"] == 1
    assert s["f1"] == pytest.approx(2 / 3)


def test_dice_known_overlap():
    pred = vol()
    pred[0, 0, 0:4] = True  # 4 voxels
    gt = vol()
    gt[0, 0, 1:6] = True
    gt[1, 0, 5] = True  # 6 voxels, 3 shared
    assert dice(pred, gt) == pytest.approx(0.6)
    assert dice(vol(), vol()) == 1.0
    with pytest.raises(ValueError):
        dice(vol(), vol((2, 2, 2)))


def test_balanced_accuracy_hand_table():
    y_true = [1, 1, 1, 0, 0]
    y_pred = [1, 0, 1, 0, 1]  # sens 2/3, spec 1/2
    assert sensitivity_specificity(y_true, y_pred) == pytest.approx((2 / 3, 1 / 2))
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(7 / 12)
    assert weighted_balanced_accuracy(y_true, y_pred) == pytest.approx(23 / 36)
    assert weighted_balanced_accuracy(y_true, y_pred, 1, 3) == pytest.approx((2 / 3 + 3 / 2) / 4)


def test_balanced_accuracy_single_class():
    assert balanced_accuracy([0, 0, 0], [0, 1, 0]) == pytest.approx(2 / 3)  # spec only
    assert balanced_accuracy([1, 1], [1, 0]) == pytest.approx(0.5)  # sens only
    with pytest.raises(ValueError):
        balanced_accuracy([], [])


def test_box_iou_known_boxes():
    a = (0, 0, 0, 2, 2, 2)
    assert box_iou(a, (1, 1, 1, 3, 3, 3)) == pytest.approx(1 / 15)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, (2, 0, 0, 4, 2, 2)) == 0.0  # touching faces, no overlap
    assert box_iou(a, (0, 0, 0, 2, 2, 4)) == pytest.approx(0.5)
    many = box_iou(np.array([a, (1, 1, 1, 3, 3, 3)]), a)
    np.testing.assert_allclose(many, [1.0, 1 / 15])


def test_max_box_iou_and_box_scores():
    pred = vol((8, 8, 8))
    pred[0:2, 0:2, 0:2] = True  # box (0,0,0,2,2,2)
    pred[5, 5, 5:7] = True  # box (5,5,5,6,6,7)
    gt_box = (0, 0, 0, 2, 2, 4)
    assert max_box_iou(pred, gt_box) == pytest.approx(0.5)
    assert max_box_iou(vol((8, 8, 8)), gt_box) == 0.0
    s = box_lesion_scores(pred, gt_box)
    assert (s["tp"], s["fp"], s["fn"], s["n_gt"]) == (1, 1, 0, 1)
    assert s["precision"] == 0.5 and s["recall"] == 1 and s["max_iou"] == pytest.approx(0.5)
    miss = box_lesion_scores(pred, (6, 6, 0, 8, 8, 2))
    assert (miss["tp"], miss["fn"], miss["recall"], miss["max_iou"]) == (0, 1, 0, 0)
    assert box_lesion_scores(pred, None)["n_gt"] == 0
