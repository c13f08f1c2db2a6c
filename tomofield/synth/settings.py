"""The settings of a synthetic dataset: the looks, the limits of every setting, and the lesion size's unit."""

from __future__ import annotations

from typing import TypedDict

#: The looks :func:`write_dataset` can give its volumes.
BACKGROUNDS = ("plain", "realistic")
#: How :func:`write_dataset` lays out its files: ``tomofield`` (``images/``, ``masks/``) or
#: ``nnunet`` (nnU-Net's raw dataset: ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``,
#: ``dataset.json``, and the volume labels in ``labels.csv``).
LAYOUTS = ("tomofield", "nnunet")


#: What ``lesion_radius`` measures, in words (help texts and the dataset's record).
LESION_RADIUS_UNIT = (
    "equivalent radius (3 V / 4 pi)^(1/3) of each lesion's mask, in voxels of the finest spacing "
    "(null: the built-in sizes, 3-8 voxels of a 48-voxel grid scaled with the grid, a case's lesions together "
    "at most a ball of 8)"
)


class _Limits(TypedDict):
    n: tuple[int, int]
    size: tuple[int, int]
    spacing: tuple[float, float]
    n_lesions: tuple[int, int]
    lesion_radius: tuple[float, None]
    lesion_contrast: tuple[float, float]


#: The ranges write_dataset takes: a few to many cases, grids a CPU writes in minutes.
LIMITS: _Limits = {
    "n": (4, 100_000),
    "size": (16, 512),
    "spacing": (0.01, 100.0),
    "n_lesions": (1, 10),
    "lesion_radius": (1.0, None),  # voxels of the finest spacing: a lesion of one voxel's radius at least
    "lesion_contrast": (0.05, 10.0),  # relative step above the surroundings: faint to very bright
}
