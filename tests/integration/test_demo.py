"""The full demo at toy size: what it writes is what it reports, on the images' grid."""

from __future__ import annotations

import contextlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from rich.console import Console

from tomofield.dataset import read_dataset
from tomofield.demo import DemoSettings, best_dice, full_demo
from tomofield.errors import InputError
from tomofield.evaluation import dice

TOY = DemoSettings(n=8, size=24, iterations=4, slices_per_volume=4, slice_size=24, directions=6, slices=6, device="cpu")


def no_progress(_name):
    return contextlib.nullcontext(lambda *a, **k: None)


def run_demo(out: Path, overwrite: bool = False) -> dict:
    return full_demo(out, TOY, overwrite, no_progress, lambda trainer: trainer.fit(), Console(quiet=True))


def test_best_dice_picks_the_threshold_of_the_best_mean():
    truth = [np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0])]
    heat = [np.array([0.0, 0.2, 0.9, 0.8]), np.array([0.1, 0.7, 0.6, 0.3])]
    t, d = best_dice(heat, truth, n=200)
    assert d == pytest.approx(1.0) and 0.3 < t <= 0.6
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice(np.array([1, 0, 0], bool), np.array([0, 1, 0], bool)) == 0.0


def test_toy_demo_reports_the_dice_of_the_heatmaps_it_wrote(tmp_path: Path):
    out = tmp_path / "demo"
    result = run_demo(out)
    val = read_dataset(out / "data" / "val.csv")
    positives = [c for c in val if c.label == 1]
    written = sorted((out / "heatmaps").glob("*.nii.gz"))
    assert [p.name for p in written] == sorted(f"{c.name}.nii.gz" for c in positives)
    heats, masks = [], []
    for case, path in zip(sorted(positives, key=lambda c: c.name), written, strict=True):
        img, heat = nib.load(case.images[0]), nib.load(path)
        assert heat.shape == img.shape and np.allclose(heat.affine, img.affine)  # opens over the image
        heats.append(np.asarray(heat.dataobj).transpose(2, 1, 0))
        masks.append(np.asarray(nib.load(case.mask).dataobj).transpose(2, 1, 0))
    assert result["volumes"] == len(positives)
    assert result["dice"] == pytest.approx(best_dice(heats, masks)[1], abs=1e-6)
    assert 0.0 <= result["balanced_accuracy"] <= 1.0
    assert 0.0 <= result["localisation"] <= 1.0  # the held-out positives have masks: checked
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "run" / "model.safetensors").is_file()

    with pytest.raises(InputError, match="not empty"):  # nothing overwritten without --overwrite
        run_demo(out)
    before = (out / "run" / "model.safetensors").stat().st_mtime_ns
    run_demo(out, overwrite=True)
    assert (out / "run" / "model.safetensors").stat().st_mtime_ns != before
