"""Backprojection of filtered per-direction profiles onto a voxel grid (docs/design.md, "Reconstruction constants").

Convention: ``q`` holds, per direction ``l``, filtered scores of shape
``(M, K, h, w)`` at offsets ``s_m = s_half (2 m / (M - 1) - 1)`` and, for maps, at the
centres of an ``h x w`` grid of cells tiling the slice (``h = w = 1`` for scalar
heads, which then do not depend on the in-plane position). A voxel at point ``x``
reads ``q~(x.n, x.u, x.v)``: linear in ``s`` (bilinear in ``a, b`` for maps), zero
beyond half a step past the ends of the stack.

Implementations of the same sum, all returning ``(K, N)``:

* :func:`backproject_reference`: the yardstick. One ``grid_sample`` over every
  (direction, point) pair of a chunk, coordinates from a matrix product.
* :func:`backproject`: any points; blocks sized for the cache, a grid buffer written in
  place, and scalar profiles two directions per bilinear sample (see
  :func:`_sampling_plan`).
* :func:`backproject_grid`: the voxel grid of a volume, what the engine uses. The
  sampling coordinate is affine in the voxel index, so a block's coordinates are two
  broadcast additions of per-axis vectors (no ``(N, 3)`` point array), accumulated into
  ``out`` in place. Scalar profiles go to a fused kernel when the device has one: Triton
  on CUDA (:mod:`tomofield.pipeline.kernels.triton_bp`), a compiled C kernel on CPU
  (:mod:`tomofield.pipeline.kernels.native`); both keep every direction of a chunk in registers per
  run of voxels and write the output once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from tomofield.errors import InputError
from tomofield.geometry import Directions
from tomofield.pipeline.kernels import native, triton_bp

#: Upper bound on directions x voxels handled by one ``grid_sample`` call (reference).
DEFAULT_BUDGET = 1 << 22
#: Directions x voxels per block of the fast paths: a CPU block (grid + samples, about
#: 12 bytes each) stays in a core's L2 cache; a GPU block fills the device.
BLOCK_BUDGET = {"cpu": 1 << 18, "cuda": 1 << 23}


def _cell_coord(a: Tensor, half: Tensor, cells: int, pixels: int) -> Tensor:
    """Normalised (align_corners=True) coordinate in a map of ``cells`` from in-plane ``a``.

    Map cell ``i`` covers slice pixels ``[i p / c, (i + 1) p / c)`` (p pixels, c cells).
    """
    if cells == 1:
        return torch.zeros_like(a)
    a_pix = (a / half[:, None] + 1) * (pixels - 1) / 2  # slice pixel index
    i = (a_pix + 0.5) * cells / pixels - 0.5
    return 2 * i / (cells - 1) - 1


def _cell_affine(half: Tensor, cells: int, pixels: int) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` (L,) with ``_cell_coord(a) = scale * a + shift``."""
    if cells == 1:
        return torch.zeros_like(half), torch.zeros_like(half)
    k = (pixels - 1) / 2 * cells / pixels * 2 / (cells - 1)
    shift = ((pixels - 1) / 2 + 0.5) * cells / pixels * 2 / (cells - 1) - 0.5 * 2 / (cells - 1) - 1
    return k / half, torch.full_like(half, shift)


def backproject_reference(
    q: Tensor,
    dirs: Directions,
    points: Tensor,
    slice_size: tuple[int, int],
    weights: Tensor | None = None,
    budget: int = DEFAULT_BUDGET,
) -> Tensor:
    """Sum over directions of the interpolated profiles at each point (reference path).

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


def _sampling_plan(
    q: Tensor, dirs: Directions, weights: Tensor | None, slice_size: Sequence[int]
) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]], str]:
    """``grid_sample`` input, per-slot affine maps and padding mode of the fast paths.

    Each slot (in grid_sample's (x, y, z) order) is ``(vec, scale, shift)``, one row per
    input image: its normalised coordinate is ``g = scale * (x . vec) + shift``.

    Scalar profiles go two directions per image. The image of the pair ``(l, l')`` is
    ``I[y, x] = qp_l[y] + qp_l'[x]`` with ``qp`` the profile padded with one zero at each
    end; bilinear interpolation of a sum of a function of ``y`` and a function of ``x``
    is exactly the sum of the two linear interpolations, and ``border`` padding clamps
    far points onto the zero rows and columns. One sample thus does two
    voxel-direction updates. Maps are sampled trilinearly in (s, a, b), one direction per
    image, zero outside.
    """
    L, M, K, h, w = q.shape
    if weights is not None:
        q = q * weights.reshape(L, 1, 1, 1, 1).to(q)
    if h == 1 and w == 1:
        qp = F.pad(q[..., 0, 0].transpose(1, 2), (1, 1))  # (L, K, M + 2)
        # p = (x.n / s_half + 1) (M - 1) / 2 + 1 in qp; normalised over M + 2: shift 0
        scale = (M - 1) / ((M + 1) * dirs.s_half)
        vec = dirs.normals
        if L % 2:
            qp = torch.cat([qp, torch.zeros_like(qp[:1])])
            vec, scale = torch.cat([vec, torch.zeros_like(vec[:1])]), torch.cat([scale, torch.zeros_like(scale[:1])])
        images = qp[0::2, :, :, None] + qp[1::2, :, None, :]  # (L / 2, K, M + 2, M + 2)
        zero = torch.zeros_like(scale[0::2])
        slots = [(vec[1::2], scale[1::2], zero), (vec[0::2], scale[0::2], zero)]
        return images.contiguous(), slots, "border"
    inp = q.permute(0, 2, 1, 3, 4).contiguous()  # (L, K, M, h, w)
    s = (dirs.normals, 1 / dirs.s_half, torch.zeros_like(dirs.s_half))
    a = (dirs.u, *_cell_affine(dirs.a_half, h, slice_size[0]))
    b = (dirs.v, *_cell_affine(dirs.b_half, w, slice_size[1]))
    return inp, [b, a, s], "zeros"


def _sample(inp: Tensor, grid: Tensor, padding: str) -> Tensor:
    """(images, K, n) samples of a (images, n, 2) or (images, n, 3) grid."""
    g = grid[:, :, None] if grid.shape[-1] == 2 else grid[:, :, None, None]
    vals = F.grid_sample(inp, g, mode="bilinear", padding_mode=padding, align_corners=True)
    return vals.reshape(inp.shape[0], inp.shape[1], -1)


def _block_budget(device: torch.device, budget: int | None) -> int:
    if budget is not None:
        return max(1, int(budget))
    return BLOCK_BUDGET.get(device.type, BLOCK_BUDGET["cuda"])


def backproject(
    q: Tensor,
    dirs: Directions,
    points: Tensor,
    slice_size: tuple[int, int],
    weights: Tensor | None = None,
    budget: int | None = None,
) -> Tensor:
    """Sum over directions of the interpolated profiles at arbitrary points.

    Same arguments and result as :func:`backproject_reference`; ``budget`` (images x
    points per block) defaults to :data:`BLOCK_BUDGET` of the device.
    """
    K = q.shape[2]
    inp, slots, padding = _sampling_plan(q, dirs, weights, slice_size)
    n_img, n_pts = inp.shape[0], points.shape[0]
    out = torch.zeros(K, n_pts, device=q.device, dtype=q.dtype)
    budget = _block_budget(q.device, budget)
    lb = max(1, min(n_img, budget))
    nb = max(1, budget // lb)
    buf = torch.empty(lb * min(nb, n_pts) * len(slots), device=q.device, dtype=q.dtype)
    for p0 in range(0, n_pts, nb):
        x = points[p0 : p0 + nb].to(q)
        for l0 in range(0, n_img, lb):
            l1 = min(n_img, l0 + lb)
            grid = buf[: (l1 - l0) * x.shape[0] * len(slots)].view(l1 - l0, x.shape[0], len(slots))
            for col, (vec, scale, shift) in enumerate(slots):
                # project, then scale: the reference's order of rounding
                grid[..., col] = (vec[l0:l1] @ x.T) * scale[l0:l1, None] + shift[l0:l1, None]
            out[:, p0 : p0 + x.shape[0]] += _sample(inp[l0:l1], grid, padding).sum(0)
    return out


def _axis_terms(vec: Tensor, scale: Tensor, shift: Tensor, shape: Sequence[int], e: Tensor) -> list[Tensor]:
    """Per-axis terms ``T_ax[l, i]`` with ``g_l(i, j, k) = T_d[l, i] + T_h[l, j] + T_w[l, k]``."""
    terms = []
    for ax, n in enumerate(shape):
        coord = float(e[ax]) * torch.linspace(-1, 1, n, device=vec.device, dtype=torch.float64)
        t = (vec[:, ax : ax + 1].double() * scale[:, None].double()) * coord[None, :]
        if ax == 0:
            t = t + shift[:, None].double()
        terms.append(t.to(vec.dtype))
    return terms


KERNELS = ("auto", "torch", "native", "triton")
#: Fused kernels that failed in this process under ``auto`` (e.g. Triton that cannot compile
#: for this GPU), by module name, with the error: ``auto`` takes the torch path after one warning.
failed_kernels: dict[str, str] = {}


def _fused_kernel(kernel: str, device: torch.device, out: Tensor):
    """The fused scalar kernel module to use, or None for the torch path.

    ``auto`` takes the device's fused kernel where it can take the arguments (a contiguous
    float32 accumulator) and it has not failed in this process; a kernel named explicitly
    must run here, or an :class:`~tomofield.errors.InputError` says why not.
    """
    if kernel == "auto":
        if out.dtype != torch.float32 or not out.is_contiguous():
            return None
        fused: ModuleType
        if device.type == "cuda" and triton_bp.available() and triton_bp.device_type() == "cuda":
            fused = triton_bp
        elif device.type == "cpu" and native.available():
            fused = native
        else:
            return None
        return None if fused.__name__ in failed_kernels else fused
    if kernel == "triton":
        if not triton_bp.available():
            raise InputError(
                "kernel='triton' needs Triton and a CUDA device (or TRITON_INTERPRET=1, Triton's CPU interpreter), "
                "which this machine lacks; use kernel='auto' or 'torch'"
            )
        if device.type != triton_bp.device_type():
            raise InputError(
                f"kernel='triton' takes {triton_bp.device_type()} tensors"
                f"{' under TRITON_INTERPRET=1' if triton_bp.interpreting() else ''}, got profiles on {device}"
            )
        return triton_bp
    if kernel == "native":
        if not native.available():
            raise InputError(
                f"kernel='native' is not available on this machine ({(native.reason or '')[:200]}); "
                "use kernel='auto' or 'torch'"
            )
        if device.type != "cpu":
            raise InputError(f"kernel='native' takes CPU tensors, got profiles on {device}: use kernel='auto'")
        return native
    return None


def _fused_failed(name: str, exc: Exception) -> None:
    """Record that a fused kernel failed under ``auto``; one warning, then the torch path."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    failed_kernels[name] = text if len(text) <= 300 else text[:297] + "..."
    warnings.warn(
        f"tomofield: the fused backprojector {name} failed ({failed_kernels[name]}); "
        "using the torch path from now on (same values, slower)",
        RuntimeWarning,
        stacklevel=4,
    )


def _check_grid_arguments(
    q: Tensor, dirs: Directions, shape: Sequence[int], e: Tensor, weights: Tensor | None, kernel: str
) -> tuple[int, int, int]:
    """Refuse what :func:`backproject_grid` cannot take, before anything runs; the grid (D, H, W)."""
    if kernel not in KERNELS:
        raise InputError(f"unknown backprojection kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    if not isinstance(q, Tensor) or q.dim() != 5 or not q.is_floating_point():
        raise InputError(f"backprojection takes floating-point profiles q (L, M, K, h, w), got {triton_bp.describe(q)}")
    L = q.shape[0]
    if len(dirs) != L:
        raise InputError(f"q holds profiles of {L} directions but dirs has {len(dirs)}; they must match")
    if dirs.normals.device != q.device:
        raise InputError(f"dirs are on {dirs.normals.device} but q is on {q.device}; move them to one device")
    dims = tuple(shape)
    if len(dims) != 3 or any(int(n) < 1 for n in dims):
        raise InputError(f"the output grid must be (D, H, W) of positive sizes, got {shape!r}")
    if not isinstance(e, Tensor) or e.numel() != 3:
        raise InputError(f"e must hold the 3 half-extents (d, h, w) of the box, got {triton_bp.describe(e)}")
    if weights is not None and (not isinstance(weights, Tensor) or tuple(weights.shape) != (L,)):
        raise InputError(f"weights must be one per direction, shape {(L,)}, got {triton_bp.describe(weights)}")
    D, H, W = (int(n) for n in dims)
    return D, H, W


def backproject_grid(
    q: Tensor,
    dirs: Directions,
    shape: Sequence[int],
    e: Tensor,
    slice_size: tuple[int, int],
    weights: Tensor | None = None,
    out: Tensor | None = None,
    budget: int | None = None,
    kernel: str = "auto",
) -> Tensor:
    """Sum over directions of the interpolated profiles at every voxel of a grid.

    The voxels are those of :func:`tomofield.geometry.voxel_points` ``(shape, e)``, in
    the same (flattened C) order.

    Args:
        q: (L, M, K, h, w) filtered scores.
        dirs: the L directions (on ``q``'s device and dtype).
        shape: output grid (D, H, W).
        e: (3,) half-extents of the box the grid spans (any device).
        slice_size: (h_S, w_S) slice pixels, to place map cells.
        weights: optional (L,) per-direction weights.
        out: optional (K, D*H*W) accumulator on ``q``'s device; the sums are added to it
            in place.
        budget: directions x voxels per block (default: :data:`BLOCK_BUDGET`).
        kernel: ``auto``: for scalar profiles the fused kernel of the device (Triton on
            CUDA, native on CPU) when available and ``out`` is contiguous float32, else
            ``torch``; a fused kernel that fails here (Triton that cannot compile for this
            GPU) is recorded in :data:`failed_kernels`, warned about once and replaced by
            ``torch`` for the rest of the process. Or one of :data:`KERNELS` explicitly,
            whose errors propagate.

    Returns:
        ``out`` (a new zero-initialised one when not given) plus the (K, D*H*W) sums.

    Raises:
        InputError: arguments that do not fit together (shapes, devices, an unknown
            kernel or one this machine cannot run), before anything is computed.
    """
    D, H, W = _check_grid_arguments(q, dirs, shape, e, weights, kernel)
    L, M, K, h, w = q.shape
    if out is None:
        out = torch.zeros(K, D * H * W, device=q.device, dtype=q.dtype)
    if not isinstance(out, Tensor) or tuple(out.shape) != (K, D * H * W):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"out must have shape {(K, D * H * W)} (channels x voxels of the grid), got {got}")
    if out.device != q.device or not out.is_floating_point():
        raise InputError(
            f"out must be a floating-point accumulator on q's device {q.device}, got {triton_bp.describe(out)}"
        )
    fused = _fused_kernel(kernel, q.device, out) if h == 1 and w == 1 and kernel != "torch" else None
    if L == 0:
        return out
    if fused is not None:
        if weights is not None:
            q = q * weights.reshape(L, 1, 1, 1, 1).to(q)
        # p = (x.n / s_half + 1) (M - 1) / 2 + 1: the position in the profile padded with a zero
        scale = (M - 1) / 2 / dirs.s_half
        coef = triton_bp.affine_coefficients(scale, torch.full_like(scale, (M - 1) / 2 + 1), dirs.normals, shape, e)
        profiles = q[..., 0, 0].transpose(1, 2)
        if kernel != "auto":
            return fused.backproject_scalar(profiles, coef, (D, H, W), out)
        try:
            return fused.backproject_scalar(profiles, coef, (D, H, W), out)
        except (InputError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # a kernel that cannot compile or launch here fails before it writes
            _fused_failed(fused.__name__, exc)
            weights = None  # applied to q above
    inp, slots, padding = _sampling_plan(q, dirs, weights, slice_size)
    terms = [_axis_terms(vec, scale, shift, shape, e) for vec, scale, shift in slots]
    n_img = inp.shape[0]
    budget = _block_budget(q.device, budget)
    lb = max(1, min(n_img, budget // W))  # images per block
    rows = max(1, budget // (lb * W))  # (d, h) rows of W voxels per block
    row_i = torch.arange(D * H, device=q.device)
    buf = torch.empty(lb * min(rows, D * H) * W * len(slots), device=q.device, dtype=q.dtype)
    for r0 in range(0, D * H, rows):
        r1 = min(D * H, r0 + rows)
        ri, rj = row_i[r0:r1] // H, row_i[r0:r1] % H
        acc = out[:, r0 * W : r1 * W]
        for l0 in range(0, n_img, lb):
            l1 = min(n_img, l0 + lb)
            grid = buf[: (l1 - l0) * (r1 - r0) * W * len(slots)].view(l1 - l0, r1 - r0, W, len(slots))
            for col, (td, th, tw) in enumerate(terms):
                row_term = td[l0:l1].index_select(1, ri) + th[l0:l1].index_select(1, rj)
                torch.add(row_term[:, :, None], tw[l0:l1, None, :], out=grid[..., col])
            acc += _sample(inp[l0:l1], grid.view(l1 - l0, -1, len(slots)), padding).sum(0)
    return out


def project_adjoint(
    x: Tensor,
    dirs: Directions,
    shape: Sequence[int],
    e: Tensor,
    slice_size: tuple[int, int],
    profile: Sequence[int],
    weights: Tensor | None = None,
) -> Tensor:
    """The exact adjoint of the backprojection: profiles (L, M, K, h, w) from a grid ``x`` (K, D, H, W).

    ``<backproject_grid(q), x> = <q, project_adjoint(x)>`` for every ``q`` of shape
    ``(L, *profile)`` with ``profile = (M, K, h, w)``: each voxel spreads its value back onto
    the profile samples it reads, with the same linear (bilinear for maps) weights. Computed
    as the vector-Jacobian product of :func:`backproject_reference`, so it keeps a graph per
    block: for checks and small grids (the voxel-driven counterpart of the slicer's
    pixel-driven projection), not for production.
    """
    from tomofield.geometry import voxel_points

    K = x.shape[0]
    q = torch.zeros(len(dirs), *profile, device=x.device, dtype=x.dtype, requires_grad=True)
    with torch.enable_grad():
        out = backproject_reference(q, dirs, voxel_points(shape, e, x.device).to(x), slice_size, weights)
        (grad,) = torch.autograd.grad(out, q, grad_outputs=x.reshape(K, -1))
    return grad
