"""Volume-level validation: each volume's score from a fixed set of slices, and its metrics.

The decision threshold of classification is the one that maximises balanced accuracy on
the training volumes (``docs/design.md``, "Validation threshold during training");
balanced accuracy is the evaluation's (:func:`tomofield.evaluation.metrics.balanced_accuracy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

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
def volume_scores(model: nn.Module, vols: list[Loaded], cfg: ResolvedTrainConfig, batch: int = 128) -> Tensor:
    """Each volume's prediction from a fixed set of slices.

    ``val_directions`` stacks of ``val_slices`` parallel slices (:func:`val_slices_for` of
    the volume's grid when ``None``). A classifier's score: each stack's slice logits pool
    as training pools them (:func:`tomofield.train.objective.pool`), averaged over the
    stacks. A density encoder's (regression with a teacher): the mean over the stacks of
    the quadrature ``sum_k w_k max(g_k, 0)`` in mL. Any other regressor's: the largest
    slice output.
    """
    sampler, out = FibonacciSampler(), []
    integral = cfg.teacher is not None
    for vol in vols:
        slices = cfg.val_slices if cfg.val_slices is not None else val_slices_for(tuple(vol.data.shape[1:]))
        scfg = SamplingConfig(directions=cfg.val_directions, slices=slices, hemisphere=True, seed=0, extent=cfg.extent)
        d = sampler.plan(vol.data.shape[1:], vol.e.cpu().double(), scfg)[0].to(vol.data.device)
        L, M = len(d), d.num_slices
        off = (d.s_half[:, None] * torch.linspace(-1, 1, M, device=vol.data.device)).reshape(-1)
        idx = torch.arange(L, device=vol.data.device).repeat_interleave(M)
        weight = (slice_area(d.a_half, d.b_half, (cfg.slice_size,) * 2) * 2 * d.s_half / (M - 1) * vol.mm3 / 1000)[idx]
        logits = []
        for b in range(0, L * M, batch):
            i = idx[b : b + batch]
            pts = slice_points(
                d.normals[i],
                d.u[i],
                d.v[i],
                off[b : b + batch],
                d.a_half[i],
                d.b_half[i],
                (cfg.slice_size, cfg.slice_size),
            )
            logits.append(model(sample_slices(vol.data, pts, vol.e))[:, 0].float())
        g = torch.cat(logits)
        if integral:
            out.append((g.clamp_min(0) * weight).sum() / L)
        elif cfg.task == "classification":
            out.append(pool(g.reshape(L, M), cfg.pool, temperature=cfg.pool_temperature, k=cfg.pool_k).mean())
        else:
            out.append(g.max())
    return torch.stack(out).cpu()


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
    diff = pos[:, None] - neg[None, :]
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
