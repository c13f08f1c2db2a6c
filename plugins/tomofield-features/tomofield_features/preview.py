"""RGB previews of feature volumes: the first three components as red, green, blue."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tomofield.io import atomic_write, check_output_path


def rgb_volume(features: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """(K, D, H, W) -> (D, H, W, 3) in [0, 1]: components 0, 1, 2 scaled by their percentiles.

    With fewer than three components the missing colours stay 0.
    """
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 4:
        raise ValueError(f"expected features (K, D, H, W), got shape {f.shape}")
    rgb = np.zeros((*f.shape[1:], 3), dtype=np.float32)
    for c in range(min(3, f.shape[0])):
        lo, hi = np.percentile(f[c], [lo_pct, hi_pct])
        rgb[..., c] = np.clip((f[c] - lo) / max(float(hi - lo), 1e-12), 0, 1)
    return rgb


def write_rgb_preview(
    path: str | Path,
    features: np.ndarray,
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """PNG: input (top) and RGB of the first three components (bottom), three central planes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_output_path(path, overwrite, suffixes=(".png",))
    rgb = rgb_volume(features)
    vol = np.asarray(volume, dtype=np.float32)
    d, h, w = (n // 2 for n in vol.shape)
    sd, sh, sw = spacing
    planes = [
        ("axial", vol[d], rgb[d], sh / sw),
        ("coronal", vol[:, h], rgb[:, h], sd / sw),
        ("sagittal", vol[:, :, w], rgb[:, :, w], sd / sh),
    ]
    vlo, vhi = np.percentile(vol, [0.5, 99.5])
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), constrained_layout=True)
    for col, (name, img, col_rgb, asp) in enumerate(planes):
        axes[0, col].imshow(img, cmap="gray", vmin=vlo, vmax=vhi, origin="lower", aspect=asp)
        axes[0, col].set_title(f"input, {name}")
        axes[1, col].imshow(col_rgb, origin="lower", aspect=asp)
        axes[1, col].set_title(f"components 1-3 as RGB, {name}")
        for ax in axes[:, col]:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"), overwrite=overwrite)
    finally:
        plt.close(fig)
