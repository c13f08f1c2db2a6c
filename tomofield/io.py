"""NIfTI in and out with nibabel, keeping the input's affine and header geometry.

Convention (docs/design.md, "Axes and geometry", is the one place that states it): the
affine maps voxel indices ``(i, j, k)`` to millimetres; nibabel's array, and MONAI's and
torchio's channel-first tensors, are indexed ``(i, j, k[, c])`` / ``(C, i, j, k)``;
tomofield's tensors are ``(C, D, H, W)`` with ``D = k``, ``H = j``, ``W = i`` (the slice
axis of an axial scan first; SimpleITK's ``GetArrayFromImage`` order), so ``tensor[c] =
array[..., c].transpose(2, 1, 0)``. The spacing of a volume is given in the tensor's axis
order (d, h, w). :meth:`Volume.from_array` takes an array in either order with its affine;
:class:`Volume` refuses a spacing that contradicts its affine or a header of another grid.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tomofield.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


#: Array layouts :meth:`Volume.from_array` takes: ``ijk`` is the affine's voxel order
#: (nibabel, MONAI, torchio), ``dhw`` tomofield's (and SimpleITK's ``GetArrayFromImage``).
LAYOUTS = ("ijk", "dhw")
#: The frames :class:`~tomofield.EngineConfig` ``orientation`` offers (see :class:`Reorientation`).
ORIENTATIONS = ("canonical", "stored")


@dataclass
class Volume:
    """A volume: data (C, D, H, W) float32, the affine and header of its first file.

    ``affine`` maps ``(i, j, k) = (w, h, d)`` voxel indices to millimetres; ``spacing``
    is per ``(d, h, w)`` axis and must be the affine's column norms in that order. Build
    one from a nibabel, MONAI or torchio array with :meth:`from_array`.
    """

    data: Tensor
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: object = None
    paths: list[Path] = dataclasses.field(default_factory=list)
    replaced: int = 0  #: non-finite voxels set to 0 under nan_policy="zero"

    def __post_init__(self) -> None:
        if not isinstance(self.data, Tensor) or self.data.ndim != 4:
            shape = tuple(getattr(self.data, "shape", ()))
            raise InputError(
                f"Volume.data must be a (C, D, H, W) tensor, got {type(self.data).__name__} of shape {shape}; "
                "Volume.from_array(array, affine, layout='ijk') takes a nibabel/MONAI/torchio array"
            )
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise InputError(f"Volume.affine must be 4 x 4, got shape {self.affine.shape}")
        from_affine = spacing_from_affine(self.affine, "Volume")
        spacing = tuple(float(s) for s in self.spacing)
        if not np.allclose(spacing, from_affine, rtol=1e-4):
            hint = (
                "; it is the affine's (i, j, k) order, but tomofield's spacing is per (d, h, w) = (k, j, i)"
                if np.allclose(spacing, from_affine[::-1], rtol=1e-4)
                else ""
            )
            raise InputError(
                f"Volume.spacing {spacing} contradicts the affine, whose voxel sizes per (d, h, w) are "
                f"{tuple(round(v, 6) for v in from_affine)}{hint}; omit it: Volume.from_array(array, affine, layout=...) "
                "reads it from the affine"
            )
        self.spacing = spacing  # type: ignore[assignment]
        shape = getattr(self.header, "get_data_shape", None)
        if shape is not None:
            ijk = tuple(int(n) for n in shape()[:3])
            if ijk[::-1] != tuple(self.data.shape[1:]):
                raise InputError(
                    f"Volume.data has grid (D, H, W) = {tuple(self.data.shape[1:])} but its header's (i, j, k) grid "
                    f"{ijk} is {ijk[::-1]} as (D, H, W) = (k, j, i): the array is in another axis order; "
                    "Volume.from_array(array, affine, layout='ijk') converts a nibabel/MONAI/torchio array"
                )

    @classmethod
    def from_array(
        cls,
        array: Tensor | np.ndarray,
        affine: np.ndarray,
        layout: str = "ijk",
        *,
        channels: bool | None = None,
        header: object = None,
    ) -> Volume:
        """A volume from an array and its affine, in the array's axis order ``layout``.

        Args:
            array: ``(i, j, k)`` or channel-first ``(C, i, j, k)`` for ``layout="ijk"``
                (nibabel's ``get_fdata()``, a MONAI ``MetaTensor`` or torchio image without
                the batch axis); ``(D, H, W)`` or ``(C, D, H, W)`` for ``"dhw"``.
            affine: the 4 x 4 voxel-to-world matrix of the ``(i, j, k)`` indices (MONAI's
                ``meta["affine"]``, nibabel's ``img.affine``).
            channels: whether the first axis holds channels; default: when ``array`` is 4-D.
        """
        if layout not in LAYOUTS:
            raise InputError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        data = torch.as_tensor(np.asarray(array) if not isinstance(array, Tensor) else array.as_subclass(Tensor))
        channels = data.ndim == 4 if channels is None else channels
        if data.ndim != 3 + int(channels):
            want = "(C, i, j, k)" if layout == "ijk" else "(C, D, H, W)"
            raise InputError(f"expected a 3-D array or a 4-D channel-first {want} one, got shape {tuple(data.shape)}")
        if not channels:
            data = data[None]
        if layout == "ijk":
            data = data.permute(0, 3, 2, 1)
        affine = np.asarray(affine.detach().cpu() if isinstance(affine, Tensor) else affine, dtype=np.float64)
        spacing = spacing_from_affine(affine, "Volume.from_array")
        return cls(data.to(torch.float32).contiguous(), affine, spacing, header)


@dataclass(frozen=True)
class Reorientation:
    """The flips and axis swaps that turn a (..., D, H, W) tensor to the canonical frame, and back.

    Canonical is the closest RAS storage: ``W`` runs to the Right, ``H`` to Anterior, ``D``
    to Superior (nibabel's ``as_closest_canonical``, on the tensor). The engine draws its
    directions and in-plane bases in this frame, so the copies of one scan stored in other
    orders (LPS, sagittal slices) give the same heatmap, voxel for voxel. No resampling:
    an oblique affine goes to its nearest axes.
    """

    #: canonical tensor axis t (0, 1, 2 = D, H, W) is stored axis ``order[t]``
    order: tuple[int, int, int] = (0, 1, 2)
    #: per stored axis: reversed on the way to the canonical frame
    flips: tuple[bool, bool, bool] = (False, False, False)

    @classmethod
    def of(cls, affine: np.ndarray) -> Reorientation:
        """The reorientation of a volume with ``affine`` (the identity for RAS storage)."""
        from nibabel.orientations import io_orientation

        ornt = io_orientation(np.asarray(affine, dtype=np.float64))  # per voxel axis (i, j, k): world axis, sign
        if not np.all(np.isfinite(ornt)):
            return cls()
        world_of_stored = [int(ornt[2 - t, 0]) for t in range(3)]  # stored tensor axis t is voxel axis 2 - t
        order = tuple(world_of_stored.index(2 - t) for t in range(3))  # canonical D, H, W = world S, A, R
        flips = tuple(bool(ornt[2 - t, 1] < 0) for t in range(3))
        return cls(order, flips)  # type: ignore[arg-type]

    @property
    def identity(self) -> bool:
        return self.order == (0, 1, 2) and not any(self.flips)

    def forward(self, data: Tensor) -> Tensor:
        """Stored (..., D, H, W) -> canonical."""
        if self.identity:
            return data
        lead = data.ndim - 3
        flipped = [lead + t for t in range(3) if self.flips[t]]
        data = data.flip(flipped) if flipped else data
        return data.permute(*range(lead), *(lead + t for t in self.order))

    def backward(self, data: Tensor) -> Tensor:
        """Canonical (..., D, H, W) -> stored: the inverse of :meth:`forward`."""
        if self.identity:
            return data
        lead = data.ndim - 3
        data = data.permute(*range(lead), *(lead + self.order.index(t) for t in range(3)))
        flipped = [lead + t for t in range(3) if self.flips[t]]
        return data.flip(flipped) if flipped else data

    def spacing(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """The (d, h, w) spacing of the canonical tensor."""
        return tuple(float(spacing[t]) for t in self.order)  # type: ignore[return-value]


@dataclass
class Heatmap:
    """A reconstruction that knows its grid: data (K, D, H, W) on the grid of the volume it came from.

    Attributes:
        data: the heatmap, one channel per head output.
        affine: the input's voxel-to-world affine (NIfTI's (i, j, k) convention, RAS mm).
        spacing: voxel size per (d, h, w) axis in mm.
        header: the input's NIfTI header (its geometry is written back), or None.
        sources: the input's files, which :meth:`save` never replaces.
    """

    data: Tensor
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: object = None
    sources: tuple[Path, ...] = ()

    @classmethod
    def on(cls, data: Tensor, volume: Volume) -> Heatmap:
        """``data`` on the grid of ``volume`` (refused when the grids differ)."""
        if tuple(data.shape[-3:]) != tuple(volume.data.shape[1:]):
            raise InputError(
                f"heatmap grid {tuple(data.shape[-3:])} differs from the input grid {tuple(volume.data.shape[1:])}"
            )
        return cls(data, volume.affine, volume.spacing, volume.header, tuple(volume.paths))

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write as NIfTI with the input's affine and header geometry (atomic; no overwrite unless asked).

        Refused: replacing one of ``sources`` (even with ``overwrite``), and a heatmap with
        NaN or infinite values (a reconstruction that overflowed float32).
        """
        data = self.data.detach().cpu()
        bad = int((~torch.isfinite(data)).sum())
        if bad:
            raise InputError(
                f"not writing {str(path)!r}: the heatmap holds {bad} NaN or infinite value(s) of {data.numel()}, "
                "as when the reconstruction overflows float32; rescale the input so that its values stay within "
                f"+-{VALUE_LIMIT:g} (load_volume(..., check_content=True) checks this)"
            )
        return save_nifti(
            path, data, self.affine, self.header, overwrite, description="tomofield heatmap", inputs=self.sources
        )


def cache_dir() -> Path:
    """tomofield's cache directory: compiled kernels, converted weights.

    ``TOMOFIELD_CACHE`` when set, else ``tomofield`` under ``XDG_CACHE_HOME`` (default
    ``~/.cache``, so ``~/.cache/tomofield``). Nothing is created here.
    """
    base = os.environ.get("TOMOFIELD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tomofield"
    )
    return Path(base)


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


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


def _itk_image(path: Path) -> object:
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


def spacing_from_affine(affine: np.ndarray, source: str = "") -> tuple[float, float, float]:
    """Voxel size per (d, h, w) axis: the column norms of the affine's 3x3 block."""
    block = np.asarray(affine, dtype=np.float64)[:3, :3]
    ijk = np.linalg.norm(block, axis=0)
    degenerate = not np.all(np.isfinite(ijk)) or np.any(ijk <= 0)
    if not degenerate:  # columns (nearly) linearly dependent, whatever their lengths
        degenerate = abs(np.linalg.det(block)) / float(np.prod(ijk)) < 1e-6
    if degenerate:
        raise InputError(
            f"{source}: the affine is not invertible (voxel sizes {ijk.tolist()}); cannot place voxels in space"
        )
    return float(ijk[2]), float(ijk[1]), float(ijk[0])


#: float32's largest finite value: volumes are computed in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Voxel magnitudes above this are refused in volumes to reconstruct (``check_content``):
#: squares of values beyond ~1.8e19 overflow float32 (norm layers, attention), and a
#: reconstruction multiplies values by up to ~1e8 (filter, slice area, directions).
VALUE_LIMIT = 1e18
_NAN_FIX = (
    "replace them in the file, or let tomofield set them to 0: --nan-policy zero with tomofield run or "
    "tomofield features, nan_policy='zero' in Python"
)


def _f32(value: float) -> str:
    """A float32 value as it prints in float32 (``0.1``, not ``0.10000000149011612``)."""
    return str(np.float32(value))


def _range(values: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of the finite values, in float64; None when there is none."""
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.any():
            return None
        if not finite.all():
            values = values[finite]
    elif values.size == 0:
        return None
    return float(values.min()), float(values.max())


def _scaled(img: object) -> bool:
    """Whether the image's data are scaled by its header (``scl_slope``, ``scl_inter``)."""
    proxy = getattr(img, "dataobj", None)
    return float(getattr(proxy, "slope", 1.0)) != 1.0 or float(getattr(proxy, "inter", 0.0)) != 0.0


def _load_one(path: Path, nan_policy: str = "refuse") -> tuple[np.ndarray, object, int, list[tuple[float, float]]]:
    """One file as float32 (i, j, k, c), its image, the non-finite voxels replaced and each channel's file range.

    Values the format allows but float32 cannot hold are refused, naming the file and the
    values: complex voxels with an imaginary part, colour (RGB) voxels, and finite values
    beyond float32's range (float64 data, or integers times a large ``scl_slope``). Complex
    voxels whose imaginary part is 0 everywhere are read as their real part (nothing is lost).
    """
    import nibabel as nib

    if not path.exists():
        raise InputError(f"input file {str(path)!r} does not exist")
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
        img = itk if itk is not None else nib.load(str(path))
        stored = img.get_data_dtype()
        shape = tuple(int(n) for n in img.shape)
    except Exception as exc:  # nibabel, gzip and zlib raise many types on corrupt files
        raise InputError(f"cannot read {str(path)!r} as NIfTI ({type(exc).__name__}: {exc})") from exc
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
        raise InputError(f"cannot read {str(path)!r} as NIfTI ({type(exc).__name__}: {exc})") from exc
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
        paths = [Path(p) for p in paths]
    except TypeError:
        raise InputError(f"expected a path or a list of paths to NIfTI files, got {paths!r}") from None
    if not paths:
        raise InputError("no input file given")
    arrays, first, replaced = [], None, 0
    channels: list[tuple[str, str, tuple[float, float]]] = []  # each channel: file, which, range in the file
    for p in paths:
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
    spacing = spacing_from_affine(img.affine, str(paths[0]))
    lo, hi = SPACING_RANGE
    if not all(lo <= s <= hi for s in spacing):
        raise InputError(
            f"{str(paths[0])!r}: voxel size ({', '.join(f'{s:.6g}' for s in spacing)}) mm is outside [{lo}, {hi}] "
            "mm; the header's affine is probably wrong: fix the voxel size (pixdim, or the sform/qform) in the "
            "header, e.g. in 3D Slicer, and save the image again"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(data.transpose(3, 2, 1, 0)))
    return Volume(tensor, np.asarray(img.affine), spacing, img.header, paths, replaced)


# -- writing ------------------------------------------------------------------------------------
#: Why a write failed, by errno, and what to do about it.
_WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write elsewhere",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose a folder on a writable one",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
}


def write_error(path: str | Path, exc: OSError) -> InputError:
    """The InputError for an OSError raised while writing ``path``: the path, the reason, the fix."""
    reason = _WRITE_FAILURES.get(exc.errno or -1)
    if reason is None:
        reason = f"{exc.strerror or exc}; choose another output path"
    name = errno.errorcode.get(exc.errno or -1)
    return InputError(f"cannot write {str(path)!r}: {reason}" + (f" ({name})" if name else ""))


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one existing file (through links, ``..`` or case-insensitive names)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_target(path: Path, shown: str, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    """Refuse a target that cannot or must not be written: see :func:`check_output_path`."""
    try:
        _check_target_unsafe(path, shown, overwrite, inputs)
    except OSError as exc:  # a name too long, a loop of links: what writing it would meet
        raise write_error(shown, exc) from exc


def _check_target_unsafe(path: Path, shown: str, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    if path.is_dir():
        raise InputError(f"output {shown!r} is a folder; give a file name (inside it or elsewhere)")
    for q in inputs:
        if same_file(path, q):
            raise InputError(
                f"output {shown!r} is the input {str(q)!r}; writing it would destroy the input "
                "(even with --overwrite): choose another output name"
            )
    folder = next((p for p in path.parents if p.exists()), Path("."))
    if not folder.is_dir():
        raise InputError(f"cannot write {shown!r}: {str(folder)!r} is a file, not a folder; choose another path")
    if path.exists() and not overwrite:
        raise InputError(f"output {shown!r} exists; pass --overwrite to replace it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {shown!r}: the folder {str(folder)!r} is not writable; choose another")


def check_output_path(
    path: str | Path,
    overwrite: bool = False,
    suffixes: Sequence[str] = NIFTI_SUFFIXES,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Refuse early an output that could not be written or must not be.

    Refused: a wrong suffix, a folder, one of ``inputs`` (even with ``overwrite``), a path
    under a file, an existing file unless ``overwrite``, and a folder this process cannot
    write to.
    """
    shown = str(path)
    path = Path(path)
    if not shown.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise InputError(f"output {shown!r} must end with one of: {', '.join(suffixes)}")
    _check_target(path, shown, overwrite, inputs)
    return path


def _umask() -> int:
    """The process's umask (read without changing it where /proc tells)."""
    with suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_all(
    writes: Sequence[tuple[str | Path, Callable[[Path], None]]],
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
) -> list[Path]:
    """Write several files all or none: each ``write(tmp)`` on a temporary name beside its path, then rename.

    Every target is checked first (as :func:`check_output_path` does, without the suffix),
    so nothing is written when one is refused. Until every write succeeded nothing appears;
    on failure the temporary files, and folders made for them, are removed, and an OSError
    (full disk, permissions, read-only file system) becomes an InputError naming the path
    and the reason. A new file gets the permissions of the umask, as an ordinary file
    does; a replaced one keeps its own.
    """
    targets = [(Path(p), w) for p, w in writes]
    for path, _ in targets:
        _check_target(path, str(path), overwrite, inputs)
    made: list[Path] = []  # folders created here, removed again on failure
    temps: list[Path] = []
    done = False
    current = targets[0][0] if targets else Path(".")
    try:
        for path, _ in targets:
            current = path
            missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            made += [p for p in reversed(missing) if p not in made]
        umask = _umask()
        for path, write in targets:
            current = path
            suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
            # the name's start only: a temporary name must not outgrow the file system's limit
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=f".tmp{suffix}", dir=path.parent)
            os.close(fd)
            temps.append(Path(tmp))
            mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~umask
            os.chmod(tmp, mode)
            write(Path(tmp))
            if Path(tmp).exists():  # the writer may have replaced the file: the mode again
                os.chmod(tmp, mode)
        for (path, _), tmp in zip(targets, temps, strict=True):
            current = path
            os.replace(tmp, path)
        done = True
    except OSError as exc:
        raise write_error(current, exc) from exc
    finally:
        for tmp in temps if not done else []:
            with suppress(OSError):
                os.unlink(tmp)
        if not done:
            for folder in reversed(made):
                with suppress(OSError):
                    folder.rmdir()
    return [path for path, _ in targets]


def atomic_write(
    path: str | Path, write: Callable[[Path], None], overwrite: bool = False, inputs: Sequence[str | Path] = ()
) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it into place.

    Nothing appears at ``path`` unless ``write`` succeeds; an existing file is kept
    unless ``overwrite``, and one of ``inputs`` always. See :func:`atomic_write_all`.
    """
    return atomic_write_all([(path, write)], overwrite=overwrite, inputs=inputs)[0]


def to_nifti_array(data: Tensor | np.ndarray) -> np.ndarray:
    """(K, D, H, W) -> nibabel array (i, j, k) when K == 1, else (i, j, k, K)."""
    arr = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
    if arr.ndim == 3:
        arr = arr[None]
    arr = arr.transpose(3, 2, 1, 0)
    return np.ascontiguousarray(arr[..., 0] if arr.shape[3] == 1 else arr)


def save_nifti(
    path: str | Path,
    data: Tensor | np.ndarray,
    affine: np.ndarray,
    header: object | None = None,
    overwrite: bool = False,
    dtype: type = np.float32,
    description: str = "tomofield",
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Write ``data`` (K, D, H, W) or (D, H, W) atomically as NIfTI.

    With a reference ``header``, its geometry (qform, sform and their codes, units) is
    kept and only the data type, shape, scaling and description change. Values ``dtype``
    cannot hold (beyond float32's range; for an integer type, fractions or values out of
    its range) are refused, never rounded to infinity or wrapped. ``inputs`` are never
    replaced.
    """
    import nibabel as nib

    arr = _storable(to_nifti_array(data), np.dtype(dtype), path)
    if header is not None:
        hdr = header.copy()
        hdr.set_data_dtype(dtype)
        img = nib.Nifti1Image(arr, None, header=hdr)
        img.set_qform(*header.get_qform(coded=True)) if header.get_qform(coded=True)[0] is not None else None
        img.set_sform(*header.get_sform(coded=True)) if header.get_sform(coded=True)[0] is not None else None
        if header.get_sform(coded=True)[0] is None and header.get_qform(coded=True)[0] is None:
            img.set_sform(np.asarray(affine), code=2)
    else:
        img = nib.Nifti1Image(arr, np.asarray(affine))
        img.set_qform(np.asarray(affine), code=1)
        img.set_sform(np.asarray(affine), code=1)
    img.header.set_slope_inter(None, None)
    img.header["descrip"] = description.encode()[:79]
    if np.issubdtype(arr.dtype, np.floating) and arr.size:
        img.header["cal_min"], img.header["cal_max"] = float(arr.min()), float(arr.max())
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)), overwrite=overwrite, inputs=inputs)


def _storable(arr: np.ndarray, dtype: np.dtype, path: str | Path) -> np.ndarray:
    """``arr`` as ``dtype``, refused (naming ``path`` and the values) when the cast would change values."""
    if arr.dtype == dtype:
        return arr
    if np.iscomplexobj(arr):
        raise InputError(f"cannot write {str(path)!r}: complex data cannot be stored as {dtype}")
    span = _range(arr)
    if span is not None and dtype.kind == "f":
        limit = float(np.finfo(dtype).max)
        if max(abs(span[0]), abs(span[1])) > limit:
            raise InputError(
                f"cannot write {str(path)!r} as {dtype}: values span [{span[0]!r}, {span[1]!r}], beyond its "
                f"range of +-{limit:.4g}"
            )
    elif dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError(f"cannot write {str(path)!r} as {dtype}: the data hold NaN or infinite values")
        lo, hi = span if span is not None else (0.0, 0.0)
        if lo < info.min or hi > info.max or (arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr))):
            raise InputError(
                f"cannot write {str(path)!r} as {dtype}: values span [{lo!r}, {hi!r}]"
                + (" with fractions" if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)) else "")
                + f"; {dtype} holds the integers {info.min}..{info.max}"
            )
    return arr.astype(dtype)


def save_heatmap(
    path: str | Path, heatmap: Tensor | Heatmap, reference: Volume | None = None, overwrite: bool = False
) -> Path:
    """Write a heatmap on the reference volume's grid with its affine and header geometry.

    ``heatmap`` is a :class:`Heatmap` (``reference`` then unneeded) or a (K, D, H, W)
    tensor on ``reference``'s grid.
    """
    if not isinstance(heatmap, Heatmap):
        if reference is None:
            raise InputError("save_heatmap needs the reference volume for a plain tensor heatmap")
        heatmap = Heatmap.on(heatmap, reference)
    elif reference is not None:
        heatmap = dataclasses.replace(heatmap, sources=(*heatmap.sources, *reference.paths))
    return heatmap.save(path, overwrite)


def affine_for_spacing(spacing: Sequence[float]) -> np.ndarray:
    """A diagonal affine for a (d, h, w) spacing (RAS, origin at voxel 0)."""
    sd, sh, sw = (float(s) for s in spacing)
    return np.diag([sw, sh, sd, 1.0])
