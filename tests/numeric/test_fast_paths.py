"""The fast paths against the reference implementations they replace."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from tomofield import Engine, InputError, pipeline
from tomofield.geometry import (
    Directions,
    fibonacci_directions,
    half_extents,
    random_bases,
    sample_slices,
    slice_area,
    slice_offsets,
    slice_points,
    stack_extents,
    voxel_points,
)
from tomofield.pipeline import Scorer
from tomofield.pipeline.backproject import backproject, backproject_grid, backproject_reference
from tomofield.pipeline.kernels import native as native_kernels
from tomofield.synth import ball_phantom

E = torch.tensor([1.0, 0.4, 0.7], dtype=torch.float64)
#: CPU kernels of backproject_grid: the torch path, and the native one where it builds.
KERNELS = ["torch", "native"] if native_kernels.available() else ["torch"]
#: Compiler flags of a build without AVX-512: the loops other x86 CPUs run.
PORTABLE = ("-O3", "-march=x86-64-v2", "-fopenmp", "-shared", "-fPIC", "-std=c99", "-lm")


def _dirs(L: int, M: int, extent: str = "tight", hemisphere: bool = False, seed: int = 1) -> Directions:
    n = fibonacci_directions(L, hemisphere=hemisphere)
    u, v = random_bases(n, torch.Generator().manual_seed(seed))
    s, a, b = stack_extents(E, n, u, v, extent)
    return Directions(n, u, v, s, a, b, M).to("cpu")


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize(
    ("L", "M", "K", "h", "w"), [(7, 9, 1, 1, 1), (6, 5, 3, 1, 1), (5, 6, 2, 4, 3), (4, 8, 1, 7, 7)]
)
@pytest.mark.parametrize("extent", ["unit", "tight"])
def test_fast_backprojectors_equal_the_reference(L, M, K, h, w, extent):
    """Scalars (odd and even L, several channels) and maps, weighted, on a grid and on
    points reaching far outside the stacks."""
    gen = torch.Generator().manual_seed(L * 100 + M)
    dirs = _dirs(L, M, extent)
    q = torch.randn(L, M, K, h, w, generator=gen)
    weights = torch.rand(L, generator=gen) + 0.5
    shape = (6, 5, 7)
    grid_pts = voxel_points(shape, E)
    ref = backproject_reference(q, dirs, grid_pts, (16, 12), weights=weights)
    for kernel in KERNELS:
        _close(backproject_grid(q, dirs, shape, E, (16, 12), weights=weights, kernel=kernel), ref)
    far = (torch.rand(300, 3, generator=gen) * 2 - 1) * 2.5  # |x| up to 2.5 sqrt(3): outside every stack
    ref_far = backproject_reference(q, dirs, far, (16, 12), weights=weights)
    _close(backproject(q, dirs, far, (16, 12), weights=weights), ref_far)
    assert bool((ref_far == 0).any()) and bool((ref_far != 0).any())  # both regimes covered


@pytest.mark.parametrize("maps", [False, True])
def test_fast_backprojection_does_not_depend_on_block_sizes(maps):
    L, M = 9, 7
    dirs = _dirs(L, M)
    q = torch.randn(L, M, 2, *((5, 4) if maps else (1, 1)), generator=torch.Generator().manual_seed(3))
    shape = (5, 6, 4)
    full = backproject_grid(q, dirs, shape, E, (20, 20), kernel="torch")
    for budget in (1, 7, 50, 10**7):
        _close(backproject_grid(q, dirs, shape, E, (20, 20), budget=budget, kernel="torch"), full, 1e-6)
        _close(backproject(q, dirs, voxel_points(shape, E), (20, 20), budget=budget), full, 1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_grid_backprojection_accumulates_into_out(kernel):
    """Chunks of directions added into one accumulator give the whole sum."""
    dirs = _dirs(10, 6)
    q = torch.randn(10, 6, 2, 1, 1)
    shape = (4, 5, 6)
    out = torch.full((2, 120), 2.0)
    backproject_grid(q[:3], dirs[:3], shape, E, (8, 8), out=out, kernel=kernel)
    backproject_grid(q[3:], dirs[3:], shape, E, (8, 8), out=out, kernel=kernel)
    _close(out - 2.0, backproject_grid(q, dirs, shape, E, (8, 8), kernel="torch"))
    with pytest.raises(ValueError, match="out must have shape"):
        backproject_grid(q, dirs, shape, E, (8, 8), out=torch.zeros(1, 7))


@pytest.mark.parametrize("W", [64, 83, 150])
def test_cpu_kernel_on_long_rows(W):
    """Runs of 64 voxels, then 16, then a partial tail, along the last axis."""
    if not native_kernels.available():
        pytest.skip("no native kernel on this machine")
    dirs = _dirs(9, 11)
    q, w = torch.randn(9, 11, 1, 1, 1), torch.rand(9)
    shape = (3, 2, W)
    ref = backproject_reference(q, dirs, voxel_points(shape, E), (8, 8), weights=w)
    _close(backproject_grid(q, dirs, shape, E, (8, 8), weights=w, kernel="native"), ref)


def test_portable_cpu_kernel_matches_reference(monkeypatch, tmp_path):
    """The C kernel's loop without AVX-512 (what other CPUs compile), built for x86-64-v2."""
    if not native_kernels.available() or os.uname().machine != "x86_64":
        pytest.skip("no native kernel on this machine")
    monkeypatch.setenv("TOMOFIELD_CACHE", str(tmp_path))
    lib = native_kernels.load(PORTABLE)
    assert lib is not None, native_kernels.reason
    monkeypatch.setattr(native_kernels, "load", lambda *a: lib)
    dirs = _dirs(9, 7)
    q, w = torch.randn(9, 7, 2, 1, 1), torch.rand(9)
    shape = (5, 6, 21)  # W not a multiple of 16: the tail of each row too
    ref = backproject_reference(q, dirs, voxel_points(shape, E), (8, 8), weights=w)
    _close(backproject_grid(q, dirs, shape, E, (8, 8), weights=w, kernel="native"), ref)


def test_triton_kernel_matches_reference_in_interpreter():
    """The CUDA kernel's logic, run by Triton's CPU interpreter in a fresh process."""
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import torch
        from tomofield.pipeline.backproject import backproject_grid, backproject_reference
        from tomofield.geometry import Directions, fibonacci_directions, random_bases, stack_extents, voxel_points
        E = torch.tensor([1.0, 0.4, 0.7], dtype=torch.float64)
        for L, M, K in ((7, 9, 1), (4, 5, 2)):
            n = fibonacci_directions(L)
            u, v = random_bases(n, torch.Generator().manual_seed(0))
            dirs = Directions(n, u, v, *stack_extents(E, n, u, v, "tight"), M).to("cpu")
            q = torch.randn(L, M, K, 1, 1)
            w = torch.rand(L)
            ref = backproject_reference(q, dirs, voxel_points((5, 6, 7), E), (8, 8), weights=w)
            out = torch.ones(K, 210)
            got = backproject_grid(q, dirs, (5, 6, 7), E, (8, 8), weights=w, out=out, kernel="triton")
            torch.testing.assert_close(got - 1, ref, rtol=1e-5, atol=1e-5)
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("size", [(11, 10), (5, 37), (1, 1)])
def test_cut_slices_equal_sample_slices(native, size, monkeypatch):
    """Both slicers against the geometry module: oblique stacks of a multichannel volume,
    padded slices reaching outside the box, rows longer than one 16-pixel vector."""
    if native and not native_kernels.available():
        pytest.skip("no native kernel on this machine")
    monkeypatch.setattr(native_kernels, "available", lambda: native)
    vol = torch.randn(2, 9, 7, 5)
    e = half_extents((9, 7, 5), (2.0, 1.0, 1.5), "physical").float()
    dirs = _dirs(6, 5).to("cpu")
    offsets = slice_offsets(dirs.s_half * 1.3, 5, 1).reshape(-1)
    rows = torch.arange(6).repeat_interleave(7)
    pts = slice_points(
        dirs.normals[rows], dirs.u[rows], dirs.v[rows], offsets, dirs.a_half[rows], dirs.b_half[rows], size
    )
    ref = sample_slices(vol, pts, e)
    if size != (1, 1):  # a 1-pixel slice samples its corner (-a_half, -b_half): outside
        assert bool((ref == 0).any()) and bool((ref != 0).any())
    got = pipeline.cut_slices(vol, pipeline.normalised_frames(dirs, e), dirs, rows, offsets, size, e)
    _close(got, ref)


def test_portable_cpu_slicer_matches_reference(monkeypatch, tmp_path):
    if not native_kernels.available() or os.uname().machine != "x86_64":
        pytest.skip("no native kernel on this machine")
    monkeypatch.setenv("TOMOFIELD_CACHE", str(tmp_path))
    lib = native_kernels.load(PORTABLE)
    assert lib is not None, native_kernels.reason
    vol = torch.randn(3, 6, 8, 7)
    e = half_extents((6, 8, 7), (1.0, 1.0, 1.0), "normalized").float()
    dirs = _dirs(5, 4).to("cpu")
    offsets = slice_offsets(dirs.s_half, 4, 1).reshape(-1)
    rows = torch.arange(5).repeat_interleave(6)
    pts = slice_points(
        dirs.normals[rows], dirs.u[rows], dirs.v[rows], offsets, dirs.a_half[rows], dirs.b_half[rows], (9, 19)
    )
    frames = pipeline.index_frames(dirs, rows, offsets, e, (6, 8, 7), (9, 19))
    _close(native_kernels.slice_trilinear(vol, frames, (9, 19), lib=lib), sample_slices(vol, pts, e))


def _old_reconstruct(eng: Engine, vol: torch.Tensor, spacing) -> torch.Tensor:
    """The engine loop as it was before the fast path: points, sample_slices, reference backprojection."""
    shape = tuple(vol.shape[1:])
    plan = eng.plan(shape, spacing)
    e, groups = plan.e, plan.groups
    pad, size, n_dirs = eng.filter.pad, (eng.config.slice_size,) * 2, sum(len(g) for g in groups)
    enc, pts, out = eng.encoder_for(vol.shape[0]), voxel_points(shape, e), 0
    with torch.no_grad():
        for group in groups:
            dirs = group.to("cpu")
            S = dirs.num_slices + 2 * pad
            idx = torch.arange(len(dirs)).repeat_interleave(S)
            off = slice_offsets(dirs.s_half, dirs.num_slices, pad).reshape(-1)
            p = slice_points(dirs.normals[idx], dirs.u[idx], dirs.v[idx], off, dirs.a_half[idx], dirs.b_half[idx], size)
            scores = eng.head(enc, sample_slices(vol, p, e.float()))
            q = eng.filter(scores.reshape(len(dirs), S, *scores.shape[1:]), dirs.slice_spacing())
            w = torch.full((len(dirs),), eng.filter.constant * 4 * math.pi / n_dirs)
            if eng.filter.integral:
                w = w * slice_area(dirs.a_half, dirs.b_half, size)
            out = out + backproject_reference(q, dirs, pts, size, weights=w)
    return out.reshape(-1, *shape)


class TinyNet(nn.Module):
    """A small deterministic conv net returning one logit per slice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).mean(dim=(2, 3)) * 3)


@pytest.mark.parametrize("head", ["sum", "logit"])
@pytest.mark.parametrize("sampler", ["fibonacci", "orthogonal"])
def test_engine_matches_the_loop_it_replaced(head, sampler):
    vol = ball_phantom((12, 14, 10), (2.0, 1.0, 1.0), [((0.2, 0.1, -0.3), 5.0, 1.0)])[None] + 0.1
    kw = dict(
        head=head,
        sampler=sampler,
        directions=20,
        slices=9,
        slice_size=16,
        device="cpu",
        amp="off",
        extent="tight",
        batch_size=23,
    )
    eng = Engine(encoder=TinyNet(), skip_empty=False, **kw)
    ref = _old_reconstruct(eng, vol, (2.0, 1.0, 1.0))
    _close(eng.reconstruct(vol, (2.0, 1.0, 1.0)), ref)
    _close(Engine(encoder=TinyNet(), skip_empty=True, **kw).reconstruct(vol, (2.0, 1.0, 1.0)), ref)


def _all_slices(eng: Engine, vol: torch.Tensor, spacing) -> tuple[torch.Tensor, torch.Tensor]:
    """Every slice of the plan (N, C, h, w) and the occupancy test's verdict (N,)."""
    shape = tuple(vol.shape[1:])
    plan = eng.plan(shape, spacing)
    e, (dirs,) = plan.e, plan.groups
    S = dirs.num_slices + 2 * eng.filter.pad
    off = slice_offsets(dirs.s_half, dirs.num_slices, eng.filter.pad)
    hits = pipeline.Occupancy.of(vol, e, eng.config.empty_tol).hits(dirs, off).reshape(-1)
    d = dirs.to("cpu")
    idx = torch.arange(len(d)).repeat_interleave(S)
    size = (eng.config.slice_size,) * 2
    pts = slice_points(d.normals[idx], d.u[idx], d.v[idx], off.reshape(-1).float(), d.a_half[idx], d.b_half[idx], size)
    return sample_slices(vol, pts, e.float()), hits


def test_skip_empty_is_identical_when_nothing_is_empty():
    torch.manual_seed(0)
    vol = torch.rand(1, 8, 8, 8) + 0.5  # no zero voxel; padded slices stay within a voxel of the box
    kw = dict(
        encoder=TinyNet(),
        head="logit",
        directions=30,
        slices=16,
        slice_size=8,
        geometry="normalized",
        device="cpu",
        amp="off",
    )
    eng = Engine(skip_empty=True, **kw)
    slices, hits = _all_slices(eng, vol, (1, 1, 1))
    assert bool(hits.all())
    assert torch.equal(eng.reconstruct(vol), Engine(skip_empty=False, **kw).reconstruct(vol))


@pytest.mark.parametrize("head", ["sum", "logit"])
def test_skipped_slices_are_really_empty_and_heatmaps_identical(head):
    vol = ball_phantom((16, 16, 16), (1, 1, 1), [((0.5, 0.4, -0.5), 3.0, 1.0), ((-0.5, -0.4, 0.3), 2.5, 0.7)])[None]
    kw = dict(encoder=TinyNet(), head=head, directions=40, slices=12, slice_size=16, device="cpu", amp="off")
    eng = Engine(skip_empty=True, **kw)
    slices, hits = _all_slices(eng, vol, (1, 1, 1))
    assert 0.2 < float((~hits).float().mean()) < 0.95  # a real share is skipped
    assert float(slices[~hits].abs().max()) == 0.0  # and all of it is empty
    got, ref = eng.reconstruct(vol), Engine(skip_empty=False, **kw).reconstruct(vol)
    if head == "sum":
        assert torch.equal(got, ref)
    else:
        _close(got, ref, 1e-6)


def test_skip_tolerance_only_skips_slices_below_it():
    torch.manual_seed(1)
    vol = ball_phantom((16, 16, 16), (1, 1, 1), [((0.0, 0.3, 0.0), 4.0, 1.0)])[None] + 0.05 * torch.rand(1, 16, 16, 16)
    eng = Engine(encoder=TinyNet(), head="logit", directions=30, slices=10, slice_size=16, device="cpu", empty_tol=0.06)
    slices, hits = _all_slices(eng, vol, (1, 1, 1))
    assert float((~hits).float().mean()) > 0.2
    assert float(slices[~hits].abs().max()) <= 0.06
    assert float(slices[hits].abs().amax(dim=(1, 2, 3)).max()) > 0.06


def test_scorer_returns_float32_under_bf16_and_bad_amp_is_refused():
    scorer = Scorer(
        lambda enc, s: enc(s)[:, :, None, None],
        TinyNet(),
        torch.device("cpu"),
        amp="bf16",
        channels_last=True,
        compile=False,
        batch_size=8,
    )
    x = torch.randn(5, 1, 12, 12)
    got = scorer(x)
    assert got.dtype == torch.float32 and got.shape == (5, 1, 1, 1)
    with pytest.raises(InputError, match="amp must be one of auto, off, bf16, fp16, got 'fast'"):
        Engine(head="sum", amp="fast")


@pytest.mark.parametrize("when", ["at compile", "at first call"])
def test_compile_failure_falls_back_to_eager(monkeypatch, when):
    def broken_call(*args, **kwargs):
        raise RuntimeError("no compiler here")

    def broken(module, **kwargs):
        if when == "at compile":
            raise RuntimeError("no compiler here")
        return broken_call

    monkeypatch.setattr(torch, "compile", broken)
    net = TinyNet()
    x = torch.randn(3, 1, 8, 8)
    with pytest.warns(UserWarning, match="running eagerly"):
        torch.testing.assert_close(pipeline.compiled(net)(x), net(x))
    vol = torch.rand(1, 8, 8, 8)
    kw = dict(head="logit", directions=6, slices=5, slice_size=8, device="cpu")
    torch.testing.assert_close(
        Engine(encoder=net, compile=True, **kw).reconstruct(vol), Engine(encoder=net, **kw).reconstruct(vol)
    )


class _Compilable:
    """A head that says it may be compiled, recording the batch sizes it sees."""

    compilable, needs_grad = True, False

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, enc, s):
        self.seen.append(s.shape[0])
        return enc(s)[:, :, None, None]


def test_compiled_batches_follow_the_current_batch_size(monkeypatch):
    """Padding for a compiled encoder reads the scorer's batch size at each call (it shrinks after an OOM)."""
    # the padding is under test, not torch.compile
    monkeypatch.setattr("tomofield.pipeline.scoring.compiled", lambda enc: enc)
    head = _Compilable()
    scorer = Scorer(head, TinyNet(), torch.device("cpu"), compile=True, batch_size=8)
    assert scorer(torch.ones(5, 1, 4, 4)).shape == (5, 1, 1, 1)
    scorer.batch_size = 4
    scorer(torch.ones(3, 1, 4, 4))
    assert head.seen == [8, 4]


def test_only_heads_that_allow_it_are_compiled(monkeypatch):
    """Whether the encoder is compiled is the head's to say (``compilable``), not a check of its name."""
    built = []
    monkeypatch.setattr("tomofield.pipeline.scoring.compiled", lambda enc: built.append(enc) or enc)

    class Named:  # named like the logit head but does not allow compilation
        name, needs_grad = "logit", False

        def __call__(self, enc, s):
            return enc(s)[:, :, None, None]

    Scorer(Named(), TinyNet(), torch.device("cpu"), compile=True)
    assert built == []
    Scorer(_Compilable(), TinyNet(), torch.device("cpu"), compile=True)
    assert len(built) == 1


def test_overflow_under_amp_is_reported():
    """A logit beyond fp16's range becomes inf under fp16 autocast: a clear error, not a NaN heatmap."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    with torch.no_grad():
        net[1].weight.fill_(1e4)
    vol = torch.rand(1, 8, 8, 8) + 1
    kw = dict(encoder=net, head="logit", directions=4, slices=5, slice_size=8, device="cpu", channels_last=False)
    assert bool(torch.isfinite(Engine(amp="off", **kw).reconstruct(vol)).all())
    with pytest.raises(InputError, match="overflowed under amp='fp16'"):
        Engine(amp="fp16", **kw).reconstruct(vol)


def test_auto_amp_is_fp16_on_cuda_for_plain_heads_only():
    class GradHead:
        name, needs_grad = "gradcam", True

    class PlainHead:
        name, needs_grad = "logit", False

    cuda, cpu = torch.device("cuda"), torch.device("cpu")

    def build(head, dev, amp):
        return Scorer(head, TinyNet(), dev, amp=amp, channels_last=False, compile=False, batch_size=4).dtype

    assert build(PlainHead(), cuda, "auto") == torch.float16
    assert build(GradHead(), cuda, "auto") is None
    assert build(GradHead(), cuda, "bf16") == torch.bfloat16
    assert build(PlainHead(), cpu, "auto") is None
    assert build(PlainHead(), cpu, "off") is None
