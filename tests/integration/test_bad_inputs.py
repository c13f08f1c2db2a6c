"""Bad input, one case each: a clear message naming the problem, and no output left behind."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomofield import Engine, InputError
from tomofield.cli import cli
from tomofield.io import affine_for_spacing

FAST = ["-L", "4", "-M", "4", "--slice-size", "16", "--device", "cpu", "--head", "sum"]


def nifti(path: Path, data, affine=None) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4) if affine is None else affine), path)
    return path


def vol(tmp: Path, name="v.nii.gz", shape=(10, 10, 10), **kw) -> Path:
    return nifti(tmp / name, np.random.default_rng(0).random(shape), **kw)


def zero_column(tmp: Path) -> Path:
    """A header whose sform maps the k axis to nothing (qform off)."""
    img = nib.Nifti1Image(np.random.default_rng(0).random((10, 10, 10)).astype(np.float32), None)
    img.header["sform_code"], img.header["qform_code"] = 2, 0
    img.header["srow_x"], img.header["srow_y"], img.header["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]
    nib.save(img, tmp / "z.nii.gz")
    return tmp / "z.nii.gz"


def png(tmp: Path) -> Path:
    (tmp / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return tmp / "scan.png"


def garbage(t: Path) -> Path:
    p = t / "w.safetensors"
    p.write_bytes(b"\x00" * 64)
    return p


# (name, make inputs -> list of CLI arguments before -o, extra options, expected message)
CASES = [
    ("inf voxels", lambda t: [nifti(t / "i.nii.gz", np.full((8, 8, 8), np.inf))], [], "non-finite voxel"),
    ("constant volume", lambda t: [nifti(t / "c.nii.gz", np.ones((8, 8, 8)))], [], "is constant (1.0)"),
    ("5D image", lambda t: [nifti(t / "f.nii.gz", np.ones((6, 6, 6, 2, 3)))], [], "expected a 3D volume or 4D"),
    ("tiny spacing", lambda t: [vol(t, affine=np.diag([1e-6, 1e-6, 1e-6, 1]))], [], "outside [0.001, 1000.0] mm"),
    ("singular affine", lambda t: [zero_column(t)], [], "affine is not invertible"),
    ("not nifti", lambda t: [png(t)], [], "is not NIfTI"),
    (
        "grids differ",
        lambda t: [vol(t, "a.nii.gz"), vol(t, "b.nii.gz", (10, 10, 12))],
        [],
        "channels must share a grid",
    ),
    (
        "affines differ",
        lambda t: [vol(t, "a.nii.gz"), vol(t, "b.nii.gz", affine=np.diag([2.0, 1, 1, 1]))],
        [],
        "must be co-registered",
    ),
    ("unknown filter", lambda t: [vol(t)], ["--filter", "ramp"], "unknown filter 'ramp'; valid: none, tomo"),
    ("unknown sampler", lambda t: [vol(t)], ["--sampler", "spiral"], "unknown sampler 'spiral'; valid:"),
    ("unknown post", lambda t: [vol(t)], ["--post", "blur"], "unknown postprocessor 'blur'; valid:"),
    ("zero directions", lambda t: [vol(t)], ["-L", "0"], "directions must be an integer in 1..100000, got 0"),
    ("huge slice count", lambda t: [vol(t)], ["-M", "20000"], "slices must be an integer in 3..10000, got 20000"),
    ("tiny slices", lambda t: [vol(t)], ["--slice-size", "4"], "slice_size must be an integer in 8..4096, got 4"),
    ("no cuda", lambda t: [vol(t)], ["--device", "cuda"], "device 'cuda' requested but"),
    ("bad device", lambda t: [vol(t)], ["--device", "tpu9"], "unknown device 'tpu9'"),
    ("corrupt weights", lambda t: [vol(t)], lambda t: ["--weights", str(garbage(t))], "cannot read weights"),
    ("folder not a run", lambda t: [vol(t)], lambda t: ["--weights", str(t)], "but not a run directory"),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the 'no cuda' case needs a machine without CUDA")
@pytest.mark.parametrize("name, make, extra, message", CASES, ids=[c[0] for c in CASES])
def test_cli_refuses(tmp_path: Path, name, make, extra, message):
    inputs = [str(p) for p in make(tmp_path)]
    extra = extra(tmp_path) if callable(extra) else extra
    out = tmp_path / "out" / "heat.nii.gz"
    res = CliRunner().invoke(cli, ["run", *inputs, "-o", str(out), *FAST, *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not out.exists() and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_bad_output_suffix(tmp_path: Path):
    res = CliRunner().invoke(cli, ["run", str(vol(tmp_path)), "-o", str(tmp_path / "heat.png"), *FAST])
    assert res.exit_code == 2 and "must end with one of: .nii, .nii.gz" in res.output
    assert not (tmp_path / "heat.png").exists()


def test_nan_policy_zero_replaces_and_reports(tmp_path: Path):
    data = np.random.default_rng(1).random((10, 10, 10))
    data[2, 3, 4] = np.nan
    out = tmp_path / "o.nii.gz"
    res = CliRunner().invoke(
        cli, ["run", str(nifti(tmp_path / "n.nii.gz", data)), "-o", str(out), *FAST, "--nan-policy", "zero"]
    )
    assert res.exit_code == 0, res.output
    assert "replaced 1 non-finite voxel(s) by 0" in res.output
    assert np.isfinite(np.asarray(nib.load(out).dataobj)).all()


@pytest.mark.parametrize(
    "volume, message",
    [
        (torch.rand(8, 8), "expected a volume (D, H, W) or (C, D, H, W), got shape (8, 8)"),
        (torch.rand(1, 2, 3, 8, 8), "got shape (1, 2, 3, 8, 8) (5D)"),
        (torch.rand(1, 8, 1, 8), "every spatial axis needs at least 2 voxels"),
        (torch.full((6, 6, 6), float("nan")), "216 non-finite voxel(s)"),
    ],
)
def test_library_refuses(volume, message):
    eng = Engine(head="sum", directions=2, slices=3, slice_size=8, device="cpu")
    with pytest.raises(InputError) as info:
        eng.reconstruct(volume)
    assert message in str(info.value)


def test_library_refuses_bad_spacing():
    eng = Engine(head="sum", directions=2, slices=3, slice_size=8, device="cpu")
    with pytest.raises(InputError, match=r"spacing must be 3 positive finite voxel sizes in mm .*-1\.0"):
        eng.reconstruct(torch.rand(6, 6, 6), spacing=(1.0, -1.0, 1.0))


def test_affine_for_spacing_roundtrip():
    assert np.allclose(np.diag(affine_for_spacing((2.5, 1.0, 0.5))), [0.5, 1.0, 2.5, 1.0])
