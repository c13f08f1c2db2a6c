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
from typing import TYPE_CHECKING, Any, cast

from tomofield.checkpoint import SLICE_SIZES, RunDir, is_run_dir
from tomofield.encoders import DEFAULT_ENCODER, NORMS
from tomofield.errors import InputError
from tomofield.geometry import EXTENTS, GEOMETRIES
from tomofield.intensity import MODES as INTENSITY_MODES
from tomofield.protocols import SEED_MAX, check_settings, setting
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


def _lr(value: float) -> str:
    """A learning rate as people write it (``3e-4``)."""
    return f"{value:.0e}".replace("e-0", "e-")


#: What help texts say of the augmentation's default.
_AUGMENTATION_SHOWN = ", ".join(f"{v:g} for {task}" for task, v in AUGMENTATION.items())


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
    """Training arguments, each declared once (:func:`tomofield.protocols.setting`: default, help,
    bounds, choices; the module's doc has the defaults that depend on ``pretrained``).

    ``encoder``, ``norm``, ``slice_size``, ``geometry``, ``extent``, ``intensity``, ``lr``,
    ``warmup``, ``loss``, the augmentation and ``val_every`` are ``None`` until :meth:`resolved`
    fills them (the :class:`~tomofield.train.Trainer` does).
    """

    encoder: str | None = setting(
        None, "Registered or timm encoder name (a teacher's, with --teacher).", type=str, shown=DEFAULT_ENCODER
    )
    norm: str | None = setting(
        None,
        "Normalisation layers.",
        type=str,
        choices=NORMS,
        shown=f"{SCRATCH['norm']} from scratch, {PRETRAINED['norm']} with --pretrained",
    )
    pretrained: bool = setting(False, "timm weights from the local cache.")
    iterations: int = setting(1200, "Training steps.", min=1, max=10_000_000)
    slices_per_volume: int = setting(32, "Slices drawn per volume and step.", min=1, max=4096)
    slice_size: int | None = setting(
        None,
        "Slice side in pixels (a teacher's, with --teacher).",
        type=int,
        min=SLICE_SIZES[0],
        max=SLICE_SIZES[1],
        shown=f"the volumes' largest side rounded up to 16, in {AUTO_SLICE_SIZES[0]}..{AUTO_SLICE_SIZES[1]}",
    )
    batch_volumes: int = setting(2, "Volumes per step (pairs of one positive and one negative).", min=1, max=1024)
    lr: float | None = setting(
        None,
        "Peak learning rate (cosine schedule).",
        type=float,
        min=1e-12,
        max=1000.0,
        shown=_lr(SCRATCH["lr"])
        + ("" if SCRATCH["lr"] == PRETRAINED["lr"] else f" ({_lr(PRETRAINED['lr'])} pretrained)"),
    )
    lr_end: float = setting(1e-7, "Learning rate at the end of the cosine schedule.", min=0.0, max=1000.0, cli=False)
    warmup: int | None = setting(
        None,
        "Steps of linear learning-rate warm-up.",
        type=int,
        min=0,
        max=10_000_000,
        shown=f"{WARMUP_SHARE:.0%} of --iterations",
    )
    intensity: str | None = setting(
        None,
        "Intensity normalisation of every volume (recorded in the run; tomofield run applies the same): volume = "
        "per channel, background to 0 and the foreground's median to 1; zscore = per channel, mean 0 and standard "
        "deviation 1; none = the values as stored.",
        type=str,
        choices=INTENSITY_MODES,
        shown="volume",
    )
    seed: int = setting(0, "Seed of the initialisation and of the draws.", min=0, max=SEED_MAX)
    geometry: str | None = setting(
        None, "Slicing geometry (a teacher's, with --teacher).", type=str, choices=GEOMETRIES, shown="physical"
    )
    extent: str | None = setting(
        None, "Slice offsets (a teacher's, with --teacher).", type=str, choices=EXTENTS, shown="unit"
    )
    task: str = setting("classification", "What the volume-level targets are.", choices=tuple(TASKS))
    loss: str | None = setting(
        None,
        "Loss per task (the first is the default): "
        + "; ".join(f"{task}: {', '.join(losses)}" for task, losses in TASKS.items())
        + ".",
        type=str,
        choices=tuple(sorted({loss for losses in TASKS.values() for loss in losses})),
    )
    objective: str = setting(
        "mil",
        "Classification loss: mil = one stack of parallel slices per volume, pooled to the volume's logit (a "
        "positive needs one lesion slice, every slice of a negative is negative); slice = every slice takes its "
        "volume's label (the paper's).",
        choices=OBJECTIVES,
    )
    pool: str = setting("lse", "mil: how a stack's slice logits pool to the volume's.", choices=POOLS)
    pool_temperature: float = setting(1.0, "mil: temperature of lse and contrast pooling.", min=1e-3, max=1e3)
    pool_k: int = setting(4, "mil: the k of top-k pooling.", min=1, max=4096, cli=False)
    slice_weight: float = setting(0.0, "mil: weight of the per-slice loss added to it.", min=0.0, max=100.0)
    negative_share: float = setting(
        0.0,
        "mil: the share of a positive's stack, its lowest-scoring slices, taken as negatives.",
        min=0.0,
        max=0.99,
    )
    stack_range: str = setting(
        "box",
        "mil: a stack's offsets span the volume's whole extent or its foreground.",
        choices=STACK_RANGES,
        cli=False,
    )
    scale_jitter: float | None = setting(
        None,
        "Augmentation: in-plane zoom, a share of the slice's side.",
        type=float,
        min=0.0,
        max=0.9,
        shown=_AUGMENTATION_SHOWN,
    )
    translation: float | None = setting(
        None,
        "Augmentation: in-plane shift, a share of the slice's side.",
        type=float,
        min=0.0,
        max=1.0,
        shown=_AUGMENTATION_SHOWN,
    )
    intensity_jitter: float | None = setting(
        None,
        "Augmentation: each slice's gain and offset, up to this much.",
        type=float,
        min=0.0,
        max=0.9,
        shown=_AUGMENTATION_SHOWN,
    )
    noise: float = setting(
        0.0,
        "Augmentation: Gaussian noise added to each slice, its standard deviation drawn up to this (intensities "
        "normalised: tissue about 1).",
        min=0.0,
        max=10.0,
    )
    val_every: int | None = setting(
        None,
        "Validate every this many steps.",
        type=int,
        min=1,
        max=10_000_000,
        shown=f"1/{VALIDATIONS} of --iterations",
    )
    val_directions: int = setting(8, "Stacks per validation volume.", min=1, max=1024, cli=False)
    val_slices: int | None = setting(
        None, "Slices per validation stack (None: from each volume's grid).", type=int, min=2, max=4096, cli=False
    )
    checkpoint_every: int = setting(100, "Checkpoint every this many steps.", min=1, max=10_000_000)
    teacher: str | None = setting(
        None,
        "Regression: a classification run on the same data; trains a density encoder whose tomo heatmap integrates "
        "to the target (docs/features.md). Encoder, norm, slice size, geometry, extent and intensity default to the "
        "teacher's.",
        type=str,
    )
    teacher_quantile: float = setting(
        0.95, "The teacher's baseline: this quantile of its slice scores on target-0 volumes.", min=0.01, max=0.99
    )

    def resolved(self, shapes: list[tuple[int, ...]] | None = None) -> ResolvedTrainConfig:
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
        filled: dict[str, Any] = {
            k: getattr(self, k) if getattr(self, k) is not None else inherited.get(k, start.get(k) if v is None else v)
            for k, v in DEFAULTS.items()
        }
        loss = self.loss if self.loss is not None else DEFAULT_LOSS.get(self.task)
        lr = self.lr if self.lr is not None else start["lr"]
        warmup = self.warmup if self.warmup is not None else round(WARMUP_SHARE * self.iterations)
        strength = AUGMENTATION.get(self.task, 0.0)
        augment: dict[str, Any] = {
            k: getattr(self, k) if getattr(self, k) is not None else strength for k in AUGMENTATIONS
        }
        val_every = self.val_every if self.val_every is not None else max(1, self.iterations // VALIDATIONS)
        return cast(
            "ResolvedTrainConfig",
            replace(self, **filled, loss=loss, lr=lr, warmup=warmup, val_every=val_every, **augment),
        )

    def validate(self) -> None:
        """Raise :class:`InputError` on an invalid argument (:func:`~tomofield.protocols.check_settings`, then
        what ties settings together); settings still ``None`` are not checked."""
        check_settings(self)
        if self.loss is not None and self.loss not in TASKS[self.task]:
            raise InputError(
                f"loss {self.loss!r} does not fit task {self.task!r}; valid: {', '.join(TASKS[self.task])}"
            )
        if self.task == "classification" and self.batch_volumes % 2:
            raise InputError(
                f"batch_volumes must be even (pairs of one positive and one negative), got {self.batch_volumes}"
            )
        if self.teacher is not None and self.task != "regression":
            raise InputError(f"--teacher is for --task regression, got task {self.task!r}")


if TYPE_CHECKING:

    class ResolvedTrainConfig(TrainConfig):
        """For type checkers only: a :class:`TrainConfig` after :meth:`~TrainConfig.resolved`, whose
        settings that default to ``None`` are filled (``val_slices`` and ``teacher`` may stay ``None``)."""

        encoder: str
        norm: str
        slice_size: int
        lr: float
        warmup: int
        intensity: str
        geometry: str
        extent: str
        loss: str
        scale_jitter: float
        translation: float
        intensity_jitter: float
        val_every: int

else:
    ResolvedTrainConfig = TrainConfig


def config_from_options(**options: Any) -> TrainConfig:
    """A TrainConfig from keyword options, ignoring the ones it does not know and those that are ``None``."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in options.items() if k in names and v is not None})
