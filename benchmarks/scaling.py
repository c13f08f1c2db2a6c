"""1 vs N processes (torchrun, gloo on CPU), timed side by side in one run.

    python -m benchmarks.scaling [--procs 2] [--volumes 8] [--size 48]

Times ``tomofield run DATASET.csv`` (volumes sharded) and ``tomofield run VOLUME``
(directions sharded) with the logit head of a random resnet10t, once with one process and
once with ``--procs`` processes, and prints the wall times and the speed-up. Each process
uses ``OMP_NUM_THREADS = cores / procs`` threads so both runs use the whole machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(args: list[str], procs: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [sys.executable, "-m", "tomofield", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(procs),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_port()),
            "-m",
            "tomofield",
            *args,
        ]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--directions", type=int, default=64)
    ap.add_argument("--slices", type=int, default=24)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    from tomofield.synth import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        csvs = write_dataset(t / "data", n=a.volumes, size=a.size, seed=0)
        vol = next((t / "data" / "images").glob("*.nii.gz"))
        opts = [
            "--head",
            "logit",
            "-L",
            str(a.directions),
            "-M",
            str(a.slices),
            "--slice-size",
            str(a.size),
            "--device",
            "cpu",
        ]
        rows = []
        for label, args in [
            (f"dataset run, {a.volumes} volumes of {a.size}^3", ["run", str(csvs["dataset"]), *opts]),
            (f"one volume, L={a.directions} directions", ["run", str(vol), *opts]),
        ]:
            times = []
            for procs in (1, a.procs):
                out = t / f"out-{len(rows)}-{procs}" / ("" if "dataset" in label else "h.nii.gz")
                times.append(_timed([*args, "-o", str(out)], procs, max(1, cores // procs)))
            rows.append((label, *times))
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; {time.strftime('%Y-%m-%d')}")
    print(f"| case | 1 process (s) | {a.procs} processes (s) | speed-up |")
    print("|---|---|---|---|")
    for label, t1, tn in rows:
        print(f"| {label} | {t1:.1f} | {tn:.1f} | {t1 / tn:.2f}x |")


if __name__ == "__main__":
    main()
