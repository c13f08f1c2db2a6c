"""Dataset CSV parsing and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomofield.dataset import dataset_hash, read_dataset
from tomofield.errors import InputError


@pytest.fixture
def files(write_nifti, tmp_path: Path) -> Path:
    for name in ("a", "b", "c"):
        write_nifti(f"{name}.nii.gz", np.random.rand(4, 4, 4))
    return tmp_path


def write_csv(root: Path, text: str) -> Path:
    p = root / "data.csv"
    p.write_text(text)
    return p


def test_reads_rows_with_channels_and_masks(files):
    cases = read_dataset(write_csv(files, "image,label,mask\na.nii.gz;b.nii.gz,1,c.nii.gz\nc.nii.gz,0,\n"))
    assert [c.label for c in cases] == [1.0, 0.0]
    assert cases[0].images == (files / "a.nii.gz", files / "b.nii.gz")
    assert cases[0].mask == files / "c.nii.gz" and cases[1].mask is None
    assert cases[0].name == "a" and cases[0].row == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("img,label\na.nii.gz,1\n", "missing column(s) image"),
        ("image,label\na.nii.gz,2\n", "row 2: label '2' must be 0 or 1"),
        ("image,label\na.nii.gz,yes\n", "row 2: label 'yes' is not a number"),
        ("image,label\na.nii.gz,1\nzz.nii.gz,0\n", "row 3: file"),
        ("image,label\na.nii.gz,1\na.nii.gz,0\n", "row 3: duplicate of row 2"),
        ("image,label,mask\na.nii.gz,1,nomask.nii.gz\n", "nomask.nii.gz' does not exist"),
        ("image,label\n", "no rows"),
    ],
)
def test_bad_rows_are_named(files, text, message):
    with pytest.raises(InputError) as info:
        read_dataset(write_csv(files, text))
    assert message in str(info.value)


def test_regression_labels_and_hash(files):
    p = write_csv(files, "image,label\na.nii.gz,3.5\nb.nii.gz,0.25\n")
    cases = read_dataset(p, task="regression")
    assert [c.label for c in cases] == [3.5, 0.25]
    h = dataset_hash(p, cases)
    assert h == dataset_hash(p, cases)
    p.write_text("image,label\na.nii.gz,3.5\nb.nii.gz,0.5\n")
    assert dataset_hash(p, read_dataset(p, task="regression")) != h
