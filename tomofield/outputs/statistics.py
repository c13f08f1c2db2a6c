"""Per-lesion statistics: one row per connected component of a mask, the table a clinician reads.

Each component (26-connectivity) of a mask on a heatmap's grid gets its size (voxels and
millilitres), its centroid in RAS+ millimetres (the NIfTI affine applied to the mean voxel
centre), its bounding box in the viewers' voxel order ``(i, j, k)`` (inclusive, as 3D Slicer
and ITK-SNAP number voxels: ``i`` is the tensor's ``W``, ``j`` its ``H``, ``k`` its ``D``),
the peak and mean of the heatmap inside it, and the mean intensity of each input channel.
Rows are numbered ``lesion`` 1..n from the largest component down. :func:`write_table`
writes them as CSV or JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tomofield.errors import InputError
from tomofield.io import Heatmap, Volume, atomic_write, check_output_path

#: The suffixes :func:`write_table` writes.
TABLE_SUFFIXES = (".csv", ".json")
#: The columns of every row, before the per-channel ``mean_intensity_c0``, ``mean_intensity_c1``...
COLUMNS = (
    "lesion",
    "voxels",
    "volume_ml",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "i_min",
    "i_max",
    "j_min",
    "j_max",
    "k_min",
    "k_max",
    "peak",
    "mean",
)


def table_columns(channels: int, case: bool = False) -> list[str]:
    """The columns of a table of a volume of ``channels`` input channels (``case`` first for a dataset's)."""
    return [*(["case"] if case else []), *COLUMNS, *(f"mean_intensity_c{c}" for c in range(channels))]


def _numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def lesion_table(mask: Any, heatmap: Heatmap, volume: Volume) -> list[dict[str, Any]]:
    """One row per connected component (26-connectivity) of ``mask``, the largest first.

    Args:
        mask: a (D, H, W) boolean or label array or tensor on ``heatmap``'s grid (nonzero =
            lesion; a leading axis of one channel is accepted); its components are labelled
            anew, so touching labels are one lesion.
        heatmap: the single-channel heatmap; its affine places the voxels.
        volume: the input on the same grid, for the mean intensity of each channel.

    Returns:
        Rows with the keys of :func:`table_columns`: ``lesion`` (1..n by volume, descending;
        equal volumes in storage order), ``voxels``, ``volume_ml`` (voxels times the
        voxel volume ``|det A|`` of the affine's 3 x 3 part, over 1000), ``centroid_x_mm``,
        ``centroid_y_mm``, ``centroid_z_mm`` (``affine @ (i, j, k, 1)`` of the mean voxel
        centre: RAS+ world coordinates), ``i_min`` ... ``k_max`` (inclusive voxel indices),
        ``peak`` and ``mean`` (the heatmap inside) and ``mean_intensity_c0``, ... per channel.

    Raises:
        InputError: a heatmap of several channels, or a mask or volume on another grid.
    """
    from scipy import ndimage

    from tomofield.evaluation import components

    heat_data = _numpy(heatmap.data)
    if heat_data.ndim != 4 or heat_data.shape[0] != 1:
        raise InputError(
            f"lesion statistics need a single-channel heatmap (1, D, H, W); this one has shape {heat_data.shape}"
        )
    grid = tuple(heat_data.shape[1:])
    labels_in = _numpy(mask)
    if labels_in.ndim == 4 and labels_in.shape[0] == 1:
        labels_in = labels_in[0]
    if tuple(labels_in.shape) != grid:
        raise InputError(f"the mask's grid {tuple(labels_in.shape)} differs from the heatmap's (D, H, W) grid {grid}")
    scan = _numpy(volume.data)
    if tuple(scan.shape[1:]) != grid:
        raise InputError(f"the volume's grid {tuple(scan.shape[1:])} differs from the heatmap's (D, H, W) grid {grid}")

    labels, n = components(labels_in != 0, 26)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    voxels = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-voxels, kind="stable")  # the largest first; ties in storage order
    affine = np.asarray(heatmap.affine, dtype=np.float64)
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    heat = heat_data[0].astype(np.float64, copy=False)
    dhw = np.asarray(ndimage.center_of_mass(np.ones(grid), labels, index), dtype=np.float64).reshape(n, 3)
    ijk1 = np.column_stack([dhw[:, ::-1], np.ones(n)])  # (d, h, w) -> (i, j, k) = (w, h, d)
    world = ijk1 @ affine.T
    boxes = ndimage.find_objects(labels, max_label=n)
    peaks = np.asarray(ndimage.maximum(heat, labels, index), dtype=np.float64).reshape(n)
    means = np.asarray(ndimage.mean(heat, labels, index), dtype=np.float64).reshape(n)
    intensities = [
        np.asarray(ndimage.mean(scan[c].astype(np.float64, copy=False), labels, index), dtype=np.float64).reshape(n)
        for c in range(scan.shape[0])
    ]
    rows = []
    for rank, m in enumerate(order, start=1):
        d, h, w = boxes[m]  # type: ignore[misc]  # every label 1..n is present
        row: dict[str, Any] = {
            "lesion": rank,
            "voxels": int(voxels[m]),
            "volume_ml": float(voxels[m]) * voxel_mm3 / 1000.0,
            "centroid_x_mm": float(world[m, 0]),
            "centroid_y_mm": float(world[m, 1]),
            "centroid_z_mm": float(world[m, 2]),
            "i_min": int(w.start),
            "i_max": int(w.stop) - 1,
            "j_min": int(h.start),
            "j_max": int(h.stop) - 1,
            "k_min": int(d.start),
            "k_max": int(d.stop) - 1,
            "peak": float(peaks[m]),
            "mean": float(means[m]),
        }
        row.update({f"mean_intensity_c{c}": float(v[m]) for c, v in enumerate(intensities)})
        rows.append(row)
    return rows


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_table(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    overwrite: bool = False,
    *,
    columns: Sequence[str] | None = None,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Write ``rows`` (of :func:`lesion_table`) as ``.csv`` (a header row, even with no rows) or ``.json`` (a list).

    ``columns``: the CSV's columns and their order; default: the keys of the rows in order
    of appearance, or :data:`COLUMNS` when there are none. A value a row lacks, or one that
    is not finite, is an empty cell in CSV and null in JSON. Written atomically; an
    existing file is replaced only with ``overwrite``, one of ``inputs`` never.

    Raises:
        InputError: another suffix than ``.csv`` or ``.json``, a path that cannot or must
            not be written (see :func:`tomofield.io.check_output_path`).
    """
    path = check_output_path(path, overwrite, suffixes=TABLE_SUFFIXES, inputs=inputs)
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen) if seen else list(COLUMNS)
    clean = [{k: _finite_or_none(row.get(k)) for k in columns} for row in rows]
    if path.name.lower().endswith(".json"):
        text = json.dumps(clean, indent=2, allow_nan=False) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in clean)
        text = buf.getvalue()
    return atomic_write(path, lambda t: t.write_text(text, encoding="utf-8"), overwrite=overwrite, inputs=inputs)
