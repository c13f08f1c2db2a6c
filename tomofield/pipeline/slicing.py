"""Cutting slices: in normalised coordinates or the native kernel, and knowing which sample nothing.

:class:`Slicer` cuts batches of slices of one chunk of directions out of a volume;
:class:`Occupancy` tells the slices that sample nothing above a tolerance, so they are
not scored (``skip_empty``, ``empty_tol`` in :class:`tomofield.EngineConfig`;
docs/benchmarks.md holds the measurements behind the defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tomofield.errors import InputError
from tomofield.geometry import Directions, slice_offsets, slice_points
from tomofield.pipeline.kernels import native
from tomofield.pipeline.plan import Plan

#: The occupancy test uses at most this many blocks per axis.
OCCUPANCY_BLOCKS = 16


@dataclass
class Occupancy:
    """Boxes that hold every voxel above ``tol``, each dilated by one voxel.

    Trilinear interpolation reads the eight voxels around a point, so a slice sample is
    above ``tol`` (in absolute value, in some channel) only inside one of these boxes: a
    slice that misses all of them samples nothing above ``tol``. The test is
    conservative (separating axes ``n``, ``u``, ``v`` of the slice rectangle only).

    Attributes:
        centre, half: (B, 3) box centres and half-sizes, (d, h, w), float64, host.
    """

    centre: Tensor
    half: Tensor

    @classmethod
    def of(cls, volume: Tensor, e: Tensor, tol: float = 0.0, blocks: int = OCCUPANCY_BLOCKS) -> Occupancy:
        """Occupancy of a (C, D, H, W) volume in the box of half-extents ``e``."""
        busy = (volume.abs() > tol).any(0)  # (D, H, W)
        shape = busy.shape
        size = [math.ceil(n / blocks) for n in shape]
        nb = [math.ceil(n / s) for n, s in zip(shape, size, strict=True)]
        padded = F.pad(
            busy[None, None].float(),
            [0, nb[2] * size[2] - shape[2], 0, nb[1] * size[1] - shape[1], 0, nb[0] * size[0] - shape[0]],
        )
        occ = F.max_pool3d(padded, size)[0, 0].cpu() > 0  # (nb_d, nb_h, nb_w)
        idx = occ.nonzero().double()  # (B, 3) block indices
        e64 = e.detach().to("cpu", torch.float64)
        lo, hi = [], []
        for ax in range(3):
            step = 2 * e64[ax] / (shape[ax] - 1)  # voxel spacing in box units
            first = idx[:, ax] * size[ax]
            last = torch.clamp(first + size[ax] - 1, max=shape[ax] - 1)
            # one voxel of dilation for the interpolation, plus a hair for rounding
            lo.append(-e64[ax] + (first - 1.001) * step)
            hi.append(-e64[ax] + (last + 1.001) * step)
        lo_t, hi_t = torch.stack(lo, 1), torch.stack(hi, 1)
        return cls((lo_t + hi_t) / 2, (hi_t - lo_t) / 2)

    def hits(self, dirs: Directions, offsets: Tensor) -> Tensor:
        """(L, S) bool: whether slice ``(l, m)`` may touch a box (``False``: surely empty).

        Args:
            dirs: L directions (any device; read as float64 on the host).
            offsets: (L, S) slice offsets.
        """
        L, S = offsets.shape
        if self.centre.shape[0] == 0:
            return torch.zeros(L, S, dtype=torch.bool)
        f = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
        n, u, v, off = f(dirs.normals), f(dirs.u), f(dirs.v), f(offsets)
        c, r = self.centre, self.half
        inplane = ((c @ u.T).abs() - r @ u.abs().T <= f(dirs.a_half)) & (
            (c @ v.T).abs() - r @ v.abs().T <= f(dirs.b_half)
        )  # (B, L)
        cn, rn = c @ n.T, r @ n.abs().T  # (B, L)
        out = torch.zeros(L, S, dtype=torch.bool)
        step = max(1, (1 << 22) // max(1, c.shape[0] * S))
        for l0 in range(0, L, step):
            sl = slice(l0, l0 + step)
            near = (cn[:, sl, None] - off[None, sl]).abs() <= rn[:, sl, None]  # (B, l, S)
            out[sl] = (near & inplane[:, sl, None]).any(0)
        return out


def normalised_frames(dirs: Directions, e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(n, u, v) / e`` in grid_sample's (x, y, z) = (w, h, d) order, (L, 3) each.

    Slice points are linear in the frame vectors, so :func:`slice_points` on these
    frames gives ``grid_sample``'s normalised grid directly: no division, no flip.
    """
    inv = (1 / e.to(dirs.normals)).flip(0)
    return dirs.normals.flip(-1) * inv, dirs.u.flip(-1) * inv, dirs.v.flip(-1) * inv


def index_frames(dirs: Directions, rows: Tensor, offsets: Tensor, e: Tensor, shape, size) -> Tensor:
    """(N, 9) voxel-index position of pixel (0, 0), row step, column step, of each slice.

    Axis ``ax`` of ``n`` voxels maps ``x`` to the index ``(x / e + 1) (n - 1) / 2``.
    """
    f64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
    n, u, v = f64(dirs.normals[rows]), f64(dirs.u[rows]), f64(dirs.v[rows])
    a, b = f64(dirs.a_half[rows])[:, None], f64(dirs.b_half[rows])[:, None]
    nvox = torch.tensor([float(k) for k in shape], dtype=torch.float64, device=n.device)
    g = (nvox - 1) / (2 * f64(e.to(n.device)))
    h, w = size
    origin = (f64(offsets)[:, None] * n - a * u - b * v) * g + (nvox - 1) / 2
    row = (2 * a / max(h - 1, 1)) * u * g
    col = (2 * b / max(w - 1, 1)) * v * g
    return torch.cat([origin, row, col], dim=1).float()


def _check_slicing(
    volume: Tensor, frames: tuple[Tensor, Tensor, Tensor], rows: Tensor, offsets: Tensor, size: tuple[int, int]
) -> None:
    """Refuse what :func:`cut_slices` cannot take, before anything is sampled."""
    if not isinstance(volume, Tensor) or volume.dim() != 4 or not volume.is_floating_point():
        got = f"shape {tuple(volume.shape)} ({volume.dtype})" if isinstance(volume, Tensor) else type(volume).__name__
        raise InputError(f"slicing takes a floating-point volume (C, D, H, W), got {got}")
    dims = tuple(size)
    if len(dims) != 2 or any(int(n) < 1 for n in dims):
        raise InputError(f"the slice size must be (h, w) of two positive integers, got {size!r}")
    if rows.dim() != 1 or offsets.dim() != 1 or rows.shape != offsets.shape or rows.is_floating_point():
        raise InputError(
            f"slicing takes integer direction rows (N,) and offsets (N,) of one length, got rows of shape "
            f"{tuple(rows.shape)} ({rows.dtype}) and offsets of shape {tuple(offsets.shape)}"
        )
    for name, t in (("offsets", offsets), ("frames", frames[0])):
        if t.device != volume.device:
            raise InputError(f"the slices' {name} are on {t.device} but the volume is on {volume.device}")


def cut_slices(
    volume: Tensor,
    frames: tuple[Tensor, Tensor, Tensor],
    dirs: Directions,
    rows: Tensor,
    offsets: Tensor,
    size: tuple[int, int],
    e: Tensor | None = None,
) -> Tensor:
    """Slices (N, C, h, w) of ``volume`` for directions ``rows`` (N,) at ``offsets`` (N,).

    Same samples as ``sample_slices(volume, slice_points(...), e)``: with the native
    kernel on CPU (when it is available, ``e`` is given and the volume has fewer than
    :data:`tomofield.pipeline.kernels.native.MAX_VOXELS` voxels per channel), else one
    ``grid_sample`` on the normalised ``frames`` of :func:`normalised_frames`.

    Raises:
        InputError: arguments that do not fit together (shapes, devices), before slicing.
    """
    _check_slicing(volume, frames, rows, offsets, size)
    if (
        e is not None
        and volume.device.type == "cpu"
        and volume.dtype == torch.float32
        and volume[0].numel() < native.MAX_VOXELS
        and native.available()
    ):
        fr = index_frames(dirs, rows, offsets, e, volume.shape[1:], size)
        return native.slice_trilinear(volume, fr, size)
    n, u, v = frames
    grid = slice_points(n[rows], u[rows], v[rows], offsets, dirs.a_half[rows], dirs.b_half[rows], size)
    out = F.grid_sample(
        volume[None], grid[None].to(volume.dtype), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[0].transpose(0, 1)


class Slicer:
    """Cuts the slices of a plan out of one (C, D, H, W) float32 volume on its device.

    Args:
        volume: the volume, on the device the slices are scored on.
        plan: the plan.
        skip_empty: find the slices that sample nothing above ``empty_tol``.
        empty_tol: the tolerance.
    """

    def __init__(self, volume: Tensor, plan: Plan, skip_empty: bool, empty_tol: float) -> None:
        self.volume, self.plan = volume, plan
        self.e = plan.e.to(volume.device, torch.float32)
        self.occupancy = Occupancy.of(volume, plan.e, empty_tol) if skip_empty else None

    def hits(self, host: Directions) -> Tensor | None:
        """(L, S) bool: the slices of a chunk that may sample something; None when all are cut."""
        if self.occupancy is None:
            return None
        return self.occupancy.hits(host, slice_offsets(host.s_half, host.num_slices, self.plan.pad))

    def prepare(self, dirs: Directions) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Per-chunk state for :meth:`cut`: the flat slice offsets and the normalised frames."""
        offsets = slice_offsets(dirs.s_half, dirs.num_slices, self.plan.pad).reshape(-1)
        return offsets, normalised_frames(dirs, self.e)

    def cut(self, dirs: Directions, state: tuple[Tensor, tuple], index: Tensor) -> Tensor:
        """Slices (N, C, h, w) number ``index`` (N,) of the chunk (direction-major)."""
        offsets, frames = state
        S = dirs.num_slices + 2 * self.plan.pad
        return cut_slices(self.volume, frames, dirs, index // S, offsets[index], self.plan.size, self.e)
