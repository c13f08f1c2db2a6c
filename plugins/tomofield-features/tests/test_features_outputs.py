"""The features plugin's writers: its volume, preview and projection refuse what they must not replace,
write atomically with the umask's permissions, and name the path when the OS refuses a write."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomofield import InputError
from tomofield.cli import cli
from tomofield.io import save_nifti
from tomofield_features.heads import Projection
from tomofield_features.preview import write_rgb_preview
from tomofield_features.projection import save_projection

FEATURES = ["--stage", "1", "--components", "2", "--fit-slices", "8", "-L", "4", "-M", "4"]
FEATURES += ["--slice-size", "16", "--device", "cpu", "--random-weights"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to show that nothing appeared, vanished or changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return save_nifti(tmp_path / "scan.nii.gz", rng.random((12, 12, 12), dtype=np.float32), np.eye(4))


def test_projection_and_preview_get_the_umask_permissions_and_refuse_to_replace(tmp_path):
    old = os.umask(0o027)
    try:
        proj = Projection(torch.zeros(3), torch.eye(3, 2))
        feats = np.random.default_rng(0).random((3, 8, 8, 8))
        paths = [save_projection(proj, tmp_path / "p.npz"), write_rgb_preview(tmp_path / "p.png", feats, feats[0])]
    finally:
        os.umask(old)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [0o640, 0o640]
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="p.npz' exists; pass --overwrite"):
        save_projection(proj, tmp_path / "p.npz")
    with pytest.raises(InputError, match="p.png' exists; pass --overwrite"):
        write_rgb_preview(tmp_path / "p.png", feats, feats[0])
    assert snapshot(tmp_path) == before


def test_projection_write_error_names_the_path(tmp_path, monkeypatch):
    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(InputError, match="p.npz': no space left on the device"):
        save_projection(Projection(torch.zeros(3), torch.eye(3, 2)), tmp_path / "p.npz")
    assert list(tmp_path.iterdir()) == []


def test_features_refuses_an_existing_projection_before_any_work(scan, tmp_path):
    (tmp_path / "p.npz").write_bytes(b"mine")
    before = snapshot(tmp_path)
    out = tmp_path / "f.nii.gz"
    res = CliRunner().invoke(
        cli, ["features", str(scan), "-o", str(out), "--save-projection", str(tmp_path / "p.npz"), *FEATURES]
    )
    assert res.exit_code == 2, res.output
    assert "p.npz' exists; pass --overwrite" in res.output
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)
    res = CliRunner().invoke(
        cli,
        ["features", str(scan), "-o", str(out), "--save-projection", str(tmp_path / "p.npz"), "--overwrite", *FEATURES],
    )
    assert res.exit_code == 0, res.output
    assert Projection.load(tmp_path / "p.npz").components == 2 and out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--save-projection", "pca"], "must end with one of: .npz"),
        (["--save-projection", "p.npz", "--projection", "q.npz"], "none is fitted (--projection gives one)"),
        (["--save-projection", "p.npz", "--components", "0"], "none is fitted (--components 0"),
        (["--preview", "afile/p.png"], "afile' is a file, not a folder"),
        (["--overwrite", "-o", "scan.nii.gz"], "is the input"),
    ],
)
def test_features_refuses_bad_outputs(scan, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    res = CliRunner().invoke(cli, ["features", "scan.nii.gz", "-o", "f.nii.gz", *FEATURES, *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


def test_projection_is_written_at_exactly_its_path(tmp_path):
    proj = Projection(torch.zeros(3), torch.eye(3, 2), torch.tensor([0.6, 0.4]))
    path = save_projection(proj, tmp_path / "p.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]
    back = Projection.load(path)
    torch.testing.assert_close(back.matrix, proj.matrix)
    torch.testing.assert_close(back.explained, proj.explained)


def test_pretrain_refuses_a_file_as_run_directory(scan, tmp_path):
    (tmp_path / "data.csv").write_text("image,label\nscan.nii.gz,0\n")
    (tmp_path / "run").write_text("x")
    res = CliRunner().invoke(cli, ["pretrain", str(tmp_path / "data.csv"), "-o", str(tmp_path / "run")])
    assert res.exit_code == 2 and "is a file" in res.output and (tmp_path / "run").read_text() == "x"


@pytest.mark.parametrize("content", [b"hello", b"", bytes(range(64))])
def test_a_projection_that_is_not_numpy_is_refused_without_suggesting_pickles(tmp_path, content):
    from tomofield.errors import InputError
    from tomofield_features.heads import Projection

    bad = tmp_path / "proj.npz"
    bad.write_bytes(content)
    with pytest.raises(InputError, match="not a numpy .npy or .npz file") as info:
        Projection.load(bad)
    assert "allow_pickle" not in str(info.value) and "pickle.load" not in str(info.value)
    assert bad.read_bytes() == content
