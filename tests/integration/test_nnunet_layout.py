"""The user's data as it comes: nnU-Net's file names (CASE_0000, CASE_0001 are two channels of CASE)
and raw dataset folders (dataset.json, imagesTr/, labelsTr/, imagesTs/), labels from a CSV or the label maps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tomofield.cli import cli
from tomofield.dataset import folder_cases, folder_dataset, nnunet_cases, read_labels
from tomofield.errors import InputError
from tomofield.io import load_volume

FAST = ["--head", "sum", "--filter", "tomo", "-L", "6", "-M", "5", "--slice-size", "16", "--device", "cpu"]
TRAIN = ["--iterations", "2", "--slices-per-volume", "2", "--slice-size", "16", "--norm", "group-norm"]
TRAIN += ["--checkpoint-every", "2", "--device", "cpu", "--seed", "1"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _channels(write_nifti, folder: str, case: str, rng, n: int = 2) -> None:
    for c in range(n):
        write_nifti(f"{folder}/{case}_{c:04d}.nii.gz", rng.random((10, 12, 14)).astype(np.float32) + c)


@pytest.fixture
def images(write_nifti, tmp_path: Path) -> Path:
    """imagesTs-like: two cases of two channels each, named as nnU-Net names them."""
    rng = np.random.default_rng(0)
    (tmp_path / "imagesTs").mkdir()
    for case in ("BRATS_002", "BRATS_001"):
        _channels(write_nifti, "imagesTs", case, rng)
    return tmp_path / "imagesTs"


@pytest.fixture
def raw_dataset(write_nifti, tmp_path: Path) -> Path:
    """An nnU-Net raw dataset: 6 training cases of 2 channels, label maps (3 with a lesion), 1 test case."""
    rng = np.random.default_rng(1)
    root = tmp_path / "Dataset501_Tiny"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for i in range(6):
        _channels(write_nifti, "Dataset501_Tiny/imagesTr", f"case_{i:03d}", rng)
        label = np.zeros((10, 12, 14), np.float32)
        if i % 2:
            label[4:7, 5:8, 6:9] = 1
        write_nifti(f"Dataset501_Tiny/labelsTr/case_{i:03d}.nii.gz", label)
    _channels(write_nifti, "Dataset501_Tiny/imagesTs", "case_900", rng)
    meta = {
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": 6,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_a_folder_of_nnunet_channel_files_runs_as_its_cases_named_as_nnunet_names_predictions(images, tmp_path):
    cases = folder_cases(str(images))
    assert [c.name for c in cases] == ["BRATS_001", "BRATS_002"]
    assert [[p.name for p in c.images] for c in cases][0] == ["BRATS_001_0000.nii.gz", "BRATS_001_0001.nii.gz"]
    res = invoke("run", images, "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["BRATS_001.nii.gz", "BRATS_002.nii.gz"]
    heat = load_volume(tmp_path / "out" / "BRATS_001.nii.gz")
    assert heat.data.shape[0] == 2  # the sum head gives one map per input channel: both channels were read


def test_cases_with_different_channels_are_refused_naming_the_case(write_nifti, images):
    (images / "BRATS_002_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case 'BRATS_002' has channel file\(s\) 0000; .* the same channels"):
        folder_cases(str(images))


def test_a_folder_not_all_named_as_channels_stays_one_volume_per_file(write_nifti, tmp_path):
    rng = np.random.default_rng(2)
    write_nifti("mixed/scan_0000.nii.gz", rng.random((8, 8, 8)))
    write_nifti("mixed/other.nii.gz", rng.random((8, 8, 8)))
    assert [c.name for c in folder_cases(str(tmp_path / "mixed"))] == ["other", "scan_0000"]


def test_an_nnunet_dataset_gives_labels_from_its_label_maps_only_when_asked(raw_dataset, tmp_path):
    cases = nnunet_cases(raw_dataset, "imagesTr", labels_from_masks=True)
    assert [(c.name, c.label) for c in cases] == [(f"case_{i:03d}", float(i % 2)) for i in range(6)]
    assert all(c.mask is not None and c.mask.parent.name == "labelsTr" for c in cases)
    with pytest.raises(InputError, match=r"without volume labels; give them with --labels FILE .* --labels-from-masks"):
        folder_dataset(raw_dataset)
    table = tmp_path / "labels.csv"
    table.write_text("case,label\n" + "".join(f"case_{i:03d},{int(i < 3)}\n" for i in range(6)))
    assert [c.label for c in folder_dataset(raw_dataset, read_labels(table))] == [1, 1, 1, 0, 0, 0]
    table.write_text("case,label\ncase_000,1\n")
    with pytest.raises(InputError, match=r"no label for case 'case_001'"):
        folder_dataset(raw_dataset, read_labels(table))
    table.write_text("case,label\ncase_000,yes\n")
    with pytest.raises(InputError, match=r"row 2: label must be 0 or 1, got 'yes'"):
        read_labels(table)


def test_train_on_an_nnunet_dataset_and_run_on_its_test_images(raw_dataset, tmp_path):
    refused = invoke("train", raw_dataset, "-o", tmp_path / "run0", *TRAIN)
    assert refused.exit_code == 2 and "--labels-from-masks" in refused.output
    assert not (tmp_path / "run0").exists()
    res = invoke("train", raw_dataset, "-o", tmp_path / "run", "--labels-from-masks", *TRAIN)
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "6 case(s)" in said and "3 positive, 3 negative (labels from label maps)" in said
    rows = list(csv.DictReader((tmp_path / "run" / "dataset.csv").open()))
    assert [r["label"] for r in rows] == ["0", "1", "0", "1", "0", "1"]
    assert rows[0]["image"].endswith("case_000_0000.nii.gz;" + str(raw_dataset / "imagesTr" / "case_000_0001.nii.gz"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["in_chans"] == 2
    again = invoke("train", raw_dataset, "-o", tmp_path / "run", "--labels-from-masks", *TRAIN)
    assert again.exit_code == 2 and "not empty; pass --resume" in again.output
    out = invoke("run", raw_dataset, "-o", tmp_path / "pred", "--weights", tmp_path / "run", "-L", "4", "-M", "4")
    assert out.exit_code == 0, out.output
    assert "the 1 case(s) of imagesTs/" in " ".join(out.output.split())
    assert [p.name for p in (tmp_path / "pred").glob("*.nii.gz")] == ["case_900.nii.gz"]


def test_the_banner_and_synth_spacing_read_in_the_viewers_ijk_order(write_nifti, tmp_path):
    """A scan nibabel shows as 20 x 24 x 28 at 1 x 1.5 x 2 mm is printed so; --spacing i,j,k is written so."""
    import nibabel as nib

    from tomofield.io import affine_for_spacing, save_nifti

    arr = np.random.default_rng(3).random((28, 24, 20)).astype(np.float32)  # (D, H, W) = (k, j, i)
    import torch

    scan = save_nifti(tmp_path / "scan.nii.gz", torch.from_numpy(arr)[None], affine_for_spacing((2.0, 1.5, 1.0)))
    assert nib.load(scan).shape == (20, 24, 28)
    res = invoke("run", scan, "-o", tmp_path / "h.nii.gz", *FAST)
    assert res.exit_code == 0, res.output
    assert "grid 20 x 24 x 28, spacing 1 x 1.5 x 2 mm (i, j, k)" in " ".join(res.output.split())
    made = invoke("synth", tmp_path / "ds", "--n", "4", "--size", "16", "--spacing", "1,1.5,2", "--layout", "nnunet")
    assert made.exit_code == 0, made.output
    image = nib.load(next((tmp_path / "ds" / "imagesTr").glob("*_0000.nii.gz")))
    assert tuple(float(z) for z in image.header.get_zooms()[:3]) == (1.0, 1.5, 2.0)
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["file_ending"] == ".nii.gz" and meta["channel_names"] == {"0": "image"}
    labels = read_labels(tmp_path / "ds" / "labels.csv")
    cases = nnunet_cases(tmp_path / "ds", labels=labels)
    assert sorted(labels.values()) == [0.0, 0.0, 1.0, 1.0] and [c.label for c in cases] == [
        labels[c.name] for c in cases
    ]
    masks = nnunet_cases(tmp_path / "ds", labels_from_masks=True)
    assert [c.label for c in masks] == [c.label for c in cases]  # synth's positives are those with a lesion
    bad = invoke("synth", tmp_path / "ds2", "--n", "4", "--spacing", "1,1")
    assert bad.exit_code == 2 and "--spacing '1,1' is not three numbers i,j,k" in bad.output


def test_a_synthetic_grid_too_small_for_lesions_is_a_message_and_nothing_is_left(tmp_path):
    res = invoke(
        "synth", tmp_path / "tiny", "--n", "8", "--size", "16", "--spacing", "1,1,2", "--background", "realistic"
    )
    assert res.exit_code == 2 and "no room for a lesion in a scan of 15 x 15 x 8 voxels at 1 x 1 x 2 mm" in res.output
    assert not (tmp_path / "tiny").exists()
