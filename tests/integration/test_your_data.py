"""docs/your-data.md runs as written: its commands, in order, on tiny data (sizes overridden, nothing else)."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
from click.testing import CliRunner

from tomofield.cli import cli

PAGE = Path(__file__).resolve().parents[2] / "docs" / "your-data.md"
#: Appended to each command (click takes an option's last value): sizes a test can afford.
TINY = {
    "synth": ["--n", "8", "--size", "24"],
    "train": ["--iterations", "4", "--slices-per-volume", "2", "--checkpoint-every", "2", "--seed", "1"],
    "run": ["-L", "6", "-M", "5"],
    "evaluate": ["--folds", "2"],
}


def commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)
    return [shlex.split(line) for block in blocks for line in block.strip().splitlines() if line.strip()]


def test_the_page_has_the_walk_from_labels_to_masks_and_a_table():
    steps = [c[:2] for c in commands()]
    assert steps == [["tomofield", "synth"], ["tomofield", "train"], ["tomofield", "run"]] + [
        ["tomofield", "evaluate"],
        ["tomofield", "run"],
    ]
    assert "docs/your-data.md" in (PAGE.parents[1] / "README.md").read_text()  # linked from the README


def test_the_pages_commands_run_as_written_on_tiny_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in commands():
        assert command[0] == "tomofield"
        args = command[1:] + TINY[command[1]]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, f"{shlex.join(command)}\n{res.output}"
    data = tmp_path / "Dataset001_Tryout"
    trained = list(csv.DictReader((tmp_path / "run" / "dataset.csv").open()))
    labels = {r["case"]: r["label"] for r in csv.DictReader((data / "labels.csv").open())}
    assert len(trained) == 8 and sorted(r["label"] for r in trained) == sorted(labels.values())
    assert (tmp_path / "run" / "history.png").is_file()
    cases = sorted(p.name for p in (tmp_path / "heatmaps").glob("*.nii.gz"))
    assert cases == [f"{c}.nii.gz" for c in sorted(labels)]
    assert json.loads((tmp_path / "evaluation.json").read_text())
    masks = sorted(p.name for p in (tmp_path / "masks").glob("*.nii.gz"))
    assert masks == cases
    rows = list(csv.DictReader((tmp_path / "lesions.csv").open()))
    for case in labels:  # the table's volumes add up to each case's mask
        mask = nib.load(tmp_path / "masks" / f"{case}.nii.gz")
        voxel_ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000
        total = float(np.asarray(mask.dataobj).astype(bool).sum()) * voxel_ml
        listed = sum(float(r["volume_ml"]) for r in rows if r["case"] == case)
        assert abs(listed - total) < 1e-6
