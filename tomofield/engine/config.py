"""The settings of a reconstruction (:class:`EngineConfig`), the device, and the checks of an input volume."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tomofield import encoders
from tomofield import presets as _presets
from tomofield.checkpoint import NUM_CLASSES, SLICE_SIZES
from tomofield.encoders import NORMS
from tomofield.errors import InputError
from tomofield.geometry import EXTENTS, GEOMETRIES
from tomofield.intensity import MODES as INTENSITY_MODES
from tomofield.io import ORIENTATIONS
from tomofield.pipeline import AMP_MODES
from tomofield.protocols import SEED_MAX, check_settings, setting

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PlanReport:
    """What an engine is about to do with one volume, given to ``Engine.run(on_plan=...)`` before any work.

    Attributes:
        directions: L, the directions of the whole reconstruction.
        slices: M, the distinct slice counts of its stacks (one value unless a sampler mixes them).
        slice_size: the slices' side in pixels.
        preset: the preset that chose the counts, or ``None``.
        device: where the encoder runs.
        total: the slices the encoder will see (this rank's share under torchrun), with the filter's padding.
    """

    directions: int
    slices: tuple[int, ...]
    slice_size: int
    preset: str | None
    device: str
    total: int

    def __str__(self) -> str:
        """``8,704 slices (L 256 x M 34, preset fast) of 64px on cpu``."""
        chosen = f", preset {self.preset}" if self.preset else ""
        per_stack = "/".join(map(str, self.slices))
        return (
            f"{self.total:,} slices (L {self.directions} x M {per_stack}{chosen}) of {self.slice_size}px on "
            f"{self.device}"
        )


#: Settings that change speed or memory only, not the heatmap (left out of :meth:`Engine.provenance`).
SPEED_ONLY = ("batch_size", "channels_last", "compile", "skip_empty", "shard_directions")
#: The encoder an engine builds when none is given (nor a run directory that names one).
DEFAULT_ENCODER = encoders.DEFAULT_ENCODER
#: ``Engine(preset=NAME)`` and ``tomofield run --preset NAME`` (:mod:`tomofield.presets`):
#: ``fast`` sizes L, M and the slice size to each volume, ``default`` and ``paper`` are fixed
#: counts; settings given explicitly win, a run's slice size stays.
PRESETS = _presets.PRESETS

#: The reconstructor of a head when none is given, with an inverse-Radon filter (``tomo``,
#: ``tomo-sg``, ``tomo-gauss``): a slice classifier's saturating logit gets ``filled`` (large
#: lesions come back filled, docs/results.md "Filled lesions"); every other head, and every
#: head under the ``none`` filter, gets filtered backprojection.
DEFAULT_RECONSTRUCTORS: dict[str, str] = {"logit": "filled"}


def _torch_build() -> str:
    """The installed torch, in words: its version and whether it was built with CUDA."""
    cuda = torch.version.cuda
    return f"torch {torch.__version__}, " + (f"built with CUDA {cuda}" if cuda else "a CPU-only build")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``gpu`` / ``gpu:N`` (TotalSegmentator's and
    nnU-Net's spelling) are ``cuda`` / ``cuda:N``; anything else must be usable here."""
    text = str(device).strip().lower() if isinstance(device, str) else device
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(text, str) and (text == "gpu" or text.startswith("gpu:")):
        text = "cuda" + text[3:]
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N, gpu, gpu:N") from exc
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else getattr(torch.backends, "mps", None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        if dev.type == "cuda":
            why = (
                "no NVIDIA GPU was found on this machine"
                if torch.version.cuda
                else "this torch cannot use one (install a CUDA build of torch)"
            )
            raise InputError(f"device {device!r} requested but {why} ({_torch_build()}); use --device cpu")
        raise InputError(
            f"device {device!r} requested but the {dev.type!r} device type is not available in this torch build "
            f"on this machine ({_torch_build()}); use --device cpu{' (or cuda)' if torch.cuda.is_available() else ''}"
        )
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and not dev.index < count():
        raise InputError(
            f"device {device!r} does not exist: this machine has {count()} {dev.type} device(s), "
            f"valid: {', '.join(f'{dev.type}:{i}' for i in range(count()))}"
        )
    return dev


@dataclass(frozen=True)
class EngineConfig:
    """Everything that defines a reconstruction besides the components, each setting declared once
    (:func:`tomofield.protocols.setting`: default, help, bounds, choices).

    Frozen: an engine's settings never change while it works (the batch size a run falls
    back to after running out of memory is the scorer's state, not the config).
    """

    directions: int = setting(500, "Number of slicing directions L.", short="-L", min=1, max=100_000)
    slices: int = setting(48, "Slices per direction M.", short="-M", min=3, max=10_000)
    slice_size: int = setting(224, "Slice side in pixels.", min=SLICE_SIZES[0], max=SLICE_SIZES[1])
    hemisphere: bool = setting(True, "Directions on a hemisphere (half the work) or the whole sphere.", off="--sphere")
    geometry: str = setting(
        "physical", "physical: millimetres from the affine; normalized: the paper's cube.", choices=GEOMETRIES
    )
    extent: str = setting(
        "unit", "Slice offsets in [-1, 1] (paper) or covering the volume's whole support.", choices=EXTENTS
    )
    seed: int = setting(0, "Seed of the random in-plane bases (and of a random-init encoder).", min=0, max=SEED_MAX)
    batch_size: int = setting(64, "Slices per encoder batch.", min=1, max=65_536)
    num_classes: int = setting(1, "Outputs of the encoder.", min=NUM_CLASSES[0], max=NUM_CLASSES[1], cli=False)
    pretrained: bool = setting(False, "timm pretrained weights from the local cache (never downloaded).")
    norm: str = setting("frozen-bn", "Normalisation layers of the encoder.", choices=NORMS, cli=False)
    intensity: str = setting(
        "none",
        "Intensity normalisation before slicing: volume (per channel, background to 0 and the foreground's "
        "median to 1, as tomofield train does), zscore (mean 0, standard deviation 1) or none; a run directory's "
        "by default.",
        choices=INTENSITY_MODES,
    )
    orientation: str = setting(
        "canonical",
        "Frame of the directions for a volume with an affine: canonical (the volume turned to RAS by flips and "
        "axis swaps, so copies stored LPS or in other axis orders give the same heatmap) or stored (the array's "
        "own axes, as before 0.2).",
        choices=ORIENTATIONS,
    )
    head_options: dict[str, Any] = field(default_factory=dict)
    operating_point: bool = setting(
        False,
        "Components that threshold slice scores (filled) take their threshold from the run's operating point "
        "(tomofield calibrate) instead of their constants.",
    )
    # Speed settings (docs/benchmarks.md has the measurements behind the defaults).
    amp: str = setting(
        "auto", "Encoder autocast: auto = fp16 on CUDA (fp32 for CAM heads), off on CPU.", choices=AMP_MODES
    )
    channels_last: bool = setting(True, "Feed the encoder channels-last slices.")
    compile: bool = setting(False, "torch.compile the encoder (heads that allow it; pays off on long runs).")
    skip_empty: bool = setting(True, "Give slices that sample nothing the score of an empty slice, unrun.")
    empty_tol: float = setting(0.0, "Values up to this count as empty.", min=0.0)
    #: under torch.distributed, share the directions of one volume among the ranks.
    shard_directions: bool = False

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of range, naming the value and what is valid."""
        check_settings(self)
        if not isinstance(self.head_options, dict):
            raise InputError(
                f"head_options={self.head_options!r} must be a dict, got {type(self.head_options).__name__}"
            )
        if not isinstance(self.shard_directions, bool):
            raise InputError(f"shard_directions={self.shard_directions!r} must be true or false")


def validate_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    """Three positive finite voxel sizes in mm per (D, H, W) axis (default 1 mm)."""
    if spacing is None:
        return (1.0, 1.0, 1.0)
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        sp = ()
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"spacing must be 3 positive finite voxel sizes in mm (D, H, W), got {spacing!r}")
    return sp  # type: ignore[return-value]


def validate_volume(volume: Tensor) -> Tensor:
    """A (C, D, H, W) float view of ``volume``; refuse what cannot be reconstructed."""
    if not isinstance(volume, Tensor):
        try:
            volume = torch.as_tensor(volume)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(
                f"expected a volume array or tensor (D, H, W) or (C, D, H, W), got {type(volume).__name__}"
            ) from exc
    if volume.is_complex():
        raise InputError("the volume is complex; give its magnitude or its real part explicitly (torch.abs, .real)")
    if volume.dim() == 3:
        volume = volume[None]
    if volume.dim() != 4:
        raise InputError(
            f"expected a volume (D, H, W) or (C, D, H, W), got shape {tuple(volume.shape)} ({volume.dim()}D)"
        )
    if min(volume.shape[1:]) < 2:
        raise InputError(f"every spatial axis needs at least 2 voxels, got shape {tuple(volume.shape)}")
    if not volume.is_floating_point():
        volume = volume.float()
    bad = ~torch.isfinite(volume)
    if bool(bad.any()):
        raise InputError(
            f"the volume has {int(bad.sum())} non-finite voxel(s) (NaN or Inf) out of {volume.numel()}; "
            "fix or mask them before reconstruction"
        )
    return volume
