"""Shared fixtures of the tomofield-gradcam tests: tiny seeded encoders, slices and a volume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tomofield import plugins
from tomofield.encoders import build_encoder


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Every test sees the plugin registry as installed, whatever the last one did."""
    plugins.reset()
    yield
    plugins.reset()


def _encoder(norm: str, classes: int = 1, seed: int = 0) -> nn.Module:
    """A random resnet10t, seeded; the caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_encoder("resnet10t", in_chans=1, num_classes=classes, pretrained=False, norm=norm)
    return model.eval()


@pytest.fixture(scope="module")
def gn_model() -> nn.Module:
    """Group norm, as ``tomofield train`` makes from scratch."""
    return _encoder("group-norm")


@pytest.fixture(scope="module")
def fb_model() -> nn.Module:
    """Frozen batch norm at its initial statistics: no bias before the logit, so the network is
    positively homogeneous and a slice scaled by c has raw maps scaled by c (for the linear methods)."""
    return _encoder("frozen-bn")


@pytest.fixture(scope="module")
def three_logits() -> nn.Module:
    """Frozen batch norm and three outputs (FinerCAM compares a class with its neighbours)."""
    return _encoder("frozen-bn", classes=3)


@pytest.fixture
def slices() -> torch.Tensor:
    """Four 32 x 32 slices: noise and a bright disc at a different place in each."""
    gen = torch.Generator().manual_seed(1)
    x = 0.3 * torch.randn(4, 1, 32, 32, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for i, (cy, cx) in enumerate([(8, 8), (20, 12), (12, 24), (24, 24)]):
        x[i, 0] += 2.0 * (((yy - cy) ** 2 + (xx - cx) ** 2) <= 25).float()
    return x


@pytest.fixture
def volume() -> torch.Tensor:
    """(1, 16, 16, 16): noise, a bright ball and a dimmer one."""
    gen = torch.Generator().manual_seed(2)
    vol = 0.1 * torch.rand(1, 16, 16, 16, generator=gen)
    z, y, x = torch.meshgrid(*(torch.arange(16.0),) * 3, indexing="ij")
    vol[0] += 1.0 * (((z - 5) ** 2 + (y - 6) ** 2 + (x - 9) ** 2) <= 9).float()
    vol[0] += 0.5 * (((z - 11) ** 2 + (y - 10) ** 2 + (x - 5) ** 2) <= 4).float()
    return vol
