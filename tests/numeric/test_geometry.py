"""Geometry conventions pinned exactly."""

from __future__ import annotations

import math

import pytest
import torch

from tomofield.geometry import (
    fibonacci_directions,
    half_extents,
    random_bases,
    sample_slices,
    slice_offsets,
    slice_points,
    stack_extents,
    voxel_points,
)


def axis_slices(vol: torch.Tensor, e: torch.Tensor, size) -> torch.Tensor:
    """Slices with normal e_d, u = e_h, v = e_w at the D voxel layers."""
    D = vol.shape[1]
    n = torch.tensor([[1.0, 0, 0]]).repeat(D, 1)
    u = torch.tensor([[0, 1.0, 0]]).repeat(D, 1)
    v = torch.tensor([[0, 0, 1.0]]).repeat(D, 1)
    offsets = slice_offsets(e[:1].float(), D)[0]
    ones = torch.ones(D)
    pts = slice_points(n, u, v, offsets, ones * e[1], ones * e[2], size)
    return sample_slices(vol, pts, e.float())


def test_fibonacci_sphere_matches_paper_formula():
    L = 7
    n = fibonacci_directions(L)
    golden = math.pi * (3 - math.sqrt(5))
    for idx in range(L):
        y = 2 * idx / (L - 1) - 1
        r = math.sqrt(1 - y * y)
        expected = torch.tensor([r * math.cos(idx * golden), y, r * math.sin(idx * golden)], dtype=torch.float64)
        torch.testing.assert_close(n[idx], expected)
    torch.testing.assert_close(n.norm(dim=1), torch.ones(L, dtype=torch.float64))


def test_hemisphere_lattice_is_half_of_a_symmetric_sphere():
    n = fibonacci_directions(200, hemisphere=True)
    assert bool((n[:, 1] > 0).all())
    full = torch.cat([n, -n])
    # symmetric set: the mean vanishes and the second moment is isotropic (I/3)
    torch.testing.assert_close(full.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(full.T @ full / len(full), torch.eye(3, dtype=torch.float64) / 3, atol=5e-3, rtol=0)


def test_random_bases_orthonormal_and_seeded():
    n = fibonacci_directions(50)
    u, v = random_bases(n, torch.Generator().manual_seed(3))
    frame = torch.stack([n, u, v], dim=1)  # (L, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    torch.testing.assert_close(frame @ frame.transpose(1, 2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.cross(n, u, dim=-1), v)
    u2, _ = random_bases(n, torch.Generator().manual_seed(3))
    assert torch.equal(u, u2)


def test_axis_aligned_slices_are_the_volumes_own_slices():
    torch.manual_seed(0)
    vol = torch.randn(2, 9, 7, 5)
    e = half_extents((9, 7, 5), (1, 1, 1), "normalized")
    out = axis_slices(vol, e, (7, 5))
    torch.testing.assert_close(out, vol.transpose(0, 1), atol=1e-5, rtol=0)


def test_axis_aligned_slices_physical_geometry():
    """Physical geometry: the same exact slices when the in-plane extent is the volume's."""
    torch.manual_seed(1)
    vol = torch.randn(1, 6, 11, 8)
    e = half_extents((6, 11, 8), (2.5, 0.7, 1.1), "physical")
    out = axis_slices(vol, e, (11, 8))
    torch.testing.assert_close(out, vol.transpose(0, 1), atol=1e-5, rtol=0)


def test_physical_half_extents_follow_millimetres():
    e = half_extents((64, 64, 64), (2.5, 1.0, 1.0), "physical")
    torch.testing.assert_close(e, torch.tensor([1.0, 0.4, 0.4], dtype=torch.float64))
    assert half_extents((5, 9, 3), (3, 2, 1), "normalized").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="geometry 'mm'"):
        half_extents((4, 4, 4), (1, 1, 1), "mm")


def test_unit_slice_of_anisotropic_volume_covers_its_true_width():
    """A central slice normal to d of a constant volume is non-zero on 40% of its width."""
    vol = torch.ones(1, 64, 64, 64)
    e = half_extents((64, 64, 64), (2.5, 1.0, 1.0), "physical")
    n, u, v = (torch.tensor([x]) for x in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]))
    pts = slice_points(n, u, v, torch.zeros(1), torch.ones(1), torch.ones(1), (101, 101))
    row = sample_slices(vol, pts, e.float())[0, 0, 50]
    assert int((row > 0.5).sum()) == 41  # a' in [-0.4, 0.4] at a step of 0.02


def test_tight_extent_covers_every_corner():
    e = torch.tensor([1.0, 0.4, 0.7], dtype=torch.float64)
    n = fibonacci_directions(100)
    u, v = random_bases(n, torch.Generator().manual_seed(0))
    s_half, a_half, b_half = stack_extents(e, n, u, v, "tight")
    corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float64) * e
    assert torch.allclose((corners @ n.T).abs().amax(0), s_half)
    assert bool(((corners @ u.T).abs().amax(0) <= a_half + 1e-12).all())
    assert bool(((corners @ v.T).abs().amax(0) <= b_half + 1e-12).all())
    assert torch.equal(a_half, b_half)  # square, isotropic pixels


def test_slice_offsets_paper_formula_with_padding():
    off = slice_offsets(torch.tensor([1.0, 2.0]), 5, pad=1)
    expected = torch.tensor([2 * m / 4 - 1 for m in range(-1, 6)])
    torch.testing.assert_close(off[0], expected)
    torch.testing.assert_close(off[1], 2 * expected)


def test_voxel_points_on_box_faces():
    e = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    pts = voxel_points((3, 2, 5), e).reshape(3, 2, 5, 3)
    assert pts[0, 0, 0].tolist() == [-1.0, -0.5, -0.25]
    assert pts[-1, -1, -1].tolist() == [1.0, 0.5, 0.25]
    assert pts[1, 0, 2].tolist() == [0.0, -0.5, 0.0]
