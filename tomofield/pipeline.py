"""The stages of a reconstruction: plan -> slicer -> scorer -> filter -> backprojector.

:meth:`tomofield.Engine.reconstruct` strings these together; each is usable on its own.

* :class:`Plan`: made once per volume. The box half-extents, the sampler's direction
  groups (this rank's share under torch.distributed) and the slice counts.
* :class:`Slicer`: cuts batches of slices of one chunk of directions out of the volume
  and knows which slices sample nothing (the occupancy test), so they are not scored.
* :class:`Scorer`: runs a head (and its encoder) on batches of slices with the speed
  settings (autocast, channels-last, compiled). Its ``batch_size`` is its own state: after
  an out-of-memory error it halves and stays halved for the rest of its work.
* a filter (:class:`tomofield.protocols.Filter`) along each stack's normal.
* :class:`Backprojector`: weights each chunk's filtered profiles and accumulates them
  into the output grid.
* :class:`Stacks`: the operators of one plan handed to the reconstructor
  (:class:`tomofield.protocols.Reconstructor`): the filter, backprojectors, and the
  forward model ``project`` (the ``sum`` head's scores of a heatmap at the same planes).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomofield import distributed
from tomofield._fastpath import Occupancy, amp_dtype, compiled, cut_slices, normalised_frames
from tomofield.backproject import backproject_grid
from tomofield.errors import InputError, TomofieldError
from tomofield.geometry import Directions, half_extents, slice_area, slice_offsets
from tomofield.samplers import SamplingConfig

Tick = Callable[[int], None]

#: A chunk of directions holds at least this many slices (fewer Python round trips).
CHUNK_SLICES = 4096


@dataclass(frozen=True)
class Plan:
    """What to cut from one volume, decided once.

    Attributes:
        shape: the (D, H, W) grid.
        e: (3,) box half-extents, float64 on the host.
        groups: the direction groups this process reconstructs (all of them, or this
            rank's share when the directions are sharded).
        n_dirs: directions of the whole reconstruction (the 4 pi / L normalisation).
        pad: extra slices on each side of a stack (the filter's).
        size: slice size (h, w) in pixels.
    """

    shape: tuple[int, int, int]
    e: Tensor
    groups: list[Directions]
    n_dirs: int
    pad: int
    size: tuple[int, int]

    @classmethod
    def make(
        cls,
        shape: Sequence[int],
        spacing: Sequence[float],
        sampler,
        sampling: SamplingConfig,
        geometry: str,
        pad: int,
        slice_size: int,
        shard: bool = False,
    ) -> Plan:
        """The plan of a volume of spatial ``shape`` and ``spacing`` (mm per D, H, W axis)."""
        shape = tuple(int(n) for n in shape)
        e = half_extents(shape, spacing, geometry)
        groups = sampler.plan(shape, e, sampling)
        n_dirs = sum(len(g) for g in groups)
        rank, world = distributed.rank_world() if shard else (0, 1)
        if world > 1:  # each rank takes every world-th direction; the sums meet in an all-reduce
            distributed.check_enough(n_dirs, world)
            starts = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]
            groups = [
                g[distributed.shard_indices(st, len(g), rank, world)] for g, st in zip(groups, starts, strict=True)
            ]
            groups = [g for g in groups if len(g)]
        return cls(shape, e, groups, n_dirs, pad, (slice_size, slice_size))

    @property
    def total_slices(self) -> int:
        """Slices this process scores (or skips as empty)."""
        return sum(len(g) * (g.num_slices + 2 * self.pad) for g in self.groups)

    def chunks(
        self, group: Directions, batch_size: int, device: torch.device
    ) -> Iterator[tuple[Directions, Directions]]:
        """``(host, on device)`` chunks of directions of a group, sized for ``batch_size`` slices."""
        gdev = group.to(device)
        per_dir = group.num_slices + 2 * self.pad
        chunk = max(1, math.ceil(batch_size / per_dir), CHUNK_SLICES // per_dir)
        for start in range(0, len(gdev), chunk):
            yield group[start : start + chunk], gdev[start : start + chunk]


class Slicer:
    """Cuts the slices of a plan out of one (C, D, H, W) float32 volume on its device.

    Args:
        volume: the volume, on the device the slices are scored on.
        plan: the plan.
        skip_empty: find the slices that sample nothing above ``empty_tol``.
        empty_tol: the tolerance.
    """

    def __init__(self, volume: Tensor, plan: Plan, skip_empty: bool, empty_tol: float) -> None:
        self.volume, self.plan = volume, plan
        self.e = plan.e.to(volume.device, torch.float32)
        self.occupancy = Occupancy.of(volume, plan.e, empty_tol) if skip_empty else None

    def hits(self, host: Directions) -> Tensor | None:
        """(L, S) bool: the slices of a chunk that may sample something; None when all are cut."""
        if self.occupancy is None:
            return None
        return self.occupancy.hits(host, slice_offsets(host.s_half, host.num_slices, self.plan.pad))

    def prepare(self, dirs: Directions) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Per-chunk state for :meth:`cut`: the flat slice offsets and the normalised frames."""
        offsets = slice_offsets(dirs.s_half, dirs.num_slices, self.plan.pad).reshape(-1)
        return offsets, normalised_frames(dirs, self.e)

    def cut(self, dirs: Directions, state: tuple[Tensor, tuple], index: Tensor) -> Tensor:
        """Slices (N, C, h, w) number ``index`` (N,) of the chunk (direction-major)."""
        offsets, frames = state
        S = dirs.num_slices + 2 * self.plan.pad
        return cut_slices(self.volume, frames, dirs, index // S, offsets[index], self.plan.size, self.e)


class Scorer:
    """Runs a head on batches of slices with the engine's speed settings.

    Args:
        head: the head; ``head(encoder, slices)`` -> (N, K, h, w).
        encoder: the encoder, or None for heads that need none.
        device: where the slices live.
        amp: autocast setting (``auto``, ``off``, ``bf16``, ``fp16``).
        channels_last: feed the encoder channels-last slices.
        compile: ``torch.compile`` the encoder when the head says it may
            (``head.compilable``).
        batch_size: slices per encoder batch; halves after an out-of-memory error and
            stays so for the rest of this scorer's work.
        label: how messages name the head (``head 'logit' with options {...}``).

    Attributes:
        dtype: the autocast dtype, or None for float32.
        pad_to: compiled encoders see one batch shape: batches are padded to ``batch_size``.
    """

    def __init__(
        self,
        head,
        encoder: nn.Module | None,
        device: torch.device,
        *,
        amp: str = "off",
        channels_last: bool = False,
        compile: bool = False,
        batch_size: int = 64,
        label: str = "the head",
    ) -> None:
        self.head, self.device, self.batch_size, self.label = head, device, int(batch_size), label
        self._checked: dict[tuple[int, ...], Tensor] = {}
        self.dtype: torch.dtype | None = None
        self.channels_last, self.pad_to = False, False
        if encoder is not None:
            if channels_last:
                encoder = encoder.to(memory_format=torch.channels_last)
            # compiled graphs drop hooks and autograd tricks: only heads that say they allow it
            compile = compile and bool(getattr(head, "compilable", False))
            if compile:
                encoder = compiled(encoder)
            self.dtype = amp_dtype(amp, device)
            if amp == "auto" and getattr(head, "needs_grad", False):
                self.dtype = None  # gradients (CAM heads) can underflow in fp16: reduced precision only on request
            self.channels_last, self.pad_to = channels_last, compile
        self.encoder = encoder

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def __call__(self, slices: Tensor) -> Tensor:
        """Float32 scores (N, K, h, w) of slices (N, C, h, w)."""
        n = slices.shape[0]
        if self.pad_to and n < self.batch_size:
            slices = torch.cat([slices, slices.new_zeros(self.batch_size - n, *slices.shape[1:])])
        if self.channels_last:
            slices = slices.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            scores = self.head(self.encoder, slices)
        return scores[:n].float()

    def empty_score(self, channels: int, size: tuple[int, int]) -> Tensor:
        """Score (1, K, h, w) of a slice of zeros."""
        return self(torch.zeros(1, channels, *size, device=self.device))

    def check(self, channels: int, size: tuple[int, int]) -> Tensor:
        """The score of a zero slice, once per slice shape: where the head first meets its encoder.

        This is the boundary of a reconstruction: what the head or encoder refuses here (a
        ``target`` beyond the encoder's outputs, a CAM ``layer`` it does not have, slices of
        the wrong channel count) reaches the caller as one :class:`InputError` naming the
        head and its options, before any work is done.
        """
        key = (channels, *size)
        if key not in self._checked:
            try:
                self._checked[key] = self.empty_score(channels, size)
            except (TomofieldError, torch.OutOfMemoryError):
                raise
            except (ValueError, TypeError, KeyError, IndexError, RuntimeError, AssertionError) as exc:
                raise InputError(
                    f"{self.label} cannot score {channels}-channel slices of {size[0]} x {size[1]} px with this "
                    f"encoder: {type(exc).__name__}: {exc}"
                ) from exc
        return self._checked[key]

    def score_chunk(
        self, slicer: Slicer, dirs: Directions, hits: Tensor | None, empty: Tensor | None, tick: Tick
    ) -> Tensor:
        """Scores (L, S, K, h, w) of every slice of a chunk of directions.

        Slices are cut in batches across directions; where ``hits`` (L, S) is False the
        slice samples nothing above the empty tolerance and gets ``empty`` unrun.
        """
        L, S = len(dirs), dirs.num_slices + 2 * slicer.plan.pad
        state = slicer.prepare(dirs)
        device = slicer.volume.device
        if hits is None:
            run = torch.arange(L * S, device=device)
        else:
            run = hits.reshape(-1).nonzero()[:, 0].to(device, non_blocking=True)
        n_run = run.shape[0]
        outs, b = [], 0
        while b < n_run:
            bs = self.batch_size
            j = run[b : b + bs]
            try:
                outs.append(self(slicer.cut(dirs, state, j)))
            except torch.OutOfMemoryError:
                if bs == 1:
                    raise
                self.batch_size = max(1, bs // 2)  # carry on with half the batch, from now on
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(
                    f"out of memory with batches of {bs} slices; continuing with {self.batch_size}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            b += j.shape[0]
            tick(j.shape[0])
        if hits is None:
            scores = torch.cat(outs)
        else:
            scores = empty.expand(L * S, *empty.shape[1:]).clone()
            if outs:
                scores[run] = torch.cat(outs)
            tick(L * S - n_run)
        return scores.reshape(L, S, *scores.shape[1:])


class Backprojector:
    """Accumulates weighted, filtered profiles into the output grid of a plan.

    Args:
        plan: the plan.
        filter: the filter whose ``constant`` and ``integral`` set the weights.
        device: where the accumulator lives.
    """

    def __init__(self, plan: Plan, filter, device: torch.device) -> None:
        self.plan, self.filter, self.device = plan, filter, device
        self.out: Tensor | None = None

    def add(self, q: Tensor, dirs: Directions) -> None:
        """Backproject filtered profiles ``q`` (L, M, K, h, w) of chunk ``dirs``."""
        plan = self.plan
        weight = torch.full((len(dirs),), self.filter.constant * 4 * math.pi / plan.n_dirs, device=self.device)
        if self.filter.integral:
            weight = weight * slice_area(dirs.a_half, dirs.b_half, plan.size)
        if self.out is None:
            check_memory(q.shape[2], plan.shape, self.device)
            self.out = torch.zeros(q.shape[2], math.prod(plan.shape), device=self.device, dtype=q.dtype)
        backproject_grid(q, dirs, plan.shape, plan.e, plan.size, weights=weight, out=self.out)

    def result(self) -> Tensor:
        """The (K, D, H, W) sum (summed over ranks when the directions were sharded)."""
        assert self.out is not None, "nothing was backprojected"
        return self.out.reshape(-1, *self.plan.shape)


class _Mean:
    """The weights of a plain mean over directions (:meth:`Stacks.mean_backprojector`)."""

    constant = 1.0 / (4.0 * math.pi)  # times 4 pi / L: 1 / L
    integral = False


_MEAN = _Mean()


class Stacks:
    """The operators of one volume's plan, for a reconstructor.

    Args:
        plan: the plan.
        filter: the filter along the normal.
        device: where the heatmap lives.
    """

    #: floats of slices cut at once by :meth:`project`
    PROJECT_BUDGET = 1 << 24

    def __init__(self, plan: Plan, filter, device: torch.device) -> None:
        self.plan, self.device, self._filter = plan, device, filter

    def filter(self, scores: Tensor, dirs: Directions) -> Tensor:
        """The filtered profiles (L, M, K, h, w) of a chunk's scores (L, M + 2 pad, K, h, w)."""
        return self._filter(scores, dirs.slice_spacing())

    def backprojector(self) -> Backprojector:
        """A new accumulator of weighted, filtered profiles (:class:`Backprojector`)."""
        return Backprojector(self.plan, self._filter, self.device)

    def mean_backprojector(self) -> Backprojector:
        """A new accumulator of the mean over directions of unfiltered profiles (L, M, K, h, w).

        At a voxel ``x`` it returns ``1/L sum_l p_l(x . n_l)``: the mean of a per-slice value
        over the planes through ``x`` (the ``none`` filter's Averaged reconstruction), for
        profiles without the filter's ``pad`` slices (:meth:`unpadded`).
        """
        return Backprojector(self.plan, _MEAN, self.device)

    def unpadded(self, scores: Tensor) -> Tensor:
        """The scores (L, M, ...) of a chunk's stack slices, without the filter's ``pad`` slices at each end."""
        pad = self.plan.pad
        return scores[:, pad : scores.shape[1] - pad] if pad else scores

    @property
    def sharded(self) -> bool:
        """Whether this process holds only a share of the directions (torch.distributed)."""
        return sum(len(g) for g in self.plan.groups) != self.plan.n_dirs

    def project(self, x: Tensor, dirs: Directions, cells: Sequence[int] = (1, 1)) -> Tensor:
        """The ``sum`` head's scores (L, M + 2 pad, K, h, w) of a heatmap ``x`` (K, D, H, W) at the chunk's planes.

        Each slice of ``x`` is cut as the encoder's slices are and averaged over its pixels,
        or over the ``cells`` (h, w) that tile it for a map head (cell ``i`` of ``h``: pixels
        ``[i P / h, (i + 1) P / h)``). With the filter and :meth:`backprojector` this is the
        model a regularized reconstructor fits: filtered backprojection of ``project(f)``
        returns ``f`` (the ``sum`` head's reconstruction).
        """
        x = x.to(self.device, torch.float32).contiguous()
        slicer = Slicer(x, self.plan, skip_empty=False, empty_tol=0.0)
        L, S = len(dirs), dirs.num_slices + 2 * self.plan.pad
        state = slicer.prepare(dirs)
        index = torch.arange(L * S, device=x.device)
        step = max(1, self.PROJECT_BUDGET // (x.shape[0] * math.prod(self.plan.size)))
        h, w = (int(c) for c in cells)
        outs = []
        for start in range(0, L * S, step):
            cut = slicer.cut(dirs, state, index[start : start + step])  # (N, K, P, P)
            outs.append(cut.mean(dim=(2, 3), keepdim=True) if (h, w) == (1, 1) else F.adaptive_avg_pool2d(cut, (h, w)))
        return torch.cat(outs).reshape(L, S, x.shape[0], h, w)


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: the driver's count; CPU: available physical pages)."""
    import os

    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def check_memory(channels: int, shape: Sequence[int], device: torch.device, free: int | None = None) -> None:
    """Refuse an output grid whose accumulator and result would not fit, saying how much they need."""
    need = 2 * channels * math.prod(shape) * 4  # float32 accumulator + the returned heatmap
    free = available_memory(device) if free is None else free
    if free is not None and need > free:
        raise InputError(
            f"the output grid {tuple(shape)} with {channels} channel(s) needs {need / 2**30:.2f} GiB on {device} "
            f"but {free / 2**30:.2f} GiB are free; use fewer head channels (e.g. a projection) or a smaller volume"
        )
