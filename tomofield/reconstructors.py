"""Reconstructors: how the stacks' scores become the heatmap (:class:`tomofield.protocols.Reconstructor`).

* :class:`FilteredBackprojection` (``fbp``, the default): each chunk's scores are
  filtered along the normal and backprojected as they come (ToNNO, paper Eq. 9-11);
  nothing is kept.
* :class:`Regularized` (``regularized``): keeps every stack's scores (scalar heads:
  L x (M + 2) numbers per channel; map heads their cells too) and fits the heatmap to
  them. The model is the ``sum`` head's: a heatmap ``x`` explains the scores ``s`` when
  its slices' means ``A x`` (:meth:`tomofield.pipeline.Stacks.project`) equal them up to
  what the filter removes (a per-stack offset and slope: the score's baseline drops out).
  Filtered backprojection ``B`` is an approximate inverse of ``A`` (``B A f = f`` for the
  ``sum`` head up to discretisation), so the fit iterates ``x <- prox(x + step B (s - A x))``
  from ``x = B s``, with Nesterov/FISTA momentum; ``prox`` is the prior: ``x >= 0``
  (``positive``) and an L1 shrinkage of ``sparsity`` times the FBP maximum. Each iteration
  costs one slicing of the heatmap and one backprojection, no encoder evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tomofield.errors import InputError
from tomofield.protocols import Option

__all__ = ["FilteredBackprojection", "Regularized"]


class FilteredBackprojection:
    """Filter each chunk's scores along the normal and backproject them as they come (streaming)."""

    name = "fbp"

    def __call__(self, chunks: Iterator[tuple[Tensor, Any]], stacks: Any) -> Tensor:
        bp = stacks.backprojector()
        for scores, dirs in chunks:
            bp.add(stacks.filter(scores, dirs), dirs)
        return bp.result()


@dataclass(frozen=True)
class Regularized:
    """Fit the heatmap to every stack's scores under a prior (the module's doc).

    Args:
        iterations: accelerated iterations after the filtered backprojection (0: FBP, clipped
            by the prior).
        positive: the heatmap is non-negative (lesion evidence).
        sparsity: L1 shrinkage per iteration, as a fraction of the FBP heatmap's maximum.
        step: the step along the backprojected residual, in units of ``1 / radius`` where
            ``radius`` is the spectral radius of ``B A`` (:func:`spectral_radius`, 8 power
            iterations on the volume's own plan).
    """

    iterations: int = 10
    positive: bool = True
    sparsity: float = 0.0
    step: float = 1.0

    name = "regularized"
    options = (
        Option("iterations", int, 10, "accelerated iterations after FBP", min=0, max=1000),
        Option("positive", bool, True, "non-negative heatmap"),
        Option("sparsity", float, 0.0, "L1 shrinkage per iteration, a fraction of the FBP maximum", min=0.0, max=1.0),
        Option("step", float, 1.0, "step along the backprojected residual", min=1e-3, max=2.0),
    )

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise InputError(f"regularized: iterations must be an integer >= 0, got {self.iterations!r}")
        if not (0 <= self.sparsity < 1) or not (0 < self.step <= 2):
            raise InputError(
                f"regularized: need 0 <= sparsity < 1 and 0 < step <= 2, got sparsity={self.sparsity!r}, "
                f"step={self.step!r}"
            )

    def __call__(self, chunks: Iterator[tuple[Tensor, Any]], stacks: Any) -> Tensor:
        if stacks.sharded:
            raise InputError(
                "the regularized reconstructor fits all directions at once and cannot share them among ranks "
                "(shard_directions under torchrun); use reconstructor='fbp' there, or shard the volumes instead"
            )
        kept = [(scores.float(), dirs) for scores, dirs in chunks]
        start = FilteredBackprojection()(iter(kept), stacks)  # B s
        cells = tuple(kept[0][0].shape[-2:])
        shrink = self.sparsity * start.flatten(1).abs().amax(dim=1).reshape(-1, 1, 1, 1)

        def prox(x: Tensor) -> Tensor:
            if self.sparsity:
                x = torch.sign(x) * torch.clamp(x.abs() - shrink, min=0)
            return x.clamp(min=0) if self.positive else x

        def normal(x: Tensor) -> Tensor:
            """``B A x``: the filtered backprojection of ``x``'s own scores."""
            bp = stacks.backprojector()
            for _, dirs in kept:
                bp.add(stacks.filter(stacks.project(x, dirs, cells), dirs), dirs)
            return bp.result()

        x = prox(start)
        if not self.iterations:
            return x
        step = self.step / spectral_radius(normal, start)
        y, t = x, 1.0
        for _ in range(self.iterations):
            x_next = prox(y + step * (start - normal(y)))  # B (s - A y): filter and B are linear
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = x_next + ((t - 1) / t_next) * (x_next - x)
            x, t = x_next, t_next
        return x


def spectral_radius(op, like: Tensor, iterations: int = 8, seed: int = 0) -> float:
    """The largest |eigenvalue| of the linear ``op`` (power iteration from a seeded random start), 5 % over.

    ``B A`` (backprojection of the filtered projection) is about 1 on smooth heatmaps but
    amplifies the finest ones at few directions (16 at L = 8 on a 24^3 grid): a step of 1
    there diverges, a step of 1 / radius does not.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(like.shape, generator=gen).to(like)
    radius = 1.0
    for _ in range(iterations):
        w = op(v)
        norm = float(w.norm())
        if not math.isfinite(norm) or norm == 0:
            break
        radius = norm / float(v.norm())
        v = w / norm
    return 1.05 * max(radius, 1.0)
