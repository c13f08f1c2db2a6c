"""MosMedData COVID-19 chest CT (Morozov et al. 2020), as the paper used it (A.4).

On disk, as downloaded and unpacked (``COVID19_1110/``)::

    studies/CT-0/study_0001.nii.gz ... study_0254.nii.gz   no COVID-19 findings (label 0)
    studies/CT-1/study_0255.nii.gz ... study_0938.nii.gz   mild findings (label 1)
    studies/CT-2/ ... CT-4/                                 ignored (the paper uses CT-0, CT-1)
    masks/study_0255_mask.nii.gz ...                        50 semi-manual lesion masks (CT-1)

Volumes are divided by 1000 (HU / 1000), grid and header geometry unchanged. Masks are
cleaned by a binary closing with a ball of radius 20 mm then an opening with a ball of
radius 10 mm (physical balls: the slices are ~10x thicker than the pixels). Every study
with a mask goes to the validation set, as in the paper. A study is a patient (the release
carries no patient ids).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tomofield.errors import InputError
from tomofield.io import load_volume
from tomofield_medical.common import Progress, Writer, find_dir, nifti_stem, recipe
from tomofield_medical.geometry import ball_closing, ball_opening

CLASSES = {"CT-0": 0, "CT-1": 1}
CLOSING_MM, OPENING_MM = 20.0, 10.0
SCALE = 1000.0


def clean_mask(mask: np.ndarray, spacing, closing: float = CLOSING_MM, opening: float = OPENING_MM) -> np.ndarray:
    """Closing then opening of a (D, H, W) mask by balls of radii ``closing``, ``opening`` (mm)."""
    return ball_opening(ball_closing(mask > 0, closing, spacing), opening, spacing)


def _is_root(p: Path) -> bool:
    return (p / "studies" / "CT-0").is_dir() or (p / "studies" / "CT-1").is_dir()


class MosMed:
    """``tomofield prepare mosmed COVID19_1110 -o OUT``."""

    recipe = recipe(125_000)

    def prepare(
        self,
        raw_dir: str | Path,
        out_dir: str | Path,
        *,
        seed: int = 0,
        val_fraction: float = 0.2,
        progress: Progress | None = None,
    ) -> dict[str, Path]:
        root = find_dir(Path(raw_dir), _is_root, "MosMedData (studies/CT-0, studies/CT-1)")
        studies: list[tuple[Path, int]] = []
        for cls, label in CLASSES.items():
            folder = root / "studies" / cls
            files = (
                sorted(p for p in folder.glob("*.nii*") if re.fullmatch(r"study_\d+\.nii(\.gz)?", p.name))
                if folder.is_dir()
                else []
            )
            if not files:
                raise InputError(f"{str(folder)!r}: no study_NNNN.nii.gz files; MosMedData needs both CT-0 and CT-1")
            studies += [(f, label) for f in files]
        masks = {}
        if (root / "masks").is_dir():
            for m in sorted((root / "masks").glob("*.nii*")):
                hit = re.fullmatch(r"(study_\d+)_mask\.nii(\.gz)?", m.name)
                if hit:
                    masks[hit.group(1)] = m
        writer = Writer(out_dir, len(studies), progress)
        for path, label in studies:
            name = nifti_stem(path)
            vol = load_volume(path)
            mask = None
            if name in masks:
                mvol = load_volume(masks[name])
                if tuple(mvol.data.shape[1:]) != tuple(vol.data.shape[1:]):
                    raise InputError(
                        f"{str(masks[name])!r}: grid {tuple(mvol.data.shape[1:])} differs from "
                        f"{str(path)!r}'s {tuple(vol.data.shape[1:])}"
                    )
                mask = clean_mask(mvol.data[0].numpy(), vol.spacing)
            writer.add(
                name,
                name,
                label,
                vol.data.numpy() / SCALE,
                vol.affine,
                mask=mask,
                header=vol.header,
                source=str(path),
                force_val=mask is not None,
            )
        return writer.finish(seed=seed, val_fraction=val_fraction)
