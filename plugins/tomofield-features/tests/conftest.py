"""Shared fixtures of the tomofield-features tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tomofield import plugins


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Every test sees the plugin registry as installed, whatever the last one did."""
    plugins.reset()
    yield
    plugins.reset()


class MeanEncoder(nn.Module):
    """A fake timm encoder: features are the slice itself, pooled features its pixel mean.

    Its pre-logits vector is the per-channel slice mean, the core ``sum`` head, so the
    features head with the ``tomo`` filter must return the input, channel by channel.
    """

    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.outputs = outputs

    def forward_features(self, x):
        return x * self.scale

    def forward_head(self, x, pre_logits: bool = False):
        pooled = x.mean(dim=(2, 3))
        return pooled if pre_logits else pooled[:, :1].repeat(1, self.outputs)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@pytest.fixture
def mean_encoder() -> MeanEncoder:
    return MeanEncoder()
