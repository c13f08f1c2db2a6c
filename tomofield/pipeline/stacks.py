"""Backprojection into the output grid and the operators handed to a reconstructor (:class:`Stacks`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tomofield.errors import ComponentError, InputError, TomofieldError
from tomofield.geometry import Directions, slice_area
from tomofield.pipeline.backproject import backproject_grid
from tomofield.pipeline.plan import Plan
from tomofield.pipeline.slicing import Slicer


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
        label: how messages name the filter (``filter 'tomo'``).

    Attributes:
        finite: per call of :meth:`filter`, whether it kept finite scores finite (0-d bool
            tensors, unsynchronised; the engine reads them only when the heatmap is not finite).
    """

    #: floats of slices cut at once by :meth:`project`
    PROJECT_BUDGET = 1 << 24

    def __init__(self, plan: Plan, filter, device: torch.device, label: str = "the filter") -> None:
        self.plan, self.device, self._filter, self.label = plan, device, filter, label
        self.finite: list[Tensor] = []

    def filter(self, scores: Tensor, dirs: Directions) -> Tensor:
        """The filtered profiles (L, M, K, h, w) of a chunk's scores (L, M + 2 pad, K, h, w).

        What the filter raises or returns that is not of that shape is a
        :class:`~tomofield.errors.ComponentError` naming the filter.
        """
        try:
            q = self._filter(scores, dirs.slice_spacing())
        except (TomofieldError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            raise ComponentError(
                f"{self.label} failed on scores of shape {tuple(scores.shape)}: {type(exc).__name__}: {exc}"
            ) from exc
        pad = self.plan.pad
        want = (scores.shape[0], scores.shape[1] - 2 * pad, *scores.shape[2:])
        if not isinstance(q, Tensor) or tuple(q.shape) != want:
            raise ComponentError(
                f"{self.label} returned {ComponentError.got(q)} for scores of shape {tuple(scores.shape)}; a filter "
                f"returns the profiles (L, M, K, h, w) = {want}, its {pad} padding slice(s) each side dropped "
                "(tomofield.protocols.Filter): a fault of the filter, not of the input"
            )
        self.finite.append(torch.isfinite(q).all() | ~torch.isfinite(scores).all())  # finite in, finite out
        return q

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
