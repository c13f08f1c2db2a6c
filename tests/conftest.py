"""Shared fixtures and the per-dtype tolerance table used by numeric tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tomofield import plugins
from tomofield.io import affine_for_spacing, save_nifti

#: One tolerance table for every numeric test: (rtol, atol) per dtype.
TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-12)}


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Every test sees the plugin registry as installed, whatever the last one did."""
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def write_nifti(tmp_path: Path):
    """Write a (C, D, H, W) or (D, H, W) array as NIfTI; returns the path."""

    def write(name: str, data, spacing=(1.0, 1.0, 1.0), affine=None) -> Path:
        data = torch.as_tensor(np.asarray(data, dtype=np.float32))
        aff = affine_for_spacing(spacing) if affine is None else affine
        return save_nifti(tmp_path / name, data, aff)

    return write


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """6 volumes of 16^3 with ball masks in the positives."""
    rng = np.random.default_rng(0)
    rows = []
    zz, yy, xx = np.mgrid[:16, :16, :16]
    for i in range(6):
        vol = rng.normal(0, 0.1, (16, 16, 16)).astype(np.float32)
        mask = np.zeros((16, 16, 16), np.float32)
        if i % 2 == 0:
            c = rng.integers(5, 11, 3)
            mask[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 9] = 1
            vol += mask
        save_nifti(tmp_path / f"img{i}.nii.gz", vol, affine_for_spacing((2, 1, 1)))
        save_nifti(tmp_path / f"m{i}.nii.gz", mask, affine_for_spacing((2, 1, 1)))
        rows.append(f"img{i}.nii.gz,{int(i % 2 == 0)},m{i}.nii.gz")
    (tmp_path / "data.csv").write_text("image,label,mask\n" + "\n".join(rows) + "\n")
    return tmp_path / "data.csv"


@pytest.fixture
def cube_volumes(write_nifti) -> list[tuple[str, bool]]:
    """8 volumes of 20^3 (2 x 1 x 1 mm) written to tmp_path: the positives (even i) hold a bright 6^3 cube."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        vol = rng.normal(0, 0.1, (20, 20, 20))
        if i % 2 == 0:
            vol[6:12, 7:13, 5:11] += 1.0
        write_nifti(f"v{i}.nii.gz", vol, spacing=(2.0, 1.0, 1.0))
        out.append((f"v{i}.nii.gz", i % 2 == 0))
    return out


@pytest.fixture
def tiny_dataset(cube_volumes, tmp_path: Path) -> Path:
    """The cube volumes as a training CSV (8 volumes of 20^3: positives hold a bright cube)."""
    csv = tmp_path / "train.csv"
    csv.write_text("image,label\n" + "\n".join(f"{name},{int(pos)}" for name, pos in cube_volumes) + "\n")
    return csv
