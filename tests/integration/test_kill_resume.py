"""Work killed with SIGKILL at a random point resumes with nothing lost or duplicated."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

RUN = [sys.executable, "-m", "tomofield"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def kill_when(cmd: list[str], ready, delay: float, timeout: float = 120) -> None:
    """Start ``cmd``, wait until ``ready()`` holds, sleep ``delay`` s, then SIGKILL it."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while not ready():
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                pytest.fail(f"{' '.join(cmd)} ended (rc={proc.returncode}) before the kill point")
            time.sleep(0.005)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_dataset_run_killed_and_resumed(dataset, tmp_path):
    opts = ["--head", "sum", "-L", "300", "-M", "16", "--slice-size", "24", "--device", "cpu"]
    out, ref = tmp_path / "out", tmp_path / "ref"
    subprocess.run([*RUN, "run", str(dataset), "-o", str(ref), *opts], env=ENV, check=True, capture_output=True)
    # The kill lands after the k-th heatmap, somewhere inside the next volume's work: the time one volume
    # takes on this machine is read off the reference run's file times, so the point stays inside the job
    # however fast the machine is.
    stamps = sorted(p.stat().st_mtime for p in ref.glob("*.nii.gz"))
    per_volume = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    k = random.randint(1, 5)
    kill_when(
        [*RUN, "run", str(dataset), "-o", str(out), *opts],
        lambda: out.exists() and len(list(out.glob("*.nii.gz"))) >= k,
        random.uniform(0, 0.8 * per_volume),
    )
    done_before = sorted(p.name for p in out.glob("*.nii.gz"))
    assert 1 <= len(done_before) < 6
    res = subprocess.run(
        [*RUN, "run", str(dataset), "-o", str(out), *opts], env=ENV, check=True, capture_output=True, text=True
    )
    assert f"{6 - len(done_before)} heatmap(s) written, {len(done_before)} already done" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # no leftovers
    for p in ref.iterdir():
        np.testing.assert_array_equal(np.asarray(nib.load(out / p.name).dataobj), np.asarray(nib.load(p).dataobj))


@pytest.mark.slow
def test_training_killed_and_resumed(dataset, tmp_path):
    opts = [
        "--iterations",
        "12",
        "--slices-per-volume",
        "4",
        "--slice-size",
        "16",
        "--lr",
        "1e-3",
        "--norm",
        "group-norm",
        "--checkpoint-every",
        "3",
        "--device",
        "cpu",
    ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([*RUN, "train", str(dataset), "-o", str(full), *opts], env=ENV, check=True, capture_output=True)
    kill_when(
        [*RUN, "train", str(dataset), "-o", str(cut), *opts],
        lambda: (cut / "config.json").exists(),
        random.uniform(0, 0.5),
    )
    subprocess.run(
        [*RUN, "train", str(dataset), "-o", str(cut), *opts, "--resume"], env=ENV, check=True, capture_output=True
    )
    a, b = load_file(full / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in cut.iterdir() if ".tmp" in p.name]
