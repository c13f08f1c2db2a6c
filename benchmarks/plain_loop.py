"""``python -m benchmarks.plain_loop DATA.csv -o RUN``: what a few lines of PyTorch reach, as a yardstick.

The reference loop of issue 27, deliberately without tomofield's training code: a timm
``resnet10t`` with batch norm, Adam at 3e-4 and no schedule, each volume z-scored once, and
every step one positive and one negative volume of ``--slices`` random slices (a random
orientation each, offsets within 80 % of the box, slices spanning the box's side, trilinear
samples by ``grid_sample``), binary cross-entropy with the volume's label on every slice.
It writes a run directory (``model.safetensors`` and ``config.json``: ``normalized``
geometry, ``unit`` extent, ``zscore`` intensities) that ``tomofield run --weights RUN``
and :mod:`benchmarks.recipes` score like any other, so a recipe is judged against it on the
same data and by the same protocol.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import timm
import torch
import torch.nn.functional as F


def load(path: Path) -> torch.Tensor:
    """A volume z-scored, as (1, 1, D, H, W) in the stored axis order (the loop is isotropic in orientation)."""
    x = torch.from_numpy(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32))
    return ((x - x.mean()) / x.std().clamp_min(1e-6))[None, None]


def random_slices(vol: torch.Tensor, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` slices (n, 1, size, size): random orthonormal frames, offsets within 80 % of the box."""
    frames = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen)).Q  # columns: normal, u, v
    ab = torch.linspace(-1, 1, size)
    offset = (torch.rand(n, generator=gen) * 2 - 1) * 0.8
    pts = (
        offset[:, None, None, None] * frames[:, None, None, :, 0]
        + ab[None, :, None, None] * frames[:, None, None, :, 1]
        + ab[None, None, :, None] * frames[:, None, None, :, 2]
    )
    out = F.grid_sample(vol.expand(n, -1, -1, -1, -1), pts[:, None], align_corners=True, padding_mode="zeros")
    return out[:, :, 0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plain_loop", description=__doc__)
    p.add_argument("dataset", type=Path, help="CSV with image and label columns (paths relative to it)")
    p.add_argument("-o", "--output", type=Path, required=True, help="new run directory")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--slices", type=int, default=24, help="slices per volume and step")
    p.add_argument("--slice-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rows = list(csv.DictReader(a.dataset.open(encoding="utf-8")))
    vols = {c: [load(a.dataset.parent / r["image"]) for r in rows if int(float(r["label"])) == c] for c in (0, 1)}
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = timm.create_model("resnet10t", in_chans=1, num_classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    losses = []
    for step in range(a.steps):
        pick = {c: vols[c][int(torch.randint(len(vols[c]), (1,), generator=gen))] for c in (1, 0)}
        x = torch.cat([random_slices(pick[c], a.slices, a.slice_size, gen) for c in (1, 0)])
        y = torch.cat([torch.ones(a.slices), torch.zeros(a.slices)])
        loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: mean loss {np.mean(losses[-100:]):.4f}", flush=True)
    # a run directory any tomofield engine reads
    from tomofield.checkpoint import write_run

    config = {
        "encoder": "resnet10t",
        "in_chans": 1,
        "num_classes": 1,
        "norm": "batch-norm",
        "slice_size": a.slice_size,
        "geometry": "normalized",
        "extent": "unit",
        "intensity": "zscore",
        "task": "classification",
        "training": {"plain_loop": vars(a) | {"dataset": str(a.dataset), "output": str(a.output)}},
        "iteration": a.steps,
        "loss_log": [
            {"iteration": i + 100, "train_loss": float(np.mean(losses[i : i + 100]))} for i in range(0, a.steps, 100)
        ],
    }
    if a.output.exists():
        raise SystemExit(f"{a.output} exists; give a new folder")
    write_run(a.output, model.state_dict(), config)
    print(json.dumps({"run": str(a.output), "last_loss": config["loss_log"][-1]["train_loss"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
