"""Shared pieces: patient split, z-normalisation, ball morphology, resampling, tables."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from tomofield.errors import InputError
from tomofield_medical.common import split_patients, zscore
from tomofield_medical.geometry import ball, ball_closing, ball_opening, bounding_box, resample, shifted_affine
from tomofield_medical.tables import iter_rows, read_table

from medical_fakes import write_xlsx

# --- split -----------------------------------------------------------------------------


def test_split_is_stratified_reproducible_and_order_independent():
    labels = {f"p{i:02d}": int(i < 10) for i in range(16)}  # 10 positive, 6 negative patients
    val = split_patients(labels, seed=3, val_fraction=0.5)
    assert sum(labels[p] for p in val) == 5 and sum(1 - labels[p] for p in val) == 3
    items = list(labels.items())
    random.Random(0).shuffle(items)
    assert split_patients(dict(items), seed=3, val_fraction=0.5) == val
    draws = {frozenset(split_patients(labels, seed=s, val_fraction=0.5)) for s in range(6)}
    assert len(draws) > 1  # the seed matters


def test_split_pins_forced_patients_and_keeps_both_sides_non_empty():
    labels = {"a": 1, "b": 1, "c": 1, "d": 0, "e": 0}
    val = split_patients(labels, seed=0, val_fraction=0.2, force_val={"c"})
    assert "c" in val
    assert sum(labels[p] for p in val) == 1  # round(0.6) = 1 positive: the forced one
    assert len([p for p in val if labels[p] == 0]) == 1  # round(0.4) = 0, raised to 1
    assert split_patients(labels, seed=0, val_fraction=0.0) == set()
    with pytest.raises(InputError, match="val-fraction"):
        split_patients(labels, seed=0, val_fraction=1.0)


# --- z-normalisation ---------------------------------------------------------------------


def test_zscore_is_per_channel_and_names_a_constant_input():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(5, 3, (4, 5, 6)), rng.normal(-2, 0.1, (4, 5, 6))]).astype(np.float32)
    z = zscore(x)
    np.testing.assert_allclose(z.reshape(2, -1).mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(z.reshape(2, -1).std(1), 1, atol=1e-5)
    with pytest.raises(InputError, match="flair.nii.gz.*constant"):
        zscore(np.ones((1, 3, 3, 3), np.float32), ["flair.nii.gz"])


# --- morphology ----------------------------------------------------------------------------


def _reference(mask, radius, spacing, op):
    """scipy's binary closing/opening with the explicit ball, on an array padded with background."""
    se = ball(radius, spacing)
    pad = [s // 2 + 1 for s in se.shape]
    m = np.pad(mask, [(p, p) for p in pad])
    out = op(m, structure=se)
    return out[tuple(slice(p, p + s) for p, s in zip(pad, mask.shape, strict=True))]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 1.0, 1.5)])
def test_ball_morphology_equals_the_structuring_element_definition(spacing):
    rng = np.random.default_rng(1)
    mask = ndi.gaussian_filter(rng.random((10, 16, 14)), 1.2) > 0.52
    r = 3.0
    np.testing.assert_array_equal(ball_closing(mask, r, spacing), _reference(mask, r, spacing, ndi.binary_closing))
    np.testing.assert_array_equal(ball_opening(mask, r, spacing), _reference(mask, r, spacing, ndi.binary_opening))


def test_ball_known_answers():
    assert ball(1.0).sum() == 7 and ball(2.0, (2.0, 1.0, 1.0)).shape == (3, 5, 5)
    m = np.zeros((12, 12, 12), bool)
    m[2:10, 2:10, 2:10] = True
    m[5, 5, 5] = False  # a one-voxel hole
    closed = ball_closing(m, 2.0)
    assert closed[5, 5, 5] and closed.sum() == 8**3  # only the hole is added: a cube is convex
    speck = np.zeros((12, 12, 12), bool)
    speck[1, 1, 1] = True
    assert not ball_opening(speck | m, 1.0)[1, 1, 1]  # the speck is thinner than the ball
    assert ball_opening(speck | m, 1.0)[2:10, 2:10, 2:10].sum() > 8**3 - 8 * 12


# --- geometry ------------------------------------------------------------------------------


def test_bounding_box_and_shifted_affine():
    m = np.zeros((6, 7, 8), bool)
    m[1:3, 2, 4:8] = True
    assert bounding_box(m) == (1, 2, 4, 3, 3, 8)
    assert bounding_box(np.zeros((2, 2, 2), bool)) is None
    a = np.array([[0.0, 0, -2, 10], [0, 3, 0, -5], [1.5, 0, 0, 7], [0, 0, 0, 1]])
    s = shifted_affine(a, (1, 2, 3))  # (d, h, w) = (k, j, i)
    np.testing.assert_allclose(s[:3, 3], a[:3, :3] @ [3, 2, 1] + a[:3, 3])
    np.testing.assert_allclose(s[:3, :3], a[:3, :3])


def test_resample_reproduces_a_linear_field_and_copies_whole_voxel_shifts():
    src_aff = np.array([[-1.25, 0, 0, 30], [0, 1.0, 0, -12], [0, 0, 1.5, -6], [0, 0, 0, 1]])
    shape = (20, 24, 28)
    d, h, w = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    xyz = np.stack([w, h, d], -1) @ src_aff[:3, :3].T + src_aff[:3, 3]
    field = (2 * xyz[..., 0] - 3 * xyz[..., 1] + 0.5 * xyz[..., 2]).astype(np.float32)
    dst_aff = np.array([[2.0, 0, 0, 3.3], [0, 2.5, 0, -4.1], [0, 0, 3.0, 1.7], [0, 0, 0, 1]])  # flipped x, coarser
    dst_shape = (4, 5, 6)
    got = resample(field, src_aff, dst_shape, dst_aff)
    dd, hh, ww = np.meshgrid(*[np.arange(n) for n in dst_shape], indexing="ij")
    p = np.stack([ww, hh, dd], -1) @ dst_aff[:3, :3].T + dst_aff[:3, 3]
    np.testing.assert_allclose(got, 2 * p[..., 0] - 3 * p[..., 1] + 0.5 * p[..., 2], atol=1e-3)
    sub = resample(field, src_aff, (3, 4, 5), shifted_affine(src_aff, (2, 5, 7)))
    np.testing.assert_array_equal(sub, field[2:5, 5:9, 7:12])


# --- tables --------------------------------------------------------------------------------


def test_csv_with_bom_semicolons_and_title_rows(tmp_path: Path):
    p = tmp_path / "t.csv"
    p.write_text(
        "\ufeffTitle;;\nPatient ID;Start Row;Note\n{legend};;\nBreast_MRI_001;12;x\nBreast_MRI_002;7.0;\n",
        encoding="utf-8",
    )
    rows = read_table(p, ["patient id", "Start  Row"], key="patient id", key_pattern=r"Breast_MRI_\d+")
    assert rows == [
        {"patient id": "Breast_MRI_001", "Start  Row": "12"},
        {"patient id": "Breast_MRI_002", "Start  Row": "7.0"},
    ]
    with pytest.raises(InputError, match="no header row naming Patient ID, End Row"):
        read_table(p, ["Patient ID", "End Row"])


def test_xlsx_written_by_openpyxl_reads_back(tmp_path: Path):
    pytest.importorskip("openpyxl")
    p = write_xlsx(
        tmp_path / "t.xlsx",
        [
            ["group", None, "MRI Findings"],
            ["Patient ID", "Age", "Contralateral"],
            ["Breast_MRI_001", 51, 0],
            ["Breast_MRI_002", None, 1.5],
            ["x", True, "é"],
        ],
    )
    assert list(iter_rows(p)) == [
        ["group", "", "MRI Findings"],
        ["Patient ID", "Age", "Contralateral"],
        ["Breast_MRI_001", "51", "0"],
        ["Breast_MRI_002", "", "1.5"],
        ["x", "TRUE", "é"],
    ]
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bad.xlsx.*export it as CSV"):
        list(iter_rows(bad))


def _as_excel_writes_it(path: Path) -> Path:
    """``path`` (written by openpyxl, whose cells hold inline strings) with its strings moved
    to a shared-string table, as Excel stores them."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as zf:
        parts = {n: zf.read(n) for n in zf.namelist()}
    strings: list[str] = []

    def shared(m: re.Match) -> str:
        strings.append(m.group(2))
        return f'<c r="{m.group(1)}" t="s"><v>{len(strings) - 1}</v></c>'

    for name in [n for n in parts if n.startswith("xl/worksheets/sheet")]:
        text = parts[name].decode()
        parts[name] = re.sub(r'<c r="(\w+)" t="inlineStr"><is><t>(.*?)</t></is></c>', shared, text).encode()
    ns = "http://schemas.openxmlformats.org"
    items = "".join(f"<si><t>{s}</t></si>" for s in strings)
    parts["xl/sharedStrings.xml"] = (
        f'<sst xmlns="{ns}/spreadsheetml/2006/main" count="{len(strings)}" uniqueCount="{len(strings)}">{items}</sst>'
    ).encode()
    parts["[Content_Types].xml"] = parts["[Content_Types].xml"].replace(
        b"</Types>",
        b'<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
        b'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>',
    )
    parts["xl/_rels/workbook.xml.rels"] = parts["xl/_rels/workbook.xml.rels"].replace(
        b"</Relationships>",
        f'<Relationship Id="rIdSST" Type="{ns}/officeDocument/2006/relationships/sharedStrings" '
        'Target="sharedStrings.xml"/></Relationships>'.encode(),
    )
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in parts.items():
            zf.writestr(name, data)
    return path


def test_xlsx_shared_strings_dates_gaps_and_the_first_sheet(tmp_path: Path):
    openpyxl = pytest.importorskip("openpyxl")
    import datetime as dt

    wb = openpyxl.Workbook()
    first = wb.active
    first.append(["Patient ID", "Date", "Start Row"])
    first.append(["Breast_MRI_001", dt.datetime(2019, 3, 7), 12])
    first.append(["Breast_MRI_002", dt.datetime(2019, 3, 7, 12, 30), 7.5])
    first["A5"] = "after a blank row"
    wb.create_sheet("second").append(["not this one"])
    wb.active = 1  # the active sheet is not the first one
    p = tmp_path / "t.xlsx"
    wb.save(str(p))
    _as_excel_writes_it(p)
    assert list(iter_rows(p)) == [
        ["Patient ID", "Date", "Start Row"],
        ["Breast_MRI_001", "2019-03-07", "12"],
        ["Breast_MRI_002", "2019-03-07 12:30:00", "7.5"],
        [],
        ["after a blank row"],
    ]
    assert read_table(p, ["patient id", "start row"], key="patient id", key_pattern=r"Breast_MRI_\d+") == [
        {"patient id": "Breast_MRI_001", "start row": "12"},
        {"patient id": "Breast_MRI_002", "start row": "7.5"},
    ]


def test_csv_with_a_late_latin1_byte_reads_each_row_once(tmp_path: Path):
    p = tmp_path / "t.csv"
    body = "".join(f"Breast_MRI_{i:03d},{i}\n" for i in range(1000))  # more than the 8 KiB sniffed
    p.write_bytes(("Patient ID,Start Row\n" + body + "Breast_MRI_999,caf\xe9\n").encode("latin-1"))
    rows = list(iter_rows(p))
    assert len(rows) == 1002 and rows[0] == ["Patient ID", "Start Row"] and rows[-1] == ["Breast_MRI_999", "café"]
