"""DICOM series folders, NRRD and MetaImage through SimpleITK: the same heatmap as the NIfTI of the same data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tomofield.cli import cli
from tomofield.io import load_volume

sitk = pytest.importorskip("SimpleITK")

FAST = ["--head", "sum", "--filter", "tomo", "-L", "8", "-M", "6", "--slice-size", "16", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _keep_locale():
    """GDCM's DICOM writer resets the process's locale to "C"; the tests after these must not see it."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def itk_copy(nifti: Path, out: Path) -> Path:
    """The NIfTI written by SimpleITK as ``out`` (a file, or a folder of one DICOM series)."""
    image = sitk.ReadImage(str(nifti))
    if out.suffix:
        sitk.WriteImage(image, str(out))
        return out
    out.mkdir()
    image = sitk.Cast(sitk.RescaleIntensity(image, 0, 4000), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),  # image position (patient)
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*image.GetDirection()[0:7:3], *image.GetDirection()[1:8:3])),
            "0020|0013": str(k + 1),
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1",  # one series
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(out / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    return out


@pytest.fixture
def scan(write_nifti) -> Path:
    rng = np.random.default_rng(0)
    vol = (rng.random((10, 12, 14)) * 4000).round().astype(np.float32)
    affine = np.array([[-1.0, 0, 0, 20], [0, -1.2, 0, 15], [0, 0, 2.0, -8], [0, 0, 0, 1]])  # stored LPS
    return write_nifti("scan.nii.gz", vol, affine=affine)


@pytest.mark.parametrize("kind", [".nrrd", ".mha", "dicom"])
def test_an_itk_input_gives_the_nifti_runs_heatmap(scan, tmp_path, kind):
    copy = itk_copy(scan, tmp_path / ("copy" + (kind if kind != "dicom" else "")))
    a, b = load_volume(scan), load_volume(copy)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)  # the same place in the patient
    if kind == "dicom":  # int16 after a rescale to 0..4000: the same voxels in the same order, up to rounding
        r = np.corrcoef(b.data.flatten().double(), a.data.flatten().double())[0, 1]
        assert r > 0.9999
        ref = tmp_path / "ref.nii.gz"
        from tomofield.io import save_nifti

        save_nifti(ref, b.data, b.affine)
        scan = ref
    else:
        np.testing.assert_array_equal(b.data, a.data)
    out_nii, out_itk = tmp_path / "h_nii.nii.gz", tmp_path / "h_itk.nii.gz"
    assert CliRunner().invoke(cli, ["run", str(scan), "-o", str(out_nii), *FAST]).exit_code == 0
    res = CliRunner().invoke(cli, ["run", str(copy), "-o", str(out_itk), *FAST])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(load_volume(out_itk).data, load_volume(out_nii).data, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(load_volume(out_itk).affine, load_volume(scan).affine, atol=1e-4)


def test_a_folder_that_is_neither_volumes_nor_a_dicom_series_says_what_it_takes(tmp_path):
    from tomofield.errors import InputError

    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="is a folder but not a DICOM series"):
        load_volume(tmp_path / "stuff")


def test_without_simpleitk_the_message_says_how_to_get_it(tmp_path, monkeypatch):
    import sys

    from tomofield.errors import InputError

    (tmp_path / "scan.nrrd").write_bytes(b"NRRD0004\n")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import fails as if it were not installed
    with pytest.raises(InputError, match=r"^reading '.*scan.nrrd' needs SimpleITK, an optional extra: pip install"):
        load_volume(tmp_path / "scan.nrrd")
