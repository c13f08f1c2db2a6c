"""Does a run learn? :class:`Monitor` watches the loss, the outputs and what separates the classes.

A weakly supervised encoder that predicts nothing finishes with a small loss log and exit
status 0 like one that works, so the trainer asks at every checkpoint, and at the end. A
classifier is judged by what it is for, separating positive from negative volumes, not by
its mean loss: under volume-level labels most slices of a positive look like a negative's,
so an encoder that has learned can keep its loss within a hair of a constant guess's
(docs/benchmarks.md §11). The problems:

* ``diverged``: the loss is not finite (the run stops: its weights are lost);
* ``worse-than-chance``: past the first quarter, the mean loss since the last checkpoint is
  above :data:`WORSE_FACTOR` times the loss of the best constant prediction (the mark of a
  learning rate far too high);
* ``constant-output``: the outputs of a step's slices (positives and negatives together)
  spread less than :data:`CONSTANT_STD` on average since the last checkpoint;
* ``val-at-chance``: past three quarters of the run, the validation AUC at most :data:`VAL_CHANCE_AUC`
  (the balanced accuracy at most :data:`VAL_CHANCE` where no AUC is known; a good AUC with
  a poor accuracy is a threshold that did not transfer), or Pearson r at most
  :data:`VAL_CHANCE_R` (regression);
* ``not-localising``: past three quarters of the run, on the validation positives that have a
  mask, the slices that cut a lesion do not outscore the slices near them (their
  localisation, :func:`~tomofield.train.validation.localisation`, at most
  :data:`LOCALISATION_CHANCE`).
  ToNNO's heatmap is made of how slice scores vary within a volume, so an encoder can
  separate the volumes by something every slice of a positive shows (the scanner, the
  noise, a chance correlation in a small training set) and still give a heatmap that misses
  every lesion or marks them as absences; a volume-level AUC cannot see this
  (docs/benchmarks.md §11). Without validation masks this is not checked, and the verdict
  says so (``localisation: unchecked``);
* ``train-at-chance``: classification without a validation set, past three quarters of the run: the
  training volumes' scores do not separate. Every step scores each volume it draws (its
  stack's slice logits pooled, before the step learns from them) and the AUC of the last
  :data:`SEPARATION_WINDOW` draws is at most :data:`TRAIN_CHANCE_AUC`.

Separation is not judged before three quarters of the run (:data:`VAL_GRACE`): a run that
learns from scratch may sit at chance for a while first, and a warning that later clears is
a false alarm. Divergence and constant outputs are judged from the start, a runaway loss
past the first quarter. Each problem is reported once per kind, with what to
try; the run's ``config.json`` records them under ``diagnostics``, with ``learned`` false
when a problem still holds at the end.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import torch

#: A mean loss above this many times the chance loss is worse than guessing.
WORSE_FACTOR = 1.5
#: Mean standard deviation of a step's outputs below which they count as constant.
CONSTANT_STD = 1e-3
#: Validation balanced accuracy at or below which a classifier counts as at chance.
VAL_CHANCE = 0.55
#: Validation AUC at or below which a classifier counts as at chance (the spread of a random
#: scorer's AUC on 8 + 8 volumes is about 0.15).
VAL_CHANCE_AUC = 0.65
#: Localisation (:func:`~tomofield.train.validation.localisation`: lesion slices against their
#: neighbours, validation positives with a mask) at or below which an encoder does not
#: localise: on the small-lesion benchmark runs whose heatmaps found the lesions scored
#: 0.63-0.69, the plain loop's 0.56-0.64, runs whose heatmaps missed every lesion 0.34-0.40
#: (docs/benchmarks.md §11).
LOCALISATION_CHANCE = 0.55
#: Training separation (AUC of the last draws) at or below which a classifier counts as at
#: chance: a random scorer's AUC on 100 + 100 draws has a standard deviation of 0.04.
TRAIN_CHANCE_AUC = 0.6
#: Volume draws the training separation is measured on.
SEPARATION_WINDOW = 200
#: Validation Pearson r at or below which a regressor counts as at chance.
VAL_CHANCE_R = 0.1
#: Share of the run before the loss is judged against a constant guess.
GRACE = 0.25
#: Share of the run before separation is judged: on small lesions, default runs that end at a
#: validation AUC of 0.88-0.94 were still at chance half-way (docs/benchmarks.md §11).
VAL_GRACE = 0.75


def auc(scores: list[float], labels: list[float]) -> float:
    """Probability that a positive outscores a negative (ties count 1/2); NaN without both classes.

    >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s, y = torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


_ADVICE = {
    "diverged": "lower --lr (now {lr:g}) or lengthen --warmup",
    "train-at-chance": "the encoder does not separate the training volumes: train longer (--iterations), check "
    "that positives and negatives differ in the images, give a validation set (--val) to judge by",
    "worse-than-chance": "the learning rate is likely far too high: try --lr {lower:g} (now {lr:g})",
    "constant-output": "the encoder outputs the same score for every slice: lower --lr (now {lr:g}), use "
    "--norm group-norm from scratch, keep --intensity volume",
    "not-localising": "a heatmap of this encoder will not mark the lesions: train again with --negative-share 0.5 "
    "or another --seed, add training volumes, or check that the masks belong to their images",
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
    """Judges a run from its losses, outputs, volume scores and validation metrics (see the module's doc).

    Args:
        task: ``classification`` or ``regression``.
        iterations: the run's length.
        lr: its peak learning rate, for the advice.
        chance_loss: the loss of the best constant prediction, or ``None`` where there is
            none to compare with (regression).
        validated: the run has a validation set (it then judges separation, not the
            training volumes' scores).
    """

    def __init__(
        self, task: str, iterations: int, lr: float, chance_loss: float | None, validated: bool = False
    ) -> None:
        self.task, self.iterations, self.lr, self.chance = task, iterations, lr, chance_loss
        self.validated = validated
        self.problems: list[Problem] = []
        self.active: set[str] = set()  # problems that still hold
        self._losses: list[float] = []
        self._spreads: list[float] = []
        self._draws: deque[tuple[float, float]] = deque(maxlen=SEPARATION_WINDOW)
        #: a validation judged where the lesions are (validation positives with masks)
        self.localisation_checked = False

    @classmethod
    def for_loss(
        cls, task: str, loss: str, iterations: int, lr: float, chance: float | None = None, validated: bool = False
    ) -> Monitor:
        """The monitor of a run; ``chance`` is the objective's constant-guess loss (``ln 2`` for per-slice BCE)."""
        if chance is None and loss == "bce":
            chance = math.log(2)
        return cls(task, iterations, lr, chance if loss == "bce" else None, validated)

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

    def step(
        self, loss: float, spread: float, scores: list[float] | None = None, labels: list[float] | None = None
    ) -> None:
        """Record one step's loss, the standard deviation of its outputs, and each drawn volume's score and label."""
        self._losses.append(loss)
        self._spreads.append(spread)
        if scores is not None and labels is not None:
            self._draws.extend(zip(scores, labels, strict=True))

    def separation(self) -> float:
        """The AUC of the scores of the last :data:`SEPARATION_WINDOW` volume draws (NaN without both classes)."""
        if not self._draws:
            return float("nan")
        scores, labels = zip(*self._draws, strict=True)
        return auc(list(scores), list(labels))

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
        if self.task == "classification" and not self.validated and iteration >= VAL_GRACE * self.iterations:
            sep = self.separation()
            if math.isfinite(sep) and sep <= TRAIN_CHANCE_AUC:
                new.append(
                    self._raise(
                        iteration,
                        "train-at-chance",
                        f"the scores of the last {len(self._draws)} training volumes drawn separate the classes "
                        f"with an AUC of only {sep:.3f}",
                    )
                )
            elif math.isfinite(sep):
                self.active.discard("train-at-chance")
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
        new: list[Problem | None] = []
        if not (value > limit):  # NaN counts as at chance
            new.append(self._raise(iteration, "val-at-chance", said))
        else:
            self.active.discard("val-at-chance")
        loc = metrics.get("val_localisation", float("nan"))
        if math.isfinite(loc):
            self.localisation_checked = True
            if loc <= LOCALISATION_CHANCE:
                n = int(metrics.get("val_localised_volumes", 0))
                how = "lower" if loc < 0.5 else "no higher"
                said = (
                    f"on the {n} validation positive(s) with a mask, the slices that cut a lesion score {how} than "
                    f"the slices near them (localisation {loc:.3f}; 0.5 is chance)"
                )
                new.append(self._raise(iteration, "not-localising", said))
            else:
                self.active.discard("not-localising")
        return [p for p in new if p is not None]

    @property
    def learned(self) -> bool:
        """No problem holds now."""
        return not self.active

    def record(self) -> dict[str, Any]:
        """The ``diagnostics`` of the run's ``config.json``."""
        out = {
            "learned": self.learned,
            "unresolved": sorted(self.active),
            "problems": [asdict(p) for p in self.problems],
        }
        if self.task == "classification":
            out["localisation"] = "checked" if self.localisation_checked else "unchecked"
        return out

    def restore(self, record: dict[str, Any]) -> None:
        """Continue from a checkpoint's ``diagnostics`` (:meth:`record`)."""
        self.problems = [Problem(**p) for p in record.get("problems", [])]
        self.localisation_checked = record.get("localisation") == "checked"
        # kinds this monitor no longer judges (a run from before, e.g. loss-at-chance) cannot clear: dropped
        self.active = set(record.get("unresolved", [])) & set(_ADVICE)
