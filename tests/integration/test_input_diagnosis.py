"""Inputs that are wrong in ways a run would not notice by itself (issue 31): each refused, or its failure
diagnosed, with a message naming the file or value and the cause.

* evaluation compares masks only with the heatmaps of their grid, affine and values;
* one scan listed twice in a dataset CSV, however spelled;
* a display window that is not finite;
* the cause of a failure: weights or a head that make NaN, a truncated NIfTI, a DICOM series
  folder in a CSV row, a non-finite number, what ``Engine.run`` takes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomofield import Engine, InputError
from tomofield.cli import cli
from tomofield.dataset import read_dataset
from tomofield.io import affine_for_spacing, load_volume

FAST = ["-L", "4", "-M", "4", "--slice-size", "16", "--device", "cpu", "--head", "sum"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(res, *words: str) -> str:
    """The one-line message of a refused command (exit 2, no traceback), checked to hold ``words``."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    text = " ".join(res.output.split())
    for w in words:
        assert w in text, (w, text)
    return text


# -- 1. evaluation checks what it compares ------------------------------------------------------------------------
@pytest.fixture
def evaluation(write_nifti, tmp_path: Path):
    """4 volumes of 8^3 with their heatmaps in heat/ and 0/1 masks; the first mask is what the test writes."""
    rng = np.random.default_rng(0)
    lesion = np.zeros((8, 8, 8), np.float32)
    lesion[2:5, 2:5, 2:5] = 1
    rows = []
    for i in range(4):
        heat = rng.random((8, 8, 8)).astype(np.float32) + 2 * lesion * (i % 2 == 0)
        write_nifti(f"img{i}.nii.gz", heat)
        write_nifti(f"heat/img{i}.nii.gz", heat)
        write_nifti(f"m{i}.nii.gz", lesion if i % 2 == 0 else np.zeros_like(lesion))
        rows.append(f"img{i}.nii.gz,{int(i % 2 == 0)},m{i}.nii.gz")
    (tmp_path / "data.csv").write_text("image,label,mask\n" + "\n".join(rows) + "\n")

    def evaluate(mask=None, affine=None, **kw):
        if mask is not None:
            (tmp_path / "m0.nii.gz").unlink()
            write_nifti("m0.nii.gz", mask, affine=affine, **kw)
        return invoke(
            "evaluate", tmp_path / "heat", tmp_path / "data.csv", "--folds", 2, "-o", tmp_path / "r", "--overwrite"
        )

    return evaluate, lesion, tmp_path / "m0.nii.gz"


def test_masks_on_their_heatmaps_grid_with_0_1_values_are_scored(evaluation):
    evaluate, lesion, _ = evaluation
    res = evaluate()
    assert res.exit_code == 0, res.output
    shifted = affine_for_spacing((1, 1, 1))
    shifted[:3, 3] += 1e-5  # float32 rounding of a header, far below the tolerance
    assert evaluate(lesion, affine=shifted).exit_code == 0


@pytest.mark.parametrize(
    ("what", "make", "words"),
    [
        (
            "another spacing",
            lambda m: (m, affine_for_spacing((2, 1, 1))),
            ["voxel size 1 x 1 x 2 mm", "not its affine"],
        ),
        ("a flipped axis", lambda m: (m, np.diag([-1.0, 1, 1, 1])), ["orientation LAS against RAS", "not its affine"]),
        (
            "another origin",
            lambda m: (m, np.array([[1.0, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
            ["origin (5, 0, 0) mm", "not its affine"],
        ),
        ("another shape", lambda m: (np.zeros((8, 8, 9), np.float32), None), ["has grid 9 x 8 x 8", "its heatmap"]),
        ("several channels", lambda m: (np.stack([m, m]), None), ["has 2 channels", "save the lesion's channel"]),
        (
            "a label map",
            lambda m: (m + (np.arange(512).reshape(8, 8, 8) % 7 == 0) * 2, None),
            ["is a label map (values 0, 1, 2, 3)", "binarize it"],
        ),
        ("fractions", lambda m: (m * 0.3, None), ["values other than 0 and 1 (0, 0.3)", "does not threshold"]),
        ("0 and 255", lambda m: (m * 255, None), ["holds the values 0, 255", "save it as 0/1"]),
        ("NaN voxels", lambda m: (np.where(m > 0, np.nan, 0), None), ["holds 27 NaN or infinite voxel(s)"]),
    ],
)
def test_a_mask_that_does_not_match_its_heatmap_is_refused_naming_file_and_difference(evaluation, what, make, words):
    evaluate, lesion, mask_file = evaluation
    mask, affine = make(lesion)
    refused(evaluate(mask, affine=affine), f"mask '{mask_file}'", *words)


def test_evaluate_refuses_a_non_finite_iou_or_nsd_tolerance(evaluation, tmp_path):
    from tomofield.report import evaluate_heatmaps

    res = invoke("evaluate", tmp_path / "heat", tmp_path / "data.csv", "--iou", "nan")
    refused(res, "iou=nan is not finite")
    with pytest.raises(InputError, match="NSD tolerance inf is not finite"):
        evaluate_heatmaps(tmp_path / "heat", tmp_path / "data.csv", nsd_tolerance=float("inf"))


# -- 2. one scan listed twice -------------------------------------------------------------------------------------
@pytest.fixture
def scans(write_nifti, tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    for name in ("images/a.nii.gz", "images/b.nii.gz"):
        write_nifti(name, rng.random((6, 6, 6)))
    return tmp_path


@pytest.mark.parametrize(
    ("second", "label"),
    [
        ("images/../images/a.nii.gz", 0),  # through ..
        ("link.nii.gz", 1),  # a symbolic link to it
        ("images/a.nii.gz", 0),  # the same path, another label
        ("images/a.nii.gz", 1),  # the same path, the same label
        ("./images//a.nii.gz", 1),
    ],
)
def test_one_scan_listed_twice_is_refused_naming_both_rows(scans, second, label):
    os.symlink(scans / "images" / "a.nii.gz", scans / "link.nii.gz")
    csv = scans / "data.csv"
    csv.write_text(f"image,label\nimages/a.nii.gz,1\nimages/b.nii.gz,0\n{second},{label}\n")
    with pytest.raises(InputError) as info:
        read_dataset(csv)
    text = str(info.value)
    assert "row 4" in text and "row 2" in text and "same file" in text and repr(second) in text
    res = invoke("run", csv, "-o", scans / "out", *FAST)
    refused(res, "row 4", "row 2", "same file")
    assert not (scans / "out").exists()


def test_two_scans_with_different_names_or_channel_sets_are_not_duplicates(scans):
    csv = scans / "data.csv"
    csv.write_text("image,label\nimages/a.nii.gz,1\nimages/b.nii.gz,0\nimages/a.nii.gz;images/b.nii.gz,1\n")
    assert [c.row for c in read_dataset(csv)] == [2, 3, 4]


# -- 3. a display window that is not finite ----------------------------------------------------------------------
@pytest.mark.parametrize("window", ["nan,1", "0,inf", "-inf,inf", "nan,nan"])
def test_a_window_that_is_not_finite_is_refused(scans, tmp_path, window):
    res = invoke(
        "run",
        scans / "images/a.nii.gz",
        "-o",
        tmp_path / "h.nii.gz",
        "--preview",
        tmp_path / "p.png",
        "--window",
        window,
        *FAST,
    )
    refused(res, f"--window '{window}' is not finite")
    assert not (tmp_path / "h.nii.gz").exists()


def test_the_preview_refuses_a_window_that_is_not_finite(tmp_path):
    from tomofield.outputs.preview import check_window, write_preview

    vol = np.random.default_rng(0).random((6, 6, 6)).astype(np.float32)
    with pytest.raises(InputError, match="is not finite"):
        write_preview(tmp_path / "p.png", vol, vol, window=(0.0, float("inf")))
    assert not (tmp_path / "p.png").exists()
    assert check_window(("-1000", 400)) == (-1000.0, 400.0)
    for bad, why in [((1, 1), "LO < HI"), (("a", 1), "must be two numbers"), ((1,), "must be two numbers")]:
        with pytest.raises(InputError, match=why):
            check_window(bad)


# -- 4. messages that diagnose the cause --------------------------------------------------------------------------
@pytest.fixture
def nan_weights(tmp_path: Path) -> Path:
    """resnet10t's weights (1 channel, 1 logit) with one NaN in the first convolution."""
    import timm
    from safetensors.torch import save_file

    state = {
        k: v.contiguous().clone()
        for k, v in timm.create_model("resnet10t", in_chans=1, num_classes=1).state_dict().items()
    }
    state["conv1.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(tmp_path / "w.safetensors"))
    return tmp_path / "w.safetensors"


def test_weights_holding_nan_are_refused_naming_the_tensor(nan_weights, scans, tmp_path):
    with pytest.raises(InputError) as info:
        Engine(weights=nan_weights, device="cpu")
    text = str(info.value)
    assert "non-finite" in text and "'conv1.0.weight' has 1 NaN" in text and "rescale" not in text
    res = invoke("run", scans / "images/a.nii.gz", "-o", tmp_path / "h.nii.gz", "--weights", nan_weights, *FAST[:-2])
    assert "rescale" not in refused(res, "'conv1.0.weight' has 1 NaN", "the input volume is not at fault")


class NanHead:
    """A head whose scores are NaN: the input is not at fault."""

    name, needs_encoder, needs_grad, compilable, options = "nan-head", False, False, False, ()

    def __call__(self, encoder, slices):
        return slices.sum(dim=(1, 2, 3))[:, None, None, None] * float("nan")


def test_a_head_that_makes_nan_is_named_not_the_input():
    vol = torch.rand(1, 8, 8, 8)
    engine = Engine(head=NanHead(), directions=4, slices=4, slice_size=8, device="cpu")
    with pytest.raises(InputError) as info:
        engine.reconstruct(vol)
    text = str(info.value)
    assert "nan-head" in text and "non-finite scores" in text and "rescale" not in text


def test_an_encoder_given_with_nan_weights_is_named_not_the_input():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    with torch.no_grad():
        net[1].weight[0, 3] = float("nan")
    engine = Engine(encoder=net, head="logit", directions=4, slices=4, slice_size=8, device="cpu")
    with pytest.raises(InputError) as info:
        engine.reconstruct(torch.rand(1, 8, 8, 8))
    text = str(info.value)
    assert "holds non-finite weights: tensor '1.weight' has 1 NaN" in text and "rescale" not in text


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_truncated_nifti_is_said_to_be_truncated(scans, tmp_path, suffix):
    import nibabel as nib

    whole = tmp_path / f"whole{suffix}"
    nib.save(nib.load(str(scans / "images/a.nii.gz")), str(whole))
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"the file is truncated: .*copy or download it again"):
        load_volume(cut)
    res = invoke("run", cut, "-o", tmp_path / "h.nii.gz", *FAST)
    text = refused(res, f"cannot read '{cut}': the file is truncated")
    assert "does not exist" not in text and "no such file" not in text.lower()
    tiny = tmp_path / f"tiny{suffix}"
    tiny.write_bytes(data[:100])
    with pytest.raises(InputError, match="the file is truncated"):
        load_volume(tiny)


def test_a_corrupt_gzip_is_said_to_be_corrupt(tmp_path):
    import nibabel as nib

    vol = np.zeros((16, 16, 16), np.float32)
    vol[4:9, 3:12, 2:6] = np.arange(180).reshape(5, 9, 4)  # compressible: Huffman-coded, not stored, blocks
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "a.nii.gz"))
    data = bytearray((tmp_path / "a.nii.gz").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16  # garbled in place: the same size
    (tmp_path / "bad.nii.gz").write_bytes(bytes(data))
    with pytest.raises(InputError, match="the file is corrupt: its gzip data do not decompress"):
        load_volume(tmp_path / "bad.nii.gz")


def _dicom_series(nifti: Path, out: Path) -> Path:
    """``nifti`` written by SimpleITK as a folder of one DICOM series (int16)."""
    import locale

    import SimpleITK as sitk

    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer resets the process's locale
    try:
        image = sitk.Cast(sitk.RescaleIntensity(sitk.ReadImage(str(nifti)), 0, 4000), sitk.sitkInt16)
        out.mkdir()
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(image.GetDepth()):
            plane = image[:, :, k]
            origin = image.TransformIndexToPhysicalPoint((0, 0, k))
            plane.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in origin))
            plane.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
            plane.SetMetaData("0020|0013", str(k + 1))
            plane.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
            plane.SetMetaData("0018|0050", f"{image.GetSpacing()[2]:.6f}")
            writer.SetFileName(str(out / f"slice{k:03d}.dcm"))
            writer.Execute(plane)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return out


def test_a_csv_row_naming_a_dicom_series_folder_reads_it_as_run_folder_does(scans, write_nifti, tmp_path):
    pytest.importorskip("SimpleITK")
    series = _dicom_series(scans / "images/a.nii.gz", tmp_path / "series")
    (tmp_path / "empty").mkdir()
    csv = tmp_path / "data.csv"
    csv.write_text("image,label,mask\nseries,1,m0.nii.gz\nimages/b.nii.gz,0,\n")
    lesion = np.zeros((6, 6, 6), np.float32)
    lesion[1:4, 1:4, 1:4] = 1
    write_nifti("m0.nii.gz", lesion, affine=load_volume(series).affine)  # on the series' grid (LPS)
    cases = read_dataset(csv)
    assert cases[0].images == (series,) and cases[0].name == "series"
    single = invoke("run", series, "-o", tmp_path / "single.nii.gz", *FAST)
    assert single.exit_code == 0, single.output
    np.testing.assert_array_equal(load_volume(list(cases[0].images)).data, load_volume(series).data)
    # evaluate reads the row's scan as the heatmap's grid: a mask on it is scored
    heat = load_volume(tmp_path / "single.nii.gz")
    (tmp_path / "heat").mkdir()
    os.replace(tmp_path / "single.nii.gz", tmp_path / "heat" / "series.nii.gz")
    write_nifti("heat/b.nii.gz", np.zeros((6, 6, 6)), affine=heat.affine)
    res = invoke("evaluate", tmp_path / "heat", csv, "--folds", 2, "-o", tmp_path / "r")
    assert res.exit_code == 0, res.output
    csv.write_text("image,label\nempty,1\nimages/b.nii.gz,0\n")
    with pytest.raises(InputError, match="row 2: .*empty' is a folder but not a DICOM series"):
        read_dataset(csv)


def test_a_dataset_run_of_a_dicom_series_row(scans, tmp_path):
    pytest.importorskip("SimpleITK")
    _dicom_series(scans / "images/a.nii.gz", tmp_path / "series")
    csv = tmp_path / "data.csv"
    csv.write_text("image,label\nseries,1\nimages/b.nii.gz,0\n")
    res = invoke("run", csv, "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "series.nii.gz").is_file()
    again = invoke("run", csv, "-o", tmp_path / "out", *FAST)  # resumable: the folder's fingerprint matches
    assert again.exit_code == 0 and "2 already done" in again.output


def test_non_finite_numbers_are_said_to_be_not_finite(scans, tmp_path):
    from tomofield.protocols import Option

    image = scans / "images/a.nii.gz"
    text = refused(invoke("run", image, "-o", tmp_path / "h.nii.gz", "--empty-tol", "nan", *FAST), "not finite")
    assert "empty_tol=nan is not finite" in text and "got nan" not in text
    for kw, word in [
        (dict(slices=float("inf")), "slices=inf is not finite"),
        (dict(empty_tol=float("-inf")), "empty_tol=-inf is not finite"),
    ]:
        with pytest.raises(InputError, match=word):
            Engine(device="cpu", head="sum", **kw)
    with pytest.raises(InputError, match="option sigma=nan is not finite; it takes a number in 0.25..32.0"):
        Engine(device="cpu", head="sum", filter="tomo-gauss", filter_options={"sigma": float("nan")})
    with pytest.raises(InputError, match="option x='inf' is not finite"):
        Option("x", float, 1.0, min=0).check("inf")
    with pytest.raises(InputError, match="option x=2.5 is not valid"):
        Option("x", float, 1.0, max=1).check(2.5)
    # an integer option given 'inf' on the command line: click says it is not an integer
    res = invoke("run", image, "-o", tmp_path / "h.nii.gz", *FAST, "-M", "inf")
    assert res.exit_code == 2 and "'inf' is not a valid integer" in res.output
    for label in ("nan", "inf", "-inf"):
        (scans / "labels.csv").write_text(f"image,label\nimages/a.nii.gz,{label}\nimages/b.nii.gz,0\n")
        for task in ("classification", "any"):
            with pytest.raises(InputError, match=f"row 2: label '{label}' is not finite"):
                read_dataset(scans / "labels.csv", task=task)


@pytest.mark.parametrize("given", [torch.zeros(1, 6, 6, 6), "scan.nii.gz", Path("scan.nii.gz"), np.zeros((6, 6, 6))])
def test_engine_run_says_what_it_takes(given):
    with pytest.raises(InputError, match=r"Engine.run takes a tomofield.Volume \(load_volume\(path\)"):
        Engine(head="sum", device="cpu").run(given)
