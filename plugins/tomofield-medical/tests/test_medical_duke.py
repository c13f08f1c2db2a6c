"""Duke breast MRI: DICOM series, sequence choice, channel order, breast split, labels, boxes, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tomofield.errors import InputError
from tomofield_medical.dicom import read_series
from tomofield_medical.duke import DukeBreastMRI

from medical_fakes import read_nifti, world, write_dicom_series, write_table

D, H, W = 6, 10, 16
SPACING = (0.7, 0.8)  # DICOM PixelSpacing: between rows, between columns
STEP = 2.0
STUDY = "01-01-1990-NA-MRI BREAST BILATERAL W  WO-97538"
SERIES = {  # folder name, description, values as a function of (d, h, w)
    "pre": ("3.000000-ax dyn pre-93877", "ax dyn pre", lambda d, h, w: 200 + 10 * h + d + 0 * w),
    "post_1": ("4.000000-ax dyn 1st pass-18427", "ax dyn 1st pass", lambda d, h, w: 100 + 7 * w + d + 0 * h),
    "post_2": ("5.000000-ax dyn 2nd pass-55212", "ax dyn 2nd pass", lambda d, h, w: 300 + 5 * h + 3 * w + d),
    "t1": ("2.000000-ax 3d t1 bilateral-04611", "ax 3d t1 bilateral", lambda d, h, w: 50 + h * w + d),
}
PATIENTS = {  # id: (row direction of the image, IPP of slice 0, box, contralateral involvement)
    "Breast_MRI_001": ([1, 0, 0], [-60.0, -80.0, -30.0], (3, 5, 12, 14, 2, 4), 0),
    "Breast_MRI_002": ([1, 0, 0], [-50.0, -70.0, -20.0], (6, 8, 2, 4, 1, 1), 1),
    "Breast_MRI_003": ([-1, 0, 0], [60.0, -80.0, 10.0], (1, 2, 2, 4, 5, 6), 0),
}
BOX_HEADER = ["Patient ID", "Start Row", "End Row", "Start Column", "End Column", "Start Slice", "End Slice"]


def volume(seq: str) -> np.ndarray:
    d, h, w = np.meshgrid(np.arange(D), np.arange(H), np.arange(W), indexing="ij")
    return SERIES[seq][2](d, h, w).astype(np.uint16)


def patient_dir(raw: Path, pid: str) -> Path:
    return raw / "manifest-1654812109500" / "Duke-Breast-Cancer-MRI" / pid / STUDY


def make_duke(raw: Path, tables: str = "csv", patients=PATIENTS, descriptions=None) -> dict[str, dict[str, list[str]]]:
    """The collection as downloaded; returns the SOP UIDs (by d) of each patient's series."""
    uids: dict[str, dict[str, list[str]]] = {}
    for pid, (row_dir, ipp0, _, _) in patients.items():
        uids[pid] = {}
        for number, seq in enumerate(SERIES, start=2):
            folder, description, _ = SERIES[seq]
            if descriptions:
                description = descriptions[seq]
            uids[pid][seq] = write_dicom_series(
                patient_dir(raw, pid) / folder,
                volume(seq),
                ipp0=ipp0,
                iop=[*row_dir, 0, 1, 0],
                pixel_spacing=SPACING,
                slice_step=STEP,
                description=description,
                patient=pid,
                series_number=number,
            )
    boxes = (
        [BOX_HEADER]
        + [[pid, *box] for pid, (_, _, box, _) in patients.items()]
        + [["Breast_MRI_922", 1, 2, 3, 4, 5, 6]]
    )
    write_table(raw / f"Annotation_Boxes.{tables}", boxes)
    clinical = [
        ["Patient Information", "MRI Technical Information", "MRI Findings", "MRI Findings"],
        [
            "Patient ID",
            "Days to MRI (From the Date of Diagnosis)",
            "Multicentric/Multifocal",
            "Contralateral Breast Involvement",
        ],
        ["", "", "{0 = no, 1 = yes}", "{0 = no, 1 = yes}"],
    ]
    clinical += [[pid, -6, 0, c] for pid, (_, _, _, c) in patients.items()]
    write_table(raw / f"Clinical_and_Other_Features.{tables}", clinical)
    return uids


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {r["image"]: r for r in csv.DictReader(fh)}


def test_dicom_series_geometry_order_and_rescale(tmp_path: Path):
    vol = np.arange(4 * 3 * 5, dtype=np.uint16).reshape(4, 3, 5)
    write_dicom_series(
        tmp_path / "s",
        vol,
        ipp0=[-10.0, 20.0, 5.0],
        iop=[1, 0, 0, 0, 1, 0],
        pixel_spacing=(0.7, 0.8),
        slice_step=1.5,
        description="x",
        patient="p",
        series_number=1,
        rescale=(2.0, -100.0),
    )
    s = read_series(tmp_path / "s")
    np.testing.assert_array_equal(s.data, vol * 2.0 - 100)  # sorted by position, whatever the file order
    np.testing.assert_array_equal(s.instance, [4, 3, 2, 1])
    # NIfTI (i, j, k) = (column, row, slice) in RAS: LPS x and y flip sign
    expected = np.array([[-0.8, 0, 0, 10.0], [0, -0.7, 0, -20.0], [0, 0, 1.5, 5.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(s.affine, expected)


@pytest.mark.parametrize("tables", ["csv", "xlsx"])
def test_prepare_duke_channels_sides_labels_and_boxes(tmp_path: Path, tables: str):
    if tables == "xlsx":
        pytest.importorskip("openpyxl")
    raw = tmp_path / "raw"
    make_duke(raw, tables)
    out = tmp_path / "out"
    paths = DukeBreastMRI().prepare(raw, out, seed=0, val_fraction=0.34)
    ds = rows(paths["dataset"])
    assert {k: v["label"] for k, v in ds.items()} == {
        "images/Breast_MRI_001_L.nii.gz": "1",
        "images/Breast_MRI_001_R.nii.gz": "0",  # box in the left breast
        "images/Breast_MRI_002_L.nii.gz": "1",
        "images/Breast_MRI_002_R.nii.gz": "1",  # contralateral involvement
        "images/Breast_MRI_003_L.nii.gz": "1",
        "images/Breast_MRI_003_R.nii.gz": "0",  # mirrored image
    }
    boxes = {k: [int(v[c]) for c in ("d0", "h0", "w0", "d1", "h1", "w1")] for k, v in rows(paths["boxes"]).items()}
    # by hand: slice numbers are instance numbers, which run against d (d = 6 - instance);
    # rows/columns are 1-based inclusive; the left half of patient 1 starts at column 8
    assert boxes == {
        "images/Breast_MRI_001_L.nii.gz": [2, 2, 3, 5, 5, 6],
        "images/Breast_MRI_002_R.nii.gz": [5, 5, 1, 6, 8, 4],
        "images/Breast_MRI_003_L.nii.gz": [0, 0, 1, 2, 2, 4],
    }
    left, la = read_nifti(out / "images/Breast_MRI_001_L.nii.gz")
    right, ra = read_nifti(out / "images/Breast_MRI_001_R.nii.gz")
    assert left.shape == right.shape == (2, D, H, W // 2)
    # channel order pre, post_1: pre varies along rows only, post_1 along columns only
    whole = np.concatenate([right, left], axis=3)  # the right breast is the low-column half here
    for c, seq in enumerate(("pre", "post_1")):
        v = volume(seq).astype(np.float64)
        np.testing.assert_allclose(whole[c], (v - v.mean()) / v.std(), atol=1e-5)
    # geometry: spacing kept, the left half's voxel 0 at column 8 of the study
    ipp0 = np.array(PATIENTS["Breast_MRI_001"][1])
    for d, h, w in [(0, 0, 0), (5, 9, 7)]:
        lps = ipp0 + np.array([0.8 * (w + 8), 0.7 * h, STEP * d])
        np.testing.assert_allclose(world(la, d, h, w), lps * [-1, -1, 1], atol=1e-4)
        lps = ipp0 + np.array([0.8 * w, 0.7 * h, STEP * d])
        np.testing.assert_allclose(world(ra, d, h, w), lps * [-1, -1, 1], atol=1e-4)
    # a patient's two breasts are on one side of the split
    split = {}
    with paths["cases"].open(newline="") as fh:
        for r in csv.DictReader(fh):
            split.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split.values()) and len(split) == 3


def test_mapping_table_names_the_series_and_numbers_the_slices(tmp_path: Path):
    raw = tmp_path / "raw"
    odd = {"pre": "series A", "post_1": "series B", "post_2": "series C", "t1": "series D"}
    pid = "Breast_MRI_001"
    uids = make_duke(raw, patients={pid: PATIENTS[pid]}, descriptions=odd)
    with pytest.raises(InputError, match=r"Breast_MRI_001.*no pre series.*mapping"):
        DukeBreastMRI().prepare(raw, tmp_path / "o1")
    # the collection's mapping: one row per file; its file numbers run with d, unlike InstanceNumber
    mapping = [["original_path_and_filename", "classic_path", "sop_instance_UID"]]
    for seq in ("pre", "post_1", "post_2"):
        for d, uid in enumerate(uids[pid][seq]):
            mapping.append([f"DICOM_Images/{pid}/{seq}/{pid}_{seq}_{d + 1:03d}.dcm", "unused", uid])
    write_table(raw / "Breast-Cancer-MRI-filepath_filename-mapping.csv", mapping)
    paths = DukeBreastMRI().prepare(raw, tmp_path / "o2")
    box = rows(paths["boxes"])["images/Breast_MRI_001_L.nii.gz"]
    assert (int(box["d0"]), int(box["d1"])) == (1, 4)  # slices 2..4 are d = 1..3 by the mapping
    data, _ = read_nifti(tmp_path / "o2/images/Breast_MRI_001_L.nii.gz")
    assert np.ptp(data[0], axis=2).max() < 1e-5 and np.ptp(data[1], axis=1).max() < 1e-5  # pre, then post_1


def test_errors_name_the_folder_sequence_and_file(tmp_path: Path):
    raw = tmp_path / "raw"
    make_duke(raw)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match=r"nothing.*Duke-Breast-Cancer-MRI"):
        DukeBreastMRI().prepare(tmp_path / "nothing", tmp_path / "o0")
    # an unreadable slice in the pre series
    bad = patient_dir(raw, "Breast_MRI_002") / SERIES["pre"][0] / "1-03.dcm"
    bad.write_bytes(b"\x00" * 64 + b"not dicom")
    with pytest.raises(InputError, match=r"1-03\.dcm.*not a readable DICOM"):
        DukeBreastMRI().prepare(raw, tmp_path / "o1")
    # a missing first post-contrast series
    for f in (patient_dir(raw, "Breast_MRI_002") / SERIES["post_1"][0]).iterdir():
        f.unlink()
    (patient_dir(raw, "Breast_MRI_002") / SERIES["post_1"][0]).rmdir()
    with pytest.raises(InputError, match=r"Breast_MRI_002.*no post_1 series"):
        DukeBreastMRI().prepare(raw, tmp_path / "o2")
    (raw / "Clinical_and_Other_Features.csv").unlink()
    with pytest.raises(InputError, match="Clinical_and_Other_Features"):
        DukeBreastMRI().prepare(raw, tmp_path / "o3")


def test_post_contrast_on_another_grid_is_resampled_onto_pre(tmp_path: Path):
    raw = tmp_path / "raw"
    pid = "Breast_MRI_001"
    row_dir, ipp0, _, _ = PATIENTS[pid]
    make_duke(raw, patients={pid: PATIENTS[pid]})
    folder = patient_dir(raw, pid) / SERIES["post_1"][0]
    for f in folder.iterdir():
        f.unlink()
    # seven slices starting one slice below pre's first: pre slice d is post slice d + 1
    d, h, w = np.meshgrid(np.arange(D + 1), np.arange(H), np.arange(W), indexing="ij")
    post = (100 + 7 * w + 5 * d).astype(np.uint16)
    write_dicom_series(
        folder,
        post,
        ipp0=np.array(ipp0) - [0, 0, STEP],
        iop=[*row_dir, 0, 1, 0],
        pixel_spacing=SPACING,
        slice_step=STEP,
        description="ax dyn 1st pass",
        patient=pid,
        series_number=4,
    )
    DukeBreastMRI().prepare(raw, tmp_path / "out")
    left, _ = read_nifti(tmp_path / "out/images/Breast_MRI_001_L.nii.gz")
    right, _ = read_nifti(tmp_path / "out/images/Breast_MRI_001_R.nii.gz")
    on_pre = post[1:].astype(np.float64)
    np.testing.assert_allclose(
        np.concatenate([right, left], axis=3)[1], (on_pre - on_pre.mean()) / on_pre.std(), atol=1e-5
    )
