"""MosMedData: classes, scaling, geometry, mask cleaning, split, the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage as ndi

from tomofield.cli import cli
from tomofield.dataset import read_dataset
from tomofield.errors import InputError
from tomofield_medical.mosmed import MosMed

from medical_fakes import read_nifti, write_nifti

SHAPE = (6, 40, 40)  # (D, H, W): thick slices as in the release
SPACING = (10.0, 2.0, 2.0)  # (d, h, w) mm: the closing ball (20 mm) is 2 slices / 10 pixels
AFFINE = np.array([[-2.0, 0, 0, 40.0], [0, -2.0, 0, 35.0], [0, 0, 10.0, -300.0], [0, 0, 0, 1]])


def raw_mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[1:5, 4:20, 4:20] = 1  # a 40 x 32 x 32 mm lesion
    m[2, 11, 11] = 0  # with a one-voxel hole the closing fills
    m[3, 35, 35] = 1  # and a speck, far off, the opening removes
    return m


def make_mosmed(root: Path) -> Path:
    base = root / "COVID19_1110"
    rng = np.random.default_rng(0)
    ids = {"CT-0": [1, 2, 3, 4], "CT-1": [255, 256, 257, 258], "CT-2": [900]}
    for cls, numbers in ids.items():
        for n in numbers:
            hu = rng.integers(-1024, 400, SHAPE).astype(np.int16)
            write_nifti(base / "studies" / cls / f"study_{n:04d}.nii.gz", hu, AFFINE, dtype=np.int16)
    write_nifti(base / "masks" / "study_0255_mask.nii.gz", raw_mask(), AFFINE, dtype=np.uint8)
    (base / "dataset_registry.xlsx").write_bytes(b"")  # present in the release, not read
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_prepare_mosmed_labels_scaling_geometry_and_split(tmp_path: Path):
    raw = make_mosmed(tmp_path / "raw")
    out = tmp_path / "out"
    paths = MosMed().prepare(raw, out, seed=0, val_fraction=0.25)
    assert set(paths) == {"dataset", "train", "val", "cases"}
    ds = {r["image"]: r for r in rows(paths["dataset"])}
    assert len(ds) == 8  # CT-0 and CT-1 only; study_0900 (CT-2) is left out
    assert {k: v["label"] for k, v in ds.items() if "study_000" in k} == {
        f"images/study_000{i}.nii.gz": "0" for i in range(1, 5)
    }
    assert all(v["label"] == "1" for k, v in ds.items() if "study_025" in k)
    assert ds["images/study_0255.nii.gz"]["mask"] == "masks/study_0255.nii.gz"
    assert sum(1 for v in ds.values() if v["mask"]) == 1

    raw_hu, _ = read_nifti(raw / "COVID19_1110/studies/CT-1/study_0256.nii.gz")
    got, affine = read_nifti(out / "images/study_0256.nii.gz")
    np.testing.assert_allclose(got, raw_hu / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(affine, AFFINE)

    train, val = rows(paths["train"]), rows(paths["val"])
    assert {r["image"] for r in train}.isdisjoint(r["image"] for r in val)
    assert len(train) + len(val) == 8
    assert "images/study_0255.nii.gz" in {r["image"] for r in val}  # studies with masks validate
    assert sorted(r["label"] for r in val) == ["0", "1"]  # round(0.25 * 4) of each class
    assert len(read_dataset(paths["train"])) == len(train)  # the core accepts what was written


def test_masks_are_closed_then_opened_with_physical_balls(tmp_path: Path):
    raw = make_mosmed(tmp_path / "raw")
    MosMed().prepare(raw, tmp_path / "out")
    mask, affine = read_nifti(tmp_path / "out/masks/study_0255.nii.gz")
    np.testing.assert_allclose(affine, AFFINE)
    assert mask.dtype == np.uint8 and mask.shape == SHAPE
    assert mask[2, 11, 11] == 1  # hole closed
    assert mask[3, 35, 35] == 0 and mask[:, 28:, 28:].sum() == 0  # speck opened away
    # The 10 mm opening ball is a disc of radius 5 pixels on its middle slice and a single voxel
    # on the slices above and below; it fits the closed 4 x 16 x 16 lesion with its centre on
    # slices 2-3 and pixels [9, 14]^2. So slices 2-3 keep the pixels within 5 of that square,
    # slices 1 and 4 the square itself.
    h, w = np.mgrid[0:40, 0:40]
    near = np.hypot(np.clip(h, 9, 14) - h, np.clip(w, 9, 14) - w) <= 5
    expected = np.zeros(SHAPE, np.uint8)
    expected[2:4] = near
    expected[[1, 4], 9:15, 9:15] = 1
    np.testing.assert_array_equal(mask, expected)
    assert ndi.label(mask)[1] == 1
    assert mask[0].sum() == 0 and mask[5].sum() == 0  # no growth across the 10 mm slices


def test_same_seed_same_split_and_other_seed_other_split(tmp_path: Path):
    raw = make_mosmed(tmp_path / "raw")
    vals = []
    for i, seed in enumerate((7, 7, 8, 9, 10)):
        paths = MosMed().prepare(raw, tmp_path / f"out{i}", seed=seed, val_fraction=0.5)
        vals.append(tuple(r["image"] for r in rows(paths["val"])))
    assert vals[0] == vals[1]
    assert len(set(vals)) > 1


def test_cli_prepare_mosmed_end_to_end_and_wrong_folder(tmp_path: Path):
    raw = make_mosmed(tmp_path / "raw")
    res = CliRunner().invoke(cli, ["prepare", "mosmed", str(raw), "-o", str(tmp_path / "out")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "dataset.csv" in res.output and (tmp_path / "out/train.csv").is_file()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    res = CliRunner().invoke(cli, ["prepare", "mosmed", str(tmp_path / "empty"), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2
    assert "empty" in res.output and "MosMedData" in res.output and "readme.txt" in res.output


def test_missing_class_folder_is_named(tmp_path: Path):
    raw = make_mosmed(tmp_path / "raw")
    for f in (raw / "COVID19_1110/studies/CT-1").iterdir():
        f.unlink()
    with pytest.raises(InputError, match="CT-1.*no study_NNNN"):
        MosMed().prepare(raw, tmp_path / "out")
