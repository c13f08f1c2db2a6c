"""Does a run learn? :class:`Monitor` watches the loss, the outputs and the validation metrics.

A weakly supervised encoder that predicts nothing finishes with a small loss log and exit
status 0 like one that works, so the trainer asks at every checkpoint, and at the end:

* ``diverged``: the loss is not finite (the run stops: its weights are lost);
* ``loss-at-chance``: past the warm-up (the first quarter of the run), the mean loss since
  the last checkpoint is within :data:`CHANCE_TOL` of the loss of a constant prediction
  (``ln 2`` for balanced binary cross-entropy: every step has as many positives as
  negatives);
* ``worse-than-chance``: past the first quarter, that mean loss is above
  :data:`WORSE_FACTOR` times the chance loss: the network does worse than a constant guess,
  the mark of a learning rate far too high;
* ``constant-output``: the outputs of a step's slices (positives and negatives together)
  spread less than :data:`CONSTANT_STD` on average since the last checkpoint;
* ``val-at-chance``: past half the run, the validation AUC at most
  :data:`VAL_CHANCE_AUC` (classification; the balanced accuracy at most :data:`VAL_CHANCE`
  where no AUC is known: a good AUC with a poor accuracy is a threshold that did not
  transfer, a fair accuracy with an AUC near 0.5 a lucky threshold), or Pearson r at most
  :data:`VAL_CHANCE_R` (regression).

Each problem is reported once per kind, with what to try; the run's ``config.json`` records
them under ``diagnostics``, with ``learned`` false when a problem still holds at the end
(a loss that leaves chance after an early plateau clears ``loss-at-chance``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: Relative distance to the chance loss that counts as "at chance". Tight on purpose: under
#: volume-level labels most slices of a positive look like a negative's, so a run that learns
#: can keep its loss within 1-5 % of ln 2 (0.66-0.69) while its validation AUC climbs; a run
#: that learned nothing sits at ln 2 to the third decimal.
CHANCE_TOL = 0.003
#: A mean loss above this many times the chance loss is worse than guessing.
WORSE_FACTOR = 1.5
#: Mean standard deviation of a step's outputs below which they count as constant.
CONSTANT_STD = 1e-3
#: Validation balanced accuracy at or below which a classifier counts as at chance.
VAL_CHANCE = 0.55
#: Validation AUC at or below which a classifier counts as at chance (the spread of a random
#: scorer's AUC on 8 + 8 volumes is about 0.15).
VAL_CHANCE_AUC = 0.65
#: Validation Pearson r at or below which a regressor counts as at chance.
VAL_CHANCE_R = 0.1
#: Share of the run before the loss is judged (an early plateau is normal).
GRACE = 0.25
#: Share of the run before validation is judged: from scratch, runs that end at a validation
#: AUC of 0.92-1.00 were still at chance a quarter of the way in (docs/benchmarks.md §9).
VAL_GRACE = 0.5

_ADVICE = {
    "diverged": "lower --lr (now {lr:g}) or lengthen --warmup",
    "loss-at-chance": "train longer (--iterations), try --lr {lower:g} or {higher:g} (now {lr:g}), check that "
    "positives and negatives differ in the images, and keep --intensity volume",
    "worse-than-chance": "the learning rate is likely far too high: try --lr {lower:g} (now {lr:g})",
    "constant-output": "the encoder outputs the same score for every slice: lower --lr (now {lr:g}), use "
    "--norm group-norm from scratch, keep --intensity volume",
    "val-at-chance": "the encoder does not separate validation volumes: train longer, add training volumes, "
    "or check the labels and the validation split",
}


@dataclass
class Problem:
    """One sign that a run is not learning."""

    iteration: int
    kind: str
    message: str


class Monitor:
    """Judges a run from its losses, outputs and validation metrics (see the module's doc).

    Args:
        task: ``classification`` or ``regression``.
        iterations: the run's length.
        lr: its peak learning rate, for the advice.
        chance_loss: the loss of a constant prediction, or ``None`` where there is none to
            compare with (regression).
    """

    def __init__(self, task: str, iterations: int, lr: float, chance_loss: float | None) -> None:
        self.task, self.iterations, self.lr, self.chance = task, iterations, lr, chance_loss
        self.problems: list[Problem] = []
        self.active: set[str] = set()  # problems that still hold
        self._losses: list[float] = []
        self._spreads: list[float] = []

    @classmethod
    def for_loss(cls, task: str, loss: str, iterations: int, lr: float) -> Monitor:
        """The monitor of a run: the chance loss is ``ln 2`` for balanced binary cross-entropy."""
        return cls(task, iterations, lr, math.log(2) if loss == "bce" else None)

    def _raise(self, iteration: int, kind: str, what: str) -> Problem | None:
        self.active.add(kind)
        if any(p.kind == kind for p in self.problems):
            return None
        advice = _ADVICE[kind].format(lr=self.lr, lower=self.lr / 10, higher=min(self.lr * 3, 1e-2))
        problem = Problem(iteration, kind, f"iteration {iteration}: {what}; {advice}")
        self.problems.append(problem)
        return problem

    def past_grace(self, iteration: int) -> bool:
        return iteration >= GRACE * self.iterations

    def step(self, loss: float, spread: float) -> None:
        """Record one step's loss and the standard deviation of its outputs."""
        self._losses.append(loss)
        self._spreads.append(spread)

    def diverged(self, iteration: int, loss: float) -> Problem | None:
        """The ``diverged`` problem when ``loss`` is not finite."""
        if math.isfinite(loss):
            return None
        return self._raise(iteration, "diverged", f"the training loss is {loss}")

    def checkpoint(self, iteration: int) -> list[Problem]:
        """Judge the steps since the last checkpoint; the new problems."""
        losses, spreads = self._losses, self._spreads
        self._losses, self._spreads = [], []
        if not losses:
            return []
        new = []
        mean_loss, mean_spread = sum(losses) / len(losses), sum(spreads) / len(spreads)
        if mean_spread < CONSTANT_STD:
            new.append(
                self._raise(iteration, "constant-output", f"the outputs spread only {mean_spread:.2g} across slices")
            )
        else:
            self.active.discard("constant-output")
        if self.chance is not None and self.past_grace(iteration):
            if abs(mean_loss - self.chance) <= CHANCE_TOL * self.chance:
                new.append(
                    self._raise(
                        iteration,
                        "loss-at-chance",
                        f"the training loss {mean_loss:.4f} is still the loss of a constant guess ({self.chance:.4f})",
                    )
                )
            else:
                self.active.discard("loss-at-chance")
            if not mean_loss <= WORSE_FACTOR * self.chance:
                new.append(
                    self._raise(
                        iteration,
                        "worse-than-chance",
                        f"the training loss {mean_loss:.4g} is worse than a constant guess ({self.chance:.4f})",
                    )
                )
            else:
                self.active.discard("worse-than-chance")
        return [p for p in new if p is not None]

    def validation(self, iteration: int, metrics: dict[str, float]) -> list[Problem]:
        """Judge one validation; the new problems."""
        if iteration < VAL_GRACE * self.iterations:
            return []
        if "val_auc" in metrics and math.isfinite(metrics["val_auc"]):
            value, limit = metrics["val_auc"], VAL_CHANCE_AUC
            said = f"validation AUC is {value:.3f} (balanced accuracy {metrics.get('val_balanced_accuracy', 0):.3f})"
        elif "val_balanced_accuracy" in metrics:
            value, limit = metrics["val_balanced_accuracy"], VAL_CHANCE
            said = f"validation balanced accuracy is {value:.3f}"
        elif "val_pearson" in metrics:
            value, limit = metrics["val_pearson"], VAL_CHANCE_R
            said = f"validation Pearson r is {value:.3f}"
        else:
            return []
        if not (value > limit):  # NaN counts as at chance
            problem = self._raise(iteration, "val-at-chance", said)
            return [problem] if problem else []
        self.active.discard("val-at-chance")
        return []

    @property
    def learned(self) -> bool:
        """No problem holds now."""
        return not self.active

    def record(self) -> dict[str, Any]:
        """The ``diagnostics`` of the run's ``config.json``."""
        return {
            "learned": self.learned,
            "unresolved": sorted(self.active),
            "problems": [asdict(p) for p in self.problems],
        }

    def restore(self, record: dict[str, Any]) -> None:
        """Continue from a checkpoint's ``diagnostics`` (:meth:`record`)."""
        self.problems = [Problem(**p) for p in record.get("problems", [])]
        self.active = set(record.get("unresolved", []))
