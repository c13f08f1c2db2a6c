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
* :class:`Filled` (``filled``, the default with the ``logit`` head): ToNNO filled by the
  *consensus* of the planes through each voxel,
  ``c(x) = exp(mean_l log sigmoid((s_l(x) - threshold) / temperature))``, the geometric mean
  over directions of the probability that the plane through ``x`` cuts a lesion: each
  voxel takes ``max(ToNNO, c^power x the largest ToNNO value of its consensus region)``
  (:func:`fill_by_consensus`). A slice
  classifier's logit saturates once a slice cuts a lesion, so its profile across a large
  lesion is a plateau; a plateau is exactly the plane-integral profile of a thin spherical
  shell (Archimedes' hat-box theorem: a plane at any offset cuts a sphere's surface in a
  band of the same area), so plain ToNNO returns a rim around a hollow centre, and no
  monotone link of the scores can tell a plateau from a shell (:class:`Calibrated` shows
  it). The consensus reads the plateau for what it is, "this plane cuts a lesion": inside
  a lesion every plane does, outside most do not, so it is high on the whole lesion and
  says which voxels a rim encloses without the rim having to be closed. ToNNO is never
  lowered: small lesions and the volume-level decision (the heatmap's maximum) stay as
  they were. Both parts stream (two accumulators, nothing kept); the regions are labelled
  once per volume on the host.
* :class:`Calibrated` (``calibrated``): a monotone link from the scores to plane
  integrals, fitted by self-consistency with a solid prior (:func:`self_consistent_link`),
  then FBP of the linked scores. It recovers a link that still grows with the cut area; on
  saturated logits it has nothing to recover (docs/results.md, "Filled lesions").
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tomofield.calibration import OperatingPoint
from tomofield.errors import InputError
from tomofield.protocols import check_settings, setting

__all__ = ["Calibrated", "FilteredBackprojection", "Filled", "MonotoneLink", "Regularized", "self_consistent_link"]


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

    iterations: int = setting(10, "accelerated iterations after FBP", min=0, max=1000)
    positive: bool = setting(True, "non-negative heatmap")
    sparsity: float = setting(0.0, "L1 shrinkage per iteration, a fraction of the FBP maximum", min=0.0, max=0.999)
    step: float = setting(1.0, "step along the backprojected residual", min=1e-3, max=2.0)

    name = "regularized"

    def __post_init__(self) -> None:
        check_settings(self, self.name)

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


def _refuse_sharded(stacks: Any, name: str) -> None:
    if stacks.sharded:
        raise InputError(
            f"the {name} reconstructor combines all directions at the end and cannot share them among ranks "
            "(shard_directions under torchrun); use reconstructor='fbp' there, or shard the volumes instead"
        )


def fill_by_consensus(heat: Tensor, consensus: Tensor, level: float = 0.5, power: float = 2.0) -> Tensor:
    """``max(heat, consensus^power * M)``, with ``M`` the maximum of ``heat`` over the voxel's consensus region.

    A consensus region is a connected component (26-neighbourhood) of ``consensus >= level``
    in one channel; voxels outside every region, and regions whose maximum is not positive,
    keep ``heat``. So the heatmap never goes down, and a voxel that every plane through it
    calls lesion rises to the brightest value of its region: a large lesion's rim level
    fills its centre, whatever the lesion's size. The labelling runs on the host (scipy).
    """
    from scipy import ndimage

    out = []
    for h, c in zip(heat.float(), consensus.float(), strict=True):
        labels, n = ndimage.label((c >= level).cpu().numpy(), structure=np.ones((3, 3, 3), bool))
        if n == 0:
            out.append(h)
            continue
        top = np.asarray(ndimage.maximum(h.cpu().numpy(), labels, index=np.arange(1, n + 1)), np.float32)
        top = np.concatenate([[0.0], np.maximum(top, 0.0)]).astype(np.float32)  # label 0: outside every region
        region_max = torch.from_numpy(top[labels]).to(h.device)
        fill = torch.where(region_max > 0, c.pow(power) * region_max, torch.full_like(h, -math.inf))
        out.append(torch.maximum(h, fill))
    return torch.stack(out)


#: Where the run records its operating point, ``filled``'s threshold lies this many spreads of the negatives'
#: slice logits below it, and its temperature is this share of the spread (measured: docs/results.md,
#: "Filled lesions on the encoder's own operating point").
FILLED_SPREADS_BELOW = 1.0
FILLED_TEMPERATURE_SHARE = 0.75


@dataclass(frozen=True)
class Filled:
    """ToNNO filled where the planes agree that a voxel is lesion (the module's doc).

    Args:
        threshold: the score at which a plane counts as cutting a lesion (a logit).
        temperature: the softness of that decision, in score units; smaller is closer to
            "every plane through the voxel" (the lesion's convex hull).
        level: the consensus that makes a voxel part of a region to fill.
        power: the fill is ``consensus^power`` times the region's maximum.
    """

    threshold: float = setting(0.5, "score at which a plane counts as cutting a lesion", min=-1e3, max=1e3)
    temperature: float = setting(0.2, "softness of that decision, in score units", min=1e-3, max=100.0)
    level: float = setting(0.5, "consensus that makes a voxel part of a region to fill", min=1e-3, max=1.0)
    power: float = setting(2.0, "the fill is consensus^power times the region's maximum", min=0.0, max=100.0)

    name = "filled"

    def __post_init__(self) -> None:
        check_settings(self, self.name)

    @staticmethod
    def operating_point_options(point: OperatingPoint) -> dict[str, float]:
        """The options an encoder's operating point sets (:mod:`tomofield.calibration`).

        ``threshold``: :data:`FILLED_SPREADS_BELOW` spreads of the negatives' slice logits
        below the operating point (for normal logits, the level a quarter of negatives'
        slices pass where the operating point lets 5 % through: a plane need not be sure to
        vote); ``temperature``: :data:`FILLED_TEMPERATURE_SHARE` of that spread, so the
        decision is as soft in every encoder's units.
        """
        return {
            "threshold": point.threshold - FILLED_SPREADS_BELOW * point.scale,
            "temperature": max(FILLED_TEMPERATURE_SHARE * point.scale, 1e-3),
        }

    def consensus_profile(self, scores: Tensor) -> Tensor:
        """``log sigmoid((s - threshold) / temperature)``: a slice's log-probability of cutting a lesion."""
        return F.logsigmoid((scores.float() - self.threshold) / self.temperature)

    def parts(self, chunks: Iterator[tuple[Tensor, Any]], stacks: Any) -> tuple[Tensor, Tensor]:
        """Plain ToNNO (FBP) and the consensus ``exp(mean log sigmoid(...))``, from one pass over the chunks."""
        _refuse_sharded(stacks, self.name)
        fbp, mean = stacks.backprojector(), stacks.mean_backprojector()
        for scores, dirs in chunks:
            fbp.add(stacks.filter(scores, dirs), dirs)
            mean.add(self.consensus_profile(stacks.unpadded(scores)), dirs)
        return fbp.result(), mean.result().exp()

    def __call__(self, chunks: Iterator[tuple[Tensor, Any]], stacks: Any) -> Tensor:
        heat, consensus = self.parts(chunks, stacks)
        return fill_by_consensus(heat, consensus, self.level, self.power).to(heat.dtype)


@dataclass(frozen=True)
class MonotoneLink:
    """A non-decreasing piecewise-linear map from scores to plane integrals (flat beyond its knots)."""

    knots: tuple[float, ...]
    values: tuple[float, ...]

    def __call__(self, scores: Tensor) -> Tensor:
        x = torch.tensor(self.knots, dtype=torch.float64)
        y = torch.tensor(self.values, dtype=torch.float64)
        s = scores.double().clamp(x[0], x[-1])
        i = torch.searchsorted(x, s.contiguous()).clamp(1, len(x) - 1) if len(x) > 1 else None
        if i is None:
            return torch.full_like(scores, self.values[0])
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        t = torch.where(x1 > x0, (s - x0) / (x1 - x0).clamp_min(1e-300), torch.zeros_like(s))
        return (y0 + t * (y1 - y0)).to(scores.dtype)


def isotonic_link(x: np.ndarray, y: np.ndarray, bins: int = 256) -> MonotoneLink:
    """The least-squares non-decreasing fit of ``y`` on ``x`` (pool adjacent violators) on ``bins`` quantile bins."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(len(edges) - 2, 0))
    w = np.bincount(idx).astype(np.float64)
    keep = w > 0
    mx = (np.bincount(idx, weights=x)[keep]) / w[keep]
    my = (np.bincount(idx, weights=y)[keep]) / w[keep]
    w = w[keep]
    vals: list[float] = []
    wts: list[float] = []
    sizes: list[int] = []
    for v, wt in zip(my, w, strict=True):  # pool adjacent violators
        vals.append(float(v))
        wts.append(float(wt))
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wt2 = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wt2
            wts[-2], sizes[-2] = wt2, sizes[-2] + sizes[-1]
            del vals[-1], wts[-1], sizes[-1]
    fitted = np.repeat(vals, sizes)
    return MonotoneLink(tuple(float(v) for v in mx), tuple(float(v) for v in fitted))


def solid(heat: Tensor, level: float = 0.5) -> Tensor:
    """The solid prior: each channel's region at or above ``level`` times its maximum, holes filled in 3D (float 0/1)."""
    from scipy import ndimage

    out = []
    for ch in heat.detach().float().cpu().numpy():
        top = float(ch.max())
        mask = ndimage.binary_fill_holes(ch >= level * top) if top > 0 else np.zeros(ch.shape, bool)
        out.append(torch.from_numpy(mask.astype(np.float32)))
    return torch.stack(out).to(heat.device)


def self_consistent_link(
    kept: list[tuple[Tensor, Any]], stacks: Any, iterations: int = 3, level: float = 0.5
) -> list[MonotoneLink]:
    """Per channel, the monotone link under which the scores' reconstruction is consistent with solid lesions.

    Start from the identity; repeat ``iterations`` times: reconstruct the linked scores by
    FBP, take the solid region (:func:`solid`), cut it as the encoder's slices are
    (``stacks.project``: each slice's mean of the 0/1 region, the plane integral of a unit
    lesion over the slice area) and fit the link from the scores to those values
    (:func:`isotonic_link`). A score that grows with the cut area gives back its inverse;
    a saturated one (a plateau) cannot: a plateau is also the profile of a hollow shell.
    """
    channels = kept[0][0].shape[2]
    links: list[MonotoneLink | None] = [None] * channels
    for _ in range(max(1, iterations)):
        linked = [(_apply(links, s), d) for s, d in kept]
        heat = FilteredBackprojection()(iter(linked), stacks)
        region = solid(heat, level)
        cells = tuple(kept[0][0].shape[-2:])
        target = [stacks.project(region, d, cells) for _, d in kept]
        links = [
            isotonic_link(
                torch.cat([s[:, :, c].flatten() for s, _ in kept]).cpu().numpy(),
                torch.cat([t[:, :, c].flatten() for t in target]).cpu().numpy(),
            )
            for c in range(channels)
        ]
    return links  # type: ignore[return-value]  # set by the first round


def _apply(links: Sequence[MonotoneLink | None], scores: Tensor) -> Tensor:
    """The scores (L, S, K, h, w) under channel ``c``'s link (unchanged before the first fit)."""
    if any(link is None for link in links):
        return scores
    # no link is None here (checked above)
    return torch.stack([cast(MonotoneLink, link)(scores[:, :, c]) for c, link in enumerate(links)], dim=2)


@dataclass(frozen=True)
class Calibrated:
    """FBP of the scores under the self-consistent monotone link (:func:`self_consistent_link`).

    Args:
        iterations: rounds of reconstruct, solidify, re-project and refit.
        level: the solid prior's threshold, a fraction of the heatmap's maximum.
    """

    iterations: int = setting(3, "rounds of reconstruct, solidify, re-project, refit", min=1, max=100)
    level: float = setting(0.5, "the solid prior's threshold, a fraction of the maximum", min=0.01, max=0.99)

    name = "calibrated"

    def __post_init__(self) -> None:
        check_settings(self, self.name)

    def __call__(self, chunks: Iterator[tuple[Tensor, Any]], stacks: Any) -> Tensor:
        _refuse_sharded(stacks, self.name)
        kept = [(scores.float(), dirs) for scores, dirs in chunks]
        links = self_consistent_link(kept, stacks, self.iterations, self.level)
        return FilteredBackprojection()(iter([(_apply(links, s), d) for s, d in kept]), stacks)
