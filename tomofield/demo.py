"""``tomofield demo``: the built-in end-to-end runs on synthetic data.

The full demo synthesises a weakly supervised dataset, trains a slice encoder from
volume-level labels only, reconstructs a held-out positive with ToNNO and scores the
heatmap against the lesion mask it never saw. The phantom demo is the sanity check of
the reconstruction alone (sum head + tomo filter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tomofield.engine import Engine
from tomofield.errors import InputError
from tomofield.evaluation import dice
from tomofield.io import affine_for_spacing, check_output_path, load_volume, save_nifti
from tomofield.synth import ball_phantom

SPACING = (2.5, 1.0, 1.0)  # (d, h, w) mm: anisotropic, like a thick-slice scan


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two tensors of the same size."""
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def best_dice(heatmaps: list[np.ndarray], masks: list[np.ndarray], n: int = 64) -> tuple[float, float]:
    """The single threshold maximising the mean Dice over volumes, and that Dice."""
    lo = min(float(h.min()) for h in heatmaps)
    hi = max(float(h.max()) for h in heatmaps)
    best = (float("nan"), -1.0)
    for t in np.linspace(lo, hi, n + 2)[1:-1]:
        d = float(np.mean([dice(h >= t, m > 0) for h, m in zip(heatmaps, masks, strict=True)]))
        if d > best[1]:
            best = (float(t), d)
    return best


def phantom_demo(
    out_dir: Path,
    progress_cm: Any,
    console: Any,
    *,
    directions: int = 500,
    slices: int = 48,
    slice_size: int = 64,
    device: str = "auto",
    overwrite: bool = False,
) -> float:
    """Write a phantom, reconstruct it with sum + tomo, report the correlation."""
    paths = {k: out_dir / f"{k}.nii.gz" for k in ("phantom", "heatmap")}
    png = out_dir / "preview.png"
    for p in [*paths.values()]:
        check_output_path(p, overwrite)
    check_output_path(png, overwrite, suffixes=(".png",))
    phantom = ball_phantom((64, 64, 64), SPACING)
    save_nifti(
        paths["phantom"], phantom, affine_for_spacing(SPACING), overwrite=overwrite, description="tomofield phantom"
    )
    volume = load_volume(paths["phantom"])
    engine = Engine(
        head="sum",
        filter="tomo",
        directions=directions,
        slices=slices,
        slice_size=slice_size,
        device=device,
        geometry="physical",
    )
    console.print(
        f"phantom 64^3, spacing {SPACING} mm; sum head + tomo filter, L={directions}, M={slices}, "
        f"{slice_size}x{slice_size} slices, physical geometry"
    )
    with progress_cm("slices") as tick:
        heat = engine.run(volume, progress=tick)
    heat.save(paths["heatmap"], overwrite)
    from tomofield.outputs import preview

    preview(png, heat, volume, "sum head + tomo filter: reconstruction of the phantom", overwrite)
    r = correlation(heat.data[0].cpu(), volume.data[0])
    console.print(
        f"correlation with the phantom: {r:.3f}  (outputs in {out_dir}/: phantom.nii.gz, heatmap.nii.gz, preview.png)"
    )
    return r


@dataclass
class DemoSettings:
    """Sizes of the full demo, chosen to finish in a few minutes on 2 CPU cores.

    The training settings left ``None`` are ``tomofield train``'s defaults
    (:mod:`tomofield.train.config`): the demo trains as a user's first run would.
    """

    n: int = 60
    size: int = 40
    seed: int = 0
    background: str = "realistic"
    #: thick slices, as in most clinical scans; the realistic grid keeps the field of view cubic
    spacing: tuple[float, float, float] = (2.0, 1.0, 1.0)
    iterations: int | None = None
    slices_per_volume: int | None = None
    slice_size: int | None = None
    lr: float | None = None
    norm: str | None = None
    directions: int = 128
    slices: int = 32
    device: str = "auto"


def full_demo(out_dir: Path, s: DemoSettings, overwrite: bool, progress_cm: Any, fit: Any, console: Any) -> dict:
    """Synthesise, train, reconstruct held-out positives with ToNNO, report Dice."""
    from tomofield.dataset import read_dataset
    from tomofield.outputs import preview
    from tomofield.synth import write_dataset
    from tomofield.train import TrainConfig, Trainer

    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"demo directory {str(out_dir)!r} is not empty; pass --overwrite or choose --output-dir")
    if overwrite and out_dir.exists():
        import shutil

        for sub in ("data", "run", "heatmaps"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    look = "scans in a scanner's unit and offset" if s.background == "realistic" else "normalised volumes"
    mm = " x ".join(f"{v:g}" for v in s.spacing[::-1])  # (i, j, k), as the viewers show it
    console.print(
        f"1/3 synthesising {s.n} volumes of up to {s.size} voxels a side at {mm} mm ({look}, half with 1-3 "
        f"lesions) in {out_dir}/data"
    )
    csvs = write_dataset(out_dir / "data", n=s.n, size=s.size, seed=s.seed, background=s.background, spacing=s.spacing)
    given = {k: getattr(s, k) for k in ("iterations", "slices_per_volume", "slice_size", "lr", "norm")}
    cfg = TrainConfig(**{k: v for k, v in given.items() if v is not None}, seed=s.seed)
    cfg.val_every = cfg.checkpoint_every = max(cfg.iterations // 4, 1)
    trainer = Trainer(csvs["train"], out_dir / "run", cfg, val_csv=csvs["val"], device=s.device)
    c = trainer.cfg
    console.print(
        f"2/3 training {c.iterations} iterations from volume-level labels only ({c.slices_per_volume} slices of "
        f"{c.slice_size}px per volume, {c.encoder}, {c.norm}, lr {c.lr:g}, intensities normalised per {c.intensity})"
    )
    result = fit(trainer)
    last = result["history"][-1] if result["history"] else {}
    bacc = last.get("val_balanced_accuracy", float("nan"))
    located = last.get("val_localisation", float("nan"))
    positives = [c for c in read_dataset(csvs["val"]) if c.label == 1 and c.mask is not None]
    console.print(f"3/3 ToNNO on {len(positives)} held-out positives: L={s.directions}, M={s.slices}")
    engine = Engine(
        weights=out_dir / "run", head="logit", filter="tomo", directions=s.directions, slices=s.slices, device=s.device
    )
    heatmaps, heats, masks = [], [], []
    for case in positives:
        vol = load_volume(list(case.images))
        with progress_cm(case.name) as tick:
            heat = engine.run(vol, progress=tick)
        heat.save(out_dir / "heatmaps" / f"{case.name}.nii.gz", overwrite=True)
        heatmaps.append((heat, vol))
        heats.append(heat.data[0].cpu().numpy())
        assert case.mask is not None  # positives with a mask only
        masks.append(load_volume([case.mask]).data[0].numpy())
    threshold, mean_dice = best_dice(heats, masks)
    png = out_dir / "preview.png"
    title = f"ToNNO heatmap of held-out {positives[0].name} (trained on volume labels only; lesion outlined)"
    preview(png, *heatmaps[0], title, overwrite=True, mask=masks[0], threshold=threshold)
    console.print(
        f"validation balanced accuracy {bacc:.3f}, lesion slices above their neighbours {located:.3f} (0.5: "
        f"chance); ToNNO mean Dice over {len(heats)} held-out positives {mean_dice:.3f} at the single threshold "
        f"{threshold:.3g} that is best on these same positives (optimistic: tomofield evaluate tunes its thresholds "
        "on other volumes than it scores)"
    )
    if not result["diagnostics"]["learned"]:
        unresolved = ", ".join(result["diagnostics"]["unresolved"])
        console.print(f"the run did not learn ({unresolved}): {out_dir}/run/config.json records why under diagnostics")
    console.print(f"outputs: {out_dir}/data (dataset), {out_dir}/run (model), {out_dir}/heatmaps/*.nii.gz, {png}")
    return {
        "balanced_accuracy": bacc,
        "dice": mean_dice,
        "threshold": threshold,
        "volumes": len(heats),
        "learned": result["diagnostics"]["learned"],
        "localisation": located,
    }
