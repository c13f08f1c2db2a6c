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

    Example: 11 x 21 x 41 voxels of 2.5 x 1 x 1 mm span 25 x 20 x 40 mm; physical geometry
    scales that to ``max(e) = 1``, normalized geometry is the unit cube whatever the spacing.

        >>> half_extents((11, 21, 41), (2.5, 1.0, 1.0), "physical").tolist()
        [0.625, 0.5, 1.0]
        >>> half_extents((11, 21, 41), (2.5, 1.0, 1.0), "normalized").tolist()
        [1.0, 1.0, 1.0]
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

    Example: the volume of :func:`half_extents`'s example has half-extents 12.5 x 10 x 20 mm.
    Physical geometry maps the longest (20 mm) to 1, so a unit cube is 20^3 mm^3; normalized
    geometry maps each axis to 1 on its own.

        >>> unit_volume_mm3((11, 21, 41), (2.5, 1.0, 1.0), "physical")
        8000.0
        >>> unit_volume_mm3((11, 21, 41), (2.5, 1.0, 1.0), "normalized")
        2500.0
    """
    e_mm = (torch.as_tensor(shape, dtype=torch.float64) - 1) * torch.as_tensor(spacing, dtype=torch.float64) / 2
    return float(e_mm.prod() / half_extents(shape, spacing, geometry).prod())


def fibonacci_directions(n: int, hemisphere: bool = False) -> Tensor:
    """Unit normals from the Fibonacci lattice, shape (n, 3), float64.

    Sphere (paper): ``y_l = 2 l / (n - 1) - 1``. Hemisphere: ``y_l = (l + 1/2) / n``
    (all ``y > 0``), which with the antipodes ``-n_l`` forms a symmetric sphere
    lattice. ``n_l = (r cos(theta), y, r sin(theta))`` with ``r = sqrt(1 - y^2)``,
    ``theta_l = l * pi * (3 - sqrt 5)``.

    Example:
        >>> n = fibonacci_directions(4, hemisphere=True)
        >>> n[:, 1].tolist()  # y_l = (l + 1/2) / 4
        [0.125, 0.375, 0.625, 0.875]
        >>> bool(torch.allclose(n.norm(dim=1), torch.ones(4, dtype=torch.float64)))
        True
        >>> fibonacci_directions(5)[:, 1].tolist()  # the sphere's y runs from pole to pole
        [-1.0, -0.5, 0.0, 0.5, 1.0]
        >>> fibonacci_directions(5)[0].tolist()
        [0.0, -1.0, 0.0]
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

    Example: each ``(n, u, v)`` is a right-handed orthonormal frame.

        >>> n = fibonacci_directions(6, hemisphere=True)
        >>> u, v = random_bases(n, torch.Generator().manual_seed(0))
        >>> frame = torch.stack([n, u, v], dim=1)  # (L, 3, 3), rows n, u, v
        >>> bool(torch.allclose(frame @ frame.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3)))
        True
        >>> bool(torch.allclose(torch.linalg.det(frame), torch.ones(6, dtype=torch.float64)))
        True
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

    Example: 5 slices over ``[-1, 1]`` are 0.5 apart.

        >>> n = fibonacci_directions(2, hemisphere=True)
        >>> u, v = random_bases(n, torch.Generator().manual_seed(0))
        >>> ones = torch.ones(2, dtype=torch.float64)
        >>> dirs = Directions(n, u, v, ones, ones, ones, num_slices=5)
        >>> len(dirs), dirs.slice_spacing().tolist()
        (2, [0.5, 0.5])
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
            self.normals[sl],
            self.u[sl],
            self.v[sl],
            self.s_half[sl],
            self.a_half[sl],
            self.b_half[sl],
            self.num_slices,
        )

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Directions:
        f = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return Directions(
            f(self.normals),
            f(self.u),
            f(self.v),
            f(self.s_half),
            f(self.a_half),
            f(self.b_half),
            self.num_slices,
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

    Example: along an axis the tight stack spans the box's half-extent on that axis; along the
    diagonal of the unit cube it reaches the corner, ``sqrt 3`` away.

        >>> e = torch.tensor([0.625, 0.5, 1.0], dtype=torch.float64)
        >>> n, u, v = torch.eye(3, dtype=torch.float64)[:, None]  # normal d, in-plane h and w
        >>> [t.tolist() for t in stack_extents(e, n, u, v, "tight")]
        [[0.625], [1.0], [1.0]]
        >>> [t.tolist() for t in stack_extents(e, n, u, v, "unit")]
        [[1.0], [1.0], [1.0]]
        >>> diag = torch.full((1, 3), 3 ** -0.5, dtype=torch.float64)
        >>> round(float(stack_extents(torch.ones(3), diag, u, v, "tight")[0]), 6)
        1.732051
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

    Example: a 3 x 5 slice of the square ``[-1, 1]^2`` has pixel steps 1 and 0.5, so its
    pixels stand for 3 x 2.5 = 7.5 (the square itself is 4).

        >>> slice_area(torch.tensor([1.0]), torch.tensor([1.0]), (3, 5)).tolist()
        [7.5]
    """
    h, w = size
    return (2 * a_half * h / (h - 1)) * (2 * b_half * w / (w - 1))


def slice_offsets(s_half: Tensor, num_slices: int, pad: int = 0) -> Tensor:
    """Offsets ``s_m = s_half * (2 m / (M - 1) - 1)``, m = -pad .. M - 1 + pad; (L, M + 2 pad).

    Example: the first and last of the ``M`` slices lie at ``-s_half`` and ``s_half``; padding
    adds slices one step beyond each end.

        >>> slice_offsets(torch.tensor([1.0, 0.5]), 5).tolist()
        [[-1.0, -0.5, 0.0, 0.5, 1.0], [-0.5, -0.25, 0.0, 0.25, 0.5]]
        >>> slice_offsets(torch.tensor([1.0]), 5, pad=1).tolist()
        [[-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]]
    """
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

    Example: the 3 x 3 slice with normal ``d`` at offset 0.25, rows along ``h``, columns along ``w``.

        >>> n, u, v = torch.eye(3)[:, None]
        >>> pts = slice_points(n, u, v, torch.tensor([0.25]), torch.ones(1), torch.ones(1), (3, 3))
        >>> tuple(pts.shape)
        (1, 3, 3, 3)
        >>> pts[0, 0, 0].tolist(), pts[0, 2, 1].tolist()
        ([0.25, -1.0, -1.0], [0.25, 1.0, 0.0])
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

    The volume reads as if surrounded by zero voxels: zero from one voxel step past a face
    of the box on, linear in between. Returns (N, C, h, w), N the product of the leading
    dims of ``points``.

    Example: trilinear interpolation reproduces a linear volume ``f(x) = d + 2 h + 3 w``.

        >>> e = torch.tensor([0.5, 1.0, 1.0])  # voxels 0.5 apart along every axis
        >>> c = torch.tensor([1.0, 2.0, 3.0])
        >>> vol = (voxel_points((3, 5, 5), e) @ c).reshape(1, 3, 5, 5)
        >>> round(float(sample_slices(vol, torch.tensor([[[0.25, -0.3, 0.6]]]), e)), 4)  # 0.25 - 0.6 + 1.8
        1.45
        >>> n, u, v = torch.eye(3)[:, None]
        >>> pts = slice_points(n, u, v, torch.tensor([0.25]), torch.ones(1), torch.ones(1), (3, 3))
        >>> out = sample_slices(vol, pts, e)
        >>> tuple(out.shape), bool(torch.allclose(out[:, 0], pts @ c, atol=1e-6))
        ((1, 1, 3, 3), True)
        >>> [round(float(sample_slices(vol, torch.tensor([[[d, 0.0, 0.0]]]), e)), 4) for d in (0.5, 0.75, 1.0)]
        [0.5, 0.25, 0.0]
    """
    h, w = points.shape[-3], points.shape[-2]
    pts = points.reshape(1, -1, h, w, 3) / e.to(points)
    grid = pts.flip(-1).to(volume.dtype)  # (d, h, w) -> grid_sample's (x, y, z)
    out = F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].transpose(0, 1)  # (N, C, h, w)


def voxel_points(shape: Sequence[int], e: Tensor, device: torch.device | str = "cpu") -> Tensor:
    """Coordinates of every voxel centre of a (D, H, W) grid in the box, (D*H*W, 3).

    Rows run in C order (``w`` fastest); the first and last voxel centres are corners of the box.

        >>> pts = voxel_points((2, 3, 2), torch.tensor([0.5, 1.0, 1.0]))
        >>> tuple(pts.shape), pts[[0, 1, -1]].tolist()
        ((12, 3), [[-0.5, -1.0, -1.0], [-0.5, -1.0, 1.0], [0.5, 1.0, 1.0]])
    """
    axes = [
        float(ei) * torch.linspace(-1, 1, n, device=device, dtype=torch.float32)
        for n, ei in zip(shape, e.tolist(), strict=True)
    ]
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)
