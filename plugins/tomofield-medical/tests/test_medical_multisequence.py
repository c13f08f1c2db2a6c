"""Generic multi-sequence reader: tomofield.json, channel order, z-normalisation, labels, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tomofield.errors import InputError
from tomofield_medical.multisequence import MultiSequence

from medical_fakes import read_nifti, write_nifti

SHAPE = (5, 6, 7)
AFFINE = np.array([[0.0, 0, -1.2, 50], [1.0, 0, 0, -20], [0, 1.1, 0, 3], [0, 0, 0, 1]])  # rotated axes
SEQUENCES = ["t1", "flair", "t1gd"]
STUDIES = {
    ("P01", "2019-03"): True,
    ("P01", "2020-01"): False,
    ("P02", "2018-11"): True,
    ("P03", "2021-05"): False,
    ("P04", "2017-02"): False,
}


def ramp(axis: int, scale: float) -> np.ndarray:
    idx = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")[axis]
    return 100 + scale * idx.astype(np.float32)


def make_ms(raw: Path, config: dict | None = None) -> Path:
    for (patient, study), lesion in STUDIES.items():
        folder = raw / patient / study
        for axis, seq in enumerate(SEQUENCES):  # t1 varies along d, flair along h, t1gd along w
            write_nifti(folder / f"{seq}.nii.gz", ramp(axis, 3.0 + axis), AFFINE)
        mask = np.zeros(SHAPE, np.uint8)
        if lesion:
            mask[2, 3, 4] = 1
        write_nifti(folder / "mask.nii.gz", mask, AFFINE, dtype=np.uint8)
    cfg = config or {
        "sequences": SEQUENCES,
        "path": "{patient}/{study}/{sequence}.nii.gz",
        "mask": "{patient}/{study}/mask.nii.gz",
    }
    (raw / "tomofield.json").write_text(json.dumps(cfg))
    return raw


def table(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {(r.get("image") or r["name"]): r for r in csv.DictReader(fh)}


def test_channels_in_config_order_zscored_with_geometry_and_mask_labels(tmp_path: Path):
    raw = make_ms(tmp_path / "raw")
    paths = MultiSequence().prepare(raw, tmp_path / "out", seed=1, val_fraction=0.5)
    ds = table(paths["dataset"])
    assert {k: v["label"] for k, v in ds.items()} == {
        "images/P01_2019-03.nii.gz": "1",
        "images/P01_2020-01.nii.gz": "0",
        "images/P02_2018-11.nii.gz": "1",
        "images/P03_2021-05.nii.gz": "0",
        "images/P04_2017-02.nii.gz": "0",
    }
    data, affine = read_nifti(tmp_path / "out/images/P02_2018-11.nii.gz")
    np.testing.assert_allclose(affine, AFFINE, atol=1e-6)
    assert data.shape == (3, *SHAPE)
    for c in range(3):
        v = ramp(c, 3.0 + c).astype(np.float64)
        np.testing.assert_allclose(data[c], (v - v.mean()) / v.std(), atol=1e-5)  # channel c is sequence c
    mask, _ = read_nifti(tmp_path / "out/masks/P02_2018-11.nii.gz")
    assert mask.sum() == 1 and mask[2, 3, 4] == 1
    cases = table(paths["cases"])
    assert cases["P01_2019-03"]["split"] == cases["P01_2020-01"]["split"]  # one patient, one side


def test_labels_csv_wins_and_normalize_none(tmp_path: Path):
    cfg = {
        "sequences": ["flair", "t1"],
        "path": "{patient}/{study}/{sequence}.nii.gz",
        "labels": "labels.csv",
        "normalize": "none",
    }
    raw = make_ms(tmp_path / "raw", cfg)
    (raw / "labels.csv").write_text("study,label\n2019-03,0\n2020-01,1\n2018-11,1\n2021-05,0\n2017-02,0\n")
    paths = MultiSequence().prepare(raw, tmp_path / "out")
    ds = table(paths["dataset"])
    assert ds["images/P01_2020-01.nii.gz"]["label"] == "1" and ds["images/P01_2019-03.nii.gz"]["label"] == "0"
    assert all(v["mask"] == "" for v in ds.values())
    data, _ = read_nifti(tmp_path / "out/images/P03_2021-05.nii.gz")
    np.testing.assert_allclose(data[0], ramp(1, 4.0))  # flair first, raw values
    np.testing.assert_allclose(data[1], ramp(0, 3.0))


def test_errors_missing_sequence_grid_mismatch_and_config(tmp_path: Path):
    raw = make_ms(tmp_path / "raw")
    (raw / "P03/2021-05/flair.nii.gz").unlink()
    with pytest.raises(InputError, match=r"2021-05.*P03.*missing sequence 'flair'.*P03/2021-05/flair\.nii\.gz"):
        MultiSequence().prepare(raw, tmp_path / "o1")
    write_nifti(raw / "P03/2021-05/flair.nii.gz", np.ones((5, 6, 8)), AFFINE)
    with pytest.raises(InputError, match=r"flair\.nii\.gz.*grid"):
        MultiSequence().prepare(raw, tmp_path / "o2")
    (raw / "tomofield.json").write_text(json.dumps({"sequences": ["t1"], "path": "{study}/{sequence}.nii.gz"}))
    with pytest.raises(InputError, match=r"tomofield\.json.*\{patient\}"):
        MultiSequence().prepare(raw, tmp_path / "o3")
    (raw / "tomofield.json").unlink()
    with pytest.raises(InputError, match=r"no tomofield\.json"):
        MultiSequence().prepare(raw, tmp_path / "o4")
    empty = tmp_path / "empty"
    make_ms(empty, {"sequences": ["t2"], "path": "{patient}/{study}/{sequence}.nii.gz"})
    with pytest.raises(InputError, match=r"no file matches '\{patient\}/\{study\}/t2\.nii\.gz'"):
        MultiSequence().prepare(empty, tmp_path / "o5")
