"""Backprojection of filtered per-direction profiles onto a voxel grid (DESIGN 1.7).

Convention: ``q`` holds, per direction ``l``, filtered scores of shape
``(M, K, h, w)`` at offsets ``s_m = s_half (2 m / (M - 1) - 1)`` and, for maps, at the
centres of an ``h x w`` grid of cells tiling the slice (``h = w = 1`` for scalar
heads, which then do not depend on the in-plane position). A voxel at point ``x``
reads ``q~(x.n, x.u, x.v)``: linear in ``s`` (bilinear in ``a, b`` for maps), zero
beyond half a step past the ends of the stack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tomofield.geometry import Directions

#: Upper bound on directions x voxels handled by one ``grid_sample`` call.
DEFAULT_BUDGET = 1 << 22


def _cell_coord(a: Tensor, half: Tensor, cells: int, pixels: int) -> Tensor:
    """Normalised (align_corners=True) coordinate in a map of ``cells`` from in-plane ``a``.

    Map cell ``i`` covers slice pixels ``[i p / c, (i + 1) p / c)`` (p pixels, c cells).
    """
    if cells == 1:
        return torch.zeros_like(a)
    a_pix = (a / half[:, None] + 1) * (pixels - 1) / 2  # slice pixel index
    i = (a_pix + 0.5) * cells / pixels - 0.5
    return 2 * i / (cells - 1) - 1


def backproject(
    q: Tensor,
    dirs: Directions,
    points: Tensor,
    slice_size: tuple[int, int],
    weights: Tensor | None = None,
    budget: int = DEFAULT_BUDGET,
) -> Tensor:
    """Sum over directions of the interpolated profiles at each point.

    Args:
        q: (L, M, K, h, w) filtered scores, on the device of ``points``.
        dirs: the L directions (on the same device, same dtype as ``q``).
        points: (N, 3) voxel coordinates, axis order (d, h, w).
        slice_size: (h_S, w_S) slice pixels, to place map cells.
        weights: optional (L,) per-direction weights.
        budget: directions x points per ``grid_sample`` call (memory bound).

    Returns:
        (K, N) sums ``sum_l w_l q~_l(x)``.
    """
    L, M, K, h, w = q.shape
    if weights is not None:
        q = q * weights.reshape(L, 1, 1, 1, 1).to(q)
    scalar = h == 1 and w == 1
    # grid_sample inputs: scalar (L, K, M, 1); maps (L, K, M, h, w).
    inp = q[..., 0].permute(0, 2, 1, 3) if scalar else q.permute(0, 2, 1, 3, 4)
    inp = inp.contiguous()
    out = torch.zeros(K, points.shape[0], device=q.device, dtype=q.dtype)
    step = max(1, budget // max(L, 1))
    n_t = dirs.normals.T.to(points)
    u_t, v_t = dirs.u.T.to(points), dirs.v.T.to(points)
    for start in range(0, points.shape[0], step):
        x = points[start : start + step]
        gs = (x @ n_t).T / dirs.s_half[:, None]  # (L, n)
        if scalar:
            grid = torch.stack([torch.zeros_like(gs), gs], dim=-1)[:, :, None, :]
            vals = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out[:, start : start + step] = vals[..., 0].sum(0)
        else:
            ga = _cell_coord((x @ u_t).T, dirs.a_half, h, slice_size[0])
            gb = _cell_coord((x @ v_t).T, dirs.b_half, w, slice_size[1])
            grid = torch.stack([gb, ga, gs], dim=-1)[:, :, None, None, :]
            vals = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out[:, start : start + step] = vals[..., 0, 0].sum(0)
    return out
