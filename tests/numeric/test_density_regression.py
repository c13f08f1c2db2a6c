"""Density regression from volume-level targets (``TrainConfig(teacher=...)``).

The pieces that make the student's ``tomo`` heatmap integrate to the target are checked
against exact answers: a full training stack is a quadrature of the volume's integral,
spreading a target over a stack keeps that quadrature equal to the target, validation
reports the same integral, and an encoder that reports plane means reconstructs to a
heatmap whose integral is the ball's volume.
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
from tomofield.synth import ball_phantom
from tomofield.train import Loaded, Scaled, TrainConfig, spread_targets, stack_slices, volume_scores

SPACING = (2.0, 1.0, 1.5)  # mm, (d, h, w)


class SliceMean(nn.Module):
    """Reports each slice's mean: the ideal density encoder (its plane integral / area)."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None]


def loaded(radius_mm: float) -> tuple[Loaded, float]:
    """A ball of density 1 (per mL) and its volume in mL."""
    vol = ball_phantom((32, 40, 36), SPACING, balls=(((0.15, -0.1, 0.2), radius_mm, 1.0),))
    e = half_extents(vol.shape, SPACING, "physical").float()
    truth_ml = float(vol.sum()) * np.prod(SPACING) / 1000
    case = Case(images=(Path("x"),), label=truth_ml, mask=None, row=2)
    return Loaded(vol[None].float(), e, truth_ml, case, unit_volume_mm3(vol.shape, SPACING, "physical")), truth_ml


def test_unit_volume_is_the_maps_jacobian():
    shape, sp = (32, 40, 36), SPACING
    box_mm3 = np.prod([(n - 1) * s for n, s in zip(shape, sp, strict=True)])
    for geometry in ("physical", "normalized"):
        e = half_extents(shape, sp, geometry)
        assert float((2 * e).prod()) * unit_volume_mm3(shape, sp, geometry) == pytest.approx(box_mm3, rel=1e-12)


@pytest.mark.parametrize("extent", ["tight", "unit"])
def test_training_stack_is_a_quadrature_of_the_integral(extent):
    vol, truth = loaded(9.0)
    cfg = TrainConfig(
        task="regression", slices_per_volume=48, slice_size=64, extent=extent, intensity_jitter=0.0
    ).resolved()
    gen = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(12):  # random normal, bases, zoom-out and shift each time
        x, w = stack_slices(vol, cfg, gen)
        assert x.shape == (48, 1, 64, 64) and w.shape == (48,)
        estimates.append(float((SliceMean()(x)[:, 0] * w).sum()))
    # each draw is one stratified quadrature; the augmentation never crops the cross-section
    assert np.mean(estimates) == pytest.approx(truth, rel=0.03)
    assert max(abs(e / truth - 1) for e in estimates) < 0.12


def test_spread_targets_keeps_each_stack_integral_exact():
    g = torch.Generator().manual_seed(1)
    excess = torch.rand(4, 10, generator=g) * (torch.rand(4, 10, generator=g) > 0.5)
    excess[2] = 0.0  # a positive stack where the teacher sees nothing
    weight = torch.rand(4, 10, generator=g) + 0.1
    target = torch.tensor([1.5, 0.0, 2.0, 0.7])
    density, usable = spread_targets(excess, weight, target)
    assert usable.tolist() == [True, True, False, True]
    torch.testing.assert_close((density * weight).sum(1)[usable], target[usable])
    assert torch.all(density[1] == 0) and torch.all(density[2] == 0)
    # proportional to the evidence within a stack, zero where there is none
    ratio = density[0][excess[0] > 0] / excess[0][excess[0] > 0]
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))
    assert torch.all(density[0][excess[0] == 0] == 0)


def test_validation_reports_the_integral_of_a_density_encoder():
    (v1, t1), (v2, t2) = loaded(6.0), loaded(10.0)
    cfg = TrainConfig(task="regression", slice_size=64, val_directions=6, val_slices=40, extent="tight", teacher="t")
    got = volume_scores(SliceMean(), [v1, v2], cfg)
    assert got.tolist() == pytest.approx([t1, t2], rel=0.04)
    # a scaled encoder scales the integral; the plain regression score is the max, another quantity
    torch.testing.assert_close(volume_scores(Scaled(SliceMean(), 3.0), [v1], cfg), 3 * got[:1])
    plain = TrainConfig(task="regression", slice_size=64, val_directions=6, val_slices=40).resolved()
    assert not torch.allclose(volume_scores(SliceMean(), [v1], plain), got[:1], rtol=0.2)


def test_a_density_encoder_reconstructs_to_the_target():
    """What the student is trained towards: its tomo heatmap integrates to the target (mL)."""
    vol, truth = loaded(8.0)
    eng = Engine(SliceMean(), "logit", "tomo", directions=150, slices=40, slice_size=48, device="cpu", extent="tight")
    heat = eng.reconstruct(vol.data, spacing=SPACING)
    assert float(heat.sum()) * np.prod(SPACING) / 1000 == pytest.approx(truth, rel=0.1)
