"""``tomofield demo``: the whole method on built-in synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tomofield.cli.toolkit import (
    default_of,
    friendly,
    given,
    out,
    setting_option,
    slice_progress,
    with_default,
)
from tomofield.cli.train import fit_with_progress
from tomofield.demo import DemoSettings, full_demo, phantom_demo
from tomofield.train import TrainConfig


@click.command()
@click.option(
    "--output-dir", "-o", default="tomofield-demo", show_default=True, type=click.Path(), help="Folder of the outputs."
)
@click.option("--phantom", is_flag=True, help="Only the reconstruction sanity check on a ball phantom (sum head).")
@click.option(
    "--iterations",
    type=int,
    default=None,
    help=with_default("Training iterations.", default_of(TrainConfig, "iterations")),
)
@click.option(
    "--directions",
    "-L",
    type=int,
    default=None,
    help=with_default(
        f"Directions (phantom: {default_of(phantom_demo, 'directions')}).", default_of(DemoSettings, "directions")
    ),
)
@click.option(
    "--slices",
    "-M",
    type=int,
    default=None,
    help=with_default(
        f"Slices per direction (phantom: {default_of(phantom_demo, 'slices')}).", default_of(DemoSettings, "slices")
    ),
)
@setting_option(DemoSettings, "--seed", "Seed of the data, the training and the directions.", type=int)
@setting_option(DemoSettings, "--device", "auto | cpu | cuda | cuda:N (gpu, gpu:N: the same).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo's outputs.")
@friendly
def demo(output_dir: str, phantom: bool, overwrite: bool, **o: Any) -> None:
    """Synthesise data, train from volume labels, reconstruct held-out lesions (a few CPU minutes)."""
    o = given(o)
    if phantom:
        o.pop("seed", None)
        o.pop("iterations", None)
        phantom_demo(Path(output_dir), slice_progress, out, overwrite=overwrite, **o)
        return
    full_demo(Path(output_dir), DemoSettings(**o), overwrite, slice_progress, fit_with_progress, out)
