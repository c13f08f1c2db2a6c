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


def test_evaluate_reports_hd95_and_nsd_in_the_mm_of_the_affine_beside_dice(write_nifti, tmp_path):
    """Anisotropic voxels, (d, h, w) = (4, 2, 0.5) mm, so the affine's (i, j, k) column order would measure
    another axis: each positive's heatmap is its mask's box shifted by 2 voxels along D, 8 mm."""
    import csv

    affine = np.diag([0.5, 2.0, 4.0, 1.0])  # columns i, j, k = w, h, d
    rng = np.random.default_rng(0)
    (tmp_path / "heat").mkdir()
    rows = []
    for i in range(6):
        mask = np.zeros((16, 12, 12), np.float32)
        if i % 2:
            mask[4:12, 3:9, 3:9] = 1
        heat = np.maximum(np.roll(mask, 2, axis=0), 0.3 * rng.random(mask.shape)).astype(np.float32)
        write_nifti(f"img{i}.nii.gz", heat, affine=affine)
        write_nifti(f"m{i}.nii.gz", mask, affine=affine)
        write_nifti(f"heat/img{i}.nii.gz", heat, affine=affine)
        rows.append(f"img{i}.nii.gz,{i % 2},m{i}.nii.gz")
    (tmp_path / "data.csv").write_text("image,label,mask\n" + "\n".join(rows) + "\n")
    args = ["evaluate", str(tmp_path / "heat"), str(tmp_path / "data.csv"), "--folds", "3", "-o", str(tmp_path / "r")]
    res = CliRunner().invoke(cli, args, terminal_width=250)
    assert res.exit_code == 0, res.output
    assert "HD95 mm" in res.output and "NSD 2 mm" in res.output and "8.000 ± 0.000" in res.output
    report = json.loads((tmp_path / "r.json").read_text())["heat"]
    assert report["dice"] == pytest.approx(0.75)  # 6 of 8 slices overlap
    assert report["hd95"] == pytest.approx(8.0)  # 2 voxels of 4 mm; (0.5, 2, 4) read in (i, j, k) order gives 1 mm
    assert report["surface_metrics"]["nsd_tolerance_mm"] == 2.0
    assert report["surface_metrics"]["implementation"] in ("monai", "scipy")
    for case in report["cases"]:
        if case["label"]:
            assert case["hd95"] == pytest.approx(8.0) and 0 < case["nsd"] < 1 and case["dice"] == pytest.approx(0.75)
        else:
            assert case["hd95"] is None and case["nsd"] is None
    header = (tmp_path / "r.csv").read_text().splitlines()[0]
    assert header.startswith("method,precision,precision_std,recall,recall_std,f1,f1_std,dice,dice_std,hd95,hd95_std")
    assert "nsd,nsd_std,balanced_accuracy" in header
    cases = list(csv.DictReader(open(tmp_path / "r_cases.csv", encoding="utf-8")))
    assert float(cases[1]["hd95"]) == pytest.approx(8.0) and cases[0]["hd95"] == ""
    # a wider tolerance counts more of the surface
    args[-1] = str(tmp_path / "wide")
    assert CliRunner().invoke(cli, [*args, "--nsd-tolerance", "8"]).exit_code == 0
    wide = json.loads((tmp_path / "wide.json").read_text())["heat"]
    assert wide["nsd"] == pytest.approx(1.0) and report["nsd"] < 1 and wide["dice"] == report["dice"]
