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
the unpadded profile. Tested on CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
from torch import Tensor

BLOCK = 256


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def bp_scalar(qp_ptr, coef_ptr, out_ptr, L, K, MP, H, W, N, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        ch = tl.program_id(1)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        i = (offs // (H * W)).to(tl.float32)
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
            p = tl.minimum(tl.maximum(p, 0.0), hi)
            cell = p.to(tl.int32)  # floor, p >= 0
            f = p - cell.to(tl.float32)
            nxt = tl.minimum(cell + 1, MP - 1)
            base = qp_ptr + (d * K + ch) * MP
            v0 = tl.load(base + cell, mask=mask, other=0.0)
            v1 = tl.load(base + nxt, mask=mask, other=0.0)
            acc += v0 + f * (v1 - v0)
        optr = out_ptr + ch * N + offs
        tl.store(optr, tl.load(optr, mask=mask, other=0.0) + acc, mask=mask)

    return bp_scalar


def available() -> bool:
    """Triton importable and a CUDA device present (or the interpreter switched on)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def affine_coefficients(scale: Tensor, shift: Tensor, normals: Tensor, shape: Sequence[int], e: Tensor) -> Tensor:
    """``coef`` (L, 4) with ``p = scale (x . n) + shift`` for voxel index ``(i, j, k)``.

    ``x_ax = e_ax (2 idx / (n_ax - 1) - 1)``; computed in float64, returned as float32.
    """
    n = normals.double()
    sc = scale.double()[:, None]
    e64 = e.to(device=n.device, dtype=torch.float64, non_blocking=True)  # no stream sync
    steps = torch.stack([2 * e64[a] / (int(shape[a]) - 1) * n[:, a] for a in range(3)], dim=1) * sc
    c0 = shift.double() - sc[:, 0] * (n * e64).sum(1)
    return torch.cat([c0[:, None], steps], dim=1).float().contiguous()


def backproject_scalar(profiles: Tensor, coef: Tensor, shape: Sequence[int], out: Tensor) -> Tensor:
    """Add ``sum_l qp_l(p_l(voxel))`` to ``out`` (K, D*H*W) in place.

    Args:
        profiles: (L, K, M) weighted scalar profiles.
        coef: (L, 4) affine coefficients (see :func:`affine_coefficients`).
        shape: grid (D, H, W).
        out: (K, D*H*W) float32 contiguous accumulator.
    """
    L, K, M = profiles.shape
    D, H, W = (int(s) for s in shape)
    N = D * H * W
    if not out.is_contiguous() or out.dtype != torch.float32:
        raise ValueError("the Triton backprojector needs a contiguous float32 accumulator")
    qp = torch.nn.functional.pad(profiles.float(), (1, 1)).contiguous()  # (L, K, M + 2)
    grid = ((N + BLOCK - 1) // BLOCK, K)
    _kernel()[grid](qp, coef.to(out.device).contiguous(), out, L, K, M + 2, H, W, N, BLOCK=BLOCK)
    return out
