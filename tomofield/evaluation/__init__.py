"""Evaluation protocol of the ToNNO paper (A.7): lesion-wise metrics, thresholds, CV.

Pure numpy/scipy; see :mod:`tomofield.evaluation.metrics` and
:mod:`tomofield.evaluation.protocol`.
"""

from tomofield.evaluation.metrics import (
    balanced_accuracy,
    box_iou,
    box_lesion_scores,
    component_boxes,
    components,
    dice,
    lesion_matches,
    lesion_scores,
    max_box_iou,
    sensitivity_specificity,
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
    "kept_components",
    "lesion_matches",
    "lesion_scores",
    "max_box_iou",
    "select_tau_prime",
    "sensitivity_specificity",
    "tau_prime_grid",
    "tune_thresholds",
    "weighted_balanced_accuracy",
]
