"""Fused Triton kernel for the backprojection of scalar profiles onto a voxel grid.

One program owns ``BLOCK`` consecutive voxels of one channel and walks over every
direction of the chunk, keeping the sum in registers: per (voxel, direction) it
evaluates the affine slice coordinate, reads two neighbouring entries of the
zero-padded profile (a few KB, cache resident) and interpolates. Memory traffic is one
read-modify-write of the output per chunk, against about 20 bytes per voxel-direction
for ``grid_sample`` on a materialised grid.

Convention: ``coef`` (L, 4) float32 gives, per direction, ``p = c0 + c1 i + c2 j + c3 k``
for voxel ``(i, j, k)``: the position in the padded profile ``qp`` (L, K, M + 2) whose
entries 0 and M + 1 are zero. Linear interpolation of ``qp`` at ``p``, zero outside
``[0, M + 1]``, equals ``grid_sample(..., align_corners=True, padding_mode="zeros")`` on
the unpadded profile. :func:`check_scalar_arguments` refuses arguments that break it, for
this kernel and the native one alike.

Offsets into the output are 64-bit: channel ``ch`` starts at ``ch * N``, which passes
2^31 on a large GPU (64 channels of 512 x 512 x 128 voxels); offsets within a channel are
32-bit unless the grid itself has 2^31 voxels or more (``WIDE``). Channels are launched
at most :data:`MAX_GRID_CHANNELS` at a time (CUDA's limit on a grid's second axis).
A NaN coefficient reads zeros, never outside the profile. Tested on CPU with
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from tomofield.errors import InputError

BLOCK = 256
#: Channels per launch: CUDA grids have at most 65535 programs along their second axis.
MAX_GRID_CHANNELS = 65535
#: Programs along a grid's first axis (CUDA's limit): ``ceil(D H W / BLOCK)`` must not pass it.
MAX_GRID_BLOCKS = 2**31 - 1


# Set by _jit(), so that importing this module does not import Triton: a jitted function
# finds triton.language and the jitted functions it calls among its module's globals.
tl: Any = None
_flat_offsets = None


@functools.cache
def _jit() -> SimpleNamespace:
    """The compiled functions: ``flat_offsets`` (the index arithmetic) and ``bp_scalar`` (the kernel)."""
    global tl, _flat_offsets
    import triton
    import triton.language

    tl = triton.language

    @triton.jit
    def flat_offsets(pid, ch, N, BLOCK: tl.constexpr, WIDE: tl.constexpr):
        """Voxel indices of block ``pid`` within a channel, and their offsets in ``out`` (int64)."""
        if WIDE:  # the grid has 2^31 voxels or more
            offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        else:
            offs = pid * BLOCK + tl.arange(0, BLOCK)
        return offs, ch.to(tl.int64) * N + offs  # promoted to int64 before the product

    _flat_offsets = flat_offsets

    @triton.jit
    def bp_scalar(qp_ptr, coef_ptr, out_ptr, L, K, C0, MP, H, W, HW, N, BLOCK: tl.constexpr, WIDE: tl.constexpr):
        pid = tl.program_id(0)
        ch = tl.program_id(1) + C0
        offs, out_offs = _flat_offsets(pid, ch, N, BLOCK, WIDE)
        mask = offs < N
        i = (offs // HW).to(tl.float32)
        j = ((offs // W) % H).to(tl.float32)
        k = (offs % W).to(tl.float32)
        hi = (MP - 1).to(tl.float32)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for d in range(0, L):
            c0 = tl.load(coef_ptr + 4 * d)
            c1 = tl.load(coef_ptr + 4 * d + 1)
            c2 = tl.load(coef_ptr + 4 * d + 2)
            c3 = tl.load(coef_ptr + 4 * d + 3)
            p = c0 + c1 * i + c2 * j + c3 * k
            p = tl.where(p == p, p, 0.0)  # NaN -> 0: inside the profile, whatever the min/max do with NaN
            p = tl.minimum(tl.maximum(p, 0.0), hi)
            cell = p.to(tl.int32)  # floor, p >= 0
            f = p - cell.to(tl.float32)
            nxt = tl.minimum(cell + 1, MP - 1)
            base = qp_ptr + (d * K + ch.to(tl.int64)) * MP
            v0 = tl.load(base + cell, mask=mask, other=0.0)
            v1 = tl.load(base + nxt, mask=mask, other=0.0)
            acc += v0 + f * (v1 - v0)
        optr = out_ptr + out_offs
        tl.store(optr, tl.load(optr, mask=mask, other=0.0) + acc, mask=mask)

    return SimpleNamespace(flat_offsets=flat_offsets, bp_scalar=bp_scalar)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def device_type() -> str:
    """Where this module's kernels take their tensors: ``cuda``, or ``cpu`` under the interpreter."""
    return "cpu" if interpreting() else "cuda"


def available() -> bool:
    """Triton importable and a CUDA device present (or the interpreter switched on)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or interpreting()


def affine_coefficients(scale: Tensor, shift: Tensor, normals: Tensor, shape: Sequence[int], e: Tensor) -> Tensor:
    """``coef`` (L, 4) with ``p = scale (x . n) + shift`` for voxel index ``(i, j, k)``.

    ``x_ax = e_ax (2 idx / (n_ax - 1) - 1)`` (``-e_ax`` on an axis of one voxel, as
    ``linspace(-1, 1, 1)``); computed in float64, returned as float32.
    """
    n = normals.double()
    sc = scale.double()[:, None]
    e64 = e.to(device=n.device, dtype=torch.float64, non_blocking=True)  # no stream sync
    steps = torch.stack([2 * e64[a] / max(int(shape[a]) - 1, 1) * n[:, a] for a in range(3)], dim=1) * sc
    c0 = shift.double() - sc[:, 0] * (n * e64).sum(1)
    return torch.cat([c0[:, None], steps], dim=1).float().contiguous()


def describe(t: object) -> str:
    """``a contiguous float32 tensor of shape (2, 3) on cpu``, or the type of a non-tensor, for messages."""
    if not isinstance(t, Tensor):
        return f"a {type(t).__name__}"
    layout = "contiguous" if t.is_contiguous() else "non-contiguous"
    return f"a {layout} {str(t.dtype).removeprefix('torch.')} tensor of shape {tuple(t.shape)} on {t.device}"


def check_scalar_arguments(
    kernel: str, profiles: Tensor, coef: Tensor, shape: Sequence[int], out: Tensor, device: str
) -> tuple[int, int, int, tuple[int, int, int]]:
    """Refuse what a fused scalar backprojector cannot take, before anything is launched.

    Args:
        kernel: the kernel's name, for the messages.
        profiles: (L, K, M) floating-point profiles, on ``out``'s device.
        coef: (L, 4) floating-point coefficients, on ``out``'s device.
        shape: grid (D, H, W) of positive sizes.
        out: (K, D*H*W) contiguous float32 accumulator on a ``device`` device.
        device: the device type the kernel runs on (``cpu`` or ``cuda``).

    Returns:
        ``(L, K, M, (D, H, W))``.

    Raises:
        InputError: naming the argument, what it is and what is valid.
    """
    if not isinstance(profiles, Tensor) or profiles.dim() != 3 or not profiles.is_floating_point():
        raise InputError(
            f"the {kernel} backprojector takes floating-point profiles (L, K, M), got {describe(profiles)}"
        )
    L, K, M = (int(s) for s in profiles.shape)
    if not isinstance(coef, Tensor) or tuple(coef.shape) != (L, 4) or not coef.is_floating_point():
        raise InputError(
            f"the {kernel} backprojector takes floating-point coefficients ({L}, 4), one row per direction of "
            f"the profiles, got {describe(coef)}"
        )
    dims = tuple(shape)
    if len(dims) != 3 or any(int(s) < 1 for s in dims):
        raise InputError(f"the {kernel} backprojector takes a grid (D, H, W) of positive sizes, got {shape!r}")
    D, H, W = (int(s) for s in dims)
    if (
        not isinstance(out, Tensor)
        or tuple(out.shape) != (K, D * H * W)
        or out.dtype != torch.float32
        or not out.is_contiguous()
        or out.device.type != device
    ):
        raise InputError(
            f"the {kernel} backprojector accumulates into a contiguous float32 tensor of shape {(K, D * H * W)} "
            f"(channels x voxels of the grid {(D, H, W)}) on a {device} device, got {describe(out)}"
        )
    for name, t in (("profiles", profiles), ("coefficients", coef)):
        if t.device != out.device:
            raise InputError(
                f"the {kernel} backprojector needs its {name} on the accumulator's device {out.device}, "
                f"got them on {t.device}"
            )
    return L, K, M, (D, H, W)


def backproject_scalar(profiles: Tensor, coef: Tensor, shape: Sequence[int], out: Tensor) -> Tensor:
    """Add ``sum_l qp_l(p_l(voxel))`` to ``out`` (K, D*H*W) in place.

    Args:
        profiles: (L, K, M) weighted scalar profiles, on ``out``'s device.
        coef: (L, 4) affine coefficients (see :func:`affine_coefficients`), on ``out``'s device.
        shape: grid (D, H, W).
        out: (K, D*H*W) float32 contiguous accumulator on a CUDA device (CPU under
            ``TRITON_INTERPRET=1``).

    Raises:
        InputError: arguments the kernel cannot take (:func:`check_scalar_arguments`), or a
            grid too large for one launch.
    """
    L, K, M, (D, H, W) = check_scalar_arguments("Triton", profiles, coef, shape, out, device_type())
    N = D * H * W
    blocks = (N + BLOCK - 1) // BLOCK
    if blocks > MAX_GRID_BLOCKS:
        raise InputError(
            f"the Triton backprojector takes grids of at most {MAX_GRID_BLOCKS * BLOCK} voxels, "
            f"got {(D, H, W)} ({N} voxels)"
        )
    if L == 0 or K == 0:
        return out
    qp = torch.nn.functional.pad(profiles.detach().float(), (1, 1)).contiguous()  # (L, K, M + 2)
    coef = coef.detach().float().contiguous()
    wide = blocks * BLOCK >= 2**31  # voxel indices within a channel reach 2^31
    kernel = _jit().bp_scalar
    guard = torch.cuda.device(out.device) if out.device.type == "cuda" else contextlib.nullcontext()
    with guard:  # Triton launches on the current device: make it the tensors' own
        for c0 in range(0, K, MAX_GRID_CHANNELS):
            grid = (blocks, min(MAX_GRID_CHANNELS, K - c0))
            kernel[grid](qp, coef, out, L, K, c0, M + 2, H, W, H * W, N, BLOCK=BLOCK, WIDE=wide)
    return out
