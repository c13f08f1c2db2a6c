"""Two CPU processes with the gloo backend, launched by torchrun, against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tomofield.io import affine_for_spacing, save_nifti
from tomofield.synth import ball_phantom

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tomofield(*args: str, procs: int = 1) -> subprocess.CompletedProcess:
    if procs == 1:
        cmd = [sys.executable, "-m", "tomofield", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(procs),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            "-m",
            "tomofield",
            *args,
        ]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def array(p: Path) -> np.ndarray:
    return np.asarray(nib.load(p).dataobj)


@pytest.mark.slow
def test_direction_sharded_volume_equals_single_process(tmp_path):
    src = save_nifti(tmp_path / "p.nii.gz", ball_phantom((24, 24, 24), (2, 1, 1)), affine_for_spacing((2, 1, 1)))
    opts = ["--head", "sum", "-L", "40", "-M", "12", "--slice-size", "24", "--device", "cpu"]
    tomofield("run", str(src), "-o", str(tmp_path / "one.nii.gz"), *opts)
    tomofield("run", str(src), "-o", str(tmp_path / "two.nii.gz"), *opts, procs=2)
    one, two = array(tmp_path / "one.nii.gz"), array(tmp_path / "two.nii.gz")
    assert np.abs(one).max() > 0.5
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_sharded_dataset_run_equals_single_process(dataset, tmp_path):
    opts = ["--head", "sum", "-L", "12", "-M", "6", "--slice-size", "16", "--device", "cpu"]
    tomofield("run", str(dataset), "-o", str(tmp_path / "one"), *opts)
    res = tomofield("run", str(dataset), "-o", str(tmp_path / "two"), *opts, procs=2)
    assert "6 heatmap(s) written, 0 already done" in res.stdout and "by 2 processes" in res.stdout
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 6
    for n in names:
        np.testing.assert_array_equal(array(tmp_path / "two" / n), array(tmp_path / "one" / n))


@pytest.mark.slow
def test_the_ranks_share_one_part_of_a_split_dataset_run(dataset, tmp_path):
    opts = ["--head", "sum", "-L", "12", "-M", "6", "--slice-size", "16", "--device", "cpu"]
    res = tomofield(
        "run", str(dataset), "-o", str(tmp_path / "two"), "--num-parts", "2", "--part-id", "1", *opts, procs=2
    )
    assert "3 heatmap(s) written, 0 already done" in res.stdout and "by 2 processes" in res.stdout
    assert "part 1 of 2: 3 of 6 volume(s)" in res.stdout
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [f"img{i}.nii.gz" for i in (3, 4, 5)]


@pytest.mark.slow
def test_two_process_training_loss_goes_down(dataset, tmp_path):
    tomofield(
        "train",
        str(dataset),
        "-o",
        str(tmp_path / "run"),
        "--iterations",
        "30",
        "--slices-per-volume",
        "8",
        "--slice-size",
        "16",
        "--lr",
        "2e-3",
        "--norm",
        "group-norm",
        "--checkpoint-every",
        "10",
        "--device",
        "cpu",
        procs=2,
    )
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    log = [r["train_loss"] for r in cfg["loss_log"]]
    assert len(log) == 3 and log[-1] < log[0]
    assert not list((tmp_path / "run").glob("*.tmp*"))
