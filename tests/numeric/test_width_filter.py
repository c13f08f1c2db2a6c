"""tomo-width: a second derivative over a fixed width along the normal, against exact answers."""

from __future__ import annotations

import pytest
import torch

from tomofield import Engine
from tomofield.filters import TomoFilter, WidthSecondDerivative, second_derivative_weights

# stacks of different spacing (as extent="tight" makes them): half-windows 2, 1 (clamped up) and 5
DS = torch.tensor([0.06, 0.4, 0.025], dtype=torch.float64)


def profiles(f, ds, M=9, degree=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.arange(-f.pad, M + f.pad, dtype=torch.float64)
    s = ds[:, None] * (m - (M - 1) / 2)
    coef = torch.randn(degree + 1, len(ds), 1, 2, generator=g, dtype=torch.float64)
    p = sum(coef[i] * s[..., None] ** i for i in range(degree + 1))
    return p, coef, s


def test_each_direction_takes_the_half_window_its_spacing_asks_for():
    f = WidthSecondDerivative(width=0.25, max_pad=4)
    assert f.half_windows(DS).tolist() == [2, 1, 4]  # round(0.25 / 0.12), at least 1, at most max_pad
    assert f.pad_for(DS) == 4 and f.pad == 4


@pytest.mark.parametrize("degree", [2, 3])
def test_quadratic_and_cubic_profiles_give_exactly_their_second_derivative(degree):
    f = WidthSecondDerivative(width=0.25)
    f.pad_for(DS)
    p, coef, s = profiles(f, DS, degree=degree)
    q = f(p, DS)
    assert q.shape == (3, 9, 2)  # (L, M, channels)
    mid = s[:, f.pad : s.shape[1] - f.pad][..., None]
    want = 2 * coef[2] + (6 * coef[3] * mid if degree == 3 else 0)
    torch.testing.assert_close(q, want.expand_as(q), rtol=1e-9, atol=1e-7)


def test_one_direction_is_the_fit_over_its_own_window():
    """Each row is second_derivative_weights over 2 k + 1 slices, centred, zero beyond: checked on a unit impulse."""
    f = WidthSecondDerivative(width=0.25, max_pad=5)
    ds = torch.tensor([0.06], dtype=torch.float64)  # k = 2 inside a padding of 5
    f.pad = 5
    M = 1
    rows = []
    for j in range(2 * 5 + 1):
        p = torch.zeros(1, M + 10, dtype=torch.float64)
        p[0, j] = 1.0
        rows.append(float(f(p, ds)[0, 0]) * 0.06**2)
    want = [0.0] * 3 + second_derivative_weights([1.0] * 5).tolist() + [0.0] * 3
    assert rows == pytest.approx(want, abs=1e-12)


def test_a_step_keeps_its_scale_whatever_the_spacing_where_tomo_grows_with_m():
    """A saturated score: a step of height 1 sampled at ds and ds / 2. The backprojection spreads each filtered
    sample over one spacing, so what a point near the edge gets is sum(q+) ds: equal for tomo-width where the width
    is a whole number of spacings at both (here 2 x 2 and 2 x 4 of them), twice for tomo.
    """

    def edge_weight(f, ds, M):
        f.pad_for(torch.tensor([ds])) if hasattr(f, "pad_for") else None
        s = ds * (torch.arange(-f.pad, M + f.pad, dtype=torch.float64) - (M - 1) / 2 - 0.5)
        p = (s > 0).double()[None]
        return float(f(p, torch.tensor([ds], dtype=torch.float64)).clamp_min(0).sum() * ds)

    width = WidthSecondDerivative(width=0.25)
    a, b = edge_weight(width, 0.0625, 41), edge_weight(width, 0.03125, 81)
    assert b == pytest.approx(a, rel=0.05)
    t1, t2 = edge_weight(TomoFilter(), 0.0625, 41), edge_weight(TomoFilter(), 0.03125, 81)
    assert t2 == pytest.approx(2 * t1, rel=1e-9)


def test_the_sum_head_still_returns_a_smooth_volume_and_the_plan_pads_as_asked():
    D = 24
    z, y, x = torch.meshgrid(*[torch.arange(D, dtype=torch.float32)] * 3, indexing="ij")
    blob = torch.exp(-((z - 12) ** 2 + (y - 11) ** 2 + (x - 13) ** 2) / (2 * 2.5**2))[None]
    engine = Engine(head="sum", filter="tomo-width", directions=60, slices=32, slice_size=24, device="cpu")
    plan = engine.plan(blob.shape[1:], (1.0, 1.0, 1.0))
    spacings = torch.cat([g.slice_spacing() for g in plan.groups])
    assert plan.pad == engine.filter.pad == int(engine.filter.half_windows(spacings).max()) >= 2
    heat = engine.reconstruct(blob, (1.0, 1.0, 1.0))
    assert torch.corrcoef(torch.stack([heat.flatten(), blob.flatten()]))[0, 1] > 0.99
    assert float(heat.max()) == pytest.approx(1.0, abs=0.2)
    with pytest.raises(ValueError, match="width=0 must be a positive number"):
        WidthSecondDerivative(width=0)
