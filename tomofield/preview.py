"""PNG previews: three orthogonal planes through the heatmap maximum."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tomofield.errors import InputError
from tomofield.io import atomic_write, check_output_path


def _planes(vol: np.ndarray, at: Sequence[int]) -> list[np.ndarray]:
    d, h, w = at
    return [vol[d], vol[:, h, :], vol[:, :, w]]


def write_preview(
    path: str | Path,
    heatmap: np.ndarray,
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
    overwrite: bool = False,
    mask: np.ndarray | None = None,
) -> Path:
    """Write a PNG: input with the heatmap overlaid (top) and the heatmap alone (bottom).

    Args:
        heatmap: (D, H, W) values; planes pass through its maximum.
        volume: (D, H, W) input (first channel) on the same grid.
        spacing: (d, h, w) voxel size, for true aspect ratios.
        mask: optional (D, H, W) ground truth, drawn as a cyan contour on every panel.

    The path must end with ``.png``; an existing file is kept unless ``overwrite``, and a
    heatmap with NaN or infinite values is refused (there is no maximum to draw through).
    """
    check_output_path(path, overwrite, suffixes=(".png",))
    bad = int((~np.isfinite(np.asarray(heatmap, dtype=np.float64))).sum())
    if bad:
        raise InputError(f"not drawing {str(path)!r}: the heatmap holds {bad} NaN or infinite value(s)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heatmap, volume = np.asarray(heatmap, dtype=np.float32), np.asarray(volume, dtype=np.float32)
    at = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    sd, sh, sw = spacing
    names = [f"axial d={at[0]}", f"coronal h={at[1]}", f"sagittal w={at[2]}"]
    aspects = [sh / sw, sd / sw, sd / sh]
    lo, hi = np.percentile(heatmap, 1), float(heatmap.max())
    vlo, vhi = np.percentile(volume, [0.5, 99.5])
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), constrained_layout=True)
    masks = _planes(np.asarray(mask, dtype=np.float32), at) if mask is not None else [None] * 3
    for col, (img, heat, name, asp, m) in enumerate(
        zip(_planes(volume, at), _planes(heatmap, at), names, aspects, masks, strict=True)
    ):
        ax = axes[0, col]
        ax.imshow(img, cmap="gray", vmin=vlo, vmax=vhi, origin="lower", aspect=asp)
        alpha = np.clip((heat - lo) / max(hi - lo, 1e-12), 0, 1) * 0.7
        ax.imshow(heat, cmap="inferno", vmin=lo, vmax=hi, origin="lower", aspect=asp, alpha=alpha)
        ax.set_title(f"input + heatmap, {name}")
        ax.axis("off")
        ax = axes[1, col]
        im = ax.imshow(heat, cmap="inferno", vmin=lo, vmax=hi, origin="lower", aspect=asp)
        if m is not None and m.max() > 0:
            for a in axes[:, col]:
                a.contour(m, levels=[0.5], colors="cyan", linewidths=1.0)
        ax.set_title(f"heatmap, {name}")
        ax.axis("off")
    fig.colorbar(im, ax=axes[1, :], shrink=0.8, label="heatmap")
    if title:
        fig.suptitle(title)

    def save(tmp: Path) -> None:
        fig.savefig(tmp, dpi=80, format="png")

    try:
        return atomic_write(path, save, overwrite=overwrite)
    finally:
        plt.close(fig)
