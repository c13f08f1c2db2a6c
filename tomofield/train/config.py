"""Training arguments: :class:`TrainConfig`, its validation and the resolution of its defaults.

The settings a teacher run provides (:data:`tomofield.checkpoint.TRAINING_INHERITED`) and
the loss default to ``None``, "not given"; :meth:`TrainConfig.resolved` fills them from the
teacher's run directory when there is one, else from :data:`DEFAULTS` and
:data:`DEFAULT_LOSS`, the library's own defaults. Explicit values always win.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tomofield.checkpoint import RunDir, is_run_dir
from tomofield.encoders import NORMS
from tomofield.errors import InputError
from tomofield.geometry import EXTENTS, GEOMETRIES
from tomofield.protocols import SEED_MAX

#: The losses each task accepts; the first is the task's default.
TASKS = {"classification": ("bce",), "regression": ("mse", "huber")}
#: The library's defaults of the settings a teacher run would otherwise provide (the paper's).
DEFAULTS: dict[str, Any] = {
    "encoder": "resnet10t",
    "norm": "frozen-bn",
    "slice_size": 224,
    "geometry": "physical",
    "extent": "unit",
}
#: The default loss of each task.
DEFAULT_LOSS = {task: losses[0] for task, losses in TASKS.items()}
#: Settings that take one of a fixed set of values.
CHOICES = {"geometry": GEOMETRIES, "extent": EXTENTS, "norm": NORMS}
#: Lower bounds of the integer settings.
MINIMA = {
    "iterations": 1,
    "slices_per_volume": 1,
    "slice_size": 8,
    "batch_volumes": 1,
    "val_every": 1,
    "checkpoint_every": 1,
    "val_directions": 1,
    "val_slices": 2,
}


def teacher_run(path: str | Path) -> RunDir:
    """The teacher's run directory (its ``config.json`` checked against :data:`~tomofield.checkpoint.CONFIG_SCHEMA`).

    Raises:
        InputError: ``path`` is not a run directory, or its ``config.json`` does not fit the schema.
    """
    if not is_run_dir(path):
        raise InputError(f"--teacher {str(path)!r} is not a run directory of tomofield train")
    return RunDir(path)


@dataclass
class TrainConfig:
    """Training arguments; defaults are the paper's except where noted.

    ``encoder``, ``norm``, ``slice_size``, ``geometry``, ``extent`` and ``loss`` are
    ``None`` until :meth:`resolved` fills them (the :class:`~tomofield.train.Trainer` does).
    """

    encoder: str | None = None
    norm: str | None = None
    pretrained: bool = False
    iterations: int = 1000
    slices_per_volume: int = 120
    slice_size: int | None = None
    batch_volumes: int = 2
    lr: float = 5e-5
    lr_end: float = 1e-7
    seed: int = 0
    geometry: str | None = None
    extent: str | None = None
    task: str = "classification"
    loss: str | None = None
    scale_jitter: float = 0.3
    translation: float = 0.3
    intensity_jitter: float = 0.3
    val_every: int = 100
    val_directions: int = 8
    val_slices: int = 16
    checkpoint_every: int = 100
    #: regression only: run directory of a classification encoder that places each target (package doc).
    teacher: str | None = None
    #: the teacher's baseline: this quantile of its slice scores on the volumes whose target is 0.
    teacher_quantile: float = 0.95

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` setting filled: from the teacher's run, else the library's default.

        Raises:
            InputError: ``teacher`` is not a run directory of ``tomofield train``.
        """
        inherited = teacher_run(self.teacher).training_defaults() if self.teacher is not None else {}
        filled = {
            k: getattr(self, k) if getattr(self, k) is not None else inherited.get(k, v) for k, v in DEFAULTS.items()
        }
        loss = self.loss if self.loss is not None else DEFAULT_LOSS.get(self.task)
        return replace(self, **filled, loss=loss)

    def validate(self) -> None:
        """Raise :class:`InputError` on an invalid argument; settings still ``None`` are not checked."""
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        if self.loss is not None and self.loss not in TASKS[self.task]:
            raise InputError(
                f"loss {self.loss!r} does not fit task {self.task!r}; valid: {', '.join(TASKS[self.task])}"
            )
        for name, valid in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in valid:
                raise InputError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        for name, lo in MINIMA.items():
            value = getattr(self, name)
            if value is not None and value < lo:
                raise InputError(f"{name.replace('_', '-')} must be >= {lo}, got {value}")
        if self.task == "classification" and self.batch_volumes % 2:
            raise InputError(
                f"batch-volumes must be even (pairs of one positive and one negative), got {self.batch_volumes}"
            )
        if self.teacher is not None and self.task != "regression":
            raise InputError(f"--teacher is for --task regression, got task {self.task!r}")
        if not 0 < self.teacher_quantile < 1:
            raise InputError(f"teacher-quantile must be in (0, 1), got {self.teacher_quantile}")
        if not self.lr > 0 or not self.lr_end >= 0:
            raise InputError(f"learning rates must be positive, got lr={self.lr}, lr_end={self.lr_end}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise InputError(f"seed must be an integer in 0..{SEED_MAX}, got {self.seed!r}")


def config_from_options(**options: Any) -> TrainConfig:
    """A TrainConfig from keyword options, ignoring the ones it does not know and those that are ``None``."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in options.items() if k in names and v is not None})
