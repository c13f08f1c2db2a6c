"""Values the formats allow: refused or converted with a message naming the file and the values,
never silently reduced; spreadsheet CSVs; and suggested fixes that work when followed."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomofield import InputError
from tomofield.cli import cli
from tomofield.dataset import read_dataset
from tomofield.encoders import read_safetensors
from tomofield.io import load_volume
from tomofield.report import read_boxes

FAST = ["-L", "4", "-M", "4", "--slice-size", "16", "--device", "cpu", "--head", "sum"]
RNG = np.random.default_rng(0)


def nifti(path: Path, data: np.ndarray, **kw) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4), **kw), path)
    return path


def with_slope(path: Path, slope: float) -> Path:
    img = nib.Nifti1Image(RNG.integers(-100, 100, (8, 8, 8)).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(slope, 0.0)
    nib.save(img, path)
    return path


def spikes(value: float) -> np.ndarray:
    """An (8, 8, 8) float64 volume of 0.5 with ``value`` on one diagonal plane."""
    return np.where(np.eye(8)[None] > 0, value, 0.5) * np.ones((8, 8, 8))


def rgb(path: Path) -> Path:
    data = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    data["R"] = RNG.integers(0, 255, (8, 8, 8))
    return nifti(path, data)


def near_constant(path: Path) -> Path:
    data = 1e10 + RNG.random((8, 8, 8)) * 1e-3  # distinct in float64, one value in float32
    return nifti(path, data)


# (name, make(path) -> file, load_volume keyword arguments, message parts)
VALUE_CASES = [
    (
        "float64 beyond float32",
        lambda p: nifti(p, spikes(1e300)),
        {},
        ["values span [0.5, 1e+300] (float64)", "beyond float32's range of +-3.403e+38"],
    ),
    (
        "float64 below -float32 max",
        lambda p: nifti(p, spikes(-1e39)),
        {},
        ["values span [-1e+39, 0.5] (float64)"],
    ),
    (
        "int16 times a huge scl_slope",
        lambda p: with_slope(p, 1e38),
        {},
        ["(int16, scaled by the header's scl_slope/scl_inter)", "beyond float32's range"],
    ),
    (
        "complex64",
        lambda p: nifti(p, (RNG.random((8, 8, 8)) + 1j * RNG.random((8, 8, 8))).astype(np.complex64)),
        {},
        ["holds complex voxels (complex64) with imaginary parts up to", "save the magnitude"],
    ),
    (
        "complex128",
        lambda p: nifti(p, RNG.random((8, 8, 8)) + 2j),
        {},
        ["holds complex voxels (complex128) with imaginary parts up to 2.0"],
    ),
    ("RGB", rgb, {}, ["holds colour voxels (R, G, B)", "tomofield run R.nii.gz G.nii.gz B.nii.gz"]),
    (
        "an axis of 0 voxels",
        lambda p: nifti(p, np.zeros((8, 0, 8), np.float32)),
        {},
        ["has shape (8, 0, 8): an axis without voxels"],
    ),
    (
        "float32 near its maximum",
        lambda p: nifti(p, (RNG.random((8, 8, 8)) * 3e38).astype(np.float32)),
        {"check_content": True},
        ["the volume's values span [", "up to 1e+18 (float32 overflows beyond)"],
    ),
    (
        "int64 beyond the limit",
        lambda p: nifti(p, RNG.integers(0, 2**62, (8, 8, 8), dtype=np.int64), dtype=np.int64),
        {"check_content": True},
        ["the volume's values span [", "up to 1e+18"],
    ),
    (
        "float64 that float32 cannot tell apart",
        near_constant,
        {"check_content": True},
        ["which float32 cannot tell apart (all read as 1e+10)", "subtract the offset"],
    ),
    (
        "constant",
        lambda p: nifti(p, np.full((8, 8, 8), 7, np.uint8)),
        {"check_content": True},
        ["the volume is constant (7.0): nothing to reconstruct"],
    ),
    (
        "NaN and Inf",
        lambda p: nifti(p, np.where(np.eye(8)[None] > 0, np.nan, np.where(np.eye(8)[:, None] > 0, np.inf, 1.0))),
        {},
        ["120 non-finite voxel(s) of 512 (64 NaN, 56 infinite)", "--nan-policy zero with tomofield run"],
    ),
    (
        "voxel size 1e-7 mm",
        lambda p: (
            nib.save(nib.Nifti1Image(RNG.random((8, 8, 8)).astype(np.float32), np.diag([1e-7] * 3 + [1])), p) or p
        ),
        {},
        ["voxel size (1e-07, 1e-07, 1e-07) mm is outside [0.001, 1000.0] mm", "fix the voxel size"],
    ),
]


@pytest.mark.parametrize("name, make, kw, parts", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_values_float32_cannot_hold_are_refused_by_name(tmp_path, name, make, kw, parts):
    path = make(tmp_path / "odd file.nii.gz")
    before = path.read_bytes()
    with pytest.raises(InputError) as info:
        load_volume(path, **kw)
    msg = str(info.value)
    assert msg.startswith("'" + str(path) + "'")  # the file, verbatim
    for part in parts:
        assert part in msg
    assert "\n" not in msg and path.read_bytes() == before


def test_spacing_message_suggests_no_option_that_would_not_help(tmp_path):
    nib.save(nib.Nifti1Image(RNG.random((8, 8, 8)).astype(np.float32), np.diag([1e-7] * 3 + [1])), tmp_path / "s.nii")
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "s.nii"), "-o", str(tmp_path / "h.nii"), *FAST])
    assert res.exit_code == 2 and "voxel size (1e-07" in res.output
    assert "--geometry" not in res.output  # the check runs whatever the geometry
    again = ["run", str(tmp_path / "s.nii"), "-o", str(tmp_path / "h.nii"), *FAST, "--geometry", "normalized"]
    assert "voxel size (1e-07" in CliRunner().invoke(cli, again).output


def test_lossless_conversions_load(tmp_path):
    real = RNG.random((8, 8, 8))
    vol = load_volume(nifti(tmp_path / "c.nii.gz", real.astype(np.complex128)), check_content=True)
    np.testing.assert_allclose(vol.data[0].numpy(), real.transpose(2, 1, 0).astype(np.float32))
    big = RNG.random((8, 8, 8)) * 1e17  # float64, within float32 and the limit
    assert load_volume(nifti(tmp_path / "b.nii.gz", big), check_content=True).data.dtype == torch.float32
    ints = RNG.integers(-1000, 3000, (8, 8, 8)).astype(np.int16)
    img = nib.Nifti1Image(ints, np.eye(4))
    img.header.set_slope_inter(0.5, -1024.0)
    nib.save(img, tmp_path / "i.nii.gz")
    np.testing.assert_allclose(
        load_volume(tmp_path / "i.nii.gz").data[0].numpy(), (ints * 0.5 - 1024).transpose(2, 1, 0), rtol=1e-6
    )


def test_constant_channel_names_its_file(tmp_path):
    a = nifti(tmp_path / "a.nii.gz", RNG.random((8, 8, 8)).astype(np.float32))
    b = nifti(tmp_path / "b.nii.gz", np.ones((8, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"^'.*b\.nii\.gz': the volume is constant \(1\.0\)"):
        load_volume([a, b], check_content=True)
    c = nifti(tmp_path / "c.nii.gz", np.stack([RNG.random((8, 8, 8)), np.zeros((8, 8, 8))], -1).astype(np.float32))
    with pytest.raises(InputError, match=r"c\.nii\.gz': channel 1 is constant \(0\.0\)"):
        load_volume(c, check_content=True)


def test_cli_refuses_values_and_writes_nothing(tmp_path):
    src = nifti(tmp_path / "big.nii.gz", spikes(1e300))
    res = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "out" / "h.nii.gz"), *FAST])
    assert res.exit_code == 2 and "values span [0.5, 1e+300] (float64)" in res.output
    assert "nan-policy" not in res.output  # not NaN: that option would not help
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.nii.gz"]


def test_nan_policy_suggestion_works(tmp_path):
    data = RNG.random((8, 8, 8)).astype(np.float32)
    data[1, 2, 3] = np.nan
    src = nifti(tmp_path / "n.nii.gz", data)
    res = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "h.nii.gz"), *FAST])
    assert res.exit_code == 2 and "--nan-policy zero with tomofield run" in res.output
    res = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "h.nii.gz"), *FAST, "--nan-policy", "zero"])
    assert res.exit_code == 0, res.output


def test_evaluate_suggestion_makes_the_missing_heatmaps(dataset, tmp_path):
    heat = tmp_path / "heat"
    heat.mkdir()
    res = CliRunner().invoke(cli, ["evaluate", str(heat), str(dataset), "--folds", "2"])
    assert res.exit_code == 2
    suggestion = f"tomofield run {dataset} -o {heat}"
    assert suggestion in res.output
    res = CliRunner().invoke(cli, [*suggestion.split()[1:], *FAST])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", str(heat), str(dataset), "--folds", "2"])
    assert res.exit_code == 0, res.output


# -- the pickle conversion one-liner ----------------------------------------------------------
def _state(kind: str) -> dict:
    lin = torch.nn.Linear(3, 2)
    state = dict(lin.state_dict())
    if kind == "checkpoint":  # what training loops save: the state dict beside other things
        return {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}}
    if kind == "tied":  # two names for one tensor
        return {"a.weight": lin.weight.data, "b.weight": lin.weight.data}
    if kind == "strided":
        return {"w": torch.randn(4, 3).t()}
    return state


@pytest.mark.parametrize(
    "kind, name",
    [("state dict", "model.pt"), ("checkpoint", "run.ckpt"), ("tied", "my model's weights.pth"), ("strided", "w.bin")],
)
def test_pickle_conversion_suggestion_works(tmp_path, kind, name):
    folder = tmp_path / "weights dir"
    folder.mkdir()
    src = folder / name
    state = _state(kind)
    torch.save(state, src)
    with pytest.raises(InputError) as info:
        read_safetensors(src)
    msg = str(info.value)
    command = msg.split(" with: ", 1)[1].rsplit(" (then give --weights ", 1)[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(command, shell=True, cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    converted = read_safetensors(src.with_suffix(".safetensors"))
    expected = state.get("state_dict", state)
    assert converted.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(converted[k], v)
    assert list(elsewhere.iterdir()) == []  # written beside the checkpoint, where the message says
    assert shlex.split(msg.rsplit(" (then give --weights ", 1)[1][:-1]) == [str(src.with_suffix(".safetensors"))]


# -- CSVs as spreadsheets save them -----------------------------------------------------------
@pytest.fixture
def images(write_nifti, tmp_path: Path) -> Path:
    for name in ("a", "é"):
        write_nifti(f"{name}.nii.gz", RNG.random((4, 4, 4)))
    return tmp_path


TEXT = "image,label\na.nii.gz,1\né.nii.gz,0\n"

READABLE = [
    ("UTF-8 with BOM", b"\xef\xbb\xbf" + TEXT.encode()),
    ("CRLF", TEXT.replace("\n", "\r\n").encode()),
    ("old Mac CR", TEXT.replace("\n", "\r").encode()),
    ("semicolons", TEXT.replace(",", ";").encode()),
    ("tabs, BOM", b"\xef\xbb\xbf" + TEXT.replace(",", "\t").encode()),
    ("trailing empty rows", (TEXT + ",\n,\n\n").encode()),
    ("quoted channels, semicolons", b'image;label\n"a.nii.gz;a.nii.gz";1\n\xc3\xa9.nii.gz;0\n'),
]


@pytest.mark.parametrize("name, data", READABLE, ids=[c[0] for c in READABLE])
def test_spreadsheet_csvs_are_read(images, name, data):
    p = images / "data.csv"
    p.write_bytes(data)
    cases = read_dataset(p)
    assert [c.images[0].name for c in cases] == ["a.nii.gz", "é.nii.gz"] and [c.label for c in cases] == [1.0, 0.0]


REFUSED = [
    ("Latin-1", TEXT.encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 3)"),
    ("Windows-1252", "image,label\n“a”.nii.gz,1\n".encode("cp1252"), "is not UTF-8 text (byte 0x93 on line 2)"),
    ("UTF-16", TEXT.encode("utf-16"), "is UTF-16 text (a spreadsheet's 'Unicode Text'), not UTF-8"),
    ("xlsx", b"PK\x03\x04" + bytes(64), "is a spreadsheet workbook (.xlsx or .ods), not CSV text"),
    ("gzip", b"\x1f\x8b\x08" + bytes(64), "is a binary file"),
]


@pytest.mark.parametrize("name, data, message", REFUSED, ids=[c[0] for c in REFUSED])
def test_other_encodings_are_refused_with_the_fix(images, name, data, message):
    p = images / "data.csv"
    p.write_bytes(data)
    with pytest.raises(InputError) as info:
        read_dataset(p)
    assert message in str(info.value) and str(p) in str(info.value)
    if name != "gzip":
        assert "save it as 'CSV UTF-8'" in str(info.value)
    assert p.read_bytes() == data


def test_windows_separators_in_paths(images):
    (images / "sub").mkdir()
    (images / "a.nii.gz").rename(images / "sub" / "a.nii.gz")
    p = images / "data.csv"
    p.write_text("image,label,mask\r\nsub\\a.nii.gz,1,sub\\a.nii.gz\r\n")
    (case,) = read_dataset(p)
    assert case.images == (images / "sub" / "a.nii.gz",) and case.mask == images / "sub" / "a.nii.gz"


def test_decimal_comma_label_names_the_fix(images):
    p = images / "data.csv"
    p.write_text("image;label\na.nii.gz;3,5\n")
    with pytest.raises(InputError, match=r"label '3,5' is not a number \(write decimals with a point: 3.5\)"):
        read_dataset(p, task="regression")


def test_boxes_csv_from_a_spreadsheet(images):
    (images / "d.csv").write_text(TEXT)
    cases = read_dataset(images / "d.csv")
    boxes = images / "boxes.csv"
    boxes.write_bytes(b"\xef\xbb\xbfimage;d0;h0;w0;d1;h1;w1\r\na.nii.gz;0;0;0;2;2;2\r\n;;;;;;\r\n")
    assert read_boxes(boxes, cases) == [(0, 0, 0, 2, 2, 2), None]
    boxes.write_bytes("image,d0,h0,w0,d1,h1,w1\né.nii.gz,0,0,0,1,1,1\n".encode("latin-1"))
    with pytest.raises(InputError, match="boxes CSV .* is not UTF-8 text"):
        read_boxes(boxes, cases)


def test_boxes_are_typed_in_the_viewers_ijk_order_and_the_tensors_order_is_still_read(images):
    (images / "d.csv").write_text(TEXT)
    cases = read_dataset(images / "d.csv")
    boxes = images / "boxes.csv"
    boxes.write_text("image,i0,j0,k0,i1,j1,k1\na.nii.gz,1,2,3,4,5,6\n")
    assert read_boxes(boxes, cases)[0] == (3, 2, 1, 6, 5, 4)  # (d0, h0, w0, d1, h1, w1) = (k, j, i)
    boxes.write_text("image,d0,h0,w0,d1,h1,w1\na.nii.gz,3,2,1,6,5,4\n")
    assert read_boxes(boxes, cases)[0] == (3, 2, 1, 6, 5, 4)
    boxes.write_text("image,x0,y0\na.nii.gz,1,2\n")
    with pytest.raises(InputError, match=r"expected the columns image,i0,j0,k0,i1,j1,k1; found"):
        read_boxes(boxes, cases)
