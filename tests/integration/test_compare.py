"""The method comparison end to end at toy sizes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tomofield.cli import cli
from tomofield.train import TrainConfig, Trainer


def test_compare_writes_table_results_and_figure(dataset, tmp_path):
    cfg = TrainConfig(
        iterations=2, slices_per_volume=4, slice_size=16, lr=1e-3, norm="group-norm", checkpoint_every=2, val_every=2
    )
    Trainer(dataset, tmp_path / "run", cfg, device="cpu").fit()
    res = CliRunner().invoke(
        cli,
        [
            "compare",
            str(dataset),
            "--weights",
            str(tmp_path / "run"),
            "-o",
            str(tmp_path / "report"),
            "--layers",
            "3,4",
            "--methods",
            "LayerCAM,ToNNO,Tomographic LayerCAM",
            "-L",
            "6",
            "-M",
            "4",
            "--cam-directions",
            "4",
            "--cam-slices",
            "4",
            "--folds",
            "2",
            "--device",
            "cpu",
        ],
        terminal_width=200,
    )
    assert res.exit_code == 0, res.output
    report = tmp_path / "report"
    results = json.loads((report / "results.json").read_text())
    assert set(results) == {
        "LayerCAM-layer3",
        "LayerCAM-layer4",
        "ToNNO",
        "Tomographic LayerCAM-layer3",
        "Tomographic LayerCAM-layer4",
    }
    table = (report / "table.md").read_text().splitlines()
    assert table[0].startswith("| method | best layer |") and len(table) == 2 + 3
    assert [row.split("|")[1].strip() for row in table[2:]] == ["LayerCAM", "ToNNO", "Tomographic LayerCAM"]
    assert (report / "figure.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((report / "heatmaps" / "tonno").glob("*.nii.gz"))) == 6
    res = CliRunner().invoke(
        cli, ["compare", str(dataset), "--weights", str(tmp_path / "run"), "-o", str(report), "--methods", "Nope"]
    )
    assert res.exit_code == 2 and "unknown method(s) 'Nope'" in res.output
