"""Synthetic weakly supervised lesion dataset, the project's built-in default data.

Every case is an anatomy-like volume (roughly CT / 1000, background ~0): a body with a fat
layer, textured soft tissue, plain and air-filled organs, one large enhancing organ, a vessel
tree, calcifications and cysts, drawn alike in both classes. Positives also carry 1-3
lobulated lesions with a mottled interior, 0.4-0.9 brighter than their surroundings. The
negative drawn from a generator state is the lesion-free twin of the positive drawn from the
same state. A per-volume random gain and offset, and bright distractors in both classes, keep
global intensity statistics from separating the classes. Sizes are in mm, relative to 48
reference voxels along the shortest physical axis, so anisotropic spacing still gives
physically round lesions. ``lesion_radius=(lo, hi)`` asks for lesion sizes instead: each
lesion's mask then has an equivalent radius in that range, in voxels of the finest spacing
(:func:`make_case`); ``synth.json`` beside a dataset's CSVs records how it was made.

``background="realistic"`` makes the same anatomy look like a stored scan instead of a
normalised one (:func:`as_scan`): finer multi-scale tissue texture, a smooth multiplicative
bias field (shading of +-15-40 %), Rician noise, and the intensities written in a
scanner's own unit and offset as int16: a dataset-wide gain of 50-3000 units per tissue
step and an offset of -1024 to +500, each volume's gain a further 0.6-1.6 times that
(arbitrary units that differ from scan to scan, as in MRI). Its grid keeps a roughly
cubic field of view whatever the spacing, so a thick-slice spacing gives fewer slices
along that axis: ``size`` voxels at most along the finest axis, each side 85-100 % of its
share.

The package: :mod:`~tomofield.synth.shapes` (the anatomy's shapes),
:mod:`~tomofield.synth.lesions` (lesions and their sizes), :mod:`~tomofield.synth.case`
(:func:`make_case`, the scan's look), :mod:`~tomofield.synth.dataset` (:func:`write_dataset`),
:mod:`~tomofield.synth.settings` (the settings' limits) and :mod:`~tomofield.synth.phantom`
(analytic ball phantoms for checks).
"""

from tomofield.synth.case import as_scan, make_case, scan_grid
from tomofield.synth.dataset import RECORD, check_settings, write_dataset
from tomofield.synth.lesions import LESION_CAP, equivalent_radius, lesion_limits
from tomofield.synth.phantom import ball_phantom
from tomofield.synth.settings import BACKGROUNDS, LAYOUTS, LESION_RADIUS_UNIT, LIMITS
from tomofield.synth.shapes import ORGAN_CONTRAST, ORGAN_RADIUS, SIGNAL_FLOOR

__all__ = [
    "BACKGROUNDS",
    "LAYOUTS",
    "LESION_CAP",
    "LESION_RADIUS_UNIT",
    "LIMITS",
    "ORGAN_CONTRAST",
    "ORGAN_RADIUS",
    "RECORD",
    "SIGNAL_FLOOR",
    "as_scan",
    "ball_phantom",
    "check_settings",
    "equivalent_radius",
    "lesion_limits",
    "make_case",
    "scan_grid",
    "write_dataset",
]
