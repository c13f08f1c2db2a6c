"""Training arguments: :class:`TrainConfig`, its validation and the resolution of its defaults.

The settings a teacher run provides (:data:`tomofield.checkpoint.TRAINING_INHERITED`), the
loss, the learning rate and the warm-up default to ``None``, "not given";
:meth:`TrainConfig.resolved` fills them from the teacher's run directory when there is one,
else from the library's own defaults. Explicit values always win.

The defaults depend on where the encoder starts (``pretrained``):

============  ========================================  ====================================
setting       from scratch (the default)                pretrained
============  ========================================  ====================================
norm          ``batch-norm``                            ``frozen-bn``: ImageNet statistics
lr            ``3e-4``                                  ``3e-4``
============  ========================================  ====================================

(frozen batch norm on a random network is no normalisation at all; group norm from scratch
stayed at chance on small lesions where batch norm learned; the paper's 5e-5 with 224-pixel
slices, ``--recipe mosmed``, is a GPU recipe: docs/benchmarks.md §6, §9 and §11 have the
measurements). A classifier trains with the multiple-instance objective (``objective="mil"``,
:mod:`tomofield.train.objective`: one stack of parallel slices per volume, pooled) and no
augmentation beyond the random orientation, offsets and in-plane bases of its slices
(:data:`AUGMENTATION`); ``objective="slice"`` is the paper's per-slice loss. The slice size
is the volumes' largest side, rounded up to a multiple of 16, in 32..224
(:func:`slice_size_for`): more pixels than voxels only cost time. Runs ramp the learning
rate up linearly over the first ``warmup`` steps (default 5 % of the run) before the cosine
decay, and normalise every volume's intensities (``intensity="volume"``,
:mod:`tomofield.intensity`); the run records the choice and every engine built on it
applies the same.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tomofield.checkpoint import RunDir, is_run_dir
from tomofield.encoders import DEFAULT_ENCODER, NORMS
from tomofield.errors import InputError
from tomofield.geometry import EXTENTS, GEOMETRIES
from tomofield.intensity import MODES as INTENSITY_MODES
from tomofield.protocols import SEED_MAX
from tomofield.train.objective import OBJECTIVES, POOLS, STACK_RANGES

#: The losses each task accepts; the first is the task's default.
TASKS = {"classification": ("bce",), "regression": ("mse", "huber")}
#: The library's defaults of the settings a teacher run would otherwise provide; ``None``:
#: depends on ``pretrained`` (:data:`SCRATCH` and :data:`PRETRAINED`).
DEFAULTS: dict[str, Any] = {
    "encoder": DEFAULT_ENCODER,
    "norm": None,
    "slice_size": None,
    "geometry": "physical",
    "extent": "unit",
    "intensity": "volume",
}
#: Defaults of an encoder trained from scratch.
SCRATCH: dict[str, Any] = {"norm": "batch-norm", "lr": 3e-4}
#: Defaults of a pretrained encoder (frozen batch norm as in the paper; lr measured in docs/benchmarks.md §6).
PRETRAINED: dict[str, Any] = {"norm": "frozen-bn", "lr": 3e-4}
#: The default augmentation strength of each task (``scale_jitter``, ``translation`` and
#: ``intensity_jitter`` alike): a classifier of small lesions learns only without it
#: (docs/benchmarks.md §11); the density student keeps the strength it was measured with.
AUGMENTATION = {"classification": 0.0, "regression": 0.3}
#: The settings :data:`AUGMENTATION` fills.
AUGMENTATIONS = ("scale_jitter", "translation", "intensity_jitter")
#: Validations in a run when ``val_every`` is not given (each scores every validation volume
#: and up to 16 training volumes on 8 stacks).
VALIDATIONS = 8
#: The default warm-up, as a share of the iterations.
WARMUP_SHARE = 0.05
#: The range of a slice size chosen from the data.
AUTO_SLICE_SIZES = (32, 224)
#: A teacher run from before ``intensity`` was recorded trained on the stored values.
LEGACY_INTENSITY = "none"
#: The default loss of each task.
DEFAULT_LOSS = {task: losses[0] for task, losses in TASKS.items()}
#: Settings that take one of a fixed set of values.
CHOICES = {
    "geometry": GEOMETRIES,
    "extent": EXTENTS,
    "norm": NORMS,
    "intensity": INTENSITY_MODES,
    "objective": OBJECTIVES,
    "pool": POOLS,
    "stack_range": STACK_RANGES,
}
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
    "warmup": 0,
    "pool_k": 1,
}
#: Ranges ``[lo, hi)`` of the real-valued settings (``hi`` None: no upper bound).
RANGES = {
    "scale_jitter": (0.0, 1.0),
    "translation": (0.0, 1.0),
    "intensity_jitter": (0.0, 1.0),
    "slice_weight": (0.0, None),
    "negative_share": (0.0, 1.0),
}


def slice_size_for(shapes: list[tuple[int, ...]]) -> int:
    """A from-scratch slice size for volumes of these spatial shapes: the largest side, rounded up to 16.

    >>> slice_size_for([(66, 78, 63), (48, 48, 48)]), slice_size_for([(20, 20, 20)]), slice_size_for([(512, 512, 300)])
    (80, 32, 224)
    """
    lo, hi = AUTO_SLICE_SIZES
    side = max(max(s) for s in shapes)
    return int(min(max(-(-side // 16) * 16, lo), hi))


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
    """Training arguments (the module's doc has the defaults that depend on ``pretrained``).

    ``encoder``, ``norm``, ``slice_size``, ``geometry``, ``extent``, ``intensity``, ``lr``,
    ``warmup`` and ``loss`` are ``None`` until :meth:`resolved` fills them (the
    :class:`~tomofield.train.Trainer` does).
    """

    encoder: str | None = None
    norm: str | None = None
    pretrained: bool = False
    iterations: int = 1200
    slices_per_volume: int = 32
    slice_size: int | None = None
    batch_volumes: int = 2
    lr: float | None = None
    lr_end: float = 1e-7
    #: steps of linear learning-rate warm-up before the cosine decay (None: 5 % of ``iterations``)
    warmup: int | None = None
    #: intensity normalisation of every volume (:mod:`tomofield.intensity`)
    intensity: str | None = None
    seed: int = 0
    geometry: str | None = None
    extent: str | None = None
    task: str = "classification"
    loss: str | None = None
    #: classification: ``mil`` (a stack per volume, pooled; :mod:`tomofield.train.objective`) or ``slice`` (the paper's)
    objective: str = "mil"
    #: ``mil``: how a stack's slice logits pool to the volume's (``lse``, ``max``, ``top-k``)
    pool: str = "lse"
    #: ``mil``: temperature of ``lse`` pooling
    pool_temperature: float = 1.0
    #: ``mil``: the ``k`` of ``top-k`` pooling
    pool_k: int = 4
    #: ``mil``: weight of the paper's per-slice loss added to the multiple-instance one
    slice_weight: float = 0.0
    #: ``mil``: the share of a positive's stack, its lowest-scoring slices, taken as negatives
    negative_share: float = 0.0
    #: ``mil``: a stack's offsets span the volume's foreground (``support``) or its whole extent (``box``)
    stack_range: str = "box"
    #: in-plane zoom, a share of the slice's side (None: the task's :data:`AUGMENTATION`)
    scale_jitter: float | None = None
    #: in-plane shift, a share of the slice's side (None: the task's :data:`AUGMENTATION`)
    translation: float | None = None
    #: each slice's gain and offset, up to this much (None: the task's :data:`AUGMENTATION`)
    intensity_jitter: float | None = None
    #: validate every this many steps (None: :data:`VALIDATIONS` times a run)
    val_every: int | None = None
    val_directions: int = 8
    #: slices per validation stack (None: from each volume's grid, :func:`~tomofield.train.validation.val_slices_for`)
    val_slices: int | None = None
    checkpoint_every: int = 100
    #: regression only: run directory of a classification encoder that places each target (package doc).
    teacher: str | None = None
    #: the teacher's baseline: this quantile of its slice scores on the volumes whose target is 0.
    teacher_quantile: float = 0.95

    def resolved(self, shapes: list[tuple[int, ...]] | None = None) -> TrainConfig:
        """A copy with every ``None`` setting filled: from the teacher's run, else the library's default.

        Args:
            shapes: the training volumes' spatial shapes, for the slice size
                (:func:`slice_size_for`; 224 without them).

        Raises:
            InputError: ``teacher`` is not a run directory of ``tomofield train``.
        """
        inherited = {}
        if self.teacher is not None:
            inherited = {"intensity": LEGACY_INTENSITY, **teacher_run(self.teacher).training_defaults()}
        start = (PRETRAINED if self.pretrained else SCRATCH) | {"slice_size": slice_size_for(shapes) if shapes else 224}
        filled = {
            k: getattr(self, k) if getattr(self, k) is not None else inherited.get(k, start.get(k) if v is None else v)
            for k, v in DEFAULTS.items()
        }
        loss = self.loss if self.loss is not None else DEFAULT_LOSS.get(self.task)
        lr = self.lr if self.lr is not None else start["lr"]
        warmup = self.warmup if self.warmup is not None else round(WARMUP_SHARE * self.iterations)
        strength = AUGMENTATION.get(self.task, 0.0)
        augment = {k: getattr(self, k) if getattr(self, k) is not None else strength for k in AUGMENTATIONS}
        val_every = self.val_every if self.val_every is not None else max(1, self.iterations // VALIDATIONS)
        return replace(self, **filled, loss=loss, lr=lr, warmup=warmup, val_every=val_every, **augment)

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
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            if value is None and name in AUGMENTATIONS:
                continue
            if not (isinstance(value, (int, float)) and lo <= value and (hi is None or value < hi)):
                where = f"in [{lo:g}, {hi:g})" if hi is not None else f">= {lo:g}"
                raise InputError(f"{name.replace('_', '-')} must be a number {where}, got {value!r}")
        if not (isinstance(self.pool_temperature, (int, float)) and self.pool_temperature > 0):
            raise InputError(f"pool-temperature must be a number > 0, got {self.pool_temperature!r}")
        if self.task == "classification" and self.batch_volumes % 2:
            raise InputError(
                f"batch-volumes must be even (pairs of one positive and one negative), got {self.batch_volumes}"
            )
        if self.teacher is not None and self.task != "regression":
            raise InputError(f"--teacher is for --task regression, got task {self.task!r}")
        if not 0 < self.teacher_quantile < 1:
            raise InputError(f"teacher-quantile must be in (0, 1), got {self.teacher_quantile}")
        if (self.lr is not None and not self.lr > 0) or not self.lr_end >= 0:
            raise InputError(f"learning rates must be positive, got lr={self.lr}, lr_end={self.lr_end}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise InputError(f"seed must be an integer in 0..{SEED_MAX}, got {self.seed!r}")


def config_from_options(**options: Any) -> TrainConfig:
    """A TrainConfig from keyword options, ignoring the ones it does not know and those that are ``None``."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in options.items() if k in names and v is not None})
