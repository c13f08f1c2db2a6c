"""Training throughput of the classification trainer at the demo's settings (slices/s).

Run it once per code version with ``PYTHONPATH`` pointing at each checkout, alternating, on
the same machine (docs/benchmarks.md section 6):

    PYTHONPATH=/path/to/checkout OMP_NUM_THREADS=1 python benchmarks/train_speed.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from tomofield import train
from tomofield.synth import write_dataset


def main(iterations: int = 40) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "data", n=8, size=48, seed=0)
        csv = next((root / "data").glob("*.csv"))
        cfg = train.TrainConfig(
            iterations=iterations,
            slices_per_volume=32,
            slice_size=48,
            lr=1e-3,
            norm="group-norm",
            checkpoint_every=10_000,
            val_every=10_000,
        )
        t0 = time.perf_counter()
        train.Trainer(csv, root / "run", cfg, device="cpu").fit()
        dt = time.perf_counter() - t0
    print(f"{train.__file__}: {iterations} iterations {dt:.2f} s, {iterations * 2 * 32 / dt:.1f} slices/s")


if __name__ == "__main__":
    main()
