"""The ``tomofield features`` and ``tomofield pretrain`` commands; the linear probe."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomofield.cli import cli
from tomofield.evaluation import dice
from tomofield.io import affine_for_spacing, save_nifti
from tomofield.synth import make_case
from tomofield_features.preview import rgb_volume
from tomofield_features.probe import LinearProbe, sample_labelled, voxel_rows


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    img, _ = make_case((20, 24, 24), positive=True, rng=np.random.default_rng(0), spacing=(2.0, 1.0, 1.0))
    return save_nifti(tmp_path / "scan.nii.gz", img, affine_for_spacing((2.0, 1.0, 1.0)))


def test_cli_features_writes_k_channels_and_rgb_preview(scan, tmp_path):
    out, png, pca = tmp_path / "f.nii.gz", tmp_path / "f.png", tmp_path / "pca.npz"
    res = invoke(
        "features",
        scan,
        "-o",
        out,
        "--stage",
        1,
        "--components",
        3,
        "-L",
        6,
        "-M",
        6,
        "--slice-size",
        24,
        "--device",
        "cpu",
        "--preview",
        png,
        "--save-projection",
        pca,
        "--fit-slices",
        16,
        "--random-weights",
    )
    assert res.exit_code == 0, res.output
    img = nib.load(str(out))
    assert img.shape == (24, 24, 20, 3)  # (i, j, k, K): the input grid, K channels
    np.testing.assert_allclose(img.affine, nib.load(str(scan)).affine)
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    # the saved projection is reusable on its own
    out2 = tmp_path / "g.nii.gz"
    res = invoke(
        "features",
        scan,
        "-o",
        out2,
        "--stage",
        1,
        "--projection",
        pca,
        "--random-weights",
        "-L",
        6,
        "-M",
        6,
        "--slice-size",
        24,
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(nib.load(str(out2)).get_fdata(), img.get_fdata(), rtol=1e-4, atol=1e-4)


def test_cli_features_errors_name_the_value(scan, tmp_path):
    res = CliRunner().invoke(
        cli,
        [
            "features",
            str(scan),
            "-o",
            str(tmp_path / "f.nii.gz"),
            "--stage",
            "1",
            "--components",
            "65",
            "-L",
            "4",
            "-M",
            "4",
            "--slice-size",
            "16",
            "--device",
            "cpu",
            "--random-weights",
        ],
    )
    assert res.exit_code == 2 and "components must be in 1..64" in res.output
    res = CliRunner().invoke(cli, ["features", str(scan), "-o", str(tmp_path / "f.png"), "--random-weights"])
    assert res.exit_code == 2 and "must end with one of" in res.output


def test_cli_pretrain_writes_a_run(tmp_path, scan):
    csv = tmp_path / "data.csv"
    csv.write_text("image,label\nscan.nii.gz,0\n")
    res = invoke(
        "pretrain",
        csv,
        "-o",
        tmp_path / "run",
        "--iterations",
        3,
        "--slice-size",
        16,
        "--slices-per-volume",
        4,
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "model.safetensors").is_file() and "loss" in res.output


def test_rgb_volume_scales_each_component():
    f = np.stack([np.linspace(0, 1, 1000).reshape(10, 10, 10) * s for s in (1, 100)])
    rgb = rgb_volume(f)
    assert rgb.shape == (10, 10, 10, 3)
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-6)  # percentile scaling per component
    assert np.all(rgb[..., 2] == 0)


def test_linear_probe_separates_and_dice():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (50, 3)), rng.normal(0, 1, (50, 3)) + [4, 0, 0]])
    y = np.r_[np.zeros(50), np.ones(50)]
    probe = LinearProbe.fit(x, y)
    acc = ((torch.sigmoid(probe.logits(x)).numpy() > 0.5) == y).mean()
    assert acc > 0.95 and abs(float(probe.w[0])) > 5 * abs(float(probe.w[1]))
    vol = np.zeros((1, 4, 4, 4), np.float32)
    vol[0, :2] = 5.0
    mask = (vol[0] > 0).astype(np.uint8)
    idx, lab = sample_labelled(mask, 3, 3, rng)
    assert lab.sum() == 3 and np.all(mask.reshape(-1)[idx[:3]] == 1) and voxel_rows(vol, idx).shape == (6, 1)
    assert dice(mask, mask) == 1.0 and dice(mask, np.zeros_like(mask)) == 0.0
    half = mask.copy()
    half[1] = 0
    assert dice(half, mask) == pytest.approx(2 * 16 / (16 + 32))
