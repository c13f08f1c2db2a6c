"""The ``integral`` regression loss: its slice quadrature is the volume integral.

With an encoder that reports the mean of the density over the slice (the ``sum`` head's
convention, what the ``tomo`` filter inverts), the training stacks and the validation
stacks both integrate to the phantom's integral in mL, and the encoder that minimises
the loss reconstructs the density itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tomofield import Engine
from tomofield.dataset import Case
from tomofield.geometry import half_extents, unit_volume_mm3
from tomofield.phantom import ball_phantom
from tomofield.train import Loaded, TrainConfig, augmented_slices, volume_scores

SPACING = (2.0, 1.0, 1.5)  # mm, (d, h, w)


class SliceMean(nn.Module):
    """Reports each slice's mean: the ideal encoder for the integral loss."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None]


def loaded(radius_mm: float, extent: str = "tight") -> tuple[Loaded, float]:
    vol = ball_phantom((32, 40, 36), SPACING, balls=(((0.15, -0.1, 0.2), radius_mm, 1.0),))
    e = half_extents(vol.shape, SPACING, "physical").float()
    truth_ml = float(vol.sum()) * np.prod(SPACING) / 1000
    case = Case(images=(Path("x"),), label=truth_ml, mask=None, row=2)
    return Loaded(vol[None].float(), e, truth_ml, case, unit_volume_mm3(vol.shape, SPACING, "physical")), truth_ml


@pytest.mark.parametrize("extent", ["tight", "unit"])
def test_training_stack_quadrature_is_the_integral(extent):
    vol, truth = loaded(9.0)
    cfg = TrainConfig(task="regression", loss="integral", slices_per_volume=48, slice_size=64, extent=extent,
                      intensity_jitter=0.0)
    gen = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(12):  # random normal, bases, zoom-out and shift each time
        x, w = augmented_slices(vol, cfg, gen)
        estimates.append(float((SliceMean()(x)[:, 0] * w).sum()))
    # each draw is one stratified quadrature; the augmentation never crops the cross-section
    assert np.mean(estimates) == pytest.approx(truth, rel=0.03)
    assert max(abs(e / truth - 1) for e in estimates) < 0.12


def test_the_other_losses_keep_their_augmentation():
    vol, _ = loaded(9.0)
    cfg = TrainConfig(task="regression", loss="mse", slices_per_volume=8, slice_size=16)
    x, w = augmented_slices(vol, cfg, torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 16, 16) and w.shape == (8,) and (w > 0).all()


def test_validation_score_is_the_integral_and_scales_with_the_ball():
    (v1, t1), (v2, t2) = loaded(6.0), loaded(10.0)
    cfg = TrainConfig(task="regression", loss="integral", slice_size=64, val_directions=6, val_slices=40,
                      extent="tight")
    got = volume_scores(SliceMean(), [v1, v2], cfg)
    assert got.tolist() == pytest.approx([t1, t2], rel=0.04)
    cfg_max = TrainConfig(task="regression", loss="mse", slice_size=64, val_directions=6, val_slices=40)
    assert not torch.allclose(volume_scores(SliceMean(), [v1], cfg_max), got[:1], rtol=0.2)  # the max: another quantity


def test_the_loss_optimum_reconstructs_to_the_target():
    """The encoder that makes the quadrature exact gives a tomo heatmap integrating to the target."""
    vol, truth = loaded(8.0)
    eng = Engine(SliceMean(), "logit", "tomo", directions=150, slices=40, slice_size=48, device="cpu",
                 extent="tight")
    heat = eng.reconstruct(vol.data, spacing=SPACING)
    assert float(heat.sum()) * np.prod(SPACING) / 1000 == pytest.approx(truth, rel=0.1)
