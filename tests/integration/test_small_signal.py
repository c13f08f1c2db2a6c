"""Training learns when one slice in ten carries the signal (issue 27), and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tomofield.train import TrainConfig, Trainer

SIZE = 24


def spot_volumes(write_nifti, n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` noisy textured balls (half positive); a positive holds one bright spot about 2.4 voxels across.

    A stack of parallel slices over the box cuts the spot with about one slice in ten.
    """
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(SIZE) - (SIZE - 1) / 2] * 3, indexing="ij"), -1)
    rows = []
    for i in range(n):
        body = (np.linalg.norm(g, axis=-1) < SIZE / 2 - 2).astype(np.float32)
        vol = body * (1 + 0.15 * rng.standard_normal(g.shape[:3])).astype(np.float32)
        label = i % 2
        if label:
            c = rng.uniform(-SIZE / 4, SIZE / 4, 3)
            vol[np.linalg.norm(g - c, axis=-1) <= 1.2] += 1.5
        name = f"spot_{seed}_{i}.nii.gz"
        write_nifti(name, vol)
        rows.append((name, label))
    return rows


def as_csv(path, rows) -> None:
    path.write_text("image,label\n" + "\n".join(f"{name},{label}" for name, label in rows) + "\n")


@pytest.mark.slow
def test_the_default_objective_learns_a_signal_in_one_slice_of_ten(write_nifti, tmp_path):
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    as_csv(train, spot_volumes(write_nifti, 16, seed=1))
    as_csv(val, spot_volumes(write_nifti, 12, seed=2))
    cfg = TrainConfig(iterations=300, slices_per_volume=24, slice_size=24, val_every=150, checkpoint_every=50)
    result = Trainer(train, tmp_path / "run", cfg, val_csv=val, device="cpu").fit()
    history = {r["iteration"]: r["val_auc"] for r in result["history"]}
    assert history[300] >= 0.9, history
    assert result["diagnostics"]["learned"], result["diagnostics"]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["training"]["objective"] == "mil" and recorded["metrics"]["val_auc"] == history[300]
