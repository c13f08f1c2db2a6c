"""The plugin's CLI command, added to ``tomofield`` through the ``register_commands`` hook.

Built on :mod:`tomofield.cli.toolkit`, the toolkit tomofield offers plugins' commands.
"""

from __future__ import annotations

from pathlib import Path

import click

from tomofield.cli.toolkit import friendly, out
from tomofield.errors import InputError
from tomofield.io import check_output_path, save_nifti


@click.command("dicom-to-nifti")
@click.argument("series_dir", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="Output volume (.nii or .nii.gz).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@friendly
def dicom_to_nifti(series_dir: str, output: str, overwrite: bool) -> None:
    """Convert one DICOM series folder to NIfTI (slices sorted in space, affine from the headers)."""
    from tomofield_medical.dicom import read_series

    check_output_path(output, overwrite)
    folder = Path(series_dir)
    if not folder.is_dir():
        raise InputError(f"series folder {series_dir!r} does not exist or is not a folder")
    series = read_series(folder)
    save_nifti(output, series.data, series.affine, overwrite=overwrite, description="tomofield dicom-to-nifti")
    d, h, w = series.data.shape
    out.print(f"wrote {output}: {d} slices of {h} x {w}" + (f" ({series.description})" if series.description else ""))
