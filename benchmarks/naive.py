"""The yardstick: ToNNO written plainly from the paper's equations.

One direction at a time, float32, the whole Fibonacci sphere; per direction one
``grid_sample`` cuts the M + 2 slices, the encoder scores them in one batch, the
second derivative filters the profile and one ``grid_sample`` over every voxel
backprojects it (docs/design.md, "Axes and geometry" and "Reconstruction constants"). Nothing here is shared with the engine except the
head object, so a bug in the engine's geometry cannot hide in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def half_extents(shape: Sequence[int], spacing: Sequence[float], geometry: str) -> Tensor:
    """``e`` (3,): ones (normalized) or the extent in mm over its maximum (physical)."""
    if geometry == "normalized":
        return torch.ones(3, dtype=torch.float64)
    ext = torch.tensor([(n - 1) * s for n, s in zip(shape, spacing, strict=True)], dtype=torch.float64)
    return ext / ext.max()


def sphere_directions(L: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Fibonacci normals ``n_l`` (paper) and seeded random in-plane ``u_l``, ``v_l = n_l x u_l``."""
    l = torch.arange(L, dtype=torch.float64)  # noqa: E741
    y = 2 * l / (L - 1) - 1
    r = torch.sqrt(torch.clamp(1 - y * y, min=0))
    theta = l * math.pi * (3 - math.sqrt(5))
    n = torch.stack([r * torch.cos(theta), y, r * torch.sin(theta)], 1)
    g = torch.randn((L, 3), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    u = g - (g * n).sum(1, keepdim=True) * n
    u = u / u.norm(dim=1, keepdim=True)
    return n, u, torch.linalg.cross(n, u, dim=1)


def voxel_coordinates(shape: Sequence[int], e: Tensor) -> Tensor:
    """(D*H*W, 3) voxel centres ``e * (2 idx / (n - 1) - 1)``, axis order (d, h, w)."""
    axes = [float(e[i]) * torch.linspace(-1, 1, n) for i, n in enumerate(shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def backproject_one(q: Tensor, n: Tensor, x: Tensor) -> Tensor:
    """``q~(x . n)`` (K, N) for one direction: q (M, K) at offsets ``2 m / (M - 1) - 1``."""
    M, K = q.shape
    s = x @ n.float()  # (N,)
    grid = torch.stack([torch.zeros_like(s), s], -1)[None, :, None, :]  # (1, N, 1, 2)
    img = q.T.reshape(1, K, M, 1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, :, :, 0]


def naive_backprojection(q: Tensor, normals: Tensor, x: Tensor, weight: float = 1.0) -> Tensor:
    """``weight * sum_l q~_l(x . n_l)``, one direction at a time; q (L, M, K) -> (K, N)."""
    out = torch.zeros(q.shape[2], x.shape[0], device=x.device)
    for l in range(q.shape[0]):  # noqa: E741
        out += backproject_one(q[l], normals[l].to(x.device), x)
    return weight * out


def naive_reconstruct(
    volume: Tensor,
    score: Callable[[Tensor], Tensor],
    *,
    directions: int,
    slices: int,
    slice_size: int,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    geometry: str = "physical",
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """ToNNO heatmap (K, D, H, W) of a (C, D, H, W) volume (tomo filter, unit extents).

    Args:
        score: slices (S, C, h, w) -> scores (S, K); e.g. the logit of an encoder.
        directions, slices, slice_size: L, M and the slice side in pixels.
    """
    vol = volume.to(device, torch.float32)
    shape = tuple(vol.shape[1:])
    e = half_extents(shape, spacing, geometry)
    normals, us, vs = sphere_directions(directions, seed)
    M = slices
    m = torch.arange(-1, M + 1, dtype=torch.float64)
    offsets = 2 * m / (M - 1) - 1  # (M + 2,), the paper's s_m with one slice of padding
    ds = 2 / (M - 1)
    ab = torch.linspace(-1, 1, slice_size, dtype=torch.float64)
    x = voxel_coordinates(shape, e).to(device)
    # G = c |S^2| / L sum_l q_l,  c = -1 / (8 pi^2), slices of area 4 S^2 / (S - 1)^2: the mean of
    # S x S pixels one step 2 / (S - 1) apart, times it, is the plane integral (Eq. 1)
    weight = -1 / (8 * math.pi**2) * 4 * math.pi / directions * 4 * (slice_size / (slice_size - 1)) ** 2
    out = None
    for l in range(directions):  # noqa: E741
        n, u, v = normals[l], us[l], vs[l]
        pts = offsets[:, None, None, None] * n + ab[None, :, None, None] * u + ab[None, None, :, None] * v
        grid = (pts / e).flip(-1).float().to(device)  # (M + 2, h, w, 3) as grid_sample's (x, y, z)
        cut = F.grid_sample(vol[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
        p = score(cut[0].transpose(0, 1)).float()  # (M + 2, K)
        q = (p[2:] + p[:-2] - 2 * p[1:-1]) / ds**2  # (M, K), second derivative along n
        part = backproject_one(q, n, x)
        out = part if out is None else out + part
        if progress is not None:
            progress(l + 1)
    assert out is not None
    return (weight * out).reshape(-1, *shape)


def logit_scorer(encoder: nn.Module, target: int = 0) -> Callable[[Tensor], Tensor]:
    """Slices -> the encoder's logit ``target`` (ToNNO's head), float32, no autograd."""

    def score(slices: Tensor) -> Tensor:
        with torch.inference_mode():
            return encoder(slices)[:, target : target + 1]

    return score
