"""Heatmap post-processors: ``fn(heatmap (K, D, H, W), volume (C, D, H, W)) -> heatmap``."""

from __future__ import annotations

from torch import Tensor


def clip_negative(heatmap: Tensor, volume: Tensor) -> Tensor:
    """Set negative values to zero (lesion evidence is positive)."""
    return heatmap.clamp_min(0)


def normalize(heatmap: Tensor, volume: Tensor) -> Tensor:
    """Min-max scale each channel to [0, 1] (constant channels become 0)."""
    flat = heatmap.reshape(heatmap.shape[0], -1)
    lo = flat.min(dim=1).values.reshape(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.reshape(-1, 1, 1, 1)
    span = (hi - lo).clamp_min(1e-12)
    return ((heatmap - lo) / span).where(hi > lo, heatmap.new_zeros(()))


def mask_background(heatmap: Tensor, volume: Tensor) -> Tensor:
    """Zero the heatmap where every channel of the input is exactly zero (padding, air)."""
    return heatmap * (volume != 0).any(dim=0, keepdim=True).to(heatmap)
