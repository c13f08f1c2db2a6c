"""PNG previews a radiologist can read: three planes in the patient's frame, the heatmap over the scan.

* **Orientation.** With the volume's affine the planes are drawn in RAS, whatever order the
  file stores its axes in (an LPS-stored MRI and its RAS copy give the same picture), in
  the radiological convention of 3D Slicer and ITK-SNAP: axial and coronal with the
  patient's right on the left, sagittal with anterior on the left, superior up; each
  panel's edges carry the orientation letters. Without an affine the planes are the
  array's own (D, H, W) axes, as the letters then say.
* **Window.** ``window=(lo, hi)`` (CT: ``(-1000, 400)`` for lung, ``(-160, 240)`` for soft
  tissue); by default a CT in Hounsfield units (the 1st percentile at air, -1000 +- 100, the
  99th above 0) gets the soft-tissue window, anything else its 1st to 99th percentile inside
  the body.
* **Overlay.** The heatmap is drawn only where it reaches ``threshold`` (default: halfway
  from its median inside the body to its maximum), the rest of the scan left as it is; a
  ``mask`` (ground truth or the segmentation) is outlined in cyan.
* **Planes** pass through the peak of the heatmap's strongest component inside the body
  (the largest sum above the threshold), not through an artefact outside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np

from tomofield.errors import InputError
from tomofield.io import Heatmap, Volume, atomic_write, check_output_path

#: Default window of a CT in Hounsfield units (soft tissue: level 40, width 400).
CT_WINDOW = (-160.0, 240.0)
#: Each plane: its name, the RAS axis it is cut across, the (horizontal, vertical) RAS axes, and
#: whether the horizontal axis runs from + to - (radiological: the patient's right on the left).
_PLANES = (("axial", 2, (0, 1), True), ("coronal", 1, (0, 2), True), ("sagittal", 0, (1, 2), True))
_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))  # (negative, positive) end of x, y, z in RAS
_ARRAY_LETTERS = (("-W", "+W"), ("-H", "+H"), ("-D", "+D"))  # without an affine: the array's axes


def _ras(arrays: list[np.ndarray | None], affine: np.ndarray) -> tuple[list[np.ndarray | None], np.ndarray]:
    """(D, H, W) arrays as (x, y, z) in RAS+ by the affine, and the voxel sizes along x, y, z."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    zooms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))  # along i, j, k
    sizes = np.empty(3)
    sizes[ornt[:, 0].astype(int)] = zooms
    out = [
        None if a is None else nib.orientations.apply_orientation(np.asarray(a).transpose(2, 1, 0), ornt)
        for a in arrays
    ]
    return out, sizes


def check_window(window: Sequence[float | str], what: str | None = None) -> tuple[float, float]:
    """A display window ``(lo, hi)`` as two finite numbers with ``lo < hi``.

    Raises:
        InputError: naming ``what`` (default: the window as given) and what is wrong: not two
            numbers, a NaN or infinite bound, or ``lo >= hi``.
    """
    what = what or f"window {window!r}"
    example = "(e.g. -1000,400 for a lung CT)"
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be two numbers LO,HI with LO < HI {example}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{what} is not finite: LO,HI are finite numbers with LO < HI {example}")
    if not lo < hi:
        raise InputError(f"{what} must be two numbers LO,HI with LO < HI {example}")
    return lo, hi


def default_window(volume: np.ndarray, body: np.ndarray) -> tuple[float, float]:
    """The soft-tissue window for a CT in Hounsfield units, else the 1st-99th percentile inside the body."""
    lo, hi = np.percentile(volume, [1, 99])
    if -1100 <= lo <= -900 and hi > 0:  # air at -1000 HU and tissue above water: a CT
        return CT_WINDOW
    inside = volume[body] if body.any() else volume.ravel()
    a, b = np.percentile(inside, [1, 99])
    return (float(a), float(b)) if b > a else (float(inside.min()), float(inside.max()) + 1e-6)


def body_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels above the background: brighter than a tenth of the way from the 1st percentile to the foreground."""
    from scipy import ndimage as ndi

    low, high = np.percentile(volume, [1, 99])
    inside = volume > low + 0.1 * (high - low)
    return ndi.binary_opening(inside, iterations=1) if inside.sum() > 64 else inside


def focus(heatmap: np.ndarray, body: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """The peak of the heatmap's strongest component (largest sum above ``threshold``) inside the body."""
    from scipy import ndimage as ndi

    inside = body if body.any() else np.ones_like(body)
    strong = (heatmap >= threshold) & inside
    if not strong.any():
        masked = np.where(inside, heatmap, -np.inf)
        return cast(
            "tuple[int, int, int]", tuple(int(v) for v in np.unravel_index(int(np.argmax(masked)), heatmap.shape))
        )
    labels, n = ndi.label(strong)
    sums = ndi.sum(heatmap - threshold, labels, index=np.arange(1, n + 1))
    best = int(np.argmax(sums)) + 1
    peak = np.where(labels == best, heatmap, -np.inf)
    return cast("tuple[int, int, int]", tuple(int(v) for v in np.unravel_index(int(np.argmax(peak)), heatmap.shape)))


def write_preview(
    path: str | Path,
    heatmap: np.ndarray,
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
    overwrite: bool = False,
    mask: np.ndarray | None = None,
    *,
    affine: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    threshold: float | None = None,
) -> Path:
    """Write a PNG: the scan with the heatmap over it (top) and the heatmap alone (bottom).

    Args:
        heatmap: (D, H, W) values.
        volume: (D, H, W) input (first channel) on the same grid.
        spacing: (d, h, w) voxel size, for true aspect ratios (the affine's, when given).
        mask: optional (D, H, W) mask outlined in cyan on every panel.
        affine: the volume's voxel-to-world matrix: planes in RAS with orientation letters.
        window: the scan's display range (the module's doc has the default).
        threshold: the heatmap level drawn over the scan (the module's doc has the default).

    The path must end with ``.png``; an existing file is kept unless ``overwrite``, and a
    heatmap with NaN or infinite values is refused (there is no maximum to draw through).
    """
    check_output_path(path, overwrite, suffixes=(".png",))
    bad = int((~np.isfinite(np.asarray(heatmap, dtype=np.float64))).sum())
    if bad:
        raise InputError(f"not drawing {str(path)!r}: the heatmap holds {bad} NaN or infinite value(s)")
    if window is not None:
        window = check_window(window)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heat: np.ndarray | None
    vol: np.ndarray | None
    heat, vol = np.asarray(heatmap, dtype=np.float32), np.asarray(volume, dtype=np.float32)
    m = None if mask is None else np.asarray(mask, dtype=np.float32)
    if affine is not None:
        (heat, vol, m), sizes = _ras([heat, vol, m], affine)
        letters = _LETTERS
    else:  # the array's own axes: (D, H, W) read as (x, y, z) = (W, H, D)
        heat, vol, m = (None if a is None else np.asarray(a).transpose(2, 1, 0) for a in (heat, vol, m))
        sizes = np.asarray(spacing, dtype=np.float64)[::-1]
        letters = _ARRAY_LETTERS
    assert heat is not None and vol is not None  # only the mask may be None
    body = body_mask(vol)
    lo_w, hi_w = window if window is not None else default_window(vol, body)
    hmax = float(heat.max())
    base = float(np.median(heat[body])) if body.any() else float(np.median(heat))
    cut = threshold if threshold is not None else base + 0.5 * (hmax - base)
    at = focus(heat, body, cut)
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), constrained_layout=True)
    hlo = float(np.percentile(heat, 1))
    # the bright two thirds of inferno: the overlay's lowest level still stands out from the scan
    overlay = matplotlib.colors.ListedColormap(matplotlib.colormaps["inferno"](np.linspace(0.35, 1.0, 256)))
    im = None
    for col, (name, across, (ax_h, ax_v), flip) in enumerate(_PLANES):
        cut_at: list[slice | int] = [slice(None)] * 3
        cut_at[across] = at[across]
        planes = [None if a is None else a[tuple(cut_at)] for a in (vol, heat, m)]
        # rows: the vertical axis upwards; columns: the horizontal axis, + to - when flipped
        planes = [None if p is None else (p.T[:, ::-1] if flip else p.T) for p in planes]
        img, h, mk = planes
        assert img is not None and h is not None  # only the mask may be None
        aspect = sizes[ax_v] / sizes[ax_h]
        neg, pos = letters[ax_h]
        left, right = (pos, neg) if flip else (neg, pos)
        where = f"{name} {'xyz'[across] if affine is not None else 'WHD'[across]}={at[across]}"
        for row, ax in enumerate(axes[:, col]):
            if row == 0:
                ax.imshow(img, cmap="gray", vmin=lo_w, vmax=hi_w, origin="lower", aspect=aspect)
                shown = np.ma.masked_where(h < cut, h)
                ax.imshow(shown, cmap=overlay, vmin=cut, vmax=max(hmax, cut + 1e-12), origin="lower", aspect=aspect)
                ax.set_title(f"scan + heatmap >= {cut:.3g}, {where}")
            else:
                im = ax.imshow(h, cmap="inferno", vmin=hlo, vmax=hmax, origin="lower", aspect=aspect)
                ax.set_title(f"heatmap, {where}")
            if mk is not None and mk.max() > 0:
                ax.contour(mk, levels=[0.5], colors="cyan", linewidths=1.0)
            ax.axis("off")
            style = dict(transform=ax.transAxes, color="yellow", fontsize=11, fontweight="bold")
            ax.text(0.02, 0.5, left, ha="left", va="center", **style)
            ax.text(0.98, 0.5, right, ha="right", va="center", **style)
            ax.text(0.5, 0.98, letters[ax_v][1], ha="center", va="top", **style)
            ax.text(0.5, 0.02, letters[ax_v][0], ha="center", va="bottom", **style)
    assert im is not None  # drawn in the second row of every column
    fig.colorbar(im, ax=axes[1, :], shrink=0.8, label="heatmap")
    fig.suptitle((title + "  " if title else "") + f"(window {lo_w:.4g}..{hi_w:.4g})")

    def save(tmp: Path) -> None:
        fig.savefig(tmp, dpi=80, format="png")

    try:
        return atomic_write(path, save, overwrite=overwrite)
    finally:
        plt.close(fig)


def preview(
    path: str | Path, heatmap: Heatmap, volume: Volume, title: str = "", overwrite: bool = False, **options
) -> Path:
    """:func:`write_preview` of a :class:`~tomofield.Heatmap` (its first channel) over the ``volume`` it was made from.

    The planes are drawn in the volume's frame (its affine) at its voxel sizes; ``options``
    are :func:`write_preview`'s (``mask``, ``window``, ``threshold``).
    """
    return write_preview(
        path,
        heatmap.data[0].detach().cpu().numpy(),
        volume.data[0].detach().cpu().numpy(),
        volume.spacing,
        title=title,
        overwrite=overwrite,
        affine=volume.affine,
        **options,
    )
