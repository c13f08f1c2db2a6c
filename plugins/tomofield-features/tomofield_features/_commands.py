"""CLI commands ``tomofield features`` and ``tomofield pretrain`` (added through register_commands)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from tomofield.cli import err, explicit, friendly, out, slice_progress
from tomofield.errors import InputError


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="Output feature volume (.nii/.nii.gz, K channels).")
@click.option("--encoder", default="resnet10t", show_default=True, help="Registered or timm encoder name.")
@click.option("--weights", type=click.Path(), help="Encoder weights (.safetensors or a run directory).")
@click.option("--pretrained/--no-pretrained", default=False, show_default=True,
              help="timm pretrained weights from the local cache (never downloaded).")
@click.option("--stage", type=int, default=None, help="Encoder stage (feature_info index) whose map to use; default: pooled pre-logits.")
@click.option("--pool", is_flag=True, help="Average the stage's map to one vector per slice.")
@click.option("--components", "-k", default=16, show_default=True, help="PCA components (0: keep every channel).")
@click.option("--projection", type=click.Path(), help="A given projection (.npy (C, K) or .npz with mean, matrix) instead of PCA.")
@click.option("--save-projection", type=click.Path(), help="Write the fitted PCA (.npz) to reuse on other volumes.")
@click.option("--fit-slices", default=256, show_default=True, help="Slices sampled to fit the PCA.")
@click.option("--filter", "filter_", default="none", show_default=True, help="none (dense averaged features) | tomo.")
@click.option("--sampler", default="fibonacci", show_default=True, help="fibonacci | axial | orthogonal.")
@click.option("--directions", "-L", default=256, show_default=True)
@click.option("--slices", "-M", default=32, show_default=True)
@click.option("--slice-size", default=224, show_default=True)
@click.option("--hemisphere/--sphere", default=True, show_default=True)
@click.option("--geometry", type=click.Choice(["physical", "normalized"]), default="physical", show_default=True)
@click.option("--extent", type=click.Choice(["unit", "tight"]), default="unit", show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of the in-plane bases, the PCA sample and a random-init encoder.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--preview", type=click.Path(), help="Also write a PNG of the first three components as RGB.")
@click.option("--nan-policy", type=click.Choice(["refuse", "zero"]), default="refuse", show_default=True)
@click.option("--overwrite", is_flag=True)
@friendly
def features(inputs: tuple[str, ...], output: str, preview: str | None, overwrite: bool, **o: Any) -> None:
    """Dense 3D features of a volume from a 2D encoder: a C x D x H x W (or K after PCA) NIfTI."""
    from tomofield.checkpoint import is_run_dir
    from tomofield.engine import Engine
    from tomofield.io import check_output_path, load_volume, save_nifti
    from tomofield_features.projection import fit_projection

    check_output_path(output, overwrite)
    if preview:
        check_output_path(preview, overwrite, suffixes=(".png",))
    if o["components"] < 0:
        raise InputError(f"--components must be >= 0, got {o['components']}")
    volume = load_volume(inputs, nan_policy=o["nan_policy"], check_content=True)
    config = {k: o[k] for k in ("directions", "slices", "slice_size", "hemisphere", "geometry", "extent", "seed",
                                "batch_size", "pretrained")}
    encoder: str | None = o["encoder"]
    if o["weights"] and is_run_dir(o["weights"]):
        for key in ("slice_size", "geometry", "extent"):
            if not explicit(key):
                config.pop(key)
        if not explicit("encoder"):
            encoder = None
    comps = o["components"] or None
    head_options: dict[str, Any] = {"stage": o["stage"], "pool": o["pool"]}
    if o["projection"]:
        head_options["projection"] = o["projection"]
    elif comps:
        head_options["components"] = comps
    engine = Engine(encoder, "features", o["filter_"], o["sampler"], weights=o["weights"], device=o["device"],
                    head_options=head_options, **config)
    c, *shape = volume.data.shape
    import torch

    torch.manual_seed(o["seed"])  # a random-init encoder (no --weights) is the same on every run
    engine.encoder_for(c)
    t0 = time.perf_counter()
    if comps and not o["projection"]:
        with err.status(f"fitting PCA ({comps} components) on {o['fit_slices']} slices"):
            proj = fit_projection(engine, volume.data, [volume.spacing], samples=o["fit_slices"], seed=o["seed"])
        share = float(proj.explained.sum()) if proj.explained is not None else float("nan")
        err.print(f"PCA: {proj.channels} -> {proj.components} channels, {100 * share:.1f}% of the variance", highlight=False)
        if o["save_projection"]:
            proj.save(o["save_projection"])
    err.print(f"{volume.paths[0].name}: grid {tuple(shape)}; {engine.count_slices(shape, volume.spacing):,} slices "
              f"of {engine.config.slice_size}px on {engine.device}", highlight=False)
    with slice_progress("slices") as tick:
        feats = engine.reconstruct(volume.data, volume.spacing, progress=tick).cpu()
    save_nifti(output, feats, volume.affine, volume.header, overwrite, description="tomofield features")
    if preview:
        from tomofield_features.preview import write_rgb_preview

        write_rgb_preview(preview, feats.numpy(), volume.data[0].numpy(), volume.spacing,
                          title=f"features / {o['filter_']}: {volume.paths[0].name}", overwrite=overwrite)
    out.print(f"wrote {output} ({feats.shape[0]} channels)" + (f" and {preview}" if preview else "")
              + f" in {time.perf_counter() - t0:.1f} s")


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--output", "-o", "run_dir", required=True, type=click.Path(), help="Run directory (for --weights).")
@click.option("--method", type=click.Choice(["simclr"]), default="simclr", show_default=True)
@click.option("--encoder", default="resnet10t", show_default=True)
@click.option("--norm", type=click.Choice(["frozen-bn", "group-norm", "batch-norm"]), default="group-norm", show_default=True)
@click.option("--iterations", default=200, show_default=True)
@click.option("--batch-volumes", default=2, show_default=True)
@click.option("--slices-per-volume", default=16, show_default=True, help="Planes per volume (two views each).")
@click.option("--slice-size", default=48, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--temperature", default=0.2, show_default=True)
@click.option("--geometry", type=click.Choice(["physical", "normalized"]), default="physical", show_default=True)
@click.option("--extent", type=click.Choice(["unit", "tight"]), default="unit", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@friendly
def pretrain(dataset: str, run_dir: str, method: str, device: str, **o: Any) -> None:
    """Self-supervised slice encoder (SimCLR) from the volumes of a dataset CSV; labels are ignored."""
    from tomofield.dataset import read_dataset
    from tomofield.engine import resolve_device
    from tomofield.io import load_volume
    from tomofield_features.ssl import SimCLRConfig, pretrain_simclr

    cfg = SimCLRConfig(**o)
    cfg.validate()
    if Path(run_dir).exists() and any(Path(run_dir).iterdir()):
        raise InputError(f"run directory {run_dir!r} is not empty; choose another")
    cases = read_dataset(dataset, task="any")
    vols = [load_volume(list(c.images)) for c in cases]
    with click.progressbar(length=cfg.iterations, label="SimCLR", file=err.file) as bar:
        _, history = pretrain_simclr([v.data for v in vols], cfg, [v.spacing for v in vols], run_dir,
                                     device=resolve_device(device), progress=lambda rec: bar.update(1))
    out.print(f"{method}: {cfg.iterations} iterations, loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}; "
              f"run directory {run_dir}")
