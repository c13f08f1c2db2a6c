"""``tomofield prepare``: a public dataset, as downloaded, into dataset CSVs (plugins register the datasets)."""

from __future__ import annotations

from pathlib import Path

import click

from tomofield import plugins
from tomofield.cli.toolkit import (
    err,
    friendly,
    out,
)
from tomofield.errors import InputError


@click.command()
@click.argument("name")
@click.argument("raw_dir", type=click.Path())
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(), help="Output dataset directory.")
@click.option("--seed", default=0, show_default=True, help="Seed of the patient-level train/validation split.")
@click.option("--val-fraction", default=0.2, show_default=True, help="Share of each class's patients in val.csv.")
@friendly
def prepare(name: str, raw_dir: str, out_dir: str, seed: int, val_fraction: float) -> None:
    """Turn a public dataset, as downloaded, into tomofield dataset CSVs (plugins register NAME)."""
    comp = plugins.get("dataset", name)
    if not Path(raw_dir).is_dir():
        raise InputError(f"raw dataset folder {raw_dir!r} does not exist or is not a folder")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"output {out_dir!r} is a file; give a new or empty folder for the dataset")
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise InputError(f"output directory {out_dir!r} is not empty; choose another")
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must be strictly between 0 and 1, got {val_fraction}")
    preparer = comp.factory()
    with err.status(f"preparing {name} from {raw_dir}"):
        paths = preparer.prepare(Path(raw_dir), Path(out_dir), seed=seed, val_fraction=val_fraction)
    out.print(f"{name}: " + ", ".join(f"{k}: {v}" for k, v in paths.items()))
