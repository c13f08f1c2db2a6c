"""Intensity normalisation of volumes: the data's scale and offset taken out before slicing.

Scanners store intensities in any unit and offset: CT in Hounsfield units (air at -1000, or
stored with an intercept at 0), MRI in arbitrary units that differ from scan to scan by a
factor of several. An encoder trained on one scale sees noise on another, so a run records
how its volumes were normalised and the :class:`~tomofield.Engine` applies the same to every
volume it reconstructs.

``volume`` (the training default) maps each channel of each volume on its own:

* the **background** ``b`` is the 1st percentile of the channel (air, or the scanner's
  floor), mapped to 0, so it matches the zeros the slicer samples outside the grid;
* the **scale** ``s`` is the median of the foreground, the voxels above
  ``b + 0.1 (p99 - b)``, minus ``b``: tissue maps to about 1. A median of the foreground
  does not move when lesions (a few per cent of the body) make a positive brighter, so
  positives and negatives of the same anatomy are scaled alike.

``x -> (x - b) / s``. ``zscore`` subtracts each channel's mean and divides by its standard
deviation over the whole grid (air included), the common recipe of a few lines of PyTorch.
``none`` leaves the values as stored (the runs before this setting).
Percentiles are taken on at most :data:`SAMPLE` voxels per channel, a fixed stride through
the volume, so the result is deterministic and costs one pass.

>>> import torch
>>> x = torch.zeros(1, 8, 8, 8); x[:, 2:6, 2:6, 2:6] = 3.0
>>> y = normalize(1000 * x - 1024, "volume")   # the same volume in other units and offset
>>> torch.allclose(normalize(x, "volume"), y), float(y.min()), float(y.max())
(True, 0.0, 1.0)
"""

from __future__ import annotations

import torch
from torch import Tensor

from tomofield.errors import InputError

#: The normalisations a run or an engine may name.
MODES = ("volume", "zscore", "none")
#: Voxels per channel the percentiles are taken on (a fixed stride through larger volumes).
SAMPLE = 1 << 21


def reference(data: Tensor) -> tuple[Tensor, Tensor]:
    """Background level and scale of each channel of a (C, D, H, W) volume: two (C,) tensors.

    A channel with no foreground above its background (constant) gets scale 1.
    """
    flat = data.detach().reshape(data.shape[0], -1).to(torch.float32)
    stride = max(1, -(-flat.shape[1] // SAMPLE))
    sample = flat[:, ::stride]
    q = torch.quantile(sample, torch.tensor([0.01, 0.99], device=sample.device), dim=1)
    low, high = q[0], q[1]
    scales = []
    for c in range(sample.shape[0]):
        fg = sample[c][sample[c] > low[c] + 0.1 * (high[c] - low[c])]
        s = fg.median() - low[c] if fg.numel() else torch.zeros((), device=sample.device)
        scales.append(s if bool(s > 0) and bool(torch.isfinite(s)) else torch.ones((), device=sample.device))
    return low, torch.stack(scales)


def normalize(data: Tensor, mode: str) -> Tensor:
    """``data`` (C, D, H, W) normalised by ``mode`` (one of :data:`MODES`); ``none`` returns it as is.

    Raises:
        InputError: an unknown mode.
    """
    if mode == "none":
        return data
    if mode == "zscore":
        flat = data.reshape(data.shape[0], -1).to(torch.float32)
        stride = max(1, -(-flat.shape[1] // SAMPLE))
        mean, std = flat[:, ::stride].mean(1), flat[:, ::stride].std(1)
        std = torch.where(std > 0, std, torch.ones_like(std))
        shape = (-1,) + (1,) * (data.dim() - 1)
        return (data - mean.reshape(shape).to(data.dtype)) / std.reshape(shape).to(data.dtype)
    if mode != "volume":
        raise InputError(f"unknown intensity normalisation {mode!r}; valid: {', '.join(MODES)}")
    low, scale = reference(data)
    shape = (-1,) + (1,) * (data.dim() - 1)
    return (data - low.reshape(shape).to(data.dtype)) / scale.reshape(shape).to(data.dtype)
