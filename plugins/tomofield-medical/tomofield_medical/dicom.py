"""DICOM series (one folder of single-frame slices) to a (D, H, W) array and a NIfTI affine.

Convention: tensor axes are (d, h, w) = (slice, row, column); slices are sorted by their
position along the normal ``row_dir x col_dir``. The affine is nibabel's (RAS) for the NIfTI
array (i, j, k) = (column, row, slice): DICOM's patient coordinates are LPS, so x and y
change sign. ``ImageOrientationPatient`` holds the direction of increasing column index
first, then of increasing row index; ``PixelSpacing`` is (between rows, between columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomofield.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class SeriesInfo:
    """A series folder and what its first file says about it."""

    folder: Path
    files: list[Path]
    description: str
    uid: str  # SOPInstanceUID of the first file
    series_uid: str
    error: str | None = None  # why the first file could not be read, if it could not


@dataclass
class Series:
    """A loaded series: data (D, H, W) float32 after rescale, RAS affine, per-slice ids."""

    data: np.ndarray
    affine: np.ndarray
    instance: np.ndarray  # InstanceNumber of each tensor slice
    uids: list[str]  # SOPInstanceUID of each tensor slice
    description: str
    folder: Path

    @property
    def lps_axes(self) -> np.ndarray:
        """Unit LPS direction of increasing d, h, w (rows of a 3 x 3 array)."""
        m = (LPS_TO_RAS @ self.affine)[:3, :3]
        cols = m / np.linalg.norm(m, axis=0)
        return cols[:, [2, 1, 0]].T


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency of the plugin
        raise InputError("reading DICOM needs pydicom: pip install pydicom") from exc
    return pydicom


def series_files(folder: Path) -> list[Path]:
    """The files of a series folder (hidden files and obvious non-DICOM side files skipped)."""
    skip = (".json", ".txt", ".xml", ".csv", ".xlsx", ".md", ".nii", ".gz", ".png", ".jpg")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and not p.name.lower().endswith(skip)
    )


def read_header(path: Path):
    """One file's header (no pixels); unreadable files raise InputError naming the path."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, OSError, ValueError...
        raise InputError(f"{str(path)!r}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def series_info(folder: Path) -> SeriesInfo | None:
    """Describe a folder holding a DICOM series, or None when it holds no file.

    An unreadable first file does not raise here (the series may not be needed): its
    :attr:`SeriesInfo.error` says why, for the caller to raise if it needs the series.
    """
    files = series_files(folder)
    if not files:
        return None
    try:
        ds = read_header(files[0])
    except InputError as exc:
        return SeriesInfo(folder, files, "", "", "", str(exc))
    return SeriesInfo(
        folder,
        files,
        str(getattr(ds, "SeriesDescription", "") or ""),
        str(getattr(ds, "SOPInstanceUID", "") or ""),
        str(getattr(ds, "SeriesInstanceUID", "") or ""),
    )


def read_series(folder: Path, files: list[Path] | None = None) -> Series:
    """Read every slice of a series folder into a volume with its affine."""
    pydicom = _pydicom()
    files = series_files(folder) if files is None else files
    if len(files) < 2:
        raise InputError(f"{str(folder)!r}: a DICOM series needs at least 2 slices, found {len(files)} file(s)")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as exc:
            raise InputError(f"{str(f)!r}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
        slices.append((f, ds))
    series_uids = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(series_uids) > 1:
        raise InputError(f"{str(folder)!r}: files of {len(series_uids)} different series in one folder")
    first_path, first = slices[0]
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        for f, ds in slices:
            if getattr(ds, tag, None) is None:
                raise InputError(f"{str(f)!r}: no {tag}; cannot place the slice in space")
    if int(getattr(first, "NumberOfFrames", 1) or 1) > 1:
        raise InputError(
            f"{str(first_path)!r}: multi-frame DICOM is not supported; convert the series to "
            "single-frame files or NIfTI"
        )
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]  # directions of increasing column, increasing row
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise InputError(f"{str(first_path)!r}: ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors")
    shape = (int(first.Rows), int(first.Columns))
    for f, ds in slices:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise InputError(f"{str(f)!r}: its orientation differs from {str(first_path)!r}'s; not one volume")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise InputError(
                f"{str(f)!r}: {int(ds.Rows)} x {int(ds.Columns)} pixels but {str(first_path)!r} "
                f"has {shape[0]} x {shape[1]}"
            )
    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices])
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    along, pos = along[order], pos[order]
    slices = [slices[i] for i in order]
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise InputError(
            f"{str(folder)!r}: {str(slices[k][0])!r} and {str(slices[k + 1][0])!r} lie at the same "
            "position; several acquisitions in one series folder?"
        )
    step = float(gaps.mean())
    if np.max(np.abs(gaps - step)) > 0.05 * step + 1e-3:
        raise InputError(
            f"{str(folder)!r}: slices are not evenly spaced (gaps {gaps.min():.3f} to "
            f"{gaps.max():.3f} mm); missing slices?"
        )
    data = np.empty((len(slices), *shape), dtype=np.float32)
    for d, (f, ds) in enumerate(slices):
        try:
            px = ds.pixel_array
        except Exception as exc:
            raise InputError(
                f"{str(f)!r}: cannot decode its pixel data ({type(exc).__name__}: {exc}); a "
                "compressed transfer syntax may need pylibjpeg or gdcm"
            ) from exc
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        data[d] = px.astype(np.float32) * slope + intercept
    dr, dc = (float(v) for v in first.PixelSpacing)
    slice_vec = (pos[-1] - pos[0]) / (len(slices) - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, slice_vec, pos[0]
    instance = np.array([int(getattr(ds, "InstanceNumber", 0) or 0) for _, ds in slices])
    uids = [str(getattr(ds, "SOPInstanceUID", "")) for _, ds in slices]
    return Series(data, LPS_TO_RAS @ lps, instance, uids, str(getattr(first, "SeriesDescription", "") or ""), folder)
