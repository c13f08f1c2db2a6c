"""The teacher of density regression: a classification run that says where in a stack each target lies."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tomofield.checkpoint import TEACHER_REQUIRED
from tomofield.errors import InputError
from tomofield.train.config import teacher_run
from tomofield.train.slicing import Loaded, stack_slices

if TYPE_CHECKING:
    from tomofield.train.config import ResolvedTrainConfig


def spread_targets(excess: Tensor, weight: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Spread each stack's target over its slices in proportion to ``excess``.

    Args:
        excess: (B, M) non-negative evidence per slice (the teacher's score above its baseline).
        weight: (B, M) quadrature weight per slice (area x spacing, mL).
        target: (B,) volume-level targets.

    Returns:
        ``(density, usable)``: (B, M) densities with ``sum_k weight_k density_k = target``
        for every usable stack (0 everywhere when the target is 0), and (B,) whether the
        stack is usable: a positive target with no evidence anywhere in the stack is not.
    """
    total = (excess * weight).sum(1, keepdim=True)
    t = target.to(excess)[:, None]
    usable = (t[:, 0] == 0) | (total[:, 0] > 0)
    density = torch.where(
        t != 0, t * excess / total.clamp_min(torch.finfo(excess.dtype).tiny), torch.zeros_like(excess)
    )
    return density * usable[:, None], usable


class Teacher:
    """A classification run's encoder that says where in a stack each target lies.

    Attributes:
        run: the run's ``config.json``.
        model: the frozen encoder on the device.
        baseline: its score on target-0 volumes (set by :meth:`calibrate`).
    """

    def __init__(self, run_dir: str | Path, in_chans: int, device: torch.device) -> None:
        run = teacher_run(run_dir)  # config.json checked against its schema
        run.require(TEACHER_REQUIRED, "a teacher")
        self.run = run.config
        if self.run["task"] != "classification":
            raise InputError(
                f"--teacher {str(run_dir)!r} is a {self.run['task']!r} run; it must be a classification run"
            )
        if self.run["in_chans"] != in_chans:
            raise InputError(
                f"--teacher {str(run_dir)!r} takes {self.run['in_chans']} channel(s), the volumes have {in_chans}"
            )
        self.model = run.build_encoder(in_chans, num_classes=1)  # model.safetensors, from inside the run
        self.model.to(device).eval().requires_grad_(False)
        self.baseline = 0.0

    def above_baseline(self, scores: Tensor) -> Tensor:
        """Scores above the baseline, 0 below it."""
        return (scores - self.baseline).clamp_min(0)

    @torch.no_grad()
    def excess(self, x: Tensor) -> Tensor:
        """The teacher's evidence per slice: its score above the baseline, (N,)."""
        return self.above_baseline(self.model(x)[:, 0])

    @torch.no_grad()
    def calibrate(self, train: list[Loaded], cfg: ResolvedTrainConfig, draws: int = 2) -> float:
        """Set the baseline from the negatives; return a density scale (median peak density of the positives).

        Scores ``draws`` stacks of every training volume; only the scores and weights are
        kept (M numbers per stack), so memory does not grow with the slices.
        """
        gen = torch.Generator().manual_seed(cfg.seed + 17)
        scored = []
        for v in train:
            for _ in range(draws):
                x, w = stack_slices(v, cfg, gen)
                scored.append((v.label, self.model(x)[:, 0].float(), w))
        neg = [g for label, g, _ in scored if label == 0]
        if not neg or len(neg) == len(scored):
            raise InputError("training with --teacher needs volumes whose target is 0 and volumes whose target is not")
        self.baseline = float(torch.quantile(torch.cat(neg).cpu(), cfg.teacher_quantile))
        peaks = []
        for label, g, w in scored:
            if label != 0:
                d, ok = spread_targets(self.above_baseline(g)[None], w[None], torch.tensor([label]))
                if ok[0]:
                    peaks.append(float(d.abs().max()))
        if not peaks:
            raise InputError(
                f"the teacher's scores never exceed its baseline ({self.baseline:.3g}, the "
                f"{cfg.teacher_quantile} quantile on target-0 volumes) in a volume with a target: "
                "it does not see what the target measures"
            )
        return float(torch.tensor(peaks).median())
