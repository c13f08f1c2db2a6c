"""What a job would take, estimated before it starts: a job far beyond the machine is refused, not begun.

The estimates are lower bounds. The time is the pixels that go through the encoder (or, for
a head without one, through the slicer) at a rate faster than any machine does them
(:data:`CPU_PIXELS_PER_CORE_S` per core, :data:`GPU_PIXELS_PER_S` per accelerator), so a job
refused here would take longer still; one is refused when even that bound passes
:data:`LONGEST_S`, a hundred times a generous budget. The memory is what the job cannot do
without: one batch of slices (one slice on an accelerator, where an out-of-memory error
halves the batch) and the output grid's accumulators, against the machine's memory
(the accelerator's, on one). Settings of ordinary jobs, the paper's included, stay far below.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

import torch

from tomofield.errors import InputError

#: Pixels per second per CPU core through an encoder, and through the slicer alone (a head
#: without an encoder): several times what a ResNet-10-T and the native slicer do on one core.
CPU_PIXELS_PER_CORE_S = {"encoder": 2e7, "slicing": 2e8}
#: The same for one accelerator (a GPU): more than the fastest reaches in half precision.
GPU_PIXELS_PER_S = {"encoder": 2e10, "slicing": 2e11}
#: A generous budget for one job; what takes a hundred times that, at the rates above, is refused.
GENEROUS_S = 2 * 3600
LONGEST_S = 100 * GENEROUS_S
#: Bytes per value of the slices and of the output grid (float32).
_FLOAT = 4
#: Float32 grids the reconstruction keeps per output channel (the heatmap, its consensus, a spare).
_GRIDS = 3


def machine_memory(device: torch.device) -> int | None:
    """Bytes of memory ``device`` has: the machine's RAM for the CPU, the accelerator's own otherwise (None: unknown)."""
    if device.type == "cuda":
        with suppress(RuntimeError, AssertionError, AttributeError):
            return int(torch.cuda.get_device_properties(device).total_memory)
        return None
    if device.type != "cpu":
        return None
    with suppress(ValueError, OSError, AttributeError):  # no sysconf (Windows) or no such name
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and size > 0:
            return int(pages) * int(size)
    return None


def fastest_rate(device: torch.device, encoder: bool = True) -> float:
    """Pixels per second ``device`` certainly does not beat through an encoder (or the slicer alone)."""
    kind = "encoder" if encoder else "slicing"
    if device.type == "cpu":
        return CPU_PIXELS_PER_CORE_S[kind] * max(1, os.cpu_count() or 1)
    return GPU_PIXELS_PER_S[kind]


def _bytes(n: float) -> str:
    """``3.2 GB``: a size in decimal units."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.1f} kB"


def _duration(s: float) -> str:
    """``4.2 days``: a duration in the largest unit that is at least 1."""
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= size:
            return f"{s / size:,.1f} {unit}"
    return f"{s:,.1f} s"


@dataclass(frozen=True)
class Estimate:
    """A job's size and the least it takes.

    Attributes:
        what: the job in words (``1,000,200,000 slices (L 100000 x M 10002) of 4096 x 4096 px``).
        pixels: pixels through the encoder (or the slicer), every pass counted.
        seconds: the least time: ``pixels`` at :func:`fastest_rate`.
        memory: the least memory in bytes.
        memory_what: what makes up ``memory``, in words.
        available: the memory of the machine (or accelerator) in bytes; None where unknown.
        device: where it runs.
        rate: the rate ``seconds`` assumes (pixels per second).
        through: what the pixels go through, ``encoder`` or ``slicer``.
    """

    what: str
    pixels: float
    seconds: float
    memory: float
    memory_what: str
    available: int | None
    device: str
    rate: float
    through: str = "encoder"

    def check(self, time_fix: str, memory_fix: str) -> None:
        """Refuse the job where it needs more memory than the machine has or takes longer than :data:`LONGEST_S`.

        Raises:
            InputError: with the estimate, the machine's limit and what to lower (``memory_fix``, ``time_fix``).
        """
        if self.available is not None and self.memory > self.available:
            where = "this machine" if self.device == "cpu" else self.device
            raise InputError(
                f"this job needs more memory than {where} has: {self.what} need at least {_bytes(self.memory)} "
                f"({self.memory_what}), and {where} has {_bytes(self.available)}; {memory_fix}"
            )
        if self.seconds > LONGEST_S:
            raise InputError(
                f"this job is far beyond this machine: {self.what} are {self.pixels:.3g} pixels through the "
                f"{self.through}, at least {_duration(self.seconds)} on {self.device} even at {self.rate:.3g} "
                f"pixels/s (faster than it runs), and a job is refused beyond {_duration(LONGEST_S)}; {time_fix}"
            )


def estimate(
    slices: int,
    slice_size: int,
    channels: int,
    batch: int,
    device: torch.device,
    *,
    grid: Sequence[int] = (),
    outputs: int = 1,
    encoder: bool = True,
    passes: float = 1.0,
    halves: bool = True,
    what: str = "",
) -> Estimate:
    """The least time and memory of scoring ``slices`` slices of ``slice_size`` px and ``channels`` channels
    in batches of ``batch`` (``passes`` times each: 3 for a training step, forward and backward) on ``device``,
    into an output ``grid`` of ``outputs`` channels.

    ``halves``: an out-of-memory error on an accelerator halves the batch (the engine's scorer),
    so one slice is all it needs at least; a training step's batch is needed whole.
    """
    pixels = float(slices) * slice_size * slice_size * channels
    whole = device.type == "cpu" or not halves
    in_batch = min(max(1, batch), max(1, slices)) if whole else 1
    batch_bytes = float(in_batch) * channels * slice_size * slice_size * _FLOAT
    grid_bytes = float(outputs) * _GRIDS * _FLOAT
    for n in grid:
        grid_bytes *= n
    rate = fastest_rate(device, encoder)
    parts = [f"a batch of {in_batch:,} slice(s) of {slice_size} x {slice_size} px: {_bytes(batch_bytes)}"]
    if grid:
        parts.append(f"the output grid {' x '.join(map(str, grid))}: {_bytes(grid_bytes)}")
    return Estimate(
        what=what or f"{slices:,} slices of {slice_size} x {slice_size} px",
        pixels=pixels * passes,
        seconds=pixels * passes / rate,
        memory=batch_bytes + grid_bytes,
        memory_what="; ".join(parts),
        available=machine_memory(device),
        device=str(device),
        rate=rate,
        through="encoder" if encoder else "slicer",
    )
