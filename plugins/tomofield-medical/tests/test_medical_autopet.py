"""AutoPET: SUV > 0.2 crop, CT resampled onto it, channel order and scaling, labels, split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tomofield.dataset import read_dataset
from tomofield.errors import InputError
from tomofield.io import load_volume
from tomofield_medical.autopet import AutoPET

from medical_fakes import read_nifti, world, write_nifti

SUV_SHAPE = (12, 10, 14)  # (D, H, W)
SUV_AFFINE = np.array([[-2.5, 0, 0, 17.5], [0, 2.0, 0, -10.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
BOX = (2, 3, 4, 9, 8, 12)  # where SUV > 0.2: (d0, h0, w0, d1, h1, w1)
CT_SHAPE = (30, 26, 36)
CT_AFFINE = np.array([[-1.25, 0, 0, 26.0], [0, 1.0, 0, -14.0], [0, 0, 1.5, -1.0], [0, 0, 0, 1]])


def hu(points: np.ndarray) -> np.ndarray:
    """The fake CT: a linear field of RAS mm, which trilinear resampling reproduces exactly."""
    return 2.0 * points[..., 0] + 3.0 * points[..., 1] - 5.0 * points[..., 2] + 40.0


def suv(rng) -> np.ndarray:
    s = rng.uniform(0.0, 0.2, SUV_SHAPE).astype(np.float32)  # background at or under the threshold
    d0, h0, w0, d1, h1, w1 = BOX
    s[d0:d1, h0:h1, w0:w1] = rng.uniform(0.3, 4.0, (d1 - d0, h1 - h0, w1 - w0))
    return s


def make_autopet(root: Path) -> Path:
    """Patient A: two studies (CT only, lesion; CTres, no lesion); patient B: one, with a lesion; C: none."""
    base = root / "FDG-PET-CT-Lesions"
    rng = np.random.default_rng(0)
    dd, hh, ww = np.meshgrid(*[np.arange(n) for n in CT_SHAPE], indexing="ij")
    ct = hu(world(CT_AFFINE, dd, hh, ww))
    studies = {
        ("PETCT_0af7ffe12a", "08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-96698"): ("CT", True),
        ("PETCT_0af7ffe12a", "11-30-2005-NA-PET-CT Ganzkoerper  primaer mit KM-10445"): ("CTres", False),
        ("PETCT_1b199d094d", "03-23-2003-NA-Unspecified CT ABDOMEN-93772"): ("CTres", True),
        ("PETCT_2c7e0a4f31", "06-01-2004-NA-PET-CT Ganzkoerper  primaer mit KM-14512"): ("CTres", False),
    }
    for (patient, date), (ct_kind, lesion) in studies.items():
        folder = base / patient / date
        write_nifti(folder / "SUV.nii.gz", suv(rng), SUV_AFFINE)
        write_nifti(folder / "PET.nii.gz", np.ones(SUV_SHAPE), SUV_AFFINE)
        seg = np.zeros(SUV_SHAPE, np.uint8)
        if lesion:
            seg[4:6, 5:7, 6:9] = 1
        write_nifti(folder / "SEG.nii.gz", seg, SUV_AFFINE, dtype=np.uint8)
        if ct_kind == "CT":
            write_nifti(folder / "CT.nii.gz", ct, CT_AFFINE)
        else:
            res = rng.integers(-1000, 1500, SUV_SHAPE).astype(np.float32)
            write_nifti(folder / "CTres.nii.gz", res, SUV_AFFINE)
    return root


def table(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {r.get("image") or r["name"]: r for r in csv.DictReader(fh)}


def test_crop_channels_scaling_geometry_and_labels(tmp_path: Path):
    raw = make_autopet(tmp_path / "raw")
    out = tmp_path / "out"
    paths = AutoPET().prepare(raw, out, seed=0, val_fraction=0.3)
    ds = table(paths["dataset"])
    assert {k: v["label"] for k, v in ds.items()} == {
        "images/PETCT_0af7ffe12a_1.nii.gz": "1",
        "images/PETCT_0af7ffe12a_2.nii.gz": "0",
        "images/PETCT_1b199d094d_1.nii.gz": "1",
        "images/PETCT_2c7e0a4f31_1.nii.gz": "0",
    }
    d0, h0, w0, d1, h1, w1 = BOX
    study = raw / "FDG-PET-CT-Lesions/PETCT_0af7ffe12a/08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-96698"
    data, affine = read_nifti(out / "images/PETCT_0af7ffe12a_1.nii.gz")
    assert data.shape == (2, d1 - d0, h1 - h0, w1 - w0)
    # the cropped grid: same axes and spacing, voxel 0 where SUV voxel (d0, h0, w0) was
    np.testing.assert_allclose(affine[:3, :3], SUV_AFFINE[:3, :3])
    np.testing.assert_allclose(world(affine, 0, 0, 0), world(SUV_AFFINE, d0, h0, w0))
    # channel 1: SUV / 10, cropped
    raw_suv, _ = read_nifti(study / "SUV.nii.gz")
    np.testing.assert_allclose(data[1], raw_suv[d0:d1, h0:h1, w0:w1] / 10, rtol=1e-6)
    # channel 0: the CT resampled at the cropped voxels' positions, / 1000
    dd, hh, ww = np.meshgrid(*[np.arange(n) for n in data.shape[1:]], indexing="ij")
    np.testing.assert_allclose(data[0], hu(world(affine, dd, hh, ww)) / 1000, atol=1e-5)
    mask, maffine = read_nifti(out / "masks/PETCT_0af7ffe12a_1.nii.gz")
    np.testing.assert_allclose(maffine, affine)
    expected = np.zeros(data.shape[1:], np.uint8)
    expected[4 - d0 : 6 - d0, 5 - h0 : 7 - h0, 6 - w0 : 9 - w0] = 1
    np.testing.assert_array_equal(mask, expected)
    # and tomofield reads it back as a two-channel volume with the PET spacing
    case = next(c for c in read_dataset(paths["dataset"]) if c.name == "PETCT_0af7ffe12a_1")
    vol = load_volume(list(case.images))
    assert vol.data.shape == (2, d1 - d0, h1 - h0, w1 - w0)
    np.testing.assert_allclose(vol.spacing, (3.0, 2.0, 2.5))


def test_ctres_is_cropped_exactly(tmp_path: Path):
    raw = make_autopet(tmp_path / "raw")
    AutoPET().prepare(raw, tmp_path / "out")
    study = raw / "FDG-PET-CT-Lesions/PETCT_1b199d094d/03-23-2003-NA-Unspecified CT ABDOMEN-93772"
    ctres, _ = read_nifti(study / "CTres.nii.gz")
    data, _ = read_nifti(tmp_path / "out/images/PETCT_1b199d094d_1.nii.gz")
    d0, h0, w0, d1, h1, w1 = BOX
    np.testing.assert_allclose(data[0], ctres[d0:d1, h0:h1, w0:w1] / 1000, rtol=1e-6)


def test_a_patients_studies_share_a_side_of_the_split(tmp_path: Path):
    raw = make_autopet(tmp_path / "raw")
    sides = set()
    for seed in range(6):
        cases = table(AutoPET().prepare(raw, tmp_path / f"o{seed}", seed=seed, val_fraction=0.5)["cases"])
        a = {cases[n]["split"] for n in ("PETCT_0af7ffe12a_1", "PETCT_0af7ffe12a_2")}
        assert len(a) == 1
        sides |= a
    assert sides == {"train", "val"}  # and the seed moves it


def test_missing_suv_and_empty_suv_are_named(tmp_path: Path):
    raw = make_autopet(tmp_path / "raw")
    study = raw / "FDG-PET-CT-Lesions/PETCT_2c7e0a4f31/06-01-2004-NA-PET-CT Ganzkoerper  primaer mit KM-14512"
    write_nifti(study / "SUV.nii.gz", np.full(SUV_SHAPE, 0.1), SUV_AFFINE)
    with pytest.raises(InputError, match=r"SUV\.nii\.gz.*no voxel has SUV > 0\.2"):
        AutoPET().prepare(raw, tmp_path / "o1")
    (study / "SUV.nii.gz").unlink()
    with pytest.raises(InputError, match=r"PETCT_2c7e0a4f31.*missing SUV"):
        AutoPET().prepare(raw, tmp_path / "o2")
    with pytest.raises(InputError, match="FDG-PET-CT-Lesions"):
        AutoPET().prepare(study, tmp_path / "o3")
