"""Filters, backprojection and whole reconstructions against analytic answers."""

from __future__ import annotations

import math

import pytest
import torch

from tomofield import Engine
from tomofield.demo import correlation
from tomofield.filters import NoFilter, TomoFilter
from tomofield.geometry import Directions, fibonacci_directions, random_bases, voxel_points
from tomofield.pipeline.backproject import backproject
from tomofield.synth import ball_phantom


def test_tomo_filter_is_exact_on_quadratics():
    s = torch.linspace(-1.2, 1.2, 13, dtype=torch.float64)  # ds = 0.2
    p = (3 * s**2 - s + 0.5)[None, :, None, None, None]
    q = TomoFilter()(p, torch.tensor([0.2], dtype=torch.float64))
    assert q.shape == (1, 11, 1, 1, 1)
    torch.testing.assert_close(q, torch.full_like(q, 6.0))
    assert NoFilter()(p, torch.tensor([0.2])) is p


def _dirs(L: int, M: int, seed: int = 0) -> Directions:
    n = fibonacci_directions(L).float()
    u, v = random_bases(n.double(), torch.Generator().manual_seed(seed))
    ones = torch.ones(L)
    return Directions(n, u.float(), v.float(), ones, ones.clone(), ones.clone(), M)


def test_backprojection_of_a_linear_profile_is_linear_in_x_dot_n():
    """Profiles q_l(s) = s are interpolated exactly: the sum is sum_l x.n_l."""
    L, M = 6, 9
    dirs = _dirs(L, M)
    s = torch.linspace(-1, 1, M)
    q = s.repeat(L, 1)[:, :, None, None, None]
    pts = torch.rand(50, 3) * 1.1 - 0.55
    got = backproject(q, dirs, pts, (16, 16))
    expected = (pts @ dirs.normals.T).sum(1)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)


def test_backprojection_zero_beyond_half_a_step_past_the_stack():
    dirs = _dirs(1, 5)
    dirs.normals[:] = torch.tensor([1.0, 0, 0])
    q = torch.ones(1, 5, 1, 1, 1)
    pts = torch.tensor([[1.0, 0, 0], [1.25, 0, 0], [1.5, 0, 0], [1.6, 0, 0], [-1.5, 0.3, 0]])
    got = backproject(q, dirs, pts, (8, 8))[0]
    torch.testing.assert_close(got, torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0]))


def test_map_backprojection_of_uniform_maps_equals_scalar_path():
    L, M = 5, 7
    dirs = _dirs(L, M, seed=2)
    scalar = torch.randn(L, M, 2, 1, 1)
    maps = scalar.expand(L, M, 2, 4, 4).contiguous()
    pts = torch.rand(40, 3) * 0.8 - 0.4  # projections stay inside every slice's square
    torch.testing.assert_close(
        backproject(maps, dirs, pts, (32, 32)), backproject(scalar, dirs, pts, (32, 32)), atol=1e-5, rtol=1e-5
    )


def test_map_cells_land_on_their_slice_pixels():
    """An axis-aligned stack whose maps equal the slices themselves reads back each voxel."""
    D, H, W = 5, 6, 4
    vol = torch.randn(D, H, W)
    n, u, v = torch.tensor([[1.0, 0, 0]]), torch.tensor([[0, 1.0, 0]]), torch.tensor([[0, 0, 1.0]])
    one = torch.ones(1)
    dirs = Directions(n, u, v, one, one, one, D)
    q = vol[None, :, None]  # (1, M=D, K=1, h=H, w=W): maps at full slice resolution
    pts = voxel_points((D, H, W), torch.ones(3, dtype=torch.float64))
    got = backproject(q, dirs, pts, (H, W))
    torch.testing.assert_close(got[0], vol.flatten(), atol=1e-5, rtol=1e-5)


def test_sum_tomo_reconstructs_ball_intensity():
    """Inverse Radon with the exact constant: a unit ball comes back near 1, outside near 0."""
    vol = ball_phantom((40, 40, 40), (1, 1, 1), [((0.0, 0.0, 0.0), 10.0, 1.0)])
    eng = Engine(
        head="sum", filter="tomo", directions=200, slices=40, slice_size=40, geometry="normalized", device="cpu"
    )
    heat = eng.reconstruct(vol)[0]
    inner = ball_phantom((40, 40, 40), (1, 1, 1), [((0.0, 0.0, 0.0), 7.0, 1.0)]) > 0
    outer = ball_phantom((40, 40, 40), (1, 1, 1), [((0.0, 0.0, 0.0), 14.0, 1.0)]) == 0
    assert abs(float(heat[inner].mean()) - 1.0) < 0.1
    assert abs(float(heat[outer].mean())) < 0.02
    assert correlation(heat, vol) > 0.9


def test_hemisphere_equals_sphere_up_to_sampling_noise():
    vol = ball_phantom((32, 32, 32), (2.0, 1.0, 1.0), [((0.2, 0.1, -0.2), 7.0, 1.0), ((-0.4, -0.3, 0.3), 5.0, 0.6)])
    kw = dict(head="sum", filter="tomo", slices=32, slice_size=32, device="cpu")
    hemi = Engine(directions=300, hemisphere=True, **kw).reconstruct(vol, (2.0, 1.0, 1.0))
    sphere = Engine(directions=300, hemisphere=False, **kw).reconstruct(vol, (2.0, 1.0, 1.0))
    assert correlation(hemi, sphere) > 0.98
    assert abs(float(hemi.sum() / sphere.sum()) - 1) < 0.05
    assert correlation(hemi, vol) > 0.85 and correlation(sphere, vol) > 0.85


def test_averaging_filter_of_sum_head_is_mean_plane_value():
    """With 'none' a constant volume gives the mean over directions of the slice means."""
    vol = torch.full((1, 16, 16, 16), 2.0)
    heat = Engine(
        head="sum", filter="none", directions=20, slices=8, slice_size=16, geometry="normalized", device="cpu"
    ).reconstruct(vol)
    # the centre voxel lies on the central slice of every stack (s = 0) where the unit
    # square [-1, 1]^2 lies inside the cube only for axis-aligned planes: the mean is < 2
    centre = float(heat[0, 8, 8, 8])
    assert 0.5 < centre < 2.0
    assert torch.allclose(heat, heat.flip(1).flip(2).flip(3), atol=0.25)


def test_results_do_not_depend_on_batch_size_and_are_deterministic():
    vol = ball_phantom((24, 24, 24), (1, 1, 1), [((0.1, 0.0, 0.2), 6.0, 1.0)])
    kw = dict(head="sum", filter="tomo", directions=40, slices=12, slice_size=24, device="cpu")
    a = Engine(batch_size=7, **kw).reconstruct(vol)
    b = Engine(batch_size=500, **kw).reconstruct(vol)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(a, Engine(batch_size=7, **kw).reconstruct(vol))
    assert not torch.equal(a, Engine(batch_size=7, seed=1, **kw).reconstruct(vol))


def test_multichannel_sum_head_reconstructs_each_channel():
    a = ball_phantom((24, 24, 24), (1, 1, 1), [((0.3, 0.0, 0.0), 5.0, 1.0)])
    b = ball_phantom((24, 24, 24), (1, 1, 1), [((-0.3, 0.2, 0.0), 6.0, 1.0)])
    heat = Engine(head="sum", filter="tomo", directions=150, slices=24, slice_size=24, device="cpu").reconstruct(
        torch.stack([a, b])
    )
    assert heat.shape == (2, 24, 24, 24)
    assert correlation(heat[0], a) > 0.85 and correlation(heat[1], b) > 0.85
    assert correlation(heat[0], b) < 0.2


def test_tight_extent_reaches_corners_unit_does_not():
    """A ball in a corner of a cube: outside the unit offsets along diagonal normals."""
    vol = ball_phantom((32, 32, 32), (1, 1, 1), [((0.8, 0.8, 0.8), 3.5, 1.0)])
    kw = dict(head="sum", filter="tomo", directions=300, slices=40, slice_size=40, geometry="normalized", device="cpu")
    tight = Engine(extent="tight", **kw).reconstruct(vol)
    unit = Engine(extent="unit", **kw).reconstruct(vol)
    assert correlation(tight, vol) > correlation(unit, vol) + 0.1
    assert math.isfinite(float(tight.sum()))


def test_sum_tomo_integral_is_the_ball_volume_for_coarse_slices():
    """Slice means times ``slice_area`` are plane integrals: the heatmap integrates to the ball.

    With a 20-pixel slice the area ``4 a b`` (instead of the pixel grid's rectangle rule)
    would be (19/20)^2 = 0.90 of it.
    """
    spacing = (2.0, 1.0, 1.0)
    ball = ball_phantom((24, 40, 40), spacing, [((0.1, -0.1, 0.05), 9.0, 1.0)])
    eng = Engine(head="sum", filter="tomo", directions=200, slices=40, slice_size=20, device="cpu", extent="tight")
    heat = eng.reconstruct(ball[None], spacing)
    assert float(heat.sum()) / float(ball.sum()) == pytest.approx(1.0, abs=0.04)
