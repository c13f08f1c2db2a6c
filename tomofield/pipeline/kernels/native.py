"""Native CPU kernels: backprojection of scalar profiles and trilinear slicing.

Both are written in C (``cpu.c`` beside this module) with an AVX-512 path and a portable
path left to the compiler's vectoriser; rows are handed out to OpenMP threads
(``torch.get_num_threads()``) a few at a time, so a thread that the OS preempts on a busy
machine does not hold the others up.

* ``bp_scalar``: the computation of the Triton kernel (:mod:`tomofield.pipeline.kernels.triton_bp`).
  For a run of 64 voxels along the last axis every direction of the chunk is visited
  with the running sums kept in four AVX-512 registers: two gathers and one fused
  multiply-add per 16 voxel-direction updates, one write of the output.
* ``slice_trilinear``: ``grid_sample(volume, grid, align_corners=True,
  padding_mode="zeros")`` for the planar grids of slices, 16 pixels of a slice row at a
  time: the sample position is affine in the pixel index, so no grid is materialised,
  and the eight corners are masked gathers.

The C source is compiled with the system C compiler (the one ``torch.compile`` uses on
CPU) into :func:`tomofield.io.cache_dir` and loaded with ``ctypes``. The library's name
carries :func:`build_key`: source, compiler, flags, architecture and the CPU's
instruction-set features, so a cache shared by different machines (a home directory on
a cluster) never hands one CPU a build made for another. When no compiler is found or
compiling fails, :func:`available` is False (``reason`` says why), one
``RuntimeWarning`` says so, and the engine uses its torch paths, which compute the same
values. ``TOMOFIELD_NATIVE=0`` switches the kernels off, without a warning.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from tomofield.errors import InputError
from tomofield.io import cache_dir
from tomofield.pipeline.kernels.triton_bp import check_scalar_arguments, describe

#: The C source of the kernels.
SOURCE_PATH = Path(__file__).with_name("cpu.c")
#: Compiler flags of the machine's own build (OpenMP always on).
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99", "-lm")

#: Voxels per channel the slicer indexes with 32-bit integers: volumes must stay below.
MAX_VOXELS = 2**31
#: Why the native kernels are unavailable, when they are (full compiler output included).
reason: str | None = None
_warned = False  # the fallback warning is given once per process


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """A digest of this CPU's instruction-set features.

    Linux: the first ``flags`` (x86) or ``Features`` (Arm) line of ``cpuinfo``, as a set;
    elsewhere ``platform.processor()`` and ``platform.machine()``.
    """
    text = ""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("flags", "features"):
                    text = " ".join(sorted(set(value.split())))
                    break
    except OSError:
        pass
    if not text:
        text = f"{platform.processor()} {platform.machine()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _compiler_identity(cc: str) -> tuple[str, str]:
    """The compiler's resolved path and the first line of ``cc --version``."""
    path = os.path.realpath(shutil.which(cc) or cc)
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    return path, (out.splitlines() or [""])[0].strip()


def build_key(source: str, cc: str, flags: Sequence[str]) -> str:
    """Hex digest naming a build: equal keys mean a library that runs here.

    Covers the source, the compiler (path and version line), the flags (OpenMP among
    them), the machine architecture and the CPU's features (:func:`cpu_features`).
    """
    parts = [
        hashlib.sha256(source.encode()).hexdigest(),
        *_compiler_identity(cc),
        *flags,
        platform.machine(),
        cpu_features(),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def library_path(key: str) -> Path:
    """Where the build named ``key`` is cached."""
    suffix = ".dll" if sys.platform == "win32" else ".so"
    return cache_dir() / f"native_{key}{suffix}"


def _short(exc: BaseException) -> str:
    """One line naming a build failure; the first error line of the compiler when it has one."""
    if isinstance(exc, subprocess.CalledProcessError):
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
        text = f"compiler exited with status {exc.returncode}" + (f": {first}" if first else "")
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def _fallback_warning(short: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"tomofield: native CPU kernels unavailable ({short}); using the torch fallback (same values, slower)",
            RuntimeWarning,
            stacklevel=4,
        )


@functools.cache
def load(flags: tuple[str, ...] = FLAGS) -> ctypes.CDLL | None:
    """Compile (once, cached on disk under :func:`build_key`) and load the kernels.

    Returns None when that is impossible, after one warning per process unless
    ``TOMOFIELD_NATIVE=0`` switched the kernels off: the torch paths compute the same values.
    """
    global reason
    if os.environ.get("TOMOFIELD_NATIVE", "auto") == "0":
        reason = "switched off by TOMOFIELD_NATIVE=0"
        return None
    cc = _compiler()
    try:
        if cc is None:
            raise OSError("no C compiler found (set CC)")
        source = SOURCE_PATH.read_text()
        path = library_path(build_key(source, cc, flags))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                src, lib = Path(tmp) / "cpu.c", Path(tmp) / path.name
                src.write_text(source)  # the text hashed into the key, whatever happens to the package file
                subprocess.run([cc, *flags, str(src), "-o", str(lib)], check=True, capture_output=True, timeout=120)
                os.replace(lib, path)  # atomic: concurrent processes never load a partial file
        dll = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = f"{type(exc).__name__}: {exc} {detail.decode(errors='replace')[-500:] if isinstance(detail, bytes) else detail}"
        _fallback_warning(_short(exc))
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    dll.bp_scalar.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int]
    dll.bp_scalar.restype = None
    dll.slice_trilinear.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, i64, i64, i64, ctypes.c_int]
    dll.slice_trilinear.restype = None
    return dll


def available() -> bool:
    """Whether the native kernels compiled and loaded on this machine."""
    return load() is not None


def backproject_scalar(
    profiles: Tensor, coef: Tensor, shape: Sequence[int], out: Tensor, lib: ctypes.CDLL | None = None
) -> Tensor:
    """Add ``sum_l lerp(qp_l, p_l(voxel))`` to ``out`` (K, D*H*W) in place; CPU tensors.

    Args:
        profiles: (L, K, M) weighted scalar profiles.
        coef: (L, 4) affine coefficients ``p = c0 + c1 i + c2 j + c3 k`` into the profile
            padded with one zero in front (see :func:`tomofield.pipeline.kernels.triton_bp.affine_coefficients`).
        shape: grid (D, H, W).
        out: (K, D*H*W) contiguous float32 accumulator.
        lib: a kernel from :func:`load` (default: the machine's own build).

    Raises:
        InputError: arguments the kernel cannot take, checked before it runs
            (:func:`tomofield.pipeline.kernels.triton_bp.check_scalar_arguments`), or non-finite
            coefficients.
        RuntimeError: the kernels are not available on this machine.
    """
    L, K, M, (D, H, W) = check_scalar_arguments("native", profiles, coef, shape, out, "cpu")
    lib = lib or load()
    if lib is None:
        raise RuntimeError("the native backprojector is not available on this machine")
    coef = coef.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(coef).all()):
        rows = (~torch.isfinite(coef)).any(1).nonzero()[:, 0].tolist()
        raise InputError(
            f"the native backprojector needs finite coefficients; rows {rows[:10]} of {L} are not "
            "(directions with a non-finite normal or a zero stack extent)"
        )
    # one zero in front, two behind: p is clamped to [0, M + 1] and reads cells p, p + 1
    qp = torch.nn.functional.pad(profiles.detach().to(torch.float32), (1, 2)).contiguous()
    for k in range(K):
        table = qp[:, k].contiguous()
        lib.bp_scalar(table.data_ptr(), coef.data_ptr(), out[k].data_ptr(), L, M + 3, D, H, W, torch.get_num_threads())
    return out


def slice_trilinear(volume: Tensor, frames: Tensor, size: tuple[int, int], lib: ctypes.CDLL | None = None) -> Tensor:
    """Slices (N, C, h, w) of a (C, D, H, W) floating-point CPU volume; zero outside.

    Args:
        volume: the volume (read as float32).
        frames: (N, 9) per slice, on the CPU: the voxel-index position (d, h, w) of pixel
            (0, 0), then the steps from one row and from one column to the next.
        size: (h, w) pixels, positive.
        lib: a kernel from :func:`load` (default: the machine's own build).

    Equals ``grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=True)``
    at those positions.

    Raises:
        InputError: arguments the kernel cannot take, checked before it runs.
        RuntimeError: the kernels are not available on this machine.
    """
    if not isinstance(volume, Tensor) or volume.dim() != 4 or not volume.is_floating_point():
        raise InputError(f"the native slicer takes a floating-point volume (C, D, H, W), got {describe(volume)}")
    if volume.device.type != "cpu":
        raise InputError(f"the native slicer takes a CPU volume, got one on {volume.device}; use grid_sample there")
    if not isinstance(frames, Tensor) or frames.dim() != 2 or frames.shape[1] != 9 or not frames.is_floating_point():
        raise InputError(f"the native slicer takes floating-point frames (N, 9), got {describe(frames)}")
    if frames.device != volume.device:
        raise InputError(f"the native slicer needs its frames on the volume's device cpu, got them on {frames.device}")
    dims = tuple(size)
    if len(dims) != 2 or any(int(n) < 1 for n in dims):
        raise InputError(f"the native slicer takes a slice size (h, w) of two positive integers, got {size!r}")
    C, D, H, W = volume.shape
    if D * H * W >= MAX_VOXELS:
        raise InputError(
            f"the native slicer takes volumes of fewer than 2^31 voxels per channel, got {(D, H, W)}; "
            "grid_sample slices larger ones"
        )
    lib = lib or load()
    if lib is None:
        raise RuntimeError("the native kernels are not available on this machine")
    vol = volume.detach().to(torch.float32).contiguous()
    fr = frames.detach().to(torch.float32).contiguous()
    h, w = (int(n) for n in dims)
    out = torch.empty(fr.shape[0], C, h, w)
    lib.slice_trilinear(
        vol.data_ptr(), C, D, H, W, fr.data_ptr(), out.data_ptr(), fr.shape[0], h, w, torch.get_num_threads()
    )
    return out
