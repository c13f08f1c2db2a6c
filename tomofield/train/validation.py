"""Volume-level validation: each volume's score from a fixed set of slices, and its metrics.

The decision threshold of classification is the one that maximises balanced accuracy on
the training volumes (``docs/design.md``, "Validation threshold during training");
balanced accuracy is the evaluation's (:func:`tomofield.evaluation.metrics.balanced_accuracy`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tomofield.calibration import FALSE_POSITIVE_RATE, OperatingPoint, operating_point
from tomofield.errors import InputError
from tomofield.evaluation.metrics import balanced_accuracy as _balanced_accuracy
from tomofield.geometry import sample_slices, slice_area, slice_points
from tomofield.samplers import FibonacciSampler, SamplingConfig
from tomofield.train.objective import pool
from tomofield.train.slicing import Loaded

if TYPE_CHECKING:
    from tomofield.train.config import ResolvedTrainConfig


#: The slices per validation stack chosen from a volume's grid: one every two voxels of its longest side, in this range.
VAL_SLICES = (16, 64)


def val_slices_for(shape: tuple[int, ...]) -> int:
    """Slices per validation stack for a grid: a lesion two voxels across is cut by every stack.

    >>> val_slices_for((20, 40, 40)), val_slices_for((66, 78, 63)), val_slices_for((300, 512, 512))
    (21, 40, 64)
    """
    lo, hi = VAL_SLICES
    return int(min(max(-(-max(shape) // 2) + 1, lo), hi))


@torch.inference_mode()
def stack_logits(
    model: nn.Module, vol: Loaded, cfg: ResolvedTrainConfig, batch: int = 128
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The validation stacks of one volume: slice outputs (L, M), each slice's weight in mL (L, M), and
    which slices cut a lesion (L, M, bool; ``None`` without :attr:`~tomofield.train.slicing.Loaded.mask`).

    ``val_directions`` stacks of ``val_slices`` parallel slices (:func:`val_slices_for` of the
    volume's grid when ``None``), directions of the Fibonacci sampler with seed 0, offsets
    evenly over each stack's extent. A slice cuts a lesion where the mask, sampled at the
    slice's points as the image is, exceeds 1/2 at any of them.
    """
    sampler = FibonacciSampler()
    slices = cfg.val_slices if cfg.val_slices is not None else val_slices_for(tuple(vol.data.shape[1:]))
    scfg = SamplingConfig(directions=cfg.val_directions, slices=slices, hemisphere=True, seed=0, extent=cfg.extent)
    d = sampler.plan(vol.data.shape[1:], vol.e.cpu().double(), scfg)[0].to(vol.data.device)
    L, M = len(d), d.num_slices
    off = (d.s_half[:, None] * torch.linspace(-1, 1, M, device=vol.data.device)).reshape(-1)
    idx = torch.arange(L, device=vol.data.device).repeat_interleave(M)
    weight = (slice_area(d.a_half, d.b_half, (cfg.slice_size,) * 2) * 2 * d.s_half / (M - 1) * vol.mm3 / 1000)[idx]
    logits, cuts = [], []
    for b in range(0, L * M, batch):
        i = idx[b : b + batch]
        pts = slice_points(
            d.normals[i], d.u[i], d.v[i], off[b : b + batch], d.a_half[i], d.b_half[i], (cfg.slice_size,) * 2
        )
        logits.append(model(sample_slices(vol.data, pts, vol.e))[:, 0].float())
        if vol.mask is not None:
            cuts.append(sample_slices(vol.mask, pts, vol.e).reshape(len(i), -1).amax(dim=1) > 0.5)
    cut = torch.cat(cuts).reshape(L, M) if cuts else None
    return torch.cat(logits).reshape(L, M), weight.reshape(L, M), cut


def volume_score(g: Tensor, weight: Tensor, cfg: ResolvedTrainConfig) -> Tensor:
    """One volume's prediction from its stacks' slice outputs ``g`` (L, M) and weights (:func:`volume_scores`)."""
    if cfg.teacher is not None:
        return (g.clamp_min(0) * weight).sum() / g.shape[0]
    if cfg.task == "classification":
        return pool(g, cfg.pool, temperature=cfg.pool_temperature, k=cfg.pool_k).mean()
    return g.max()


@torch.inference_mode()
def volume_scores(model: nn.Module, vols: list[Loaded], cfg: ResolvedTrainConfig, batch: int = 128) -> Tensor:
    """Each volume's prediction from a fixed set of slices (:func:`stack_logits`).

    A classifier's score: each stack's slice logits pool as training pools them
    (:func:`tomofield.train.objective.pool`), averaged over the stacks. A density encoder's
    (regression with a teacher): the mean over the stacks of the quadrature ``sum_k w_k
    max(g_k, 0)`` in mL. Any other regressor's: the largest slice output.
    """
    return torch.stack([volume_score(*stack_logits(model, v, cfg, batch)[:2], cfg) for v in vols]).cpu()


@torch.inference_mode()
def scores_and_localisation(
    model: nn.Module, vols: list[Loaded], cfg: ResolvedTrainConfig, batch: int = 128
) -> tuple[Tensor, float, int]:
    """:func:`volume_scores`, the mean :func:`localisation` over the volumes with a mask, and their number.

    The localisation is NaN where no volume has a mask with slices on both sides of it.
    """
    scores, locs = [], []
    for v in vols:
        g, w, cut = stack_logits(model, v, cfg, batch)
        scores.append(volume_score(g, w, cfg))
        a = localisation(g, cut) if cut is not None else float("nan")
        if math.isfinite(a):
            locs.append(a)
    mean = sum(locs) / len(locs) if locs else float("nan")
    return torch.stack(scores).cpu(), mean, len(locs)


#: Slices either side of a lesion slice, beyond the adjacent one, it is compared with (:func:`localisation`).
NEIGHBOURS = 3


def localisation(logits: Tensor, cut: Tensor, neighbours: int = NEIGHBOURS) -> float:
    """Whether a volume's slice scores mark its lesions: do the slices that cut one outscore their neighbours?

    ``logits`` and ``cut`` are (L, M): L stacks of M parallel slices in order, and which cut a
    lesion. ToNNO's heatmap is made of how slice scores vary along each stack (its second
    derivative), so what localises is a lesion slice scoring above the slices next to it,
    not above the volume's other slices: those lie nearer the edge of the body, and a score
    that follows how much tissue a slice cuts would rank them apart by their position alone.
    Every pair of a lesion slice and a slice of the same stack 2 to ``neighbours + 1``
    positions away that cuts none counts (the adjacent slices are left out: they may cut the
    lesion's partial-volume rim, which the mask does not hold); the result is the share of pairs the lesion slice wins
    (ties 1/2): 1 where lesions stand out, 0.5 as by chance, below 0.5 where lesions lower
    the score (a heatmap that marks them as absences). NaN without a pair.

    >>> z = torch.tensor([[0.1, 0.2, 2.0, 0.3, 0.2]])
    >>> localisation(z, torch.tensor([[False, False, True, False, False]]))
    1.0
    >>> localisation(-z, torch.tensor([[False, False, True, False, False]]))
    0.0
    """
    M = logits.shape[1]
    i, j = torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")
    near = ((i - j).abs() <= neighbours + 1) & ((i - j).abs() >= 2)
    pairs = cut[:, :, None] & ~cut[:, None, :] & near.to(cut.device)
    if not bool(pairs.any()):
        return float("nan")
    return wins((logits[:, :, None] - logits[:, None, :])[pairs].double())


def balanced_accuracy(labels: Tensor, predicted: Tensor) -> float:
    """The evaluation's balanced accuracy (a missing class's term is dropped) of tensors."""
    return _balanced_accuracy(labels.detach().cpu().numpy(), predicted.detach().cpu().numpy())


def best_threshold(scores: Tensor, labels: Tensor) -> float:
    """The threshold on volume scores maximising balanced accuracy (midpoint between scores)."""
    s = torch.sort(scores.double()).values
    candidates = torch.cat([s[:1] - 1, (s[1:] + s[:-1]) / 2, s[-1:] + 1])
    accs = [balanced_accuracy(labels, (scores.double() >= t).float()) for t in candidates]
    return float(candidates[int(torch.tensor(accs).argmax())])


def auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve (probability a positive outscores a negative; ties count 1/2)."""
    pos, neg = scores[labels == 1].double(), scores[labels == 0].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return wins(pos[:, None] - neg[None, :])


def wins(diff: Tensor) -> float:
    """The share of pairs whose difference ``diff`` is positive, ties counting 1/2."""
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def classification_metrics(
    scores: Tensor, labels: Tensor, train_scores: Tensor, train_labels: Tensor
) -> dict[str, float]:
    """Balanced accuracy at the training volumes' best threshold, AUC and that threshold."""
    tau = best_threshold(train_scores, train_labels)
    return {
        "val_balanced_accuracy": balanced_accuracy(labels, (scores >= tau).float()),
        "val_auc": auc(scores, labels),
        "threshold": tau,
    }


def regression_metrics(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """Mean absolute error and Pearson correlation (NaN with one volume)."""
    r = torch.corrcoef(torch.stack([scores.double(), labels.double()]))[0, 1] if len(scores) > 1 else torch.nan
    return {"val_mae": float((scores - labels).abs().mean()), "val_pearson": float(r)}


@torch.inference_mode()
def negatives_operating_point(
    model: nn.Module,
    negatives: list[Loaded],
    cfg: ResolvedTrainConfig,
    source: str,
    false_positive_rate: float = FALSE_POSITIVE_RATE,
) -> OperatingPoint:
    """The encoder's operating point (:mod:`tomofield.calibration`) from the validation stacks of negative volumes.

    Raises:
        InputError: a volume that is not a negative, or too few slices.
    """
    wrong = [str(v.case.images[0]) for v in negatives if v.label != 0]
    if wrong:
        raise InputError(f"an operating point is taken from negative volumes (label 0) only; not {', '.join(wrong)}")
    logits = [stack_logits(model, v, cfg)[0].reshape(-1).cpu() for v in negatives]
    z = torch.cat(logits) if logits else torch.zeros(0)
    return operating_point(z, false_positive_rate, volumes=len(negatives), source=source)
