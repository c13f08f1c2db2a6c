"""The measurements: whole reconstructions, the backprojector alone, work savings."""

from __future__ import annotations

import copy
import math
import sys
from typing import Any

import torch

from benchmarks import cases
from benchmarks.measure import Measurement, fmt_bytes, measure, sync, timed_rate
from benchmarks.naive import half_extents, logit_scorer, naive_backprojection, naive_reconstruct, voxel_coordinates
from tomofield import Engine
from tomofield.demo import correlation
from tomofield.geometry import Directions, fibonacci_directions, random_bases, slice_offsets, stack_extents
from tomofield.pipeline import cut_slices, normalised_frames
from tomofield.pipeline.backproject import backproject_grid, backproject_reference
from tomofield.pipeline.kernels import native as native_kernels
from tomofield.pipeline.kernels import triton_bp

#: Engine settings of the fast-path configurations the pipeline benchmark can run.
FAST_CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"amp": "off"},
    "bf16": {"amp": "bf16"},
    "fp16": {"amp": "fp16"},
    "fp16+compile": {"amp": "fp16", "compile": True},
    "compile": {"compile": True},
    "bf16+compile": {"amp": "bf16", "compile": True},
    "fp32-nocl": {"amp": "off", "channels_last": False},
    "bf16-nocl": {"amp": "bf16", "channels_last": False},
}


def _engine(case: cases.Case, encoder, device: str, batch_size: int, **options: Any) -> Engine:
    kw = dict(
        head="logit",
        filter="tomo",
        directions=case.directions,
        slices=case.slices,
        slice_size=case.slice_size,
        hemisphere=False,
        geometry="physical",
        extent="unit",
        seed=0,
        device=device,
        batch_size=batch_size,
    )
    kw.update(options)
    return Engine(encoder=encoder, **kw)


def pipeline(
    case: cases.Case,
    device: str,
    configs: list[str],
    batch_size: int,
    volume_kind: str = "body",
    skip_naive: bool = False,
    repeat: int = 1,
) -> list[dict[str, Any]]:
    """Naive reference and engine fast paths on the same volume, directions and seeds.

    Every method is warmed up first (allocator, oneDNN / cuDNN kernels, compilation),
    then the methods run in turn ``repeat`` times; the best wall and CPU times count.
    """
    vol = cases.volume(case, volume_kind)
    enc = cases.encoder().to(device)
    n_slices = case.directions * (case.slices + 2)
    runners: dict[str, Any] = {}
    if not skip_naive:

        def naive(L: int, enc=enc):
            return naive_reconstruct(
                vol,
                logit_scorer(enc),
                directions=L,
                slices=case.slices,
                slice_size=case.slice_size,
                spacing=case.spacing,
                device=device,
            )

        runners["naive reference"] = naive
    for name in configs:
        eng = _engine(case, copy.deepcopy(enc), device, batch_size, skip_empty=False, **FAST_CONFIGS[name])
        runners[f"engine fast path ({name})"] = lambda L, eng=eng: eng.with_options(directions=L).reconstruct(
            vol, case.spacing
        )
    warm, best, heats = {}, {}, {}
    for name, fn in runners.items():
        with measure(device) as m:
            fn(2)
        warm[name] = m.seconds
    for _ in range(repeat):
        for name, fn in runners.items():
            with measure(device) as m:
                heat = fn(case.directions).cpu()
            heats.setdefault(name, heat)
            old = best.get(name)
            best[name] = (
                m
                if old is None
                else Measurement(
                    min(old.seconds, m.seconds), min(old.cpu_seconds, m.cpu_seconds), max(old.peak_bytes, m.peak_bytes)
                )
            )
    base_name = next(iter(runners))  # the naive reference, or the first config without it
    rows = []
    for name, m in best.items():
        base = best[base_name]
        rows.append(
            dict(
                method=name,
                slices=n_slices,
                seconds=f"{m.seconds:.2f}",
                slices_per_s=f"{n_slices / m.seconds:.0f}",
                ratio=f"{base.seconds / m.seconds:.2f}",
                cpu_seconds=f"{m.cpu_seconds:.2f}",
                ratio_cpu=f"{base.cpu_seconds / m.cpu_seconds:.2f}",
                corr=f"{correlation(heats[name], heats[base_name]):.5f}",
                peak_mem=fmt_bytes(m.peak_bytes),
                warmup_s=f"{warm[name]:.1f}",
            )
        )
    return rows


def _directions(L: int, M: int, device: str) -> Directions:
    n = fibonacci_directions(L)
    u, v = random_bases(n, torch.Generator().manual_seed(0))
    s, a, b = stack_extents(torch.ones(3, dtype=torch.float64), n, u, v, "unit")
    return Directions(n, u, v, s, a, b, M).to(device)


def backprojector(case: cases.Case, device: str, min_seconds: float = 2.0) -> list[dict[str, Any]]:
    """Voxel-direction updates per second of the backprojectors alone (scalar profiles,
    then 7 x 7 maps), on the case's grid; every implementation checked against the naive one."""
    shape, L, M = case.shape, case.directions, case.slices
    n_vox = math.prod(shape)
    e = half_extents(shape, case.spacing, "physical")
    dirs = _directions(L, M, device)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(L, M, 1, 1, 1, generator=gen).to(device)
    x = voxel_coordinates(shape, e).to(device)
    size = (case.slice_size, case.slice_size)
    impls = {
        "naive (one direction at a time)": lambda n: naive_backprojection(q[:n, :, :, 0, 0], dirs.normals[:n], x),
        "reference (chunked grid_sample)": lambda n: backproject_reference(q[:n], dirs[:n], x, size),
        "fast (torch)": lambda n: backproject_grid(q[:n], dirs[:n], shape, e, size, kernel="torch"),
    }
    if torch.device(device).type == "cuda":
        if triton_bp.available():
            impls["fast (triton)"] = lambda n: backproject_grid(q[:n], dirs[:n], shape, e, size, kernel="triton")
    elif native_kernels.available():
        impls["fast (native)"] = lambda n: backproject_grid(q[:n], dirs[:n], shape, e, size, kernel="native")
    check = min(L, 8)
    truth = impls["naive (one direction at a time)"](check)
    rows: list[dict[str, Any]] = []
    base = None
    for name, fn in impls.items():
        err = float((fn(check) - truth).abs().max() / truth.abs().max())
        n, dt = timed_rate(fn, 1 if name.startswith(("naive", "reference")) else 8, min_seconds, L, device)
        rate = n * n_vox / dt
        base = base or rate
        rows.append(
            dict(
                backprojector=name,
                profiles="scalar",
                directions_timed=n,
                updates=f"{n * n_vox:.3g}",
                seconds=f"{dt:.2f}",
                updates_per_s=f"{rate:.3g}",
                ratio=f"{rate / base:.1f}",
                max_rel_err=f"{err:.1e}",
            )
        )
    # maps (CAM heads): 7 x 7 cells per slice, trilinear in (s, a, b)
    qm = torch.randn(L, M, 1, 7, 7, generator=gen).to(device)
    maps = {
        "reference (chunked grid_sample)": lambda n: backproject_reference(qm[:n], dirs[:n], x, size),
        "fast (torch)": lambda n: backproject_grid(qm[:n], dirs[:n], shape, e, size, kernel="torch"),
    }
    truth = maps["reference (chunked grid_sample)"](check)
    base = None
    for name, fn in maps.items():
        err = float((fn(check) - truth).abs().max() / truth.abs().max())
        n, dt = timed_rate(fn, 1 if name.startswith("reference") else 4, min_seconds, L, device)
        rate = n * n_vox / dt
        base = base or rate
        rows.append(
            dict(
                backprojector=name,
                profiles="7x7 maps",
                directions_timed=n,
                updates=f"{n * n_vox:.3g}",
                seconds=f"{dt:.2f}",
                updates_per_s=f"{rate:.3g}",
                ratio=f"{rate / base:.1f}",
                max_rel_err=f"{err:.1e}",
            )
        )
    sync(device)
    return rows


def slicer(case: cases.Case, device: str, min_seconds: float = 2.0) -> list[dict[str, Any]]:
    """Slices per second of the slicers alone: every slice of the case's first directions."""
    vol = cases.volume(case).to(device)
    shape, M, size = case.shape, case.slices, (case.slice_size, case.slice_size)
    e = half_extents(shape, case.spacing, "physical")
    dirs = _directions(case.directions, M, device)
    S = M + 2
    offsets = slice_offsets(dirs.s_half, M, 1).reshape(-1)
    ab = torch.linspace(-1, 1, case.slice_size, dtype=torch.float64)

    def naive(n: int) -> torch.Tensor:  # benchmarks/naive.py's slicing, one direction at a time
        out = []
        for l in range(n):  # noqa: E741
            nn_, u, v = (t[l].double().cpu() for t in (dirs.normals, dirs.u, dirs.v))
            off = offsets[l * S : (l + 1) * S].double().cpu()
            pts = off[:, None, None, None] * nn_ + ab[None, :, None, None] * u + ab[None, None, :, None] * v
            grid = (pts / e).flip(-1).float().to(device)
            out.append(torch.nn.functional.grid_sample(vol[None], grid[None], align_corners=True)[0].transpose(0, 1))
        return torch.cat(out)

    def engine(n: int, native: bool) -> torch.Tensor:
        rows = torch.arange(n, device=device).repeat_interleave(S)
        frames = normalised_frames(dirs, e.to(device, torch.float32))
        return cut_slices(vol, frames, dirs, rows, offsets[: n * S], size, e if native else None)

    impls = {"naive (one direction at a time)": naive, "engine (grid_sample)": lambda n: engine(n, False)}
    if torch.device(device).type == "cpu" and native_kernels.available():
        impls["engine (native)"] = lambda n: engine(n, True)
    check = min(case.directions, 4)
    truth = naive(check)
    rows_out: list[dict[str, Any]] = []
    base = None
    for name, fn in impls.items():
        err = float((fn(check) - truth).abs().max() / truth.abs().max())
        n, dt = timed_rate(fn, 1, min_seconds, case.directions, device)
        rate = n * S / dt
        base = base or rate
        rows_out.append(
            dict(
                slicer=name,
                slices=n * S,
                seconds=f"{dt:.2f}",
                slices_per_s=f"{rate:.0f}",
                samples_per_s=f"{rate * size[0] * size[1]:.3g}",
                ratio=f"{rate / base:.1f}",
                max_rel_err=f"{err:.1e}",
            )
        )
    return rows_out


def precision(case: cases.Case, device: str, batch_size: int) -> list[dict[str, Any]]:
    """Encoder precision against fp32 on the case's first directions: logit error and the
    correlation of the tomo-filtered profiles (second differences), what the heatmap sums."""
    vol = cases.volume(case).to(device)
    enc = cases.encoder().to(device).to(memory_format=torch.channels_last)
    shape, M, size = case.shape, case.slices, (case.slice_size, case.slice_size)
    e = half_extents(shape, case.spacing, "physical")
    dirs = _directions(case.directions, M, device)
    S, L = M + 2, case.directions
    rows = torch.arange(L, device=device).repeat_interleave(S)
    offsets = slice_offsets(dirs.s_half, M, 1).reshape(-1)
    frames = normalised_frames(dirs, e.to(device, torch.float32))
    slices = cut_slices(vol, frames, dirs, rows, offsets, size, e)
    slices = slices.contiguous(memory_format=torch.channels_last)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    res = {}
    for name, dt in dtypes.items():
        with (
            torch.inference_mode(),
            torch.autocast(torch.device(device).type, dtype=dt or torch.float16, enabled=dt is not None),
        ):
            p = torch.cat([enc(slices[i : i + batch_size]).float() for i in range(0, len(slices), batch_size)])
        p = p[:, 0].reshape(L, S).cpu()
        res[name] = (p, p[:, 2:] + p[:, :-2] - 2 * p[:, 1:-1])
    p32, q32 = res["fp32"]
    return [
        dict(
            encoder=name,
            directions=L,
            slices=L * S,
            logit_std_across_slices=f"{float(p32.std()):.2e}",
            max_logit_error=f"{float((p - p32).abs().max()):.2e}",
            corr_filtered_profiles=f"{correlation(q, q32):.4f}",
        )
        for name, (p, q) in res.items()
    ]


def _run(eng: Engine, vol, spacing, device: str) -> tuple[torch.Tensor, float, int]:
    """Heatmap, seconds and encoder evaluations of one reconstruction."""
    runs = [0]
    eng.head = _Counting(eng.head, runs)
    with measure(device) as m:
        heat = eng.reconstruct(vol, spacing).cpu()
    return heat, m.seconds, runs[0]


class _Counting:
    """A head wrapper that counts the slices it scores (the encoder evaluations)."""

    def __init__(self, head, runs: list[int]) -> None:
        self._head, self._runs = head, runs
        self.name = getattr(head, "name", "wrapped")
        self.needs_encoder = getattr(head, "needs_encoder", True)
        self.needs_grad = getattr(head, "needs_grad", False)

    def __call__(self, encoder, slices):
        self._runs[0] += slices.shape[0]
        return self._head(encoder, slices)


def savings(case: cases.Case, device: str, batch_size: int, amp: str = "off") -> list[dict[str, Any]]:
    """Encoder evaluations saved against heatmap quality, for each way of doing less work."""
    enc = cases.encoder().to(device)
    rows: list[dict[str, Any]] = []
    L = case.directions

    def run(vol, **opts) -> tuple[torch.Tensor, float, int]:
        eng = _engine(case, enc, device, batch_size, **{"amp": amp, "skip_empty": False, **opts})
        return _run(eng, vol, case.spacing, device)

    def row(idea: str, setting: str, heat, secs: float, evals: int, ref, ref_evals: int) -> dict[str, Any]:
        print(
            f"  {idea}, {setting}: {evals} encoder runs, corr {correlation(heat, ref):.4f}, {secs:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        return dict(
            idea=idea,
            setting=setting,
            encoder_runs=evals,
            saved=f"{1 - evals / ref_evals:.1%}",
            corr_vs_full=f"{correlation(heat, ref):.4f}",
            seconds=f"{secs:.1f}",
        )

    # 1. hemisphere against sphere, at equal encoder work, against a denser sphere
    body = cases.volume(case, "body")
    ref, t, n = run(body, directions=2 * L)
    rows.append(row("directions", f"sphere L={2 * L} (reference)", ref, t, n, ref, n))
    for LL in (L, L // 2):
        for hemi in (False, True):
            heat, t, k = run(body, directions=LL, hemisphere=hemi)
            rows.append(row("directions", f"{'hemisphere' if hemi else 'sphere'} L={LL}", heat, t, k, ref, n))
    # 2. skipping empty slices: exact on a zero background, thresholded on a noisy one
    phantom = cases.volume(case, "phantom")
    full, t, n = run(phantom)
    rows.append(row("skip empty (phantom)", "off (reference)", full, t, n, full, n))
    heat, t, k = run(phantom, skip_empty=True)
    r = row("skip empty (phantom)", "tol 0 (exact)", heat, t, k, full, n)
    r["max_abs_diff"] = f"{float((heat - full).abs().max() / full.abs().max()):.1e} (rel)"
    rows.append(r)
    full, t, n = run(body)
    rows.append(row("skip empty (body, noise 0.02)", "off (reference)", full, t, n, full, n))
    for tol in (0.0, 0.05, 0.1, 0.2):
        heat, t, k = run(body, skip_empty=True, empty_tol=tol)
        rows.append(row("skip empty (body, noise 0.02)", f"tol {tol}", heat, t, k, full, n))
    # 3. reduced precision of the encoder
    for mode in ("bf16",) if amp == "off" else ():
        heat, t, k = run(body, amp=mode)
        rows.append(row("precision", f"{mode} autocast vs fp32", heat, t, k, full, n))
    return rows
