"""Timing, memory and machine description for the benchmarks."""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measurement:
    """Wall time and peak memory of one block (host RSS above the start, or CUDA allocated)."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_bytes: int = 0
    peak_abs_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def measure(device: torch.device | str = "cpu", interval: float = 0.005) -> Iterator[Measurement]:
    """Time a block (wall and process CPU time); sample the host RSS every ``interval`` s
    (CPU) or read CUDA peaks.

    On a shared machine the process CPU time of a single-threaded run hardly depends on
    what else runs; the wall time does.
    """
    dev = torch.device(device)
    m = Measurement()
    stop = threading.Event()
    base = peak = _rss_bytes() if os.path.exists("/proc/self/statm") else 0

    def sample() -> None:
        nonlocal peak
        while not stop.wait(interval):
            peak = max(peak, _rss_bytes())

    thread = None
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    elif base:
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield m
    finally:
        sync(dev)
        m.seconds = time.perf_counter() - t0
        m.cpu_seconds = time.process_time() - c0
        if dev.type == "cuda":
            m.peak_abs_bytes = torch.cuda.max_memory_allocated()
            m.peak_bytes = m.peak_abs_bytes - base_cuda
        elif thread is not None:
            stop.set()
            thread.join()
            m.peak_abs_bytes = max(peak, _rss_bytes())
            m.peak_bytes = m.peak_abs_bytes - base


def timed_rate(
    fn: Callable[[int], None], start: int, min_seconds: float, limit: int, device: str = "cpu"
) -> tuple[int, float]:
    """Time ``fn(n)`` for at least ``min_seconds``: n doubles from ``start`` up to ``limit``,
    then whole calls repeat. Returns ``(total n over the timed calls, seconds)``."""
    n = max(1, min(start, limit))
    while True:
        sync(device)
        t0 = time.perf_counter()
        fn(n)
        sync(device)
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n, dt
        if n >= limit:
            reps = max(1, math.ceil(min_seconds / max(dt, 1e-6)))
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(n)
            sync(device)
            return n * reps, time.perf_counter() - t0
        n = min(limit, max(n * 2, int(n * min_seconds / max(dt, 1e-6) * 1.2)))


def machine(device: torch.device | str) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        keep = ("Model name", "CPU(s):", "Thread(s) per core", "Core(s) per socket", "L2 cache")
        lines = [ln for ln in lscpu.splitlines() if ln.startswith(keep)]
        info["cpu"] = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, width, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in width) + "|", *map(line, cells)])
