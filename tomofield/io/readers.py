"""Readers: NIfTI with nibabel; NRRD, MetaImage and DICOM series through SimpleITK (the ``itk`` extra)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from tomofield.errors import InputError
from tomofield.io.files import NIFTI_SUFFIXES, check_regular_file
from tomofield.io.nifti import FLOAT32_MAX, VALUE_LIMIT, _range, is_nifti, spacing_from_affine
from tomofield.io.volume import Volume

if TYPE_CHECKING:
    from nibabel.nifti1 import Nifti1Image

#: Formats read through SimpleITK (``pip install 'tomofield[itk]'``): NRRD and MetaImage files,
#: and DICOM series folders.
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_NEEDS_ITK = "reading {what} needs SimpleITK, an optional extra: pip install 'tomofield[itk]' (or SimpleITK)"


def is_dicom_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder of DICOM files (the ``DICM`` mark at byte 128 of one of its first files)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for f in sorted(p for p in path.iterdir() if p.is_file())[:8]:
        try:
            with open(f, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def _itk_image(path: Path) -> Nifti1Image:
    """A DICOM series folder or an NRRD/MetaImage file as an in-memory NIfTI image, its geometry in RAS.

    ITK's arrays are (k, j, i) and its geometry LPS: ``x_LPS = origin + direction diag(spacing) (i, j, k)``;
    NIfTI's affine is that with x and y negated.
    """
    import nibabel as nib

    what = f"DICOM series {str(path)!r}" if path.is_dir() else f"{str(path)!r}"
    try:
        import SimpleITK as sitk
    except ImportError:
        raise InputError(_NEEDS_ITK.format(what=what)) from None
    import locale

    # GDCM may reset the process's locale to "C" (seen writing DICOM): Python's text I/O then turns ASCII
    saved = locale.setlocale(locale.LC_ALL)
    try:
        if path.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if len(series) != 1:
                raise InputError(
                    f"{what} holds {len(series)} DICOM series ({', '.join(series) or 'none readable'}); give a folder "
                    "of one series"
                )
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:  # ITK's errors
        raise InputError(f"cannot read {what} ({str(exc).strip().splitlines()[-1]})") from exc
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    if image.GetDimension() != 3:
        raise InputError(f"{what} is a {image.GetDimension()}D image; tomofield reads 3D volumes")
    arr = sitk.GetArrayFromImage(image)  # (k, j, i[, c])
    arr = arr.transpose(2, 1, 0, 3) if arr.ndim == 4 else arr.transpose(2, 1, 0)
    lps = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3) * np.asarray(image.GetSpacing())
    flip = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = flip @ lps
    affine[:3, 3] = flip @ np.asarray(image.GetOrigin(), dtype=np.float64)
    img = nib.Nifti1Image(np.ascontiguousarray(arr), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


_NAN_FIX = (
    "replace them in the file, or let tomofield set them to 0: --nan-policy zero with tomofield run or "
    "tomofield features, nan_policy='zero' in Python"
)


def _f32(value: float) -> str:
    """A float32 value as it prints in float32 (``0.1``, not ``0.10000000149011612``)."""
    return str(np.float32(value))


def _scaled(img: object) -> bool:
    """Whether the image's data are scaled by its header (``scl_slope``, ``scl_inter``)."""
    proxy = getattr(img, "dataobj", None)
    return float(getattr(proxy, "slope", 1.0)) != 1.0 or float(getattr(proxy, "inter", 0.0)) != 0.0


def _load_one(path: Path, nan_policy: str = "refuse") -> tuple[np.ndarray, Nifti1Image, int, list[tuple[float, float]]]:
    """One file as float32 (i, j, k, c), its image, the non-finite voxels replaced and each channel's file range.

    Values the format allows but float32 cannot hold are refused, naming the file and the
    values: complex voxels with an imaginary part, colour (RGB) voxels, and finite values
    beyond float32's range (float64 data, or integers times a large ``scl_slope``). Complex
    voxels whose imaginary part is 0 everywhere are read as their real part (nothing is lost).
    """
    import nibabel as nib

    if not path.exists():
        raise InputError(f"input file {str(path)!r} does not exist")
    check_regular_file(path, "input file")  # a FIFO or a device: reading would wait or never end
    via_itk = is_dicom_folder(path) or (path.is_file() and path.name.lower().endswith(ITK_SUFFIXES))
    if path.is_dir() and not via_itk:
        raise InputError(
            f"input {str(path)!r} is a folder but not a DICOM series; give a NIfTI file ({', '.join(NIFTI_SUFFIXES)}), "
            f"a file of {', '.join(ITK_SUFFIXES)}, or a folder of one DICOM series"
        )
    if not is_nifti(path) and not via_itk:
        raise InputError(
            f"input file {str(path)!r} is not NIfTI; valid suffixes: {', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)} "
            "(or a DICOM series folder)"
        )
    itk = _itk_image(path) if via_itk else None  # names its own errors
    try:
        # a NIfTI file (checked above): nibabel's load is typed as any image format's
        img = itk if itk is not None else cast("Nifti1Image", nib.load(str(path)))
        stored = img.get_data_dtype()
        shape = tuple(int(n) for n in img.shape)
    except Exception as exc:  # nibabel, gzip and zlib raise many types on corrupt files
        raise _unreadable(path, exc) from exc
    if stored.fields:  # NIfTI RGB24 / RGBA32: a record of colour bytes per voxel
        raise InputError(
            f"{str(path)!r} holds colour voxels ({', '.join(stored.names)}), not intensities; tomofield reads scalar "
            "volumes: save each colour as its own NIfTI and give them together as channels "
            "(tomofield run R.nii.gz G.nii.gz B.nii.gz), or convert the image to grey"
        )
    if 0 in shape:
        raise InputError(f"{str(path)!r} has shape {shape}: an axis without voxels (every axis needs >= 2 voxels)")
    try:
        data = np.asanyarray(img.dataobj)  # scaled by scl_slope/scl_inter (in float64) when the header says so
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    if np.iscomplexobj(data):
        imag = np.abs(data.imag)
        if np.any(imag != 0) or not np.isfinite(imag).all():
            peak = np.nanmax(imag) if np.isfinite(imag).any() else float("nan")
            raise InputError(
                f"{str(path)!r} holds complex voxels ({stored}) with imaginary parts up to {float(peak)!r}; "
                "tomofield reads real volumes: save the magnitude (numpy.abs) or the real part as a real NIfTI"
            )
        data = data.real
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if data.ndim == 5 and data.shape[3] == 1:  # (i, j, k, 1, c): NIfTI vector images
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputError(f"{str(path)!r} has shape {data.shape}: expected a 3D volume or 4D (channels last)")
    if min(data.shape[:3]) < 2:
        raise InputError(
            f"{str(path)!r} has shape {data.shape[:3]}: a 2D image, not a volume (every axis needs >= 2 voxels)"
        )
    ranges = [_range(data[..., c]) for c in range(data.shape[3])]
    known = [r for r in ranges if r is not None]
    if known:
        lo, hi = min(r[0] for r in known), max(r[1] for r in known)
        if max(abs(lo), abs(hi)) > FLOAT32_MAX:
            raise InputError(
                f"{str(path)!r}: values span [{lo!r}, {hi!r}] ({stored}"
                + (", scaled by the header's scl_slope/scl_inter" if _scaled(img) else "")
                + f"), beyond float32's range of +-{FLOAT32_MAX:.4g} in which tomofield computes; "
                "rescale the image (e.g. to other units) and save it again"
            )
    replaced = 0
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        replaced = int(bad.sum())
        if replaced and nan_policy == "refuse":
            nans = int(np.isnan(data).sum())
            raise InputError(
                f"{str(path)!r}: {replaced} non-finite voxel(s) of {data.size} ({nans} NaN, {replaced - nans} "
                f"infinite); {_NAN_FIX}"
            )
        if replaced:
            data = np.where(bad, 0, data)
    arr = np.asarray(data, dtype=np.float32)
    return arr, img, replaced, [r if r is not None else (0.0, 0.0) for r in ranges]


#: A NIfTI-1 header's size: a file whose (decompressed) bytes are fewer holds no header.
_NIFTI_HEADER_BYTES = 348
_SHORT_DATA = re.compile(r"Expected (\d+) bytes, got (\d+) bytes")


def _damage(path: Path, exc: BaseException) -> str | None:
    """How ``path`` is damaged, in words (truncated, its compression broken), or None when its bytes read whole."""
    short = _SHORT_DATA.search(str(exc))
    if short:  # nibabel: the header describes more voxel data than the file holds
        return f"truncated: its header describes {short[1]} bytes of voxels, the file holds {short[2]}"
    try:
        size = path.stat().st_size
        if path.name.lower().endswith(".gz"):
            import gzip
            import zlib

            count = 0
            try:
                with gzip.open(path, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        count += len(chunk)
            except EOFError:
                return f"truncated: its compressed data end early ({size} bytes on disk)"
            except (OSError, zlib.error) as bad:  # gzip.BadGzipFile is an OSError
                return f"corrupt: its gzip data do not decompress ({bad})"
        else:
            count = size
    except OSError:
        return None
    if count < _NIFTI_HEADER_BYTES:
        return f"truncated: {count} bytes, fewer than a NIfTI header's {_NIFTI_HEADER_BYTES}"
    return None


def _unreadable(path: Path, exc: BaseException) -> InputError:
    """The error of a file nibabel cannot read: a truncated or corrupt file said to be so."""
    damage, said = _damage(path, exc), " ".join(str(exc).split())  # nibabel's messages span lines
    if damage is not None:
        why = "" if said in damage else f" ({type(exc).__name__}: {said})"
        return InputError(f"cannot read {str(path)!r}: the file is {damage}; copy or download it again{why}")
    return InputError(f"cannot read {str(path)!r} as NIfTI ({type(exc).__name__}: {said})")


NAN_POLICIES = ("refuse", "zero")
#: Voxel sizes (mm) outside this range are taken for a broken header.
SPACING_RANGE = (1e-3, 1e3)


def load_volume(
    paths: str | Path | Sequence[str | Path], nan_policy: str = "refuse", check_content: bool = False
) -> Volume:
    """Load one NIfTI (3D, or 4D with channels last) or several, stacked as channels.

    Several files must share their grid: same shape and affine. Any stored type is read
    into float32; values it cannot hold are refused (see ``_load_one``), never rounded to
    infinity.

    Args:
        nan_policy: ``refuse`` NaN/Inf voxels, or replace them by ``zero`` (the count is
            kept in ``Volume.replaced``).
        check_content: the volume is to be reconstructed: also refuse constant channels
            and values beyond +-``VALUE_LIMIT``.
    """
    if nan_policy not in NAN_POLICIES:
        raise InputError(f"unknown NaN policy {nan_policy!r}; valid: {', '.join(NAN_POLICIES)}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        files = [Path(p) for p in paths]
    except TypeError:
        raise InputError(f"expected a path or a list of paths to NIfTI files, got {paths!r}") from None
    if not files:
        raise InputError("no input file given")
    arrays, first, replaced = [], None, 0
    channels: list[tuple[str, str, tuple[float, float]]] = []  # each channel: file, which, range in the file
    for p in files:
        arr, img, n_bad, ranges = _load_one(p, nan_policy)
        if first is None:
            first = (p, arr.shape[:3], img)
        else:
            p0, shape0, img0 = first
            if arr.shape[:3] != shape0:
                raise InputError(
                    f"{str(p)!r} has grid {arr.shape[:3]} but {str(p0)!r} has {shape0}: channels must share a grid"
                )
            if not np.allclose(img.affine, img0.affine, atol=1e-3):
                raise InputError(f"{str(p)!r} and {str(p0)!r} have different affines: channels must be co-registered")
        arrays.append(arr)
        replaced += n_bad
        channels += [
            (repr(str(p)), f"channel {j}" if len(ranges) > 1 else "the volume", r) for j, r in enumerate(ranges)
        ]
    assert first is not None
    data = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=3)
    if check_content:
        for c, (name, which, (flo, fhi)) in enumerate(channels):
            if max(abs(flo), abs(fhi)) > VALUE_LIMIT:
                raise InputError(
                    f"{name}: {which}'s values span [{flo!r}, {fhi!r}]; tomofield reconstructs |values| up to "
                    f"{VALUE_LIMIT:g} "
                    "(float32 overflows beyond): rescale the image (e.g. to other units) and save it again"
                )
            lo, hi = float(data[..., c].min()), float(data[..., c].max())
            if lo == hi and flo != fhi:
                raise InputError(
                    f"{name}: {which}'s values span [{flo!r}, {fhi!r}], which float32 cannot tell apart (all read as "
                    f"{_f32(lo)}): subtract the offset or rescale the image and save it again"
                )
            if lo == hi:
                raise InputError(f"{name}: {which} is constant ({_f32(lo)}): nothing to reconstruct")
    img = first[2]
    spacing = spacing_from_affine(img.affine, str(files[0]))
    lo, hi = SPACING_RANGE
    if not all(lo <= s <= hi for s in spacing):
        raise InputError(
            f"{str(files[0])!r}: voxel size ({', '.join(f'{s:.6g}' for s in spacing)}) mm is outside [{lo}, {hi}] "
            "mm; the header's affine is probably wrong: fix the voxel size (pixdim, or the sform/qform) in the "
            "header, e.g. in 3D Slicer, and save the image again"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(data.transpose(3, 2, 1, 0)))
    return Volume(tensor, np.asarray(img.affine), spacing, img.header, files, replaced)
