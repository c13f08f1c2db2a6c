"""Dataset-level runs and the evaluate command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tomofield.cli import cli
from tomofield.io import save_nifti

FAST = ["--head", "sum", "--filter", "tomo", "-L", "8", "-M", "6", "--slice-size", "16", "--device", "cpu"]


def test_dataset_run_writes_one_heatmap_per_volume_and_skips_done_ones(dataset, tmp_path):
    out = tmp_path / "heat"
    res = CliRunner().invoke(cli, ["run", str(dataset), "-o", str(out), *FAST])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"img{i}.nii.gz" for i in range(6)]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "img3.nii.gz").unlink()  # as if the run had been killed before volume 3
    res = CliRunner().invoke(cli, ["run", str(dataset), "-o", str(out), *FAST])
    assert res.exit_code == 0 and "1 heatmap(s) written, 5 already done" in res.output
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.iterdir() if p.name != "img3.nii.gz")
    assert (out / "img3.nii.gz").exists()


def test_evaluate_scores_perfect_heatmaps_high_and_writes_reports(dataset, tmp_path):
    from tomofield.io import load_volume

    out = tmp_path / "perfect"
    out.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        m = load_volume(tmp_path / f"m{i}.nii.gz")
        heat = m.data.numpy() + 0.05 * rng.random(m.data.shape, dtype=np.float32)
        save_nifti(out / f"img{i}.nii.gz", heat, m.affine)
    res = CliRunner().invoke(cli, ["evaluate", str(out), str(dataset), "--folds", "3"], terminal_width=200)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "evaluation.json").read_text())["perfect"]
    assert report["f1"] == pytest.approx(1.0) and report["dice"] > 0.95
    assert report["balanced_accuracy"] == pytest.approx(1.0)
    assert (out / "evaluation.csv").read_text().startswith("method,precision,precision_std")
    res = CliRunner().invoke(cli, ["evaluate", str(out), str(dataset), "--folds", "3"])
    assert res.exit_code == 2 and "exists; pass --overwrite" in res.output


def test_evaluate_names_missing_heatmaps(dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "empty"), str(dataset)])
    assert res.exit_code == 2 and "no heatmap for img0, img1" in res.output
