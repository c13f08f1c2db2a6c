"""What a classification step minimises: the paper's per-slice loss or a multiple-instance one.

A volume-level label says that *some* slice of a positive cuts a lesion, not which. The
paper gives every slice its volume's label (``slice``): when lesions are small, most slices
of a positive look exactly like a negative's and the signal is a small excess of
lesion-cutting slices under heavy label noise. The multiple-instance objective (``mil``)
says what the label says. Each volume contributes one stack of parallel slices covering it
(:func:`~tomofield.train.slicing.stack_slices`); with ``z`` the stack's slice logits and
``y`` the volume's label,

* the stack is pooled to a volume logit ``Z = pool(z)`` (:func:`pool`), and
  ``BCE(Z, y)`` is its loss: a positive needs one high slice, a negative none;
* every slice of a negative is a true negative, so each also takes ``BCE(z_m, 0)``;
* lesions cut few slices, so the lowest-scoring ``negative_share`` of a positive's slices
  are negatives too and take the same term: an encoder cannot raise a positive's score by
  recognising the volume (its scanner, noise, pose) in every slice, only by finding what
  sets its highest slices apart from the rest of its own stack;
* ``slice_weight`` adds the paper's per-slice loss ``BCE(z_m, y)`` on every slice, scaled;
* ``pool="contrast"`` pools a stack to how far its highest slices rise above the stack's own
  median (:func:`pool`): a score every slice of a volume shares cannot raise it. It is an
  option, not the default: on the small-lesion benchmark it made three of four failed
  training seeds localise at 400 iterations, but on the demo's class the run learned the
  lesions upside down, for a reason not yet found (docs/benchmarks.md, section 11).

The step's loss is the mean over its volumes of their terms (:func:`mil_loss`). The
per-slice objective stays one option away (``objective="slice"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: The step objectives: multiple-instance over a stack, or the paper's per-slice loss.
OBJECTIVES = ("mil", "slice")
#: Where a ``mil`` stack's slices lie: over the volume's foreground, or its whole extent.
STACK_RANGES = ("box", "support")
#: How a stack's slice logits pool to a volume logit.
POOLS = ("lse", "max", "top-k", "contrast")
#: ``contrast`` pooling: how far above its stack's median a volume's smooth maximum must rise
#: for the volume logit to reach 0.
CONTRAST_MARGIN = 1.0


def pool(z: Tensor, how: str, *, temperature: float = 1.0, k: int = 1) -> Tensor:
    """Pool slice logits ``z`` (B, M) to volume logits (B,).

    * ``lse``: ``t log(mean_m exp(z_m / t))``, a smooth maximum that equals ``z`` when the
      slices agree and tends to the maximum as ``t`` falls (never above it, never below the
      mean);
    * ``max``: the largest logit;
    * ``top-k``: the mean of the ``k`` largest;
    * ``contrast``: ``lse`` minus the stack's median, minus :data:`CONTRAST_MARGIN`: how far
      the highest slices rise above the rest of their own stack. A score that every slice of
      a volume shares (its scanner, noise, pose: what ToNNO's second derivative removes)
      does not move it, and slices that score *below* the median lower it.

    >>> z = torch.tensor([[0.0, 0.0, 3.0, 1.0]])
    >>> pool(z, "max").item(), pool(z, "top-k", k=2).item()
    (3.0, 2.0)
    >>> round(pool(z, "lse").item(), 4) == round(math.log((1 + 1 + math.e**3 + math.e) / 4), 4)
    True
    """
    if how == "lse":
        return temperature * (torch.logsumexp(z / temperature, dim=1) - math.log(z.shape[1]))
    if how == "contrast":
        lse = temperature * (torch.logsumexp(z / temperature, dim=1) - math.log(z.shape[1]))
        return lse - z.median(dim=1).values - CONTRAST_MARGIN
    if how == "max":
        return z.max(dim=1).values
    if how == "top-k":
        return z.topk(min(k, z.shape[1]), dim=1).values.mean(dim=1)
    raise ValueError(f"unknown pool {how!r}; valid: {', '.join(POOLS)}")


def mil_loss(
    z: Tensor,
    y: Tensor,
    how: str = "lse",
    *,
    temperature: float = 1.0,
    k: int = 1,
    slice_weight: float = 0.0,
    negative_share: float = 0.0,
) -> Tensor:
    """The multiple-instance loss of a step (the module's doc): ``z`` (B, M) slice logits, ``y`` (B,) labels in {0, 1}.

    Per volume ``b``: ``BCE(pool(z_b), y_b)``, plus ``mean_m BCE(z_bm, 0)`` over every slice
    when ``y_b = 0`` and over its ``floor(negative_share M)`` lowest slices when ``y_b = 1``
    (none when that is 0), plus ``slice_weight * mean_m BCE(z_bm, y_b)``; the loss is the
    mean over volumes.
    """
    y = y.to(z.dtype)
    volume = F.binary_cross_entropy_with_logits(pool(z, how, temperature=temperature, k=k), y, reduction="none")
    low = F.binary_cross_entropy_with_logits(z, torch.zeros_like(z), reduction="none")
    per_slice = low.mean(dim=1)
    loss = volume + (1 - y) * per_slice
    n_low = int(negative_share * z.shape[1])
    if n_low:
        lowest = low.gather(1, z.detach().argsort(dim=1)[:, :n_low]).mean(dim=1)
        loss = loss + y * lowest
    if slice_weight:
        loss = loss + slice_weight * F.binary_cross_entropy_with_logits(
            z, y[:, None].expand_as(z), reduction="none"
        ).mean(dim=1)
    return loss.mean()


def chance_loss(objective: str, slice_weight: float = 0.0, negative_share: float = 0.0, how: str = "lse") -> float:
    """The loss of the best constant logit on balanced steps (as many positives as negatives).

    ``ln 2`` for ``slice``; for ``mil`` the minimum over ``c`` of :func:`mil_loss` with every
    logit ``c``: ``softplus(-c) / 2 + softplus(c) + softplus(c) / 2 + slice_weight (softplus(-c) +
    softplus(c)) / 2`` (a positive's pooled term; a negative's pooled and per-slice terms; a
    positive's lowest slices, when ``negative_share`` takes any; the per-slice loss). With
    ``contrast`` pooling a constant stack pools to ``-CONTRAST_MARGIN`` whatever ``c``, so the
    pooled terms are ``(softplus(m) + softplus(-m)) / 2`` and only the per-slice ones follow ``c``.

    >>> round(chance_loss("slice"), 4), round(chance_loss("mil"), 4)  # mil: c = -ln 2
    (0.6931, 0.9548)
    """
    if objective == "slice":
        return math.log(2)

    def f(c: float) -> float:
        sp = lambda t: math.log1p(math.exp(-abs(t))) + max(t, 0.0)  # noqa: E731  softplus
        low = 0.5 * sp(c) if negative_share > 0 else 0.0  # a positive's lowest slices
        pooled = 0.5 * (sp(CONTRAST_MARGIN) + sp(-CONTRAST_MARGIN)) if how == "contrast" else 0.5 * (sp(-c) + sp(c))
        return pooled + 0.5 * sp(c) + low + slice_weight * 0.5 * (sp(-c) + sp(c))

    lo, hi = -30.0, 30.0
    for _ in range(200):  # f is convex: ternary search
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        lo, hi = (lo, b) if f(a) < f(b) else (a, hi)
    return f((lo + hi) / 2)
