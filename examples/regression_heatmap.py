"""Quantitative heatmaps from a regression encoder: does the heatmap integrate to the target?

Synthetic volumes (tomofield.synth.make_case, 48^3, 1 mm voxels) labelled with their
lesion volume in mL (negatives: 0); only these volume-level targets are used. Two ways to
train a ResNet-10-T with the core's trainer (``extent="tight"``):

- ``--method density`` (default): a classification teacher (BCE on target > 0, the demo's
  recipe) and then a density student (``task="regression", teacher=...``): each volume's
  target is spread over a full stack of slices in proportion to the teacher's evidence, so
  the student's slice scores are plane integrals of a density and the ``tomo`` heatmap
  integrates to the target (docs/features.md);
- ``--method slice``: every slice regresses its volume's target (MSE), the plain setting.

Then the ``regression`` head + ``tomo`` filter reconstruct a heatmap for each held-out
volume. Reported: Pearson r between the heatmap's integral (sum over voxels x voxel volume,
mL) and the target, and, for context, the same r for the max and the mean of the slice
predictions.

    OMP_NUM_THREADS=1 python examples/regression_heatmap.py            # ~20 CPU minutes (48 training volumes)
    OMP_NUM_THREADS=1 python examples/regression_heatmap.py --method slice --iterations 400
    OMP_NUM_THREADS=1 python examples/regression_heatmap.py --quick

Needs tomofield and plugins/tomofield-features installed. Numbers: docs/features.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tomofield import Engine
from tomofield.io import affine_for_spacing, save_nifti
from tomofield.synth import make_case
from tomofield.train import TrainConfig, Trainer


def write_cases(root: Path, name: str, seeds, size: int) -> tuple[Path, list]:
    """NIfTI images and masks plus a CSV image,label,mask with label = lesion volume (mL)."""
    rows, cases = [], []
    for i, s in enumerate(seeds):
        positive = i % 2 == 0
        img, mask = make_case((size,) * 3, positive=positive, rng=np.random.default_rng(s))
        target = float(mask.sum()) / 1000.0  # 1 mm^3 voxels -> mL
        for kind, arr in (("images", img), ("masks", mask.astype(np.float32))):
            save_nifti(root / kind / f"{name}_{i:03d}.nii.gz", arr, affine_for_spacing((1, 1, 1)))
        rows.append((f"images/{name}_{i:03d}.nii.gz", target, f"masks/{name}_{i:03d}.nii.gz"))
        cases.append((torch.from_numpy(img), mask, target))
    path = root / f"{name}.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "mask"])
        w.writerows(rows)
    return path, cases


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train", type=int, default=48, help="training volumes (half positive)")
    ap.add_argument("--test", type=int, default=16, help="held-out volumes (half positive)")
    ap.add_argument("--method", choices=["density", "slice"], default="density")
    ap.add_argument("--iterations", type=int, default=800, help="regression (student) iterations")
    ap.add_argument("--teacher-iterations", type=int, default=1200, help="--method density: classification teacher")
    ap.add_argument("--loss", choices=["mse", "huber"], default="mse")
    ap.add_argument("--lr", type=float, default=None, help="default: 2e-4 (density), 5e-4 (slice)")
    ap.add_argument("--directions", type=int, default=64)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--slice-size", type=int, default=48)
    ap.add_argument(
        "--slices-per-volume",
        type=int,
        default=None,
        help="training slices per volume and step (default: a stack of 24 (density), 16 (slice))",
    )
    ap.add_argument(
        "--extent",
        choices=["unit", "tight"],
        default="tight",
        help="slice-stack extent for training and reconstruction (tight: every stack covers the "
        "volume's whole support)",
    )
    ap.add_argument("--seed", type=int, default=0, help="training volumes and training seed")
    ap.add_argument(
        "--test-seed",
        type=int,
        default=10_000,
        help="first seed of the held-out volumes (fixed, independent of --seed)",
    )
    ap.add_argument("--out", default="examples/out/regression_heatmap.json")
    ap.add_argument(
        "--figure", default=None, help="also write a PNG: heatmaps of six held-out volumes and integral vs target"
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        a.train, a.test, a.iterations, a.teacher_iterations, a.directions = 12, 8, 60, 120, 32
    density = a.method == "density"
    a.lr = a.lr if a.lr is not None else (2e-4 if density else 5e-4)
    a.slices_per_volume = a.slices_per_volume or (24 if density else 16)
    size = 48
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_csv, _ = write_cases(root, "train", range(a.seed, a.seed + a.train), size)
        _, test = write_cases(root, "test", range(a.test_seed, a.test_seed + a.test), size)
        t0 = time.perf_counter()
        teacher = None
        if density:  # the teacher: volume-level presence labels, the demo's recipe
            cls_csv = root / "train_presence.csv"
            with train_csv.open() as src, cls_csv.open("w", newline="") as dst:
                rows = list(csv.reader(src))
                csv.writer(dst).writerows([rows[0]] + [[r[0], int(float(r[1]) > 0), r[2]] for r in rows[1:]])
            tcfg = TrainConfig(
                iterations=a.teacher_iterations,
                slices_per_volume=32,
                slice_size=a.slice_size,
                lr=1e-3,
                lr_end=1e-6,
                norm="group-norm",
                extent=a.extent,
                seed=a.seed,
                checkpoint_every=a.teacher_iterations,
                val_every=a.teacher_iterations,
            )
            Trainer(cls_csv, root / "teacher", tcfg, device="cpu").fit()
            teacher = str(root / "teacher")
            print(f"teacher: {a.teacher_iterations} iterations, {time.perf_counter() - t0:.0f} s")
        cfg = TrainConfig(
            task="regression",
            loss=a.loss,
            iterations=a.iterations,
            slices_per_volume=a.slices_per_volume,
            slice_size=a.slice_size,
            batch_volumes=4,
            lr=a.lr,
            lr_end=1e-6,
            norm="group-norm",
            extent=a.extent,
            seed=a.seed,
            checkpoint_every=a.iterations,
            val_every=a.iterations,
            teacher=teacher,
        )
        result = Trainer(train_csv, root / "run", cfg, device="cpu").fit()
        print(
            f"trained {a.iterations} iterations ({a.loss}), last loss {result['loss']:.4f}, {time.perf_counter() - t0:.0f} s"
        )
        eng = Engine(
            head="regression",
            filter="tomo",
            weights=str(root / "run"),
            directions=a.directions,
            slices=a.slices,
            device="cpu",
        )
        enc = eng.encoder_for(1)
        integrals, positive, in_body, maxima, means, targets, shown = [], [], [], [], [], [], []
        for vol, mask, target in test:
            heat = eng.reconstruct(vol, spacing=(1, 1, 1))[0]
            if len(shown) < 6:
                shown.append((vol.numpy(), mask, heat.numpy(), target))
            integrals.append(float(heat.sum()) * 1.0 / 1000)  # x voxel volume (1 mm^3) -> mL
            body = vol > 0.02  # the positive part inside the body: drops the shell at the body's surface
            positive.append(float(heat.clamp_min(0)[body].sum()))
            in_body.append(float(heat[body].sum()) / 1000)
            probe = Engine(enc, "regression", "none", directions=16, slices=16, slice_size=a.slice_size, device="cpu")
            flat = probe.with_options(skip_empty=False)
            slice_mean = float(flat.reconstruct(vol)[0].mean())
            maxima.append(float(heat.max()))
            means.append(slice_mean)
            targets.append(target)
    res = {
        "pearson_integral": pearson(integrals, targets),
        "pearson_positive_in_body": pearson(positive, targets),
        "pearson_integral_in_body": pearson(in_body, targets),
        "pearson_heatmap_max": pearson(maxima, targets),
        "pearson_mean_slice_prediction": pearson(means, targets),
        "mean_abs_error_ml": float(np.mean(np.abs(np.asarray(integrals) - np.asarray(targets)))),
        "targets_ml": targets,
        "integrals": integrals,
        "positive_in_body": positive,
        "settings": vars(a),
    }
    print(
        f"Pearson r (heatmap integral, lesion volume) = {res['pearson_integral']:.3f} over {len(targets)} held-out volumes"
    )
    print(
        f"  heatmap integral - target: mean |error| {res['mean_abs_error_ml']:.3f} mL "
        f"(targets {min(targets):.2f}-{max(targets):.2f} mL)"
    )
    print(
        f"  r(integral inside the body) = {res['pearson_integral_in_body']:.3f}, "
        f"r(integral of its positive part) = {res['pearson_positive_in_body']:.3f}"
    )
    print(
        f"  context: r(heatmap max) = {res['pearson_heatmap_max']:.3f}, "
        f"r(mean slice prediction) = {res['pearson_mean_slice_prediction']:.3f}"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    if a.figure:
        figure(
            a.figure,
            shown,
            integrals,
            targets,
            f"--method {a.method} --seed {a.seed}: r = {res['pearson_integral']:.2f}",
        )


def figure(path: str, shown: list, integrals: list, targets: list, title: str) -> None:
    """Axial plane through each shown volume's lesion (or centre): image, heatmap; and integral vs target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, len(shown) + 1, figsize=(2.6 * (len(shown) + 1), 5.6), constrained_layout=True)
    top = max(float(np.abs(h).max()) for _, _, h, _ in shown) * 0.6
    for j, ((vol, mask, heat, target), integral) in enumerate(zip(shown, integrals, strict=False)):
        z = int(np.argmax(mask.sum((1, 2)))) if mask.any() else vol.shape[0] // 2
        ax[0, j].imshow(vol[z], cmap="gray", origin="lower")
        im = ax[1, j].imshow(heat[z], cmap="RdBu_r", vmin=-top, vmax=top, origin="lower")
        for a in ax[:, j]:
            if mask[z].any():
                a.contour(mask[z], levels=[0.5], colors="lime", linewidths=0.8)
            a.axis("off")
        ax[0, j].set_title(f"target {target:.2f} mL", fontsize=9)
        ax[1, j].set_title(f"integral {integral:.2f} mL", fontsize=9)
    fig.colorbar(im, ax=ax[1, : len(shown)], shrink=0.8, label="heatmap (mL per mL)")
    sc = ax[0, -1]
    sc.scatter(targets, integrals, s=14)
    hi = max(max(targets), max(integrals)) * 1.05
    sc.plot([0, hi], [0, hi], "k--", lw=0.8)
    sc.set_xlabel("target (mL)")
    sc.set_ylabel("heatmap integral (mL)")
    sc.set_title("all held-out volumes", fontsize=9)
    ax[1, -1].axis("off")
    fig.suptitle(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
