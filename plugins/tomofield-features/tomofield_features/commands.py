"""CLI commands ``tomofield features`` and ``tomofield pretrain`` (added through register_commands)."""

from __future__ import annotations

import time
from typing import Any

import click

from tomofield.cli.toolkit import (
    build_engine,
    engine_options,
    err,
    friendly,
    given,
    out,
    setting_option,
    slice_progress,
)
from tomofield.errors import InputError
from tomofield_features.ssl import SimCLRConfig

#: This command's own choices for the engine (dense averaged features are the common case).
FEATURES_DEFAULTS = {"filter": "none", "directions": 256, "slices": 32}
#: The options of ``features`` that are its own, not the engine's.
_OWN = ("stage", "pool", "components", "projection", "save_projection", "fit_slices")


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--output", "-o", required=True, type=click.Path(), help="Output feature volume (.nii/.nii.gz, K channels)."
)
@click.option(
    "--stage",
    type=int,
    default=None,
    help="Encoder stage (feature_info index) whose map to use; default: pooled pre-logits.",
)
@click.option("--pool", is_flag=True, help="Average the stage's map to one vector per slice.")
@click.option("--components", "-k", default=16, show_default=True, help="PCA components (0: keep every channel).")
@click.option(
    "--projection", type=click.Path(), help="A given projection (.npy (C, K) or .npz with mean, matrix) instead of PCA."
)
@click.option("--save-projection", type=click.Path(), help="Write the fitted PCA (.npz) to reuse on other volumes.")
@click.option("--fit-slices", default=256, show_default=True, help="Slices sampled to fit the PCA.")
@click.option("--preview", type=click.Path(), help="Also write a PNG of the first three components as RGB.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@engine_options(exclude=("head", "post"), defaults=FEATURES_DEFAULTS)
@friendly
def features(inputs: tuple[str, ...], output: str, preview: str | None, overwrite: bool, **o: Any) -> None:
    """Dense 3D features of a volume from a 2D encoder: a C x D x H x W (or K after PCA) NIfTI."""
    from tomofield.io import check_output_path, load_volume
    from tomofield_features.projection import fit_projection, save_projection

    check_output_path(output, overwrite, inputs=inputs)
    if preview:
        check_output_path(preview, overwrite, suffixes=(".png",), inputs=inputs)
    if o["components"] < 0:
        raise InputError(f"--components must be >= 0, got {o['components']}")
    if o["save_projection"]:
        if o["projection"] or not o["components"]:
            why = "--projection gives one" if o["projection"] else "--components 0 keeps every channel"
            raise InputError(
                f"--save-projection {o['save_projection']!r} saves the PCA fitted here, but none is fitted "
                f"({why}); drop --save-projection"
            )
        check_output_path(o["save_projection"], overwrite, suffixes=(".npz",), inputs=inputs)
    volume = load_volume(inputs, check_content=True, **given({"nan_policy": o["nan_policy"]}))
    comps = o["components"] or None
    head_options: dict[str, Any] = {"stage": o["stage"], "pool": o["pool"]}
    if o["projection"]:
        head_options["projection"] = o["projection"]
    elif comps:
        head_options["components"] = comps
    engine_opts = {k: v for k, v in o.items() if k not in _OWN}
    engine = build_engine(engine_opts, head="features", head_options=head_options)
    c, *shape = volume.data.shape
    import torch

    torch.manual_seed(engine.config.seed)  # a random-init encoder (no --weights) is the same on every run
    engine.encoder_for(c)
    t0 = time.perf_counter()
    if comps and not o["projection"]:
        with err.status(f"fitting PCA ({comps} components) on {o['fit_slices']} slices"):
            proj = fit_projection(
                engine, volume.data, [volume.spacing], samples=o["fit_slices"], seed=engine.config.seed
            )
        share = float(proj.explained.sum()) if proj.explained is not None else float("nan")
        err.print(
            f"PCA: {proj.channels} -> {proj.components} channels, {100 * share:.1f}% of the variance", highlight=False
        )
    with slice_progress("slices") as tick:
        feats = engine.run(
            volume,
            progress=tick,
            on_plan=lambda report: err.print(f"{volume.paths[0].name}: {volume.describe()}; {report}", highlight=False),
        )
    feats.save(output, overwrite, description="tomofield features")
    if o["save_projection"]:
        save_projection(proj, o["save_projection"], overwrite, inputs=inputs)
    if preview:
        from tomofield_features.preview import write_rgb_preview

        write_rgb_preview(
            preview,
            feats.data.cpu().numpy(),
            volume.data[0].numpy(),
            volume.spacing,
            title=f"features / {engine.filter_name}: {volume.paths[0].name}",
            overwrite=overwrite,
        )
    out.print(
        f"wrote {output} ({feats.data.shape[0]} channels)"
        + (f" and {preview}" if preview else "")
        + f" in {time.perf_counter() - t0:.1f} s"
    )


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--output", "-o", "run_dir", required=True, type=click.Path(), help="Run directory (for --weights).")
@click.option(
    "--method", type=click.Choice(["simclr"]), default="simclr", show_default=True, help="Self-supervised method."
)
@setting_option(SimCLRConfig, "--encoder")
@setting_option(SimCLRConfig, "--norm")
@setting_option(SimCLRConfig, "--iterations")
@setting_option(SimCLRConfig, "--batch-volumes")
@setting_option(SimCLRConfig, "--slices-per-volume")
@setting_option(SimCLRConfig, "--slice-size")
@setting_option(SimCLRConfig, "--lr")
@setting_option(SimCLRConfig, "--temperature")
@setting_option(SimCLRConfig, "--geometry")
@setting_option(SimCLRConfig, "--extent")
@setting_option(SimCLRConfig, "--seed")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N (gpu, gpu:N: the same).")
@friendly
def pretrain(dataset: str, run_dir: str, method: str, device: str, **o: Any) -> None:
    """Self-supervised slice encoder (SimCLR) from the volumes of a dataset CSV; labels are ignored."""
    from tomofield.dataset import read_dataset
    from tomofield.engine import resolve_device
    from tomofield.io import load_volume
    from tomofield_features.ssl import check_run_folder, pretrain_simclr

    cfg = SimCLRConfig(**given(o))
    cfg.validate()
    check_run_folder(run_dir, [dataset])  # before any work: every command's output checks
    cases = read_dataset(dataset, task="any")
    vols = [load_volume(list(c.images)) for c in cases]
    with click.progressbar(length=cfg.iterations, label="SimCLR", file=err.file) as bar:
        _, history = pretrain_simclr(
            [v.data for v in vols],
            cfg,
            [v.spacing for v in vols],
            run_dir,
            device=resolve_device(device),
            progress=lambda rec: bar.update(1),
        )
    out.print(
        f"{method}: {cfg.iterations} iterations, loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}; "
        f"run directory {run_dir}"
    )
