"""Writers of small fake datasets in the real on-disk formats (NIfTI with nibabel, DICOM with pydicom).

Independent of the plugin's own code, so that the tests check the readers against files
written the way the public datasets write them. Arrays here are (D, H, W); NIfTI files
store them as (i, j, k) = (W, H, D).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data).astype(dtype).transpose(2, 1, 0), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array (D, H, W) or (C, D, H, W), affine) of a written volume."""
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj)
    arr = arr.transpose(2, 1, 0) if arr.ndim == 3 else arr.transpose(3, 2, 1, 0)
    return arr, img.affine


def world(affine: np.ndarray, d, h, w) -> np.ndarray:
    """RAS points of tensor indices (d, h, w) (broadcast), stacked on the last axis."""
    ijk = np.stack(np.broadcast_arrays(np.asarray(w, float), np.asarray(h, float), np.asarray(d, float)), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    *,
    ipp0: Sequence[float],
    iop: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_step: float,
    description: str,
    patient: str,
    series_number: int,
    instance_reversed: bool = True,
    rescale: tuple[float, float] | None = None,
    uid_prefix: str = "1.2.826.0.1.3680043.8.498",
) -> list[str]:
    """Write ``volume`` (D, H, W, uint16) as one single-frame MR file per slice; returns the SOP UIDs by d.

    Slice ``d`` lies at ``ipp0 + d * slice_step * normal`` (normal = row x column direction).
    Instance numbers run against d when ``instance_reversed`` (as in many breast MRI series),
    and the files are named ``1-NN.dcm`` in instance order like TCIA's downloads.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(iop, float)
    normal = np.cross(iop[:3], iop[3:])
    D = volume.shape[0]
    series_uid = f"{uid_prefix}.{zlib.crc32(patient.encode())}.{series_number}"
    uids = []
    for d in range(D):
        instance = D - d if instance_reversed else d + 1
        sop_uid = f"{series_uid}.{instance}"
        uids.append(sop_uid)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"1-{instance:02d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{uid_prefix}.1", series_uid
        ds.Modality, ds.PatientID, ds.SeriesDescription = "MR", patient, description
        ds.SeriesNumber, ds.InstanceNumber = series_number, instance
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ipp0, float) + d * slice_step * normal]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = float(slice_step)
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.PixelData = np.ascontiguousarray(volume[d].astype(np.uint16)).tobytes()
        try:
            pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
        except TypeError:  # pydicom < 3
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(str(path), write_like_original=False)
    return uids


def write_xlsx(path: Path, rows: list[list[object]]) -> Path:
    """A one-sheet workbook written by openpyxl (as Excel would), for the xlsx reader."""
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    for row in rows:
        ws.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(str(path))
    return path


def write_table(path: Path, rows: list[list[object]]) -> Path:
    """CSV or xlsx by the suffix."""
    if path.suffix == ".xlsx":
        return write_xlsx(path, rows)
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path
