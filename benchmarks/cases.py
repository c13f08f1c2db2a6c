"""Benchmark cases: sizes from the issue, inputs made on the fly, seeded."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from tomofield.encoders import timm_encoder
from tomofield.synth import ball_phantom


@dataclass(frozen=True)
class Case:
    """A reconstruction size: volume (D, H, W) and spacing (mm), slices h x h, L, M."""

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    slice_size: int
    directions: int
    slices: int

    def with_(self, **changes) -> Case:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


CASES = {
    "cpu": Case("cpu", (64, 64, 64), (2.5, 1.0, 1.0), 64, 256, 32),
    "paper": Case("paper", (64, 512, 512), (5.0, 0.8, 0.8), 224, 2000, 100),
}


def volume(case: Case, kind: str = "body", seed: int = 0) -> Tensor:
    """A (1, D, H, W) input.

    ``phantom``: balls on an exactly zero background (slices away from the balls are
    empty). ``body``: the same balls inside a large faint ellipsoid with noise of
    standard deviation 0.02 everywhere, like air and tissue in a scan: no slice is
    exactly empty.
    """
    D, H, W = case.shape
    vol = ball_phantom(case.shape, case.spacing)
    if kind == "phantom":
        return vol[None]
    if kind != "body":
        raise ValueError(f"unknown volume kind {kind!r}; valid: phantom, body")
    axes = [torch.linspace(-1, 1, n) for n in (D, H, W)]
    d, h, w = torch.meshgrid(*axes, indexing="ij")
    body = ((d / 0.85) ** 2 + (h / 0.8) ** 2 + (w / 0.75) ** 2 <= 1).float() * 0.2
    noise = torch.randn(case.shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    return (vol + body + noise)[None]


def encoder(name: str = "resnet10t", seed: int = 0) -> nn.Module:
    """A randomly initialised (seeded) single-logit encoder with frozen batch norm."""
    torch.manual_seed(seed)
    return timm_encoder(name, in_chans=1, num_classes=1, norm="frozen-bn").eval()
