"""``tomofield synth``: a synthetic weakly supervised dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tomofield.cli.toolkit import (
    default_of,
    err,
    friendly,
    given,
    out,
    setting_option,
)
from tomofield.errors import InputError
from tomofield.synth import BACKGROUNDS, LAYOUTS, write_dataset
from tomofield.synth import RECORD as SYNTH_RECORD


@click.command()
@click.argument("out_dir", type=click.Path())
@setting_option(write_dataset, "--n", "Number of volumes (half positive).", type=int)
@setting_option(write_dataset, "--size", "Volume side in voxels.", type=int)
@setting_option(write_dataset, "--seed", "Seed of the volumes.", type=int)
@setting_option(write_dataset, "--val-fraction", "Share of volumes in val.csv.", type=float)
@setting_option(
    write_dataset,
    "--background",
    "plain: normalised intensities on a cubic grid; realistic: a scanner's int16 unit and offset, texture, "
    "bias field, Rician noise, a grid keeping the field of view cubic under --spacing.",
    type=click.Choice(BACKGROUNDS),
)
@setting_option(
    write_dataset,
    "--layout",
    "tomofield: images/, masks/ and the CSVs; nnunet: nnU-Net's raw dataset (imagesTr/CASE_0000.nii.gz, "
    "labelsTr/CASE.nii.gz, dataset.json) with the volume labels in labels.csv, and the CSVs.",
    type=click.Choice(LAYOUTS),
)
@click.option(
    "--spacing",
    default=None,
    help="Voxel size in mm along the image's axes i,j,k, as the viewers show them (e.g. 1,1,2.5 for thick "
    "slices along k).  [default: 1,1,1]",
)
@click.option(
    "--lesion-radius",
    default=None,
    help="Lesion sizes as LO,HI: each lesion's equivalent radius (3 V / 4 pi)^(1/3), measured from its mask, in "
    "voxels of the finest spacing (e.g. 8,10 for large lesions).  [default: the built-in sizes, 3-8 voxels of a "
    "48-voxel grid scaled with --size]",
)
@click.option(
    "--lesions",
    default=None,
    help="Lesions per positive: N, or LO,HI to draw from (e.g. 1 for a large-lesion set).  [default: 1,3; with "
    "--lesion-radius as many of 1-3 as fit]",
)
@click.option(
    "--lesion-contrast",
    default=None,
    help="Lesion brightness as LO,HI: each lesion 1 + C times as bright as the tissue around it, C drawn in this "
    "range (e.g. 0.35,0.7 for faint lesions).  [default: the built-in step, about 2-3 times as bright]",
)
@friendly
def synth(
    out_dir: str,
    spacing: str | None,
    lesion_radius: str | None,
    lesions: str | None,
    lesion_contrast: str | None,
    **o: Any,
) -> None:
    """Write a synthetic weakly supervised dataset (NIfTI images, masks, CSVs).

    synth.json beside the CSVs records the settings it was made with.
    """
    o = given(o)
    if spacing is not None:
        try:
            ijk = tuple(float(v) for v in spacing.split(","))
        except ValueError:
            ijk = ()
        if len(ijk) != 3:
            raise InputError(f"--spacing {spacing!r} is not three numbers i,j,k (e.g. 1,1,2.5)")
        o["spacing"] = ijk[::-1]  # the library's order is the tensors' (D, H, W) = (k, j, i)
    for flag, text, example in (
        ("lesion_radius", lesion_radius, "8,10"),
        ("lesion_contrast", lesion_contrast, "0.35,0.7"),
    ):
        if text is None:
            continue
        parts = text.split(",")
        try:
            o[flag] = tuple(float(v) for v in parts)
        except ValueError:
            parts = []
        if len(parts) != 2:
            raise InputError(f"--{flag.replace('_', '-')} {text!r} is not two numbers LO,HI (e.g. {example})")
    if lesions is not None:
        parts = lesions.split(",")
        try:
            counts = tuple(int(v) for v in parts)
        except ValueError:
            counts = ()
        if len(counts) not in (1, 2):
            raise InputError(f"--lesions {lesions!r} is not a count N or a range LO,HI of counts (e.g. 1 or 1,2)")
        o["n_lesions"] = counts[0] if len(counts) == 1 else counts
    n, size = o.get("n", default_of(write_dataset, "n")), o.get("size", default_of(write_dataset, "size"))
    with err.status(f"writing {n} volumes of {size}^3"):
        paths = write_dataset(out_dir, **o)
    paths = {**paths, "settings": Path(out_dir) / SYNTH_RECORD}
    out.print("wrote " + ", ".join(f"{k}: {v}" for k, v in paths.items()))
