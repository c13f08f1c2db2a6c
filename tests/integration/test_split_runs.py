"""Dataset and folder runs split into independent jobs: --num-parts K --part-id I (and SLURM arrays)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tomofield.batch import part
from tomofield.cli import cli
from tomofield.dataset import read_dataset
from tomofield.errors import InputError
from tomofield.io import affine_for_spacing, load_volume, save_nifti

FAST = ["--head", "sum", "--filter", "tomo", "-L", "6", "-M", "4", "--slice-size", "16", "--device", "cpu"]
#: The CSV's order, not the names' order: parts follow the CSV.
ORDER = ["e", "b", "d", "a", "c"]
SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    """The tests run outside a SLURM array job unless they say otherwise."""
    for var in SLURM:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Five 8^3 volumes (2 x 1 x 1 mm) in a CSV whose order is not the names' order."""
    rng = np.random.default_rng(0)
    (tmp_path / "scans").mkdir()
    for name in ORDER:
        save_nifti(
            tmp_path / "scans" / f"{name}.nii.gz",
            rng.random((8, 8, 8)).astype(np.float32),
            affine_for_spacing((2, 1, 1)),
        )
    csv = tmp_path / "data.csv"
    csv.write_text("image,label\n" + "".join(f"scans/{n}.nii.gz,{i % 2}\n" for i, n in enumerate(ORDER)))
    return csv


def test_part_splits_the_cases_into_consecutive_disjoint_blocks_that_cover_them(data):
    cases = read_dataset(data, task="any")
    for k in (1, 2, 3, 5, 7):
        parts = [part(cases, i, k) for i in range(k)]
        assert [c for p in parts for c in p] == cases  # in order, disjoint, every case
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [c.name for c in part(cases, 0, 2)] == ["e", "b", "d"] and part(cases, 5, 7) == []
    for bad in [(0, 0), (2, 2), (-1, 2), (1.0, 2)]:
        with pytest.raises(InputError, match="num_parts|part_id"):
            part(cases, *bad)


def test_a_split_run_writes_what_the_unsplit_run_writes_file_for_file(data, tmp_path):
    full, split, alone = tmp_path / "full", tmp_path / "split", tmp_path / "alone"
    assert invoke("run", data, "-o", full, *FAST).exit_code == 0
    first = invoke("run", data, "-o", split, "--num-parts", 2, "--part-id", 0, *FAST)
    assert first.exit_code == 0, first.output
    assert "3 heatmap(s) written, 0 already done" in first.output and "part 0 of 2: 3 of 5 volume(s)" in first.output
    part0 = names(split)
    second = invoke("run", data, "-o", alone, "--num-parts", 2, "--part-id", 1, *FAST)  # part 1 on its own
    assert second.exit_code == 0 and "2 heatmap(s) written" in second.output, second.output
    part1 = names(alone)
    assert part0 == {"e.nii.gz", "b.nii.gz", "d.nii.gz"} and part1 == {"a.nii.gz", "c.nii.gz"}
    assert part0 < names(full) and part1 < names(full) and not part0 & part1
    res = invoke("run", data, "-o", split, "--num-parts", 2, "--part-id", 1, *FAST)
    assert res.exit_code == 0 and "2 heatmap(s) written, 0 already done" in res.output, res.output
    assert names(split) == names(full)
    for name in names(full):
        a, b = load_volume(full / name), load_volume(split / name)
        assert np.array_equal(a.data.numpy(), b.data.numpy()) and np.array_equal(a.affine, b.affine), name
    again = invoke("run", data, "-o", split, *FAST)  # the unsplit run takes the parts' heatmaps as its own
    assert again.exit_code == 0 and "0 heatmap(s) written, 5 already done" in again.output, again.output


def test_every_part_checks_the_whole_folder_and_extras_cover_only_its_volumes(data, tmp_path):
    heat, masks = tmp_path / "heat", tmp_path / "masks"
    res = invoke("run", data, "-o", heat, "--num-parts", 2, "--part-id", 1, "--mask", masks, "--threshold", 0.5, *FAST)
    assert res.exit_code == 0, res.output
    assert names(masks) == names(heat) == {"a.nii.gz", "c.nii.gz"} and "2 mask(s) written" in res.output
    foreign = load_volume(heat / "a.nii.gz")
    save_nifti(heat / "a.nii.gz", foreign.data, foreign.affine, overwrite=True)  # another tool's: no record
    res = invoke("run", data, "-o", heat, "--num-parts", 2, "--part-id", 0, *FAST)  # a.nii.gz is part 1's
    assert res.exit_code == 2 and "a.nii.gz" in res.output and "no provenance record" in res.output, res.output
    assert names(heat) == {"a.nii.gz", "c.nii.gz"}


def test_more_parts_than_volumes_leave_a_part_empty(data, tmp_path):
    res = invoke("run", data, "-o", tmp_path / "heat", "--num-parts", 8, "--part-id", 6, *FAST)
    assert res.exit_code == 0, res.output
    assert "part 6 of 8 holds none of the 5 volume(s): nothing to write" in res.output
    assert "0 heatmap(s) written, 0 already done" in res.output and names(tmp_path / "heat") == set()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-parts", 0, "--part-id", 0], "--num-parts 0: the number of parts to split the volumes into must be 1"),
        (["--num-parts", -2], "--num-parts -2: the number of parts"),
        (["--num-parts", 2, "--part-id", 2], "--part-id 2 is not a part of --num-parts 2: valid part ids are 0 to 1"),
        (["--num-parts", 3, "--part-id", -1], "--part-id -1 is not a part of --num-parts 3: valid part ids are 0 to 2"),
        (["--part-id", 1], "--part-id 1 is not a part of --num-parts 1: valid part ids are 0 to 0"),
        (["--num-parts", 4], "--num-parts 4 needs --part-id I, the part this job writes (0 to 3)"),
    ],
)
def test_parts_that_do_not_exist_are_refused(data, tmp_path, args, message):
    res = invoke("run", data, "-o", tmp_path / "heat", *args, *FAST)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "heat").exists()


@pytest.mark.parametrize("args", [["--num-parts", 2, "--part-id", 0], ["--part-id", 0]])
def test_a_single_volume_run_refuses_parts(data, tmp_path, args):
    res = invoke("run", data.parent / "scans" / "a.nii.gz", "-o", tmp_path / "a.nii.gz", *args, *FAST)
    assert res.exit_code == 2, res.output
    assert "split a run of several volumes (a dataset CSV, a folder or a glob pattern)" in res.output
    assert "is one volume, drop them" in res.output and not (tmp_path / "a.nii.gz").exists()


def test_a_slurm_array_task_is_the_part_when_part_id_is_not_given(data, tmp_path, monkeypatch):
    scans = data.parent / "scans"  # a folder: its volumes by name, a b c d e
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")  # sbatch --array=3-4: task 4 is part 1
    res = invoke("run", scans, "-o", tmp_path / "heat", "--num-parts", 2, *FAST)
    assert res.exit_code == 0 and "part 1 of 2: 2 of 5 volume(s)" in res.output, res.output
    assert names(tmp_path / "heat") == {"d.nii.gz", "e.nii.gz"}
    res = invoke("run", scans, "-o", tmp_path / "given", "--num-parts", 2, "--part-id", 0, *FAST)  # given wins
    assert res.exit_code == 0 and names(tmp_path / "given") == {"a.nii.gz", "b.nii.gz", "c.nii.gz"}, res.output
    one = invoke("run", scans / "a.nii.gz", "-o", tmp_path / "one.nii.gz", *FAST)  # no options: no parts
    assert one.exit_code == 0, one.output
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")  # --array=3-5:2: tasks 3 and 5, parts 0 and 1
    res = invoke("run", scans, "-o", tmp_path / "step", "--num-parts", 2, *FAST)
    assert res.exit_code == 0 and names(tmp_path / "step") == {"d.nii.gz", "e.nii.gz"}, res.output


def test_slurm_array_tasks_outside_the_parts_are_refused(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    res = invoke("run", data, "-o", tmp_path / "heat", "--num-parts", 4, *FAST)
    assert res.exit_code == 2, res.output
    assert (
        "SLURM array task 4 (SLURM_ARRAY_TASK_ID=5 - SLURM_ARRAY_TASK_MIN=1) is not a part of --num-parts 4: "
        "valid part ids are 0 to 3" in res.output
    )
    res = invoke("run", data, "-o", tmp_path / "heat", *FAST)  # without --num-parts the array is not a split
    assert res.exit_code == 0 and "5 heatmap(s) written" in res.output, res.output
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "x")
    res = invoke("run", data, "-o", tmp_path / "other", "--num-parts", 4, *FAST)
    assert res.exit_code == 2 and "SLURM_ARRAY_TASK_ID='x' is not an integer; give --part-id I" in res.output
