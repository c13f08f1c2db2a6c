"""Geometry of slicing and backprojection, as pure functions on tensors.

Convention:
    * Volumes are tensors ``(C, D, H, W)``; points and vectors are 3-vectors in the
      same axis order ``(d, h, w)``.
    * A volume occupies the box ``[-e_d, e_d] x [-e_h, e_h] x [-e_w, e_w]`` where
      ``e`` are its half-extents (see :func:`half_extents`). Voxel index ``i`` of an
      axis of ``n`` voxels sits at ``e * (2 i / (n - 1) - 1)``: the first and last
      voxel centres lie on the box faces (``align_corners=True``).
    * ``normalized`` geometry (the paper): ``e = (1, 1, 1)``. ``physical`` geometry:
      ``e`` proportional to the extent in millimetres, ``max(e) = 1``, so planes are
      flat and slice pixels isotropic in millimetres.
    * ``torch.nn.functional.grid_sample`` orders its last grid dimension
      ``(x, y, z) = (w, h, d)``; the conversion happens only inside this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

GEOMETRIES = ("physical", "normalized")
EXTENTS = ("unit", "tight")


def half_extents(shape: Sequence[int], spacing: Sequence[float], geometry: str) -> Tensor:
    """Half-extents ``e`` (3,) of the box a volume of ``shape`` (D, H, W) occupies.

    Args:
        shape: spatial shape (D, H, W); every axis needs at least 2 voxels.
        spacing: voxel size per axis (d, h, w), in millimetres.
        geometry: ``"physical"`` or ``"normalized"``.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; valid: {', '.join(GEOMETRIES)}")
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"a volume needs 3 spatial axes of at least 2 voxels, got {tuple(shape)}")
    if geometry == "normalized":
        return torch.ones(3, dtype=torch.float64)
    sp = torch.as_tensor(spacing, dtype=torch.float64)
    if sp.shape != (3,) or not bool(torch.all(torch.isfinite(sp) & (sp > 0))):
        raise ValueError(f"spacing must be 3 positive finite numbers, got {tuple(spacing)}")
    ext = (torch.as_tensor(shape, dtype=torch.float64) - 1) * sp
    return ext / ext.max()


def unit_volume_mm3(shape: Sequence[int], spacing: Sequence[float], geometry: str) -> float:
    """Cubic millimetres per unit cube of the geometry's coordinates (the map's Jacobian).

    The box ``[-e, e]`` of :func:`half_extents` stands for the volume's
    ``(shape - 1) * spacing`` millimetres, so an integral over the geometry's coordinates
    times this factor is an integral over millimetres.
    """
    e_mm = (torch.as_tensor(shape, dtype=torch.float64) - 1) * torch.as_tensor(spacing, dtype=torch.float64) / 2
    return float(e_mm.prod() / half_extents(shape, spacing, geometry).prod())


def fibonacci_directions(n: int, hemisphere: bool = False) -> Tensor:
    """Unit normals from the Fibonacci lattice, shape (n, 3), float64.

    Sphere (paper): ``y_l = 2 l / (n - 1) - 1``. Hemisphere: ``y_l = (l + 1/2) / n``
    (all ``y > 0``), which with the antipodes ``-n_l`` forms a symmetric sphere
    lattice. ``n_l = (r cos(theta), y, r sin(theta))`` with ``r = sqrt(1 - y^2)``,
    ``theta_l = l * pi * (3 - sqrt 5)``.
    """
    if n < 1:
        raise ValueError(f"number of directions must be >= 1, got {n}")
    idx = torch.arange(n, dtype=torch.float64)
    if hemisphere:
        y = (idx + 0.5) / n
    else:
        y = 2 * idx / (n - 1) - 1 if n > 1 else torch.zeros(1, dtype=torch.float64)
    r = torch.sqrt(torch.clamp(1 - y * y, min=0.0))
    theta = idx * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * torch.cos(theta), y, r * torch.sin(theta)], dim=1)


def random_bases(normals: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Random orthonormal in-plane bases ``(u, v)`` with ``v = n x u``, each (L, 3).

    ``u`` is a seeded Gaussian vector projected onto the plane orthogonal to ``n``.
    """
    g = torch.randn(normals.shape, dtype=normals.dtype, generator=generator)
    u = g - (g * normals).sum(-1, keepdim=True) * normals
    # A Gaussian draw parallel to n has probability zero; guard anyway.
    bad = u.norm(dim=-1) < 1e-8
    if bool(bad.any()):
        alt = torch.where(normals[bad, :1].abs() < 0.9, torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
        u[bad] = alt.to(u) - (alt.to(u) * normals[bad]).sum(-1, keepdim=True) * normals[bad]
    u = u / u.norm(dim=-1, keepdim=True)
    v = torch.linalg.cross(normals, u, dim=-1)
    return u, v


@dataclass
class Directions:
    """A set of slicing directions and the extents of their slice stacks.

    Attributes:
        normals, u, v: (L, 3) orthonormal frames, axis order (d, h, w).
        s_half: (L,) slice offsets of a stack span ``[-s_half, s_half]``.
        a_half, b_half: (L,) in-plane coordinates span ``[-a_half, a_half]`` along ``u``
            (slice rows) and ``[-b_half, b_half]`` along ``v`` (slice columns).
        num_slices: M, slices per stack (before a filter's padding).
    """

    normals: Tensor
    u: Tensor
    v: Tensor
    s_half: Tensor
    a_half: Tensor
    b_half: Tensor
    num_slices: int

    def __len__(self) -> int:
        return int(self.normals.shape[0])

    def __getitem__(self, sl: slice) -> Directions:
        return Directions(
            self.normals[sl], self.u[sl], self.v[sl], self.s_half[sl], self.a_half[sl],
            self.b_half[sl], self.num_slices,
        )

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Directions:
        f = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return Directions(
            f(self.normals), f(self.u), f(self.v), f(self.s_half), f(self.a_half),
            f(self.b_half), self.num_slices,
        )

    def slice_spacing(self) -> Tensor:
        """(L,) distance between neighbouring slices of each stack."""
        return 2 * self.s_half / (self.num_slices - 1)


def stack_extents(
    e: Tensor, normals: Tensor, u: Tensor, v: Tensor, extent: str = "unit"
) -> tuple[Tensor, Tensor, Tensor]:
    """Offset and in-plane half ranges ``(s_half, a_half, b_half)`` of each stack, (L,) each.

    ``unit`` (paper): both 1. ``tight``: the volume box's true support along each
    axis of the frame, ``sum_i e_i |n_i|`` for offsets and ``max`` over ``u`` and
    ``v`` of the same for the in-plane square, so no voxel of the box is missed.
    """
    if extent not in EXTENTS:
        raise ValueError(f"unknown extent {extent!r}; valid: {', '.join(EXTENTS)}")
    L = normals.shape[0]
    if extent == "unit":
        ones = torch.ones(L, dtype=normals.dtype)
        return ones, ones.clone(), ones.clone()
    e = e.to(normals)
    s_half = (normals.abs() * e).sum(-1)
    ab_half = torch.maximum((u.abs() * e).sum(-1), (v.abs() * e).sum(-1))
    return s_half, ab_half, ab_half.clone()


def slice_area(a_half: Tensor, b_half: Tensor, size: tuple[int, int]) -> Tensor:
    """The area a slice's mean pixel stands for: mean x area = the plane integral.

    The ``(h, w)`` pixels of :func:`slice_points` sit on ``linspace(-a, a, h)`` x
    ``linspace(-b, b, w)``, a step of ``2 a / (h - 1)``; the rectangle rule on that grid
    gives ``(2 a h / (h - 1)) (2 b w / (w - 1))`` (not ``4 a b``, which is 2/h + 2/w low).
    """
    h, w = size
    return (2 * a_half * h / (h - 1)) * (2 * b_half * w / (w - 1))


def slice_offsets(s_half: Tensor, num_slices: int, pad: int = 0) -> Tensor:
    """Offsets ``s_m = s_half * (2 m / (M - 1) - 1)``, m = -pad .. M - 1 + pad; (L, M + 2 pad)."""
    if num_slices < 2:
        raise ValueError(f"number of slices must be >= 2, got {num_slices}")
    m = torch.arange(-pad, num_slices + pad, dtype=s_half.dtype, device=s_half.device)
    return s_half[:, None] * (2 * m / (num_slices - 1) - 1)


def slice_points(
    normals: Tensor,
    u: Tensor,
    v: Tensor,
    offsets: Tensor,
    a_half: Tensor,
    b_half: Tensor,
    size: tuple[int, int],
) -> Tensor:
    """Sample points of N slices, shape (N, h, w, 3) in (d, h, w) order.

    Every argument but ``size`` has one row per slice: normals, u, v (N, 3); offsets,
    a_half, b_half (N,). Pixel ``(i, j)`` of slice ``k`` is
    ``s_k n_k + a_i u_k + b_j v_k`` with ``a_i = a_half (2 i / (h - 1) - 1)`` and
    ``b_j = b_half (2 j / (w - 1) - 1)`` (paper Eq. 4).
    """
    h, w = size
    dev, dt = normals.device, normals.dtype
    a = torch.linspace(-1, 1, h, device=dev, dtype=dt)
    b = torch.linspace(-1, 1, w, device=dev, dtype=dt)
    au = (a_half[:, None, None] * a[None, :, None]) * u[:, None, :]  # (N, h, 3)
    bv = (b_half[:, None, None] * b[None, :, None]) * v[:, None, :]  # (N, w, 3)
    sn = offsets[:, None] * normals  # (N, 3)
    return sn[:, None, None, :] + au[:, :, None, :] + bv[:, None, :, :]


def sample_slices(volume: Tensor, points: Tensor, e: Tensor) -> Tensor:
    """Trilinear samples of ``volume`` (C, D, H, W) at ``points`` (..., h, w, 3).

    Points outside the box read zero. Returns (N, C, h, w), N the product of the
    leading dims of ``points``.
    """
    h, w = points.shape[-3], points.shape[-2]
    pts = points.reshape(1, -1, h, w, 3) / e.to(points)
    grid = pts.flip(-1).to(volume.dtype)  # (d, h, w) -> grid_sample's (x, y, z)
    out = F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].transpose(0, 1)  # (N, C, h, w)


def voxel_points(shape: Sequence[int], e: Tensor, device: torch.device | str = "cpu") -> Tensor:
    """Coordinates of every voxel centre of a (D, H, W) grid in the box, (D*H*W, 3)."""
    axes = [
        float(ei) * torch.linspace(-1, 1, n, device=device, dtype=torch.float32)
        for n, ei in zip(shape, e.tolist(), strict=True)
    ]
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)
