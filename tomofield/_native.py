"""Native CPU kernels: backprojection of scalar profiles and trilinear slicing.

Both are written in C with an AVX-512 path and a portable path left to the compiler's
vectoriser; rows are handed out to OpenMP threads (``torch.get_num_threads()``) a few at
a time, so a thread that the OS preempts on a busy machine does not hold the others up.

* ``bp_scalar``: the computation of the Triton kernel (:mod:`tomofield._bp_triton`).
  For a run of 64 voxels along the last axis every direction of the chunk is visited
  with the running sums kept in four AVX-512 registers: two gathers and one fused
  multiply-add per 16 voxel-direction updates, one write of the output.
* ``slice_trilinear``: ``grid_sample(volume, grid, align_corners=True,
  padding_mode="zeros")`` for the planar grids of slices, 16 pixels of a slice row at a
  time: the sample position is affine in the pixel index, so no grid is materialised,
  and the eight corners are masked gathers.

The C source is compiled once per machine with the system C compiler (the one
``torch.compile`` uses on CPU) into a cache directory and loaded with ``ctypes``. When
no compiler is found or compiling fails, :func:`available` is False (``reason`` says
why) and the engine uses its torch paths, which compute the same values.
``TOMOFIELD_NATIVE=0`` switches the kernels off, ``TOMOFIELD_NATIVE=1`` warns when they
cannot be built; ``TOMOFIELD_CACHE`` sets the cache directory (default
``~/.cache/tomofield``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = r"""
#include <stdint.h>
#include <math.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* out[i, j, k] += sum_l lerp(qp_l, p_l),  p_l = c0 + c1 i + c2 j + c3 k clamped to [0, hi];
   qp: (L, MP) profiles with qp[0] = qp[MP - 2] = qp[MP - 1] = 0, hi = MP - 2. */
void bp_scalar(const float* qp, const float* coef, float* out, int64_t L, int64_t MP,
               int64_t D, int64_t H, int64_t W, int nthreads) {
    const float hi = (float)(MP - 2);
    #pragma omp parallel for collapse(2) schedule(dynamic, 8) num_threads(nthreads)
    for (int64_t i = 0; i < D; i++) {
        for (int64_t j = 0; j < H; j++) {
            float* o = out + (i * H + j) * W;
#ifdef __AVX512F__
            const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(hi);
            const __m512 kofs = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            int64_t k0 = 0;
            for (; k0 + 64 <= W; k0 += 64) {  /* 4 x 16 voxels per pass over the directions */
                __m512 acc[4], kv[4];
                for (int u = 0; u < 4; u++) {
                    acc[u] = zero;
                    kv[u] = _mm512_add_ps(kofs, _mm512_set1_ps((float)(k0 + 16 * u)));
                }
                for (int64_t l = 0; l < L; l++) {
                    const float* c = coef + 4 * l;
                    const float* q = qp + l * MP;
                    const __m512 base = _mm512_set1_ps(c[0] + c[1] * (float)i + c[2] * (float)j);
                    const __m512 ck = _mm512_set1_ps(c[3]);
                    for (int u = 0; u < 4; u++) {
                        __m512 p = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(ck, kv[u], base), zero), top);
                        __m512i cell = _mm512_cvttps_epi32(p);  /* max(NaN, 0) = 0 above */
                        __m512 f = _mm512_sub_ps(p, _mm512_cvtepi32_ps(cell));
                        __m512 v0 = _mm512_i32gather_ps(cell, q, 4);
                        __m512 v1 = _mm512_i32gather_ps(cell, q + 1, 4);
                        acc[u] = _mm512_add_ps(acc[u], _mm512_fmadd_ps(f, _mm512_sub_ps(v1, v0), v0));
                    }
                }
                for (int u = 0; u < 4; u++)
                    _mm512_storeu_ps(o + k0 + 16 * u, _mm512_add_ps(_mm512_loadu_ps(o + k0 + 16 * u), acc[u]));
            }
            for (; k0 < W; k0 += 16) {  /* the tail, 16 voxels at a time, masked */
                __mmask16 m = (W - k0) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (W - k0)) - 1u);
                __m512 kv = _mm512_add_ps(kofs, _mm512_set1_ps((float)k0));
                __m512 acc = zero;
                for (int64_t l = 0; l < L; l++) {
                    const float* c = coef + 4 * l;
                    const float* q = qp + l * MP;
                    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(c[3]), kv,
                                               _mm512_set1_ps(c[0] + c[1] * (float)i + c[2] * (float)j));
                    p = _mm512_min_ps(_mm512_max_ps(p, zero), top);
                    __m512i cell = _mm512_cvttps_epi32(p);
                    __m512 f = _mm512_sub_ps(p, _mm512_cvtepi32_ps(cell));
                    __m512 v0 = _mm512_i32gather_ps(cell, q, 4);
                    __m512 v1 = _mm512_i32gather_ps(cell, q + 1, 4);
                    acc = _mm512_add_ps(acc, _mm512_fmadd_ps(f, _mm512_sub_ps(v1, v0), v0));
                }
                _mm512_mask_storeu_ps(o + k0, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, o + k0), acc));
            }
#else
            for (int64_t l = 0; l < L; l++) {
                const float* c = coef + 4 * l;
                const float* q = qp + l * MP;
                const float base = c[0] + c[1] * (float)i + c[2] * (float)j, ck = c[3];
                #pragma omp simd
                for (int64_t k = 0; k < W; k++) {
                    float p = base + ck * (float)k;
                    p = p > 0.0f ? p : 0.0f;
                    p = p < hi ? p : hi;
                    int cell = (int)p;
                    float f = p - (float)cell;
                    o[k] += q[cell] + f * (q[cell + 1] - q[cell]);
                }
            }
#endif
        }
    }
}

/* out (N, C, h, w) = trilinear samples of vol (C, D, H, W), zero outside, at voxel-index
   positions frames[n] = (origin, row step, column step), 9 floats in (d, h, w) order:
   pixel (i, j) of slice n samples origin + i * row + j * col. */
void slice_trilinear(const float* vol, int64_t C, int64_t D, int64_t H, int64_t W,
                     const float* frames, float* out, int64_t N, int64_t h, int64_t w, int nthreads) {
    const int64_t plane = D * H * W;
    #pragma omp parallel for collapse(2) schedule(dynamic, 8) num_threads(nthreads)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t i = 0; i < h; i++) {
            const float* f = frames + 9 * n;
            const float bz = f[0] + (float)i * f[3], by = f[1] + (float)i * f[4], bx = f[2] + (float)i * f[5];
            float* o = out + n * C * h * w + i * w;
#ifdef __AVX512F__
            const __m512 jofs = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            const __m512 lo = _mm512_set1_ps(-2.0f), one = _mm512_set1_ps(1.0f);
            const __m512 hz = _mm512_set1_ps((float)D + 1), hy = _mm512_set1_ps((float)H + 1), hx = _mm512_set1_ps((float)W + 1);
            const __m512i zero_i = _mm512_setzero_si512();
            const __m512i nz = _mm512_set1_epi32((int)D), ny = _mm512_set1_epi32((int)H), nx = _mm512_set1_epi32((int)W);
            const __m512i sh = _mm512_set1_epi32((int)H), sw = _mm512_set1_epi32((int)W);
            for (int64_t j0 = 0; j0 < w; j0 += 16) {
                __mmask16 m = (w - j0) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - j0)) - 1u);
                __m512 jv = _mm512_add_ps(jofs, _mm512_set1_ps((float)j0));
                /* clamp to [-2, n + 1]: keeps every corner's in/out status, keeps ints small; NaN -> -2 */
                __m512 z = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(jv, _mm512_set1_ps(f[6]), _mm512_set1_ps(bz)), lo), hz);
                __m512 y = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(jv, _mm512_set1_ps(f[7]), _mm512_set1_ps(by)), lo), hy);
                __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(jv, _mm512_set1_ps(f[8]), _mm512_set1_ps(bx)), lo), hx);
                __m512 z0 = _mm512_roundscale_ps(z, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                __m512 y0 = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                __m512 x0 = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                __m512 wz[2], wy[2], wx[2];
                wz[1] = _mm512_sub_ps(z, z0); wz[0] = _mm512_sub_ps(one, wz[1]);
                wy[1] = _mm512_sub_ps(y, y0); wy[0] = _mm512_sub_ps(one, wy[1]);
                wx[1] = _mm512_sub_ps(x, x0); wx[0] = _mm512_sub_ps(one, wx[1]);
                __m512i iz = _mm512_cvtps_epi32(z0), iy = _mm512_cvtps_epi32(y0), ix = _mm512_cvtps_epi32(x0);
                __m512i idx[8];
                __mmask16 ok[8];
                __m512 wt[8];
                for (int c8 = 0; c8 < 8; c8++) {
                    int dz = c8 >> 2, dy = (c8 >> 1) & 1, dx = c8 & 1;
                    __m512i zz = _mm512_add_epi32(iz, _mm512_set1_epi32(dz));
                    __m512i yy = _mm512_add_epi32(iy, _mm512_set1_epi32(dy));
                    __m512i xx = _mm512_add_epi32(ix, _mm512_set1_epi32(dx));
                    ok[c8] = m & _mm512_cmpge_epi32_mask(zz, zero_i) & _mm512_cmplt_epi32_mask(zz, nz)
                               & _mm512_cmpge_epi32_mask(yy, zero_i) & _mm512_cmplt_epi32_mask(yy, ny)
                               & _mm512_cmpge_epi32_mask(xx, zero_i) & _mm512_cmplt_epi32_mask(xx, nx);
                    idx[c8] = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(_mm512_mullo_epi32(zz, sh), yy), sw), xx);
                    wt[c8] = _mm512_mul_ps(_mm512_mul_ps(wz[dz], wy[dy]), wx[dx]);
                }
                for (int64_t c = 0; c < C; c++) {
                    const float* v = vol + c * plane;
                    __m512 acc = _mm512_setzero_ps();
                    for (int c8 = 0; c8 < 8; c8++)
                        acc = _mm512_fmadd_ps(wt[c8], _mm512_mask_i32gather_ps(_mm512_setzero_ps(), ok[c8], idx[c8], v, 4), acc);
                    _mm512_mask_storeu_ps(o + c * h * w + j0, m, acc);
                }
            }
#else
            for (int64_t j = 0; j < w; j++) {
                float z = bz + (float)j * f[6], y = by + (float)j * f[7], x = bx + (float)j * f[8];
                z = z > -2.0f ? z : -2.0f; z = z < (float)D + 1 ? z : (float)D + 1;
                y = y > -2.0f ? y : -2.0f; y = y < (float)H + 1 ? y : (float)H + 1;
                x = x > -2.0f ? x : -2.0f; x = x < (float)W + 1 ? x : (float)W + 1;
                float z0 = floorf(z), y0 = floorf(y), x0 = floorf(x);
                float wz[2] = {1 - (z - z0), z - z0}, wy[2] = {1 - (y - y0), y - y0}, wx[2] = {1 - (x - x0), x - x0};
                int iz = (int)z0, iy = (int)y0, ix = (int)x0;
                for (int64_t c = 0; c < C; c++) {
                    const float* v = vol + c * plane;
                    float acc = 0.0f;
                    for (int c8 = 0; c8 < 8; c8++) {
                        int zz = iz + (c8 >> 2), yy = iy + ((c8 >> 1) & 1), xx = ix + (c8 & 1);
                        if (zz >= 0 && zz < D && yy >= 0 && yy < H && xx >= 0 && xx < W)
                            acc += wz[c8 >> 2] * wy[(c8 >> 1) & 1] * wx[c8 & 1] * v[((int64_t)zz * H + yy) * W + xx];
                    }
                    o[c * h * w + j] = acc;
                }
            }
#endif
        }
    }
}
"""

_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99", "-lm"]


def _cache_dir() -> Path:
    base = os.environ.get("TOMOFIELD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tomofield"
    )
    return Path(base)


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


#: Why the native kernel is unavailable, when it is.
reason: str | None = None


@functools.cache
def load(flags: tuple[str, ...] = tuple(_FLAGS)) -> ctypes.CDLL | None:
    """Compile (once, cached on disk) and load the kernel; None when that is impossible.

    A failure is silent unless ``TOMOFIELD_NATIVE=1`` asks for the kernel explicitly:
    the torch backprojector computes the same sums.
    """
    global reason
    setting = os.environ.get("TOMOFIELD_NATIVE", "auto")
    if setting == "0":
        reason = "switched off by TOMOFIELD_NATIVE=0"
        return None
    cc = _compiler()
    try:
        if cc is None:
            raise OSError("no C compiler found (set CC)")
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256("\0".join([_SOURCE, cc, version, *flags, os.uname().machine]).encode()).hexdigest()[:16]
        path = _cache_dir() / f"bp_native_{key}.so"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                src, lib = Path(tmp) / "bp.c", Path(tmp) / "bp.so"
                src.write_text(_SOURCE)
                subprocess.run([cc, *flags, str(src), "-o", str(lib)], check=True, capture_output=True, timeout=120)
                os.replace(lib, path)  # atomic: concurrent processes never load a partial file
        dll = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = f"{type(exc).__name__}: {exc} {detail.decode(errors='replace')[-500:] if isinstance(detail, bytes) else detail}"
        if setting == "1":
            warnings.warn(f"native backprojector unavailable ({reason}); using torch", stacklevel=3)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    dll.bp_scalar.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int]
    dll.bp_scalar.restype = None
    dll.slice_trilinear.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, i64, i64, i64, ctypes.c_int]
    dll.slice_trilinear.restype = None
    return dll


def available() -> bool:
    """Whether the native kernel compiled and loaded on this machine."""
    return load() is not None


def backproject_scalar(
    profiles: Tensor, coef: Tensor, shape: Sequence[int], out: Tensor, lib: ctypes.CDLL | None = None
) -> Tensor:
    """Add ``sum_l lerp(qp_l, p_l(voxel))`` to ``out`` (K, D*H*W) in place; CPU tensors.

    Args:
        profiles: (L, K, M) weighted scalar profiles.
        coef: (L, 4) affine coefficients ``p = c0 + c1 i + c2 j + c3 k`` into the profile
            padded with one zero in front (see :func:`tomofield._bp_triton.affine_coefficients`).
        shape: grid (D, H, W).
        out: (K, D*H*W) contiguous float32 accumulator.
        lib: a kernel from :func:`load` (default: the machine's own build).
    """
    lib = lib or load()
    if lib is None:
        raise RuntimeError("the native backprojector is not available on this machine")
    L, K, M = profiles.shape
    D, H, W = (int(s) for s in shape)
    if out.device.type != "cpu" or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError("the native backprojector needs a contiguous float32 CPU accumulator")
    coef = coef.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(coef).all()):
        raise ValueError("non-finite backprojection coefficients")
    # one zero in front, two behind: p is clamped to [0, M + 1] and reads cells p, p + 1
    qp = torch.nn.functional.pad(profiles.detach().to("cpu", torch.float32), (1, 2)).contiguous()
    n = D * H * W
    for k in range(K):
        table = qp[:, k].contiguous()
        lib.bp_scalar(table.data_ptr(), coef.data_ptr(), out[k].data_ptr(), L, M + 3, D, H, W, torch.get_num_threads())
    assert out.shape[1] == n
    return out


def slice_trilinear(volume: Tensor, frames: Tensor, size: tuple[int, int], lib: ctypes.CDLL | None = None) -> Tensor:
    """Slices (N, C, h, w) of a (C, D, H, W) float32 CPU volume; zero outside.

    Args:
        volume: the volume.
        frames: (N, 9) per slice: the voxel-index position (d, h, w) of pixel (0, 0), then
            the steps from one row and from one column to the next.
        size: (h, w) pixels.
        lib: a kernel from :func:`load` (default: the machine's own build).

    Equals ``grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=True)``
    at those positions.
    """
    lib = lib or load()
    if lib is None:
        raise RuntimeError("the native kernels are not available on this machine")
    C, D, H, W = volume.shape
    if D * H * W >= 2**31:
        raise ValueError(f"volumes of 2^31 voxels or more are not supported natively, got {(D, H, W)}")
    vol = volume.detach().to("cpu", torch.float32).contiguous()
    fr = frames.detach().to("cpu", torch.float32).contiguous()
    h, w = size
    out = torch.empty(fr.shape[0], C, h, w)
    lib.slice_trilinear(
        vol.data_ptr(), C, D, H, W, fr.data_ptr(), out.data_ptr(), fr.shape[0], h, w, torch.get_num_threads()
    )
    return out
