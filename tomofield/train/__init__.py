"""Weakly supervised training of the slice encoder (``docs/design.md``; the ToNNO paper, A.4).

A classification step draws ``B`` volumes (pairs of one positive and one negative) and, by
default (``objective="mil"``, :mod:`~tomofield.train.objective`), cuts each into one stack
of ``M`` parallel slices along a uniform random normal (stratified offsets, random in-plane
bases): a stack's slice logits pool to the volume's logit, so a positive needs one slice
that cuts a lesion and every slice of a negative is a negative. The paper's objective
(``objective="slice"``) gives every slice its volume's label instead, at random offsets
with random in-plane bases of random lengths (anisotropic scale), in-plane translation and
an affine intensity change. Binary cross-entropy (or MSE / Huber for regression), Adam, a
cosine learning-rate schedule updated every step; :mod:`~tomofield.train.monitor` judges
whether the run learns by what separates the classes.

Regression with a ``teacher`` (a classification run on the same kind of data) trains an
encoder whose slice score is a *density*: the mean over the slice of target units per
mL, what the ``tomo`` filter inverts, so the heatmap integrates to the target. Each step
cuts every drawn volume into one full stack of ``M`` parallel slices (stratified offsets
over the volume's support; augmentation that never crops the cross-section), the
teacher scores the slices, and the volume's target is spread over the slices in
proportion to the teacher's excess over its score on negative volumes, so that the stack's
quadrature ``sum_k w_k d_k`` (``w_k`` = slice area x spacing in mL) is exactly the target
(:func:`spread_targets`). The student, initialised from the teacher, regresses those
densities slice by slice. Only volume-level labels are used (``docs/features.md``). The
student's encoder, norm, slice size, geometry and extent default to the teacher's
(:meth:`TrainConfig.resolved`).

Modules: :mod:`~tomofield.train.config` (arguments and their defaults),
:mod:`~tomofield.train.objective` (the multiple-instance loss),
:mod:`~tomofield.train.slicing` (data and augmentation), :mod:`~tomofield.train.teacher`,
:mod:`~tomofield.train.validation` (volume-level metrics), :mod:`~tomofield.train.trainer`
(the loop, checkpoints, resume).
"""

from tomofield.train.config import DEFAULT_LOSS, DEFAULTS, TASKS, TrainConfig, config_from_options, teacher_run
from tomofield.train.slicing import (
    Loaded,
    augmented_slices,
    cut_jittered,
    load_cases,
    pick_volumes,
    random_frame,
    stack_slices,
)
from tomofield.train.teacher import Teacher, spread_targets
from tomofield.train.trainer import Progress, Scaled, Trainer, cosine_lr
from tomofield.train.validation import auc, balanced_accuracy, best_threshold, volume_scores

__all__ = [
    "DEFAULTS",
    "DEFAULT_LOSS",
    "TASKS",
    "Loaded",
    "Progress",
    "Scaled",
    "Teacher",
    "TrainConfig",
    "Trainer",
    "auc",
    "augmented_slices",
    "balanced_accuracy",
    "best_threshold",
    "config_from_options",
    "cosine_lr",
    "cut_jittered",
    "load_cases",
    "pick_volumes",
    "random_frame",
    "spread_targets",
    "stack_slices",
    "teacher_run",
    "volume_scores",
]
