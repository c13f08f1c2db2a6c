"""The GPU path: the Triton backprojector's index arithmetic and launches, the kernels'
argument checks, the compiled encoder's fallback, and every CUDA path against the CPU.

Tests marked ``gpu`` need a CUDA device (tests/conftest.py skips them without one) and
compare each CUDA path with the CPU reference at a realistic size;
``benchmarks/gpu_check.sh`` runs them (``pytest -m gpu tests``). The others run
anywhere: the Triton kernel's code in Triton's CPU interpreter (``TRITON_INTERPRET=1``,
in a fresh process), its launches with a recording stand-in, the checks on CPU and
``meta`` tensors.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tomofield import Engine, InputError, pipeline
from tomofield.geometry import (
    Directions,
    fibonacci_directions,
    half_extents,
    random_bases,
    slice_offsets,
    stack_extents,
    voxel_points,
)
from tomofield.pipeline.backproject import backproject, backproject_grid, backproject_reference
from tomofield.pipeline.kernels import native, triton_bp
from tomofield.synth import ball_phantom

E = torch.tensor([1.0, 0.4, 0.7], dtype=torch.float64)
has_native = pytest.mark.skipif(not native.available(), reason="no native kernel on this machine")
gpu = pytest.mark.gpu


def _dirs(L: int, M: int, e: torch.Tensor = E, device: str = "cpu", seed: int = 1) -> Directions:
    n = fibonacci_directions(L, hemisphere=True)
    u, v = random_bases(n, torch.Generator().manual_seed(seed))
    return Directions(n, u, v, *stack_extents(e, n, u, v, "tight"), M).to(device)


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|, on the host."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _corr(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Pearson correlation of two heatmaps, on the host."""
    a, b = (t.detach().double().cpu().flatten() for t in (got, ref))
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


# -- the Triton kernel in the interpreter ------------------------------------------------------
_INTERPRETED = textwrap.dedent(
    """
    import json, sys
    import torch, triton
    from tomofield.pipeline.backproject import backproject_grid, backproject_reference
    from tomofield.geometry import Directions, fibonacci_directions, random_bases, stack_extents, voxel_points
    from tomofield.pipeline.kernels import triton_bp

    triton_bp._jit()
    _flat_offsets = triton_bp._flat_offsets  # the kernel's own index arithmetic
    tl = triton.language  # jitted functions find it among their globals

    @triton.jit
    def probe(offs_ptr, flat_ptr, PID, CH, N, BLOCK: tl.constexpr, WIDE: tl.constexpr):
        offs, flat = _flat_offsets(tl.program_id(0) + PID, tl.program_id(1) + CH, N, BLOCK, WIDE)
        r = tl.arange(0, BLOCK)
        tl.store(offs_ptr + r, offs.to(tl.int64))
        tl.store(flat_ptr + r, flat)

    res = {}
    B = triton_bp.BLOCK
    for pid, ch, N, wide in json.loads(sys.argv[1]):
        offs, flat = torch.zeros(B, dtype=torch.int64), torch.zeros(B, dtype=torch.int64)
        probe[(1, 1)](offs, flat, pid, ch, N, BLOCK=B, WIDE=wide)
        res[f"offsets {pid} {ch} {N} {wide}"] = [offs.tolist(), flat.tolist()]

    E = torch.tensor([1.0, 0.4, 0.7], dtype=torch.float64)
    n = fibonacci_directions(6)
    u, v = random_bases(n, torch.Generator().manual_seed(0))
    dirs = Directions(n, u, v, *stack_extents(E, n, u, v, "tight"), 7).to("cpu")
    q, w = torch.randn(6, 7, 5, 1, 1), torch.rand(6)
    shape = (5, 6, 7)
    ref = backproject_reference(q, dirs, voxel_points(shape, E), (8, 8), weights=w)
    triton_bp.MAX_GRID_CHANNELS = 2  # 5 channels in launches of 2, 2 and 1
    got = backproject_grid(q, dirs, shape, E, (8, 8), weights=w, out=torch.ones(5, 210), kernel="triton") - 1
    res["split channels"] = float((got - ref).abs().max() / ref.abs().max())

    coef = triton_bp.affine_coefficients(dirs.s_half * 0 + 3, dirs.s_half * 0 + 4, dirs.normals, shape, E)
    coef[2] = float("nan")  # a NaN direction reads zeros, inside the profile
    prof = torch.randn(6, 1, 7)
    nan = triton_bp.backproject_scalar(prof, coef, shape, torch.zeros(1, 210))
    keep = [0, 1, 3, 4, 5]
    clean = triton_bp.backproject_scalar(prof[keep], coef[keep], shape, torch.zeros(1, 210))
    res["nan coefficients"] = float((nan - clean).abs().max())

    thin = (1, 5, 6)  # an axis of one voxel sits at -e, as torch.linspace(-1, 1, 1)
    q1 = torch.randn(6, 7, 1, 1, 1)
    a = backproject_grid(q1, dirs, thin, E, (8, 8), kernel="triton")
    b = backproject_grid(q1, dirs, thin, E, (8, 8), kernel="torch")
    res["one-voxel axis"] = float((a - b).abs().max() / b.abs().max())
    print("RESULT " + json.dumps(res))
    """
)

#: (pid, ch, N, WIDE) whose 32-bit offsets would wrap: ch * N + offs and pid * BLOCK pass 2^31.
OFFSET_CASES = [
    (0, 1, 2**31 - 1, False),  # the second channel of a grid just under 2^31 voxels
    (3, 63, 128 * 512 * 512, False),  # the example: channel 63 of a 512 x 512 x 128 grid
    (2**23 + 5, 1, 2**32 + 7, True),  # a block past 2^31 voxels in the second channel of a 2^32-voxel grid
    (0, 0, 1, False),  # a one-voxel grid (GPUs compile N = 1 as a constant)
]


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """The interpreter's answers to the cases below, one fresh process for all."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run(
        [sys.executable, "-c", _INTERPRETED, json.dumps(OFFSET_CASES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize(("pid", "ch", "N", "wide"), OFFSET_CASES)
def test_triton_offsets_are_64_bit(interpreted, pid, ch, N, wide):
    """The kernel's index arithmetic, run by the interpreter, which wraps 32-bit integers as a GPU does."""
    offs, flat = interpreted[f"offsets {pid} {ch} {N} {wide}"]
    want = [pid * triton_bp.BLOCK + r for r in range(triton_bp.BLOCK)]
    assert offs == want
    assert flat == [ch * N + o for o in want]  # no wrap-around at 2^31


@pytest.mark.parametrize(
    ("case", "tol"),
    [("split channels", 1e-5), ("nan coefficients", 0.0), ("one-voxel axis", 1e-5)],
)
def test_triton_kernel_in_the_interpreter(interpreted, case, tol):
    """Channels split over launches give the sum of one launch; a NaN coefficient reads zeros, never
    outside the profile; an axis of one voxel is placed as the torch path places it."""
    assert interpreted[case] <= tol


#: Argument types of representative launches: Triton passes ints of 2^31 or more as i64 and
#: compiles an int equal to 1 as a constant (one channel, one direction, a one-voxel grid).
COMPILE_CASES = {
    "typical": ({}, False),
    "2^31 voxels or more": ({"N": "i64"}, True),
    "ones as constants": ({"K": 1, "L": 1, "N": 1, "H": 1, "W": 1, "HW": 1}, False),
}


@pytest.mark.parametrize("case", list(COMPILE_CASES))
def test_triton_kernel_compiles_for_a_gpu(monkeypatch, tmp_path, case):
    """The kernel through Triton's whole compiler (to PTX and ptxas' cubin for sm_90), no GPU needed:
    what the interpreter cannot see (types, constants). The 32-bit path has no 64-bit division."""
    triton = pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if triton_bp.interpreting():
        pytest.skip("TRITON_INTERPRET=1: the kernel is not compiled")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    change, wide = COMPILE_CASES[case]
    fn = triton_bp._jit().bp_scalar
    sig = {a: "i32" for a in fn.arg_names} | {"qp_ptr": "*fp32", "coef_ptr": "*fp32", "out_ptr": "*fp32"}
    consts = {"BLOCK": triton_bp.BLOCK, "WIDE": wide} | {k: v for k, v in change.items() if isinstance(v, int)}
    sig |= {k: v for k, v in change.items() if isinstance(v, str)} | {k: "constexpr" for k in consts}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert ("div.s64" in ptx) == wide


class _Launches:
    """Stands in for the jitted kernel: records each launch's grid, channel offset and ``WIDE``."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[int, int], int, bool]] = []

    def __getitem__(self, grid):
        def launch(*args, BLOCK, WIDE):
            self.seen.append((grid, args[5], WIDE))

        return launch


@pytest.mark.parametrize(
    ("K", "shape", "limit", "launches"),
    [
        (1, (8, 8, 8), 65535, [((2, 1), 0, False)]),
        (5, (8, 8, 8), 2, [((2, 2), 0, False), ((2, 2), 2, False), ((2, 1), 4, False)]),
        # the case: 64 channels of 512 x 512 x 128 (2^31 elements), 32-bit within a channel
        (64, (128, 512, 512), 65535, [((2**17, 64), 0, False)]),
        (1, (2048, 1024, 1024), 65535, [((2**23, 1), 0, True)]),  # 2^31 voxels: 64-bit within the channel
        (70000, (2, 2, 2), 65535, [((1, 65535), 0, False), ((1, 4465), 65535, False)]),  # CUDA's grid limit
    ],
)
def test_triton_launches_split_channels_and_widen_offsets(monkeypatch, K, shape, limit, launches):
    """Launch plans of large grids on ``meta`` tensors (no memory): every channel once, within CUDA's limits."""
    fake = _Launches()
    monkeypatch.setattr(triton_bp, "_jit", lambda: SimpleNamespace(bp_scalar=fake))
    monkeypatch.setattr(triton_bp, "device_type", lambda: "meta")
    monkeypatch.setattr(triton_bp, "MAX_GRID_CHANNELS", limit)
    out = torch.empty(K, math.prod(shape), device="meta")
    prof, coef = torch.empty(3, K, 5, device="meta"), torch.empty(3, 4, device="meta")
    assert triton_bp.backproject_scalar(prof, coef, shape, out) is out
    assert fake.seen == launches
    assert sum(g[1] for g, _, _ in fake.seen) == K


def test_triton_refuses_a_grid_beyond_one_launch(monkeypatch):
    monkeypatch.setattr(triton_bp, "device_type", lambda: "meta")
    monkeypatch.setattr(triton_bp, "MAX_GRID_BLOCKS", 10)
    out = torch.empty(1, 11 * triton_bp.BLOCK, device="meta")
    prof, coef = torch.empty(3, 1, 5, device="meta"), torch.empty(3, 4, device="meta")
    with pytest.raises(InputError, match=r"at most 2560 voxels, got \(11, 16, 16\) \(2816 voxels\)"):
        triton_bp.backproject_scalar(prof, coef, (11, 16, 16), out)


# -- argument checks of the fused kernels ------------------------------------------------------
def _scalar_args(**change):
    args = dict(profiles=torch.randn(3, 2, 5), coef=torch.randn(3, 4), shape=(2, 3, 4), out=torch.zeros(2, 24))
    return args | change


SCALAR_BAD = {
    "profiles 2-D": (
        dict(profiles=torch.randn(3, 5)),
        "profiles (L, K, M), got a contiguous float32 tensor of shape (3, 5)",
    ),
    "integer profiles": (
        dict(profiles=torch.ones(3, 2, 5, dtype=torch.int64)),
        "floating-point profiles (L, K, M), got a contiguous int64",
    ),
    "coefficients for other directions": (
        dict(coef=torch.randn(2, 4)),
        "coefficients (3, 4), one row per direction of the profiles, got a contiguous float32 tensor of shape (2, 4)",
    ),
    "coefficients (L, 3)": (dict(coef=torch.randn(3, 3)), "got a contiguous float32 tensor of shape (3, 3)"),
    "a grid of 2 axes": (dict(shape=(6, 4)), "grid (D, H, W) of positive sizes, got (6, 4)"),
    "an empty axis": (dict(shape=(2, 0, 4), out=torch.zeros(2, 0)), "got (2, 0, 4)"),
    "accumulator too small": (
        dict(out=torch.zeros(2, 23)),
        "shape (2, 24) (channels x voxels of the grid (2, 3, 4)) on a cpu device, "
        "got a contiguous float32 tensor of shape (2, 23)",
    ),
    "one channel short": (dict(out=torch.zeros(1, 24)), "got a contiguous float32 tensor of shape (1, 24)"),
    "float64 accumulator": (dict(out=torch.zeros(2, 24, dtype=torch.float64)), "got a contiguous float64 tensor"),
    "non-contiguous accumulator": (
        dict(out=torch.zeros(24, 2).T),
        "got a non-contiguous float32 tensor of shape (2, 24)",
    ),
    "accumulator on another device": (
        dict(out=torch.zeros(2, 24, device="meta")),
        "on a cpu device, got a contiguous float32 tensor of shape (2, 24) on meta",
    ),
    "profiles on another device": (
        dict(profiles=torch.randn(3, 2, 5, device="meta")),
        "needs its profiles on the accumulator's device cpu, got them on meta",
    ),
    "coefficients on another device": (
        dict(coef=torch.randn(3, 4, device="meta")),
        "needs its coefficients on the accumulator's device cpu, got them on meta",
    ),
}


@pytest.mark.parametrize("kernel", ["native", "triton"])
@pytest.mark.parametrize("case", list(SCALAR_BAD))
def test_fused_backprojectors_refuse_bad_arguments_before_running(monkeypatch, kernel, case):
    """Never a write past the accumulator (the old native check came after the kernel had run)."""
    change, message = SCALAR_BAD[case]
    args = _scalar_args(**change)
    before = args["out"].clone() if args["out"].device.type != "meta" else None
    if kernel == "triton":
        monkeypatch.setattr(triton_bp, "device_type", lambda: "cpu")  # the interpreter's device, no launch follows
        monkeypatch.setattr(triton_bp, "_jit", lambda: pytest.fail("launched"))
        fn, name = triton_bp.backproject_scalar, "Triton"
    else:
        monkeypatch.setattr(native, "load", lambda *a: pytest.fail("ran"))
        fn, name = native.backproject_scalar, "native"
    with pytest.raises(InputError) as info:
        fn(**args)
    assert str(info.value).startswith(f"the {name} backprojector") and message in str(info.value)
    if before is not None:
        assert torch.equal(args["out"], before)


def test_triton_takes_cuda_tensors_unless_interpreted(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = torch.zeros(2, 24)
    with pytest.raises(
        InputError, match=r"on a cuda device, got a contiguous float32 tensor of shape \(2, 24\) on cpu"
    ):
        triton_bp.backproject_scalar(**_scalar_args(out=out))
    assert torch.equal(out, torch.zeros(2, 24))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_bp.device_type() == "cpu"


@has_native
def test_native_refuses_non_finite_coefficients():
    coef = torch.randn(3, 4)
    coef[1, 2] = float("inf")
    out = torch.zeros(2, 24)
    with pytest.raises(InputError, match=r"finite coefficients; rows \[1\] of 3 are not"):
        native.backproject_scalar(**_scalar_args(coef=coef, out=out))
    assert torch.equal(out, torch.zeros(2, 24))


SLICER_BAD = {
    "a 3-D volume": (
        dict(volume=torch.rand(4, 5, 6)),
        "volume (C, D, H, W), got a contiguous float32 tensor of shape (4, 5, 6)",
    ),
    "an integer volume": (
        dict(volume=torch.ones(1, 4, 5, 6, dtype=torch.int16)),
        "(C, D, H, W), got a contiguous int16 tensor of shape (1, 4, 5, 6) on cpu",
    ),
    "a volume on another device": (
        dict(volume=torch.rand(1, 4, 5, 6, device="meta")),
        "takes a CPU volume, got one on meta",
    ),
    "frames (N, 8)": (dict(frames=torch.rand(3, 8)), "frames (N, 9), got a contiguous float32 tensor of shape (3, 8)"),
    "frames on another device": (
        dict(frames=torch.rand(3, 9, device="meta")),
        "frames on the volume's device cpu, got them on meta",
    ),
    "an empty slice": (dict(size=(0, 4)), "two positive integers, got (0, 4)"),
    "a size of one number": (dict(size=(4,)), "got (4,)"),
}


@pytest.mark.parametrize("case", list(SLICER_BAD))
def test_native_slicer_refuses_bad_arguments_before_running(monkeypatch, case):
    change, message = SLICER_BAD[case]
    monkeypatch.setattr(native, "load", lambda *a: pytest.fail("ran"))
    args = dict(volume=torch.rand(1, 4, 5, 6), frames=torch.rand(3, 9), size=(4, 4)) | change
    with pytest.raises(InputError) as info:
        native.slice_trilinear(**args)
    assert message in str(info.value)


def test_native_slicer_refuses_volumes_beyond_32_bit_indices(monkeypatch):
    monkeypatch.setattr(native, "MAX_VOXELS", 100)
    monkeypatch.setattr(native, "load", lambda *a: pytest.fail("ran"))
    with pytest.raises(InputError, match=r"fewer than 2\^31 voxels per channel, got \(4, 5, 6\); grid_sample"):
        native.slice_trilinear(torch.rand(1, 4, 5, 6), torch.rand(3, 9), (4, 4))


# -- argument checks of the dispatchers ---------------------------------------------------------
def _grid_args(**change):
    q = torch.randn(4, 5, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    args = dict(q=q, dirs=_dirs(4, 5), shape=(3, 4, 5), e=E, slice_size=(8, 8), kernel="torch")
    return args | change


GRID_BAD = {
    "an unknown kernel": (
        dict(kernel="cuda"),
        "unknown backprojection kernel 'cuda'; valid: auto, torch, native, triton",
    ),
    "an unknown kernel, no directions": (
        dict(kernel="fast", q=torch.zeros(0, 5, 2, 1, 1), dirs=_dirs(4, 5)[:0]),
        "unknown backprojection kernel 'fast'",
    ),
    "q of 4 dimensions": (
        dict(q=torch.randn(4, 5, 2, 1)),
        "q (L, M, K, h, w), got a contiguous float32 tensor of shape (4, 5, 2, 1)",
    ),
    "integer q": (
        dict(q=torch.ones(4, 5, 2, 1, 1, dtype=torch.int32)),
        "floating-point profiles q (L, M, K, h, w), got a contiguous int32 tensor",
    ),
    "more directions than profiles": (dict(dirs=_dirs(6, 5)), "q holds profiles of 4 directions but dirs has 6"),
    "dirs on another device": (dict(dirs=_dirs(4, 5, device="meta")), "dirs are on meta but q is on cpu"),
    "a grid of 2 axes": (dict(shape=(3, 4)), "(D, H, W) of positive sizes, got (3, 4)"),
    "a negative axis": (dict(shape=(3, -4, 5)), "got (3, -4, 5)"),
    "two half-extents": (
        dict(e=E[:2]),
        "3 half-extents (d, h, w) of the box, got a contiguous float64 tensor of shape (2,)",
    ),
    "a weight short": (
        dict(weights=torch.ones(3)),
        "one per direction, shape (4,), got a contiguous float32 tensor of shape (3,)",
    ),
    "an accumulator too small": (
        dict(out=torch.zeros(2, 59)),
        "out must have shape (2, 60) (channels x voxels of the grid), got (2, 59)",
    ),
    "an accumulator elsewhere": (
        dict(out=torch.zeros(2, 60, device="meta")),
        "floating-point accumulator on q's device cpu, got a contiguous float32 tensor of shape (2, 60) on meta",
    ),
    "an integer accumulator": (dict(out=torch.zeros(2, 60, dtype=torch.int32)), "got a contiguous int32 tensor"),
    "triton without CUDA": (dict(kernel="triton"), "kernel='triton' needs Triton and a CUDA device"),
    "native on another device": (
        dict(kernel="native", q=torch.randn(4, 5, 2, 1, 1, device="meta"), dirs=_dirs(4, 5, device="meta")),
        "kernel='native' takes CPU tensors, got profiles on meta",
    ),
}


@pytest.mark.parametrize("case", list(GRID_BAD))
def test_backproject_grid_refuses_bad_arguments_before_running(monkeypatch, case):
    change, message = GRID_BAD[case]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(native, "available", lambda: True)  # the checks come first, whatever the machine
    monkeypatch.setattr(native, "backproject_scalar", lambda *a: pytest.fail("ran"))
    monkeypatch.setattr(triton_bp, "backproject_scalar", lambda *a: pytest.fail("ran"))
    args = _grid_args(**change)
    out = args.get("out")
    before = out.clone() if out is not None and out.device.type != "meta" else None
    with pytest.raises(InputError) as info:
        backproject_grid(**args)
    assert message in str(info.value)
    if before is not None:
        assert torch.equal(out, before)


def test_native_kernel_named_where_it_did_not_build(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(native, "reason", "OSError: no C compiler found (set CC)")
    with pytest.raises(InputError, match=r"kernel='native' is not available on this machine \(OSError: no C compiler"):
        backproject_grid(**_grid_args(kernel="native"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_auto_takes_the_torch_path_where_the_fused_kernel_cannot(dtype):
    """The fused kernels accumulate in float32: ``auto`` with another accumulator is the torch path, not an error."""
    args = _grid_args(kernel="auto")
    q = args["q"].to(dtype)
    dirs = args["dirs"]
    out = torch.zeros(2, 60, dtype=dtype)
    got = backproject_grid(**(args | dict(q=q, out=out)))
    ref = backproject_grid(**(args | dict(q=q, out=torch.zeros(2, 60, dtype=dtype), kernel="torch")))
    assert got is out and got.dtype == dtype and torch.equal(got, ref)
    non_contiguous = torch.zeros(60, 2).T
    got = backproject_grid(args["q"], dirs, (3, 4, 5), E, (8, 8), out=non_contiguous, kernel="auto")
    torch.testing.assert_close(got, backproject_grid(args["q"], dirs, (3, 4, 5), E, (8, 8), kernel="torch"))


@has_native
def test_one_voxel_axis_matches_the_torch_path():
    """``affine_coefficients`` places an axis of one voxel at ``-e`` (as ``linspace(-1, 1, 1)``), finite."""
    dirs, q = _dirs(6, 7), torch.randn(6, 7, 2, 1, 1)
    coef = triton_bp.affine_coefficients(dirs.s_half, dirs.s_half, dirs.normals, (1, 5, 6), E)
    assert bool(torch.isfinite(coef).all())
    got = backproject_grid(q, dirs, (1, 5, 6), E, (8, 8), kernel="native")
    torch.testing.assert_close(got, backproject_grid(q, dirs, (1, 5, 6), E, (8, 8), kernel="torch"))


def _slicing(device: str = "cpu"):
    vol = torch.randn(2, 9, 7, 5, generator=torch.Generator().manual_seed(0)).to(device)
    e = half_extents((9, 7, 5), (2.0, 1.0, 1.5), "physical").float().to(device)
    dirs = _dirs(6, 5, e.double().cpu(), device)
    offsets = slice_offsets(dirs.s_half, 5, 1).reshape(-1).float()
    rows = torch.arange(6, device=device).repeat_interleave(7)
    return vol, pipeline.normalised_frames(dirs, e), dirs, rows, offsets, e


CUT_BAD = {
    "a 3-D volume": (
        lambda a: a | dict(volume=a["volume"][0]),
        "floating-point volume (C, D, H, W), got shape (9, 7, 5)",
    ),
    "an integer volume": (lambda a: a | dict(volume=a["volume"].long()), "got shape (2, 9, 7, 5) (torch.int64)"),
    "rows and offsets of two lengths": (
        lambda a: a | dict(rows=a["rows"][:-1]),
        "one length, got rows of shape (41,) (torch.int64) and offsets of shape (42,)",
    ),
    "float rows": (lambda a: a | dict(rows=a["rows"].float()), "integer direction rows"),
    "offsets on another device": (
        lambda a: a | dict(offsets=a["offsets"].to("meta")),
        "the slices' offsets are on meta but the volume is on cpu",
    ),
    "an empty slice": (lambda a: a | dict(size=(5, 0)), "(h, w) of two positive integers, got (5, 0)"),
}


@pytest.mark.parametrize("case", list(CUT_BAD))
def test_cut_slices_refuses_bad_arguments(monkeypatch, case):
    change, message = CUT_BAD[case]
    vol, frames, dirs, rows, offsets, e = _slicing()
    monkeypatch.setattr(native, "slice_trilinear", lambda *a: pytest.fail("ran"))
    args = change(dict(volume=vol, frames=frames, dirs=dirs, rows=rows, offsets=offsets, size=(6, 6), e=e))
    with pytest.raises(InputError) as info:
        pipeline.cut_slices(**args)
    assert message in str(info.value)


@has_native
def test_cut_slices_takes_grid_sample_beyond_the_native_limit(monkeypatch):
    """A volume too large for the native slicer's 32-bit indices is sliced by grid_sample, same samples."""
    vol, frames, dirs, rows, offsets, e = _slicing()
    want = pipeline.cut_slices(vol, frames, dirs, rows, offsets, (6, 6), e)
    monkeypatch.setattr(native, "MAX_VOXELS", vol[0].numel())
    monkeypatch.setattr(native, "slice_trilinear", lambda *a: pytest.fail("native for a volume beyond its limit"))
    torch.testing.assert_close(pipeline.cut_slices(vol, frames, dirs, rows, offsets, (6, 6), e), want)


# -- the compiled encoder's fallback -----------------------------------------------------------
class TinyNet(nn.Module):
    """A small deterministic conv net returning one logit per slice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).mean(dim=(2, 3)) * 3)


class FakeCompiled:
    """What ``torch.compile`` returns, standing in: runs the module, raising ``errors[i]`` at call ``i``."""

    def __init__(self, module: nn.Module, errors: dict[int, BaseException]) -> None:
        self.module, self.errors, self.calls = module, errors, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls in self.errors:
            raise self.errors[self.calls]
        return self.module(x)


def _oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _wrapped_oom() -> RuntimeError:
    exc = RuntimeError("backend compiler failed")
    exc.__cause__ = _oom()
    return exc


class _BackendFailed(Exception):
    """Shaped like ``torch._dynamo.exc.BackendCompilerFailed``: the real error in ``inner_exception``."""

    def __init__(self, inner: BaseException) -> None:
        super().__init__("backend='inductor' raised")
        self.inner_exception = inner


@pytest.mark.parametrize("make", [_oom, _wrapped_oom, lambda: _BackendFailed(_oom())], ids=["oom", "cause", "inner"])
def test_out_of_memory_propagates_and_keeps_compilation(monkeypatch, make):
    """The scorer halves its batch on torch.OutOfMemoryError: the wrapper must let it through and stay compiled."""
    fakes: list[FakeCompiled] = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: fakes.append(FakeCompiled(m, {1: make()})) or fakes[-1])
    net = TinyNet()
    wrapper = pipeline.compiled(net)
    x = torch.randn(3, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "running eagerly"
        with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate 2.00 GiB"):
            wrapper(x)
        assert not wrapper.failed
        torch.testing.assert_close(wrapper(x), net(x))
    assert fakes[0].calls == 2  # the second call ran compiled


def test_an_error_of_the_input_keeps_compilation(monkeypatch):
    """A call that fails eagerly too is the input's fault, not the compiler's: it propagates, compilation stays on."""
    fakes: list[FakeCompiled] = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: fakes.append(FakeCompiled(m, {})) or fakes[-1])
    net = TinyNet()
    wrapper = pipeline.compiled(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="channels"):
            wrapper(torch.randn(2, 3, 8, 8))  # 3 channels into a 1-channel conv
        assert not wrapper.failed
        wrapper(torch.randn(2, 1, 8, 8))
    assert fakes[0].calls == 2


def test_a_compiler_failure_still_turns_compilation_off(monkeypatch):
    fakes: list[FakeCompiled] = []
    broken = {1: RuntimeError("InductorError: no working C++ compiler")}
    monkeypatch.setattr(torch, "compile", lambda m, **kw: fakes.append(FakeCompiled(m, broken)) or fakes[-1])
    net = TinyNet()
    wrapper = pipeline.compiled(net)
    x = torch.randn(2, 1, 8, 8)
    with pytest.warns(UserWarning, match="torch.compile failed .*no working C.. compiler.*; running eagerly"):
        torch.testing.assert_close(wrapper(x), net(x))
    assert wrapper.failed
    wrapper(x)
    assert fakes[0].calls == 1  # eager from then on


def test_engine_halves_the_batch_of_a_compiled_encoder_and_stays_compiled(monkeypatch):
    """Out of memory in the compiled encoder mid-run: the batch halves, compiled calls go on, same heatmap."""
    vol = ball_phantom((12, 12, 12), (1, 1, 1), [((0.1, 0.0, -0.2), 4.0, 1.0)])[None]
    kw = dict(head="logit", directions=4, slices=4, slice_size=16, device="cpu", amp="off", batch_size=8)
    want = Engine(encoder=TinyNet(), **kw).reconstruct(vol)
    fakes: list[FakeCompiled] = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: fakes.append(FakeCompiled(m, {3: _oom()})) or fakes[-1])
    eng = Engine(encoder=TinyNet(), compile=True, **kw)
    with pytest.warns(RuntimeWarning, match="out of memory with batches of 8 slices; continuing with 4"):
        got = eng.reconstruct(vol)
    torch.testing.assert_close(got, want)
    scorer = eng.scorer_for(1)
    assert scorer.batch_size == 4 and not scorer.encoder.failed
    assert fakes[0].calls > 3  # compiled calls after the OOM


# -- CUDA paths against the CPU (skipped without a CUDA device) --------------------------------
@pytest.fixture
def exact_fp32():
    """No TF32 in convolutions and matmuls while a test compares CUDA with the CPU in float32."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def _free_cuda_bytes() -> int:
    torch.cuda.empty_cache()
    return int(torch.cuda.mem_get_info()[0])


@gpu
@pytest.mark.parametrize("K", [1, 3])
def test_triton_backprojector_matches_the_reference_on_cuda(K):
    """64^3 voxels, 64 directions of 34 slices, weighted, accumulated into an existing sum."""
    assert triton_bp.available(), "Triton is not importable next to CUDA torch"
    shape, L, M = (64, 64, 64), 64, 34
    e = half_extents(shape, (1.0, 1.2, 0.8), "physical")
    dirs = _dirs(L, M, e)
    q = torch.randn(L, M, K, 1, 1, generator=torch.Generator().manual_seed(K))
    w = torch.rand(L, generator=torch.Generator().manual_seed(2)) + 0.5
    ref = backproject_reference(q, dirs, voxel_points(shape, e), (64, 64), weights=w)
    out = torch.full((K, ref.shape[1]), 2.0, device="cuda")
    got = backproject_grid(q.cuda(), dirs.to("cuda"), shape, e, (64, 64), weights=w.cuda(), out=out, kernel="auto")
    assert got is out
    assert _rel_err(got - 2.0, ref) < 1e-4
    torch_path = backproject_grid(q.cuda(), dirs.to("cuda"), shape, e, (64, 64), weights=w.cuda(), kernel="torch")
    assert _rel_err(torch_path, ref) < 1e-4


@gpu
def test_triton_channel_split_on_cuda(monkeypatch):
    monkeypatch.setattr(triton_bp, "MAX_GRID_CHANNELS", 2)
    shape, dirs = (32, 24, 40), _dirs(16, 12)
    q = torch.randn(16, 12, 5, 1, 1, generator=torch.Generator().manual_seed(0))
    ref = backproject_reference(q, dirs, voxel_points(shape, E), (16, 16))
    assert _rel_err(backproject_grid(q.cuda(), dirs.to("cuda"), shape, E, (16, 16), kernel="triton"), ref) < 1e-4


@gpu
def test_triton_launches_on_the_tensors_device():
    """An accumulator on a second GPU: the kernel runs there, not on the current device."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    shape, dirs = (16, 20, 24), _dirs(8, 10)
    q = torch.randn(8, 10, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    ref = backproject_reference(q, dirs, voxel_points(shape, E), (16, 16))
    got = backproject_grid(q.to("cuda:1"), dirs.to("cuda:1"), shape, E, (16, 16), kernel="triton")
    assert got.device == torch.device("cuda:1") and _rel_err(got, ref) < 1e-4


@gpu
def test_map_backprojection_on_cuda_matches_the_cpu():
    """Maps (torch path) on the grid and at points, 48^3 voxels, 32 directions of 7 x 7 maps."""
    shape, dirs = (48, 48, 48), _dirs(32, 18)
    q = torch.randn(32, 18, 2, 7, 7, generator=torch.Generator().manual_seed(0))
    ref = backproject_grid(q, dirs, shape, E, (64, 64), kernel="torch")
    got = backproject_grid(q.cuda(), dirs.to("cuda"), shape, E, (64, 64))
    assert _rel_err(got, ref) < 1e-4
    pts = voxel_points(shape, E).float()
    assert _rel_err(backproject(q.cuda(), dirs.to("cuda"), pts.cuda(), (64, 64)), ref) < 1e-4


@gpu
def test_grid_sample_slicer_on_cuda_matches_the_native_slicer():
    """A 2-channel 64^3 volume, 32 directions of 34 slices of 64 x 64 pixels, some reaching outside."""
    vol = torch.randn(2, 64, 64, 64, generator=torch.Generator().manual_seed(0))
    e = half_extents((64, 64, 64), (1.0, 1.0, 2.0), "physical")
    dirs = _dirs(32, 32, e)
    offsets = slice_offsets(dirs.s_half, 32, 1).reshape(-1).float()
    rows = torch.arange(32).repeat_interleave(34)
    size = (64, 64)
    cpu = pipeline.cut_slices(vol, pipeline.normalised_frames(dirs, e.float()), dirs, rows, offsets, size, e.float())
    dc, ec = dirs.to("cuda"), e.float().cuda()
    frames = pipeline.normalised_frames(dc, ec)
    got = pipeline.cut_slices(vol.cuda(), frames, dc, rows.cuda(), offsets.cuda(), size, ec)
    assert got.device.type == "cuda" and got.shape == cpu.shape
    assert _rel_err(got, cpu) < 1e-4


def _engine_pair(device: str, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    vol = ball_phantom((64, 64, 64), (1.0, 1.0, 1.5), [((0.2, 0.1, -0.2), 12.0, 1.0), ((-0.3, -0.2, 0.3), 8.0, 0.6)])
    vol = vol[None] + 0.05 * torch.rand(1, 64, 64, 64, generator=torch.Generator().manual_seed(0))
    cfg = dict(directions=64, slices=32, slice_size=64, amp="off") | kw
    cpu = Engine(device="cpu", **cfg).reconstruct(vol, (1.0, 1.0, 1.5))
    got = Engine(device=device, **cfg).reconstruct(vol, (1.0, 1.0, 1.5))
    return got, cpu


@gpu
def test_engine_on_cuda_matches_the_cpu(exact_fp32):
    got, cpu = _engine_pair("cuda", encoder=TinyNet(), head="logit")
    assert got.device.type == "cuda" and got.shape == cpu.shape == (1, 64, 64, 64)
    assert _rel_err(got, cpu) < 1e-3


@gpu
def test_engine_on_cuda_under_fp16_stays_close():
    """``amp="auto"`` is fp16 on CUDA: the heatmap correlates with the float32 CPU one as docs/benchmarks.md says."""
    got, cpu = _engine_pair("cuda", encoder=TinyNet(), head="logit", amp="auto")
    assert bool(torch.isfinite(got).all()) and _corr(got, cpu) > 0.99


@gpu
def test_engine_on_a_second_gpu_matches_the_cpu(exact_fp32):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    got, cpu = _engine_pair("cuda:1", encoder=TinyNet(), head="logit")
    assert got.device == torch.device("cuda:1") and _rel_err(got, cpu) < 1e-3


@gpu
def test_compiled_encoder_on_cuda_matches_eager(exact_fp32):
    """torch.compile on CUDA (Inductor, Triton): the heatmap of the eager encoder, or eager with a warning."""
    vol = ball_phantom((32, 32, 32), (1, 1, 1), [((0.1, 0.0, -0.2), 8.0, 1.0)])[None]
    kw = dict(encoder=TinyNet(), head="logit", directions=16, slices=16, slice_size=32, device="cuda", amp="off")
    eager = Engine(**kw).reconstruct(vol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a machine whose compiler fails runs eagerly, with a warning
        fast = Engine(compile=True, **kw).reconstruct(vol)
    assert _rel_err(fast, eager) < 1e-3


@gpu
@pytest.mark.parametrize("head", ["gradcam", "gradcam++", "layercam", "scorecam"])
def test_cam_heads_on_cuda_match_the_cpu(exact_fp32, head):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=1, in_chans=1).eval()
    vol = ball_phantom((32, 32, 32), (1, 1, 1), [((0.2, 0.1, -0.2), 7.0, 1.0)])[None]
    # scorecam runs the encoder once per channel of the layer: few slices keep the CPU side short
    cfg = dict(head=head, head_options={"layer": 2}, directions=8, slices=8, slice_size=32, amp="off")
    cpu = Engine(encoder=model, device="cpu", **cfg).reconstruct(vol)
    got = Engine(encoder=model, device="cuda", **cfg).reconstruct(vol)  # the same module, moved to the GPU
    assert got.device.type == "cuda" and got.shape == cpu.shape and float(cpu.abs().max()) > 0
    assert _rel_err(got, cpu) < 1e-3


@gpu
def test_a_real_cuda_out_of_memory_halves_the_batch(exact_fp32):
    """An encoder that cannot allocate for batches above 16: the engine goes on with 16."""

    class Hungry(TinyNet):
        def forward(self, x):
            if x.shape[0] > 16:
                torch.empty(1 << 50, dtype=torch.uint8, device=x.device)  # 1 PiB: the allocator refuses
            return super().forward(x)

    vol = ball_phantom((32, 32, 32), (1, 1, 1), [((0.1, 0.0, -0.2), 8.0, 1.0)])[None]
    kw = dict(head="logit", directions=8, slices=16, slice_size=32, device="cuda", amp="off", skip_empty=False)
    want = Engine(encoder=TinyNet(), batch_size=16, **kw).reconstruct(vol)
    eng = Engine(encoder=Hungry(), batch_size=64, **kw)
    with pytest.warns(RuntimeWarning, match="out of memory with batches of"):
        got = eng.reconstruct(vol)
    assert eng.scorer_for(1).batch_size == 16 and _rel_err(got, want) < 1e-4


@gpu
def test_triton_channel_offsets_past_2_31_on_cuda():
    """Channel 4 of 5 on a 2^29-voxel grid starts at 2^31: equal to a one-channel launch of it."""
    shape, K = (512, 1024, 1024), 5
    n = math.prod(shape)
    if _free_cuda_bytes() < (K + 1) * n * 4 + 2**30:
        pytest.skip("needs about 13 GiB of free GPU memory")
    dirs = _dirs(4, 8).to("cuda")
    q = torch.randn(4, 8, K, 1, 1, generator=torch.Generator().manual_seed(0)).cuda()
    out = backproject_grid(q, dirs, shape, E, (8, 8), kernel="triton")
    last = out[K - 1].clone()
    del out
    alone = backproject_grid(q[:, :, K - 1 :], dirs, shape, E, (8, 8), kernel="triton")[0]
    assert torch.equal(last, alone) and float(alone.abs().max()) > 0


@gpu
def test_triton_voxel_offsets_past_2_31_on_cuda():
    """A grid of more than 2^31 voxels (WIDE): its last slab against the reference at those points."""
    shape = (2049, 1024, 1024)
    n = math.prod(shape)
    if _free_cuda_bytes() < n * 4 + 2**31:
        pytest.skip("needs about 10 GiB of free GPU memory")
    dirs = _dirs(4, 8)
    q = torch.randn(4, 8, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    out = backproject_grid(q.cuda(), dirs.to("cuda"), shape, E, (8, 8), kernel="triton")
    slab = 2 * 1024 * 1024  # the last two D-planes, on either side of voxel 2^31
    idx = torch.arange(n - slab, n, dtype=torch.int64)
    d, h, w = idx // (1024 * 1024), (idx // 1024) % 1024, idx % 1024
    pts = torch.stack([E[a] * (2 * i.double() / (shape[a] - 1) - 1) for a, i in enumerate((d, h, w))], 1)
    ref = backproject_reference(q.double(), dirs, pts, (8, 8))
    assert _rel_err(out[:, n - slab :], ref) < 1e-4


# -- a fused kernel that cannot run here -------------------------------------------------------
@pytest.fixture
def broken_native(monkeypatch):
    """The native kernel "available" but failing as Triton does on a GPU it cannot compile for."""
    import tomofield.pipeline.backproject as bp

    calls = []

    def fail(*args):
        calls.append(args)
        raise RuntimeError("CompilationError: at 12:8: no kernel image for sm_60")

    monkeypatch.setattr(bp, "failed_kernels", {})
    monkeypatch.setattr(native, "available", lambda: True)
    monkeypatch.setattr(native, "backproject_scalar", fail)
    return bp, calls


def test_auto_falls_back_once_to_torch_when_a_fused_kernel_fails(broken_native):
    bp, calls = broken_native
    args = _grid_args(kernel="auto", weights=torch.rand(4, generator=torch.Generator().manual_seed(3)) + 0.5)
    want = backproject_grid(**(args | dict(kernel="torch")))
    out = torch.full((2, 60), 1.5)
    with pytest.warns(
        RuntimeWarning, match="fused backprojector tomofield.pipeline.kernels.native failed .*no kernel image"
    ):
        got = backproject_grid(**args, out=out)
    assert got is out
    torch.testing.assert_close(got - 1.5, want)  # weights applied once
    assert "sm_60" in bp.failed_kernels["tomofield.pipeline.kernels.native"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process
        torch.testing.assert_close(backproject_grid(**args), want)
    assert len(calls) == 1


def test_a_fused_kernel_named_explicitly_raises_its_error(broken_native):
    bp, calls = broken_native
    with pytest.raises(RuntimeError, match="no kernel image for sm_60"):
        backproject_grid(**_grid_args(kernel="native"))
    assert bp.failed_kernels == {} and len(calls) == 1


def test_out_of_memory_in_a_fused_kernel_is_not_a_failure(monkeypatch):
    import tomofield.pipeline.backproject as bp

    monkeypatch.setattr(bp, "failed_kernels", {})
    monkeypatch.setattr(native, "available", lambda: True)

    def oom(*args):
        raise _oom()

    monkeypatch.setattr(native, "backproject_scalar", oom)
    with pytest.raises(torch.OutOfMemoryError):
        backproject_grid(**_grid_args(kernel="auto"))
    assert bp.failed_kernels == {}
