"""Evaluation protocol of the ToNNO paper (A.7): lesion-wise metrics, thresholds, CV.

Pure numpy/scipy, apart from the surface metrics (HD95, normalised surface Dice), which use
MONAI's implementations where MONAI is installed and their own otherwise; see
:mod:`tomofield.evaluation.metrics` and :mod:`tomofield.evaluation.protocol`.
"""

from tomofield.evaluation.metrics import (
    NSD_TOLERANCE_MM,
    balanced_accuracy,
    box_iou,
    box_lesion_scores,
    component_boxes,
    components,
    dice,
    hd95,
    lesion_matches,
    lesion_scores,
    max_box_iou,
    sensitivity_specificity,
    surface_backend,
    surface_dice,
    surface_distances,
    surface_scores,
    surface_voxels,
    weighted_balanced_accuracy,
)
from tomofield.evaluation.protocol import (
    binarize,
    detection_threshold,
    evaluate,
    evaluate_fold,
    kept_components,
    select_tau_prime,
    tau_prime_grid,
    tune_thresholds,
)

__all__ = [
    "NSD_TOLERANCE_MM",
    "balanced_accuracy",
    "binarize",
    "box_iou",
    "box_lesion_scores",
    "component_boxes",
    "components",
    "detection_threshold",
    "dice",
    "evaluate",
    "evaluate_fold",
    "hd95",
    "kept_components",
    "lesion_matches",
    "lesion_scores",
    "max_box_iou",
    "select_tau_prime",
    "sensitivity_specificity",
    "surface_backend",
    "surface_dice",
    "surface_distances",
    "surface_scores",
    "surface_voxels",
    "tau_prime_grid",
    "tune_thresholds",
    "weighted_balanced_accuracy",
]
