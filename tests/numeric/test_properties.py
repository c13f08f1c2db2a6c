"""Property-based checks of the geometry (hypothesis): invariants for any input."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tomofield import Engine
from tomofield.geometry import Directions, random_bases, sample_slices, slice_points
from tomofield.pipeline.backproject import backproject_reference

unit = st.floats(-1, 1, allow_nan=False)
SETTINGS = settings(max_examples=25, deadline=None)


def normal_from(x: float, y: float, z: float) -> torch.Tensor:
    v = torch.tensor([[x, y, z]], dtype=torch.float64)
    return v / v.norm() if float(v.norm()) > 1e-3 else torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)


@SETTINGS
@given(unit, unit, unit, st.integers(0, 2**31 - 1))
def test_bases_are_orthonormal_for_any_normal(x, y, z, seed):
    n = normal_from(x, y, z)
    u, v = random_bases(n, torch.Generator().manual_seed(seed))
    frame = torch.cat([n, u, v])
    torch.testing.assert_close(frame @ frame.T, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(torch.linalg.det(frame)) > 0  # right-handed: v = n x u


@SETTINGS
@given(unit, unit, unit, st.floats(-0.3, 0.3), st.floats(0.5, 3.0), st.integers(0, 1000))
def test_slices_of_a_constant_volume_are_constant_inside_the_box(x, y, z, s, value, seed):
    n = normal_from(x, y, z).float()
    u, v = random_bases(n.double(), torch.Generator().manual_seed(seed))
    vol = torch.full((1, 9, 11, 10), value)
    e = torch.tensor([1.0, 0.8, 0.6])
    pts = slice_points(n, u.float(), v.float(), torch.tensor([s]), torch.ones(1), torch.ones(1), (17, 17))
    out = sample_slices(vol, pts, e)[0, 0]
    inside = (pts[0].abs() <= e * (1 - 1e-4)).all(-1)
    outside = (pts[0].abs() > e * 1.3).any(-1)  # beyond one voxel (2 / (9 - 1) = 0.25) of the faces
    assert bool(inside.any())
    torch.testing.assert_close(out[inside], torch.full_like(out[inside], value), atol=1e-5, rtol=1e-5)
    assert bool((out[outside] == 0).all())


@SETTINGS
@given(st.integers(1, 6), st.integers(3, 9), st.floats(-2, 2), st.integers(0, 1000))
def test_backprojection_of_constant_profiles_is_constant(L, M, c, seed):
    """Within every stack's support the sum of constant profiles is L * c."""
    n = torch.randn(L, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    n = n / n.norm(dim=1, keepdim=True)
    u, v = random_bases(n, torch.Generator().manual_seed(seed + 1))
    ones = torch.ones(L)
    dirs = Directions(n.float(), u.float(), v.float(), ones, ones, ones, M)
    q = torch.full((L, M, 1, 1, 1), c)
    pts = (torch.rand(64, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1) / math.sqrt(3)
    got = backproject_reference(q, dirs, pts, (8, 8))
    torch.testing.assert_close(got, torch.full_like(got, L * c), atol=1e-4, rtol=1e-5)


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 200), st.integers(0, 100))
def test_reconstruction_does_not_depend_on_batch_size(batch, seed):
    vol = torch.rand(1, 12, 12, 12, generator=torch.Generator().manual_seed(seed))
    kw = dict(head="sum", filter="tomo", directions=9, slices=5, slice_size=12, device="cpu", seed=seed)
    ref = Engine(batch_size=64, **kw).reconstruct(vol)
    torch.testing.assert_close(Engine(batch_size=batch, **kw).reconstruct(vol), ref, atol=1e-5, rtol=1e-5)
