"""AutoPET / FDG-PET-CT-Lesions whole-body PET/CT (Gatidis et al. 2022), as in the paper (A.4).

On disk, the NIfTI release (TCIA "FDG-PET-CT-Lesions", also the autoPET challenge's
``nifti.zip``)::

    FDG-PET-CT-Lesions/PETCT_<patient>/<study date and description>/
        SUV.nii.gz    standardised uptake values on the PET grid
        CTres.nii.gz  CT resampled onto the PET grid (used when present)
        CT.nii.gz     CT on its own grid (resampled here when CTres is absent)
        SEG.nii.gz    manual lesion mask on the PET grid (empty for negative studies)
        PET.nii.gz    ignored

Each study becomes one volume: the bounding box of ``SUV > 0.2`` crops the PET grid, the CT
is resampled onto the cropped grid (trilinear, air = -1000 HU outside the CT), channels are
(CT / 1000, SUV / 10), in that order. The cropped SEG is the mask; the label is 1 when SEG
holds any lesion voxel. A patient's studies stay on one side of the split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tomofield.errors import InputError
from tomofield.io import load_volume
from tomofield_medical.common import Progress, Writer, find_dir, recipe, safe_name
from tomofield_medical.geometry import bounding_box, resample, shifted_affine

SUV_THRESHOLD = 0.2
CT_SCALE, SUV_SCALE = 1000.0, 10.0
AIR_HU = -1000.0


def _is_root(p: Path) -> bool:
    return p.name == "FDG-PET-CT-Lesions" or any(c.is_dir() and c.name.startswith("PETCT_") for c in p.iterdir())


def study_dirs(root: Path) -> list[tuple[str, Path]]:
    """(patient, study folder) pairs: every folder below a ``PETCT_*`` folder holding files."""
    out = []
    for patient in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("PETCT_")):
        dirs = sorted({f.parent for f in patient.rglob("*.nii*")})
        if not dirs:
            raise InputError(
                f"{str(patient)!r}: no NIfTI study folder (expected <date>/SUV.nii.gz, CTres.nii.gz, SEG.nii.gz)"
            )
        out += [(patient.name, d) for d in dirs]
    return out


def _pick(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def prepare_study(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(data (2, D, H, W), mask (D, H, W) uint8, affine, positive) of one study folder."""
    suv_path, seg_path = _pick(folder, "SUV"), _pick(folder, "SEG")
    ct_path = _pick(folder, "CTres") or _pick(folder, "CT")
    for what, p in (("SUV", suv_path), ("CTres or CT", ct_path), ("SEG", seg_path)):
        if p is None:
            raise InputError(f"{str(folder)!r}: missing {what}.nii.gz")
    suv = load_volume(suv_path)
    suv_data = suv.data[0].numpy()
    box = bounding_box(suv_data > SUV_THRESHOLD)
    if box is None:
        raise InputError(f"{str(suv_path)!r}: no voxel has SUV > {SUV_THRESHOLD}; nothing to crop to")
    d0, h0, w0, d1, h1, w1 = box
    crop = (slice(d0, d1), slice(h0, h1), slice(w0, w1))
    shape = (d1 - d0, h1 - h0, w1 - w0)
    affine = shifted_affine(suv.affine, (d0, h0, w0))
    ct = load_volume(ct_path)
    ct_data = resample(ct.data[0].numpy(), ct.affine, shape, affine, order=1, cval=AIR_HU)
    seg = load_volume(seg_path)
    seg_data = seg.data[0].numpy() > 0.5
    if tuple(seg_data.shape) == tuple(suv_data.shape) and np.allclose(seg.affine, suv.affine, atol=1e-3):
        mask = seg_data[crop]
    else:
        mask = resample(seg_data.astype(np.uint8), seg.affine, shape, affine, order=0) > 0
    data = np.stack([ct_data / CT_SCALE, suv_data[crop] / SUV_SCALE]).astype(np.float32)
    return data, mask.astype(np.uint8), affine, bool(seg_data.any())


class AutoPET:
    """``tomofield prepare autopet FDG-PET-CT-Lesions -o OUT``."""

    recipe = recipe(187_500)

    def prepare(
        self,
        raw_dir: str | Path,
        out_dir: str | Path,
        *,
        seed: int = 0,
        val_fraction: float = 0.2,
        progress: Progress | None = None,
    ) -> dict[str, Path]:
        root = find_dir(Path(raw_dir), _is_root, "FDG-PET-CT-Lesions (PETCT_*/<study>/SUV.nii.gz)")
        studies = study_dirs(root)
        if not studies:
            raise InputError(f"{str(root)!r}: no PETCT_* patient folder")
        writer = Writer(out_dir, len(studies), progress)
        per_patient: dict[str, int] = {}
        for patient, folder in studies:
            data, mask, affine, positive = prepare_study(folder)
            per_patient[patient] = per_patient.get(patient, 0) + 1
            name = safe_name(f"{patient}_{per_patient[patient]}")
            writer.add(name, patient, int(positive), data, affine, mask=mask, source=str(folder))
        return writer.finish(seed=seed, val_fraction=val_fraction)
