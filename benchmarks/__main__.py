"""``python -m benchmarks``: side-by-side speed of the naive reference and the fast path.

Commands (default ``compare``):

* ``compare``: ``pipeline``, ``backprojector`` and ``slicer``, in one run.
* ``pipeline``: whole reconstructions, naive reference vs engine fast paths, same
  volume, directions and seeds; slices/s, ratio, heatmap correlation, peak memory.
* ``backprojector``: voxel-direction updates/s of the backprojectors alone.
* ``slicer``: slices/s of the slicers alone.
* ``savings``: encoder evaluations saved against heatmap quality (hemisphere,
  skipping empty slices, bf16).
* ``precision``: bf16 and fp16 encoders against fp32: logits and filtered profiles.
* ``memory``: peak host memory of one large reconstruction (own process).
* ``quality``: heatmap quality (F1, Dice) against encoder slices for a grid of L, M and
  slice size, every filter and reconstructor at equal encoder slices, the curve in L from
  subsets of the reference run, the noise against L and M (:mod:`benchmarks.quality`).
* ``filled``: plain ToNNO against the filled and calibrated reconstructions of the same
  encoder runs, usual and large lesions (:mod:`benchmarks.filled`, its own options).
* ``presets``: what ``--preset fast`` chooses for grids up to a 512 x 512 CT, and its time
  (:mod:`benchmarks.presets`, its own options).

``--case cpu`` (64^3 volume, 64 x 64 slices, L = 256, M = 32) or ``--case paper``
(64 x 512 x 512, 224 x 224, L = 2000, M = 100); ``--directions`` etc. override.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from benchmarks import cases, suite
from benchmarks.measure import fmt_bytes, machine, measure, table

PIPE_COLS = [
    "method",
    "slices",
    "seconds",
    "slices_per_s",
    "ratio",
    "cpu_seconds",
    "ratio_cpu",
    "corr",
    "peak_mem",
    "warmup_s",
]
BP_COLS = [
    "backprojector",
    "profiles",
    "directions_timed",
    "updates",
    "seconds",
    "updates_per_s",
    "ratio",
    "max_rel_err",
]
SLICE_COLS = ["slicer", "slices", "seconds", "slices_per_s", "samples_per_s", "ratio", "max_rel_err"]
SAVE_COLS = ["idea", "setting", "encoder_runs", "saved", "corr_vs_full", "max_abs_diff", "seconds"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "command",
        nargs="?",
        default="compare",
        choices=["compare", "pipeline", "backprojector", "slicer", "savings", "precision", "memory"],
    )
    p.add_argument("--case", default="cpu", choices=sorted(cases.CASES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--directions", type=int, help="L (default: the case's)")
    p.add_argument("--slices", type=int, help="M (default: the case's)")
    p.add_argument("--slice-size", type=int, help="slice side in pixels (default: the case's)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("D", "H", "W"), help="volume shape")
    p.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated fast-path configs among {', '.join(suite.FAST_CONFIGS)} "
        "(default: fp32,compile,bf16,bf16+compile; on CUDA fp16,bf16,fp32)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="engine batch (default 32 CPU, 512 CUDA)")
    p.add_argument("--volume", default="body", choices=["body", "phantom"], help="pipeline input")
    p.add_argument("--skip-naive", action="store_true", help="pipeline: fast paths only")
    p.add_argument("--repeat", type=int, default=1, help="pipeline: runs per method, best counts")
    p.add_argument("--min-seconds", type=float, default=2.0, help="backprojector: time each for at least this")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "auto"], help="savings, memory: encoder precision")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", help="also write the results here")
    return p


def _memory(args: argparse.Namespace, case: cases.Case) -> list[dict]:
    """One reconstruction; the process's resident memory sampled while it runs."""
    from tomofield import Engine

    vol = cases.volume(case, args.volume)
    eng = Engine(
        encoder=cases.encoder(),
        head="logit",
        filter="tomo",
        directions=case.directions,
        slices=case.slices,
        slice_size=case.slice_size,
        device=args.device,
        batch_size=args.batch_size or 64,
        amp=args.amp,
    )
    done = [0]
    t0 = time.perf_counter()

    def progress(n: int, total: int) -> None:
        done[0] += n
        if done[0] % 20000 < n:
            print(f"  {done[0]}/{total} slices, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    with measure(args.device, interval=0.02) as m:
        heat = eng.reconstruct(vol, case.spacing, progress=progress)
    return [
        dict(
            shape="x".join(map(str, case.shape)),
            directions=case.directions,
            slices=case.slices,
            slice_size=case.slice_size,
            volume_and_heatmap=fmt_bytes(vol.numel() * 4 + heat.numel() * 4),
            seconds=f"{m.seconds:.0f}",
            rss_at_start=fmt_bytes(m.peak_abs_bytes - m.peak_bytes),
            peak_rss=fmt_bytes(m.peak_abs_bytes),
            peak_rss_increase=fmt_bytes(m.peak_bytes),
        )
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["quality"], ["filled"], ["presets"]):  # their own options (datasets, a trained run)
        import importlib

        importlib.import_module(f"benchmarks.{argv[0]}").main(argv[1:])
        return 0
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    case = cases.CASES[args.case].with_(
        directions=args.directions,
        slices=args.slices,
        slice_size=args.slice_size,
        shape=tuple(args.shape) if args.shape else None,
    )
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    batch = args.batch_size or (512 if cuda else 32)
    configs = (args.configs or ("fp16,bf16,fp32" if cuda else "fp32,compile,bf16,bf16+compile")).split(",")
    unknown = [c for c in configs if c not in suite.FAST_CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; valid: {', '.join(suite.FAST_CONFIGS)}")
    info = machine(args.device)
    print(
        f"# {args.command} --case {case.name}: volume {case.shape} spacing {case.spacing}, slices "
        f"{case.slice_size}^2, L={case.directions}, M={case.slices}, device {args.device}, batch {batch}"
    )
    print(f"# {json.dumps(info)}")
    results: dict[str, list] = {}
    if args.command in ("compare", "pipeline"):
        results["pipeline"] = suite.pipeline(
            case, args.device, configs, batch, args.volume, args.skip_naive, args.repeat
        )
        print("\n## whole reconstruction (resnet10t logit head, tomo filter)\n")
        print(table(results["pipeline"], PIPE_COLS))
    if args.command in ("compare", "backprojector"):
        results["backprojector"] = suite.backprojector(case, args.device, args.min_seconds)
        print("\n## backprojector alone\n")
        print(table(results["backprojector"], BP_COLS))
    if args.command in ("compare", "slicer"):
        results["slicer"] = suite.slicer(case, args.device, args.min_seconds)
        print("\n## slicer alone\n")
        print(table(results["slicer"], SLICE_COLS))
    if args.command == "precision":
        results["precision"] = suite.precision(case, args.device, batch)
        print("\n## encoder precision against fp32\n")
        print(table(results["precision"], list(results["precision"][0])))
    if args.command == "savings":
        results["savings"] = suite.savings(case, args.device, batch, args.amp)
        print("\n## less work for the same answer\n")
        print(table(results["savings"], SAVE_COLS))
    if args.command == "memory":
        results["memory"] = _memory(args, case)
        print("\n## memory of one reconstruction\n")
        print(table(results["memory"], list(results["memory"][0])))
    info["loadavg_end"] = os.getloadavg()
    print(f"\n# load average at the end: {info['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "case": case.__dict__, "machine": info, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
