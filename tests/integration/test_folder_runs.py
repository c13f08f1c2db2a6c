"""Inputs as people have them: a folder of volumes or a glob pattern, with -i; one preview per volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tomofield.cli import cli
from tomofield.io import load_volume

FAST = ["--head", "sum", "--filter", "tomo", "-L", "8", "-M", "6", "--slice-size", "16", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def scans(write_nifti, tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("b_case", "a_case"):
        vol = rng.random((14, 12, 16)).astype(np.float32)
        write_nifti(f"scans/{name}.nii.gz", vol, spacing=(2.0, 1.0, 1.0))
    (folder / "notes.txt").write_text("not a volume")
    return folder


def test_a_folder_run_gives_each_volume_the_heatmap_of_its_own_run(scans, tmp_path):
    res = invoke("run", "-i", scans, "-o", tmp_path / "heat", *FAST)
    assert res.exit_code == 0, res.output
    assert "2 heatmap(s) written" in res.output
    for name in ("a_case", "b_case"):
        single = tmp_path / f"{name}.nii.gz"
        assert invoke("run", scans / f"{name}.nii.gz", "-o", single, *FAST).exit_code == 0
        np.testing.assert_array_equal(load_volume(tmp_path / "heat" / f"{name}.nii.gz").data, load_volume(single).data)
    again = invoke("run", scans, "-o", tmp_path / "heat", *FAST)  # resumable: nothing to redo
    assert again.exit_code == 0 and "0 heatmap(s) written, 2 already done" in again.output


def test_a_glob_pattern_takes_what_it_matches_and_previews_come_one_per_volume(scans, tmp_path):
    res = invoke("run", str(scans / "a_*.nii.gz"), "-o", tmp_path / "heat", "--preview", tmp_path / "png", *FAST)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "heat").glob("*.nii.gz")) == ["a_case.nii.gz"]
    png = tmp_path / "png" / "a_case.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "1 preview(s) written" in res.output


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        ("empty", [], "holds no NIfTI volume"),
        ("pattern", [], "matches no file"),
        ("scans", ["--preview", "p.png"], "writes one PNG each; give a folder"),
        ("none", [], "no input: give a volume"),
    ],
)
def test_folder_inputs_that_cannot_work_say_why(scans, tmp_path, source, extra, message):
    (tmp_path / "empty").mkdir()
    where = {"empty": [tmp_path / "empty"], "pattern": [str(tmp_path / "nothing*.nii")], "scans": [scans], "none": []}
    res = invoke("run", *where[source], "-o", tmp_path / "out", *extra, *FAST)
    assert res.exit_code == 2 and message in res.output, res.output
