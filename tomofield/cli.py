"""Command-line interface: a thin layer of click and rich over :class:`tomofield.Engine`."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from tomofield import plugins
from tomofield.errors import TomofieldError

_WIDTH = None if sys.stdout.isatty() else 200  # no wrapping when piped or captured
err = Console(stderr=True)
out = Console(width=_WIDTH)


class _Rate(ProgressColumn):
    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} slices/s" if speed else "- slices/s", style="cyan")


@contextmanager
def slice_progress(description: str):
    """A rich progress bar; yields ``callback(n, total)`` for :meth:`Engine.reconstruct`."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)

        def tick(n: int, total: int) -> None:
            bar.update(task, total=total, advance=n)

        yield tick


def friendly(fn: Callable) -> Callable:
    """Turn tomofield's own errors into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TomofieldError as exc:
            err.print(f"[bold red]Error:[/] {exc}", highlight=False)
            sys.exit(2)

    return wrapper


@click.group()
@click.version_option(package_name="tomofield")
def cli() -> None:
    """tomofield: turn any 2D image encoder into a dense 3D predictor (ToNNO)."""


def engine_options(fn: Callable) -> Callable:
    """Options shared by every command that builds an Engine."""
    opts = [
        click.option("--encoder", default="resnet10t", show_default=True, help="Registered or timm encoder name."),
        click.option("--weights", type=click.Path(dir_okay=True), help="Encoder weights (.safetensors)."),
        click.option("--pretrained/--no-pretrained", default=False, show_default=True,
                     help="timm pretrained weights from the local cache (never downloaded)."),
        click.option("--head", default="logit", show_default=True, help="Per-slice score head."),
        click.option("--target", default=0, show_default=True, help="Output logit used by the logit head."),
        click.option("--filter", "filter_", default="tomo", show_default=True, help="none | tomo | plugin filter."),
        click.option("--sampler", default="fibonacci", show_default=True, help="fibonacci | axial | orthogonal."),
        click.option("--directions", "-L", default=500, show_default=True, help="Number of slicing directions L."),
        click.option("--slices", "-M", default=48, show_default=True, help="Slices per direction M."),
        click.option("--slice-size", default=224, show_default=True, help="Slice side in pixels."),
        click.option("--hemisphere/--sphere", default=True, show_default=True, help="Directions on a hemisphere (half the work) or the sphere."),
        click.option("--geometry", type=click.Choice(["physical", "normalized"]), default="physical", show_default=True),
        click.option("--extent", type=click.Choice(["unit", "tight"]), default="unit", show_default=True,
                     help="Slice offsets in [-1, 1] (paper) or covering the volume's whole support."),
        click.option("--seed", default=0, show_default=True, help="Seed of the random in-plane bases."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N."),
        click.option("--batch-size", default=64, show_default=True, help="Slices per encoder batch."),
        click.option("--post", multiple=True, help="Post-processor(s), applied in order (e.g. clip-negative)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def build_engine(o: dict[str, Any]):
    from tomofield.engine import Engine

    head_options = {"target": o["target"]} if o["head"] == "logit" else {}
    return Engine(
        o["encoder"], o["head"], o["filter_"], o["sampler"], list(o["post"]), weights=o["weights"],
        device=o["device"], directions=o["directions"], slices=o["slices"], slice_size=o["slice_size"],
        hemisphere=o["hemisphere"], geometry=o["geometry"], extent=o["extent"], seed=o["seed"],
        batch_size=o["batch_size"], pretrained=o["pretrained"], head_options=head_options,
    )


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="Output heatmap (.nii or .nii.gz).")
@click.option("--preview", type=click.Path(), help="Also write a PNG of three planes through the maximum.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@engine_options
@friendly
def run(inputs: tuple[str, ...], output: str, preview: str | None, overwrite: bool, **o: Any) -> None:
    """Reconstruct the heatmap of one volume (several INPUTS are stacked as channels)."""
    from tomofield.io import check_output_path, load_volume, save_heatmap

    check_output_path(output, overwrite)
    if preview:
        check_output_path(preview, overwrite, suffixes=(".png",))
    volume = load_volume(inputs)
    engine = build_engine(o)
    c, *shape = volume.data.shape
    err.print(
        f"{volume.paths[0].name}: {c} channel(s), grid {tuple(shape)}, spacing "
        f"{tuple(round(s, 3) for s in volume.spacing)} mm; {engine.count_slices(shape, volume.spacing):,} "
        f"slices of {o['slice_size']}x{o['slice_size']} on {engine.device}", highlight=False,
    )
    t0 = time.perf_counter()
    with slice_progress("slices") as tick:
        heat = engine.reconstruct(volume.data, volume.spacing, progress=tick)
    save_heatmap(output, heat.cpu(), volume, overwrite)
    if preview:
        from tomofield.preview import write_preview

        write_preview(preview, heat[0].cpu().numpy(), volume.data[0].numpy(), volume.spacing,
                      title=f"{o['head']} / {o['filter_']}: {volume.paths[0].name}", overwrite=overwrite)
    out.print(f"wrote {output}" + (f" and {preview}" if preview else "") + f" in {time.perf_counter() - t0:.1f} s")


@cli.command("plugins")
def plugins_cmd() -> None:
    """List every registered component and the package it comes from."""
    table = Table(title="tomofield components")
    for col in ("kind", "name", "plugin", "source"):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for comp in plugins.components():
        table.add_row(comp.kind, comp.name, comp.plugin, comp.source, comp.description)
    out.print(table)
    for name, why in plugins.failed_plugins().items():
        err.print(f"[yellow]plugin {name} failed to load:[/] {why}", highlight=False)


@cli.command()
@click.option("--output-dir", "-o", default="tomofield-demo", show_default=True, type=click.Path())
@click.option("--directions", "-L", default=500, show_default=True)
@click.option("--slices", "-M", default=48, show_default=True)
@click.option("--slice-size", default=64, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo's outputs.")
@friendly
def demo(output_dir: str, directions: int, slices: int, slice_size: int, device: str, overwrite: bool) -> None:
    """Reconstruct a ball phantom with the sum head: the pipeline's sanity check."""
    from tomofield.demo import phantom_demo

    phantom_demo(Path(output_dir), directions, slices, slice_size, device, overwrite, slice_progress, out)


plugins.add_commands(cli)


def main() -> None:
    cli()
