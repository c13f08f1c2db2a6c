"""NIfTI in and out with nibabel, keeping the input's affine and header geometry.

Convention (docs/design.md, "Axes and geometry", is the one place that states it): the
affine maps voxel indices ``(i, j, k)`` to millimetres; nibabel's array, and MONAI's and
torchio's channel-first tensors, are indexed ``(i, j, k[, c])`` / ``(C, i, j, k)``;
tomofield's tensors are ``(C, D, H, W)`` with ``D = k``, ``H = j``, ``W = i`` (the slice
axis of an axial scan first; SimpleITK's ``GetArrayFromImage`` order), so ``tensor[c] =
array[..., c].transpose(2, 1, 0)``. The spacing of a volume is given in the tensor's axis
order (d, h, w). :meth:`Volume.from_array` takes an array in either order with its affine;
:class:`Volume` refuses a spacing that contradicts its affine or a header of another grid.

The package: :mod:`~tomofield.io.volume` (the data types), :mod:`~tomofield.io.readers`
(:func:`load_volume`), :mod:`~tomofield.io.nifti` (the writer and the affine's geometry)
and :mod:`~tomofield.io.files` (atomic writes and output checks, used throughout).
"""

from tomofield.io.files import (
    NIFTI_SUFFIXES,
    atomic_write,
    atomic_write_all,
    cache_dir,
    check_name_lengths,
    check_output_path,
    check_regular_file,
    name_limit,
    same_file,
    special_file,
    write_error,
)
from tomofield.io.nifti import (
    FLOAT32_MAX,
    VALUE_LIMIT,
    affine_for_spacing,
    is_nifti,
    save_nifti,
    spacing_from_affine,
    to_nifti_array,
)
from tomofield.io.readers import (
    ITK_SUFFIXES,
    NAN_POLICIES,
    SPACING_RANGE,
    is_dicom_folder,
    load_volume,
)
from tomofield.io.volume import LAYOUTS, ORIENTATIONS, Heatmap, Reorientation, Volume, save_heatmap

__all__ = [
    "FLOAT32_MAX",
    "ITK_SUFFIXES",
    "LAYOUTS",
    "NAN_POLICIES",
    "NIFTI_SUFFIXES",
    "ORIENTATIONS",
    "SPACING_RANGE",
    "VALUE_LIMIT",
    "Heatmap",
    "Reorientation",
    "Volume",
    "affine_for_spacing",
    "atomic_write",
    "atomic_write_all",
    "cache_dir",
    "check_name_lengths",
    "check_output_path",
    "check_regular_file",
    "is_dicom_folder",
    "is_nifti",
    "load_volume",
    "name_limit",
    "same_file",
    "save_heatmap",
    "save_nifti",
    "spacing_from_affine",
    "special_file",
    "to_nifti_array",
    "write_error",
]
