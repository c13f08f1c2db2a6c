"""The library entry point: :class:`Engine` turns a volume into a heatmap.

The engine plans a volume once, then streams chunks of directions through the stages of
:mod:`tomofield.pipeline`: the slicer cuts their slices in batches, the scorer runs
encoder + head, the filter works along each stack's normal and the backprojector adds
the result into the output grid. Memory is bounded by the chunk, whatever the number of
directions. docs/design.md has the map.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from tomofield import distributed, encoders, plugins
from tomofield import presets as _presets
from tomofield.checkpoint import NUM_CLASSES, SLICE_SIZES, RunDir, is_run_dir
from tomofield.encoders import NORMS, build_encoder, first_conv_in_chans, load_weights, read_safetensors
from tomofield.errors import InputError, NotLearningWarning, TomofieldError
from tomofield.geometry import EXTENTS, GEOMETRIES
from tomofield.intensity import MODES as INTENSITY_MODES
from tomofield.intensity import normalize
from tomofield.io import ORIENTATIONS, Heatmap, Reorientation, Volume
from tomofield.pipeline import AMP_MODES, Plan, Scorer, Slicer, Stacks
from tomofield.protocols import SEED_MAX
from tomofield.samplers import SamplingConfig

Progress = Callable[[int, int], None]

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


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else must be usable here."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N") from exc
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else getattr(torch.backends, "mps", None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        what = "CUDA is" if dev.type == "cuda" else f"the {dev.type!r} device type is"
        raise InputError(
            f"device {device!r} requested but {what} not available in this torch build on this machine; "
            f"use --device cpu{' (or cuda)' if torch.cuda.is_available() else ''}"
        )
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and not dev.index < count():
        raise InputError(
            f"device {device!r} does not exist: this machine has {count()} {dev.type} device(s), "
            f"valid: {', '.join(f'{dev.type}:{i}' for i in range(count()))}"
        )
    return dev


def setting(
    default: Any, help: str, *, short: str | None = None, off: str | None = None, choices: Sequence[str] | None = None
) -> Any:
    """A field of :class:`EngineConfig` that front ends offer as an option.

    The field's default is the library's (the only copy); ``help`` is its one-line help,
    ``short`` a one-letter alias, ``off`` the negative spelling of a switch (default
    ``--no-NAME``), ``choices`` the valid values.
    """
    return field(default=default, metadata={"help": help, "short": short, "off": off, "choices": choices})


@dataclass(frozen=True)
class EngineConfig:
    """Everything that defines a reconstruction besides the components.

    Frozen: an engine's settings never change while it works (the batch size a run falls
    back to after running out of memory is the scorer's state, not the config).
    """

    directions: int = setting(500, "Number of slicing directions L.", short="-L")
    slices: int = setting(48, "Slices per direction M.", short="-M")
    slice_size: int = setting(224, "Slice side in pixels.")
    hemisphere: bool = setting(True, "Directions on a hemisphere (half the work) or the whole sphere.", off="--sphere")
    geometry: str = setting(
        "physical", "physical: millimetres from the affine; normalized: the paper's cube.", choices=GEOMETRIES
    )
    extent: str = setting(
        "unit", "Slice offsets in [-1, 1] (paper) or covering the volume's whole support.", choices=EXTENTS
    )
    seed: int = setting(0, "Seed of the random in-plane bases (and of a random-init encoder).")
    batch_size: int = setting(64, "Slices per encoder batch.")
    num_classes: int = 1
    pretrained: bool = setting(False, "timm pretrained weights from the local cache (never downloaded).")
    norm: str = "frozen-bn"
    intensity: str = setting(
        "none",
        "Intensity normalisation before slicing: volume (per channel, background to 0 and the foreground's "
        "median to 1, as tomofield train does) or none; a run directory's by default.",
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
    # Speed settings (docs/benchmarks.md has the measurements behind the defaults).
    amp: str = setting(
        "auto", "Encoder autocast: auto = fp16 on CUDA (fp32 for CAM heads), off on CPU.", choices=AMP_MODES
    )
    channels_last: bool = setting(True, "Feed the encoder channels-last slices.")
    compile: bool = setting(False, "torch.compile the encoder (heads that allow it; pays off on long runs).")
    skip_empty: bool = setting(True, "Give slices that sample nothing the score of an empty slice, unrun.")
    empty_tol: float = setting(0.0, "Values up to this count as empty.")
    #: under torch.distributed, share the directions of one volume among the ranks.
    shard_directions: bool = False

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of range, naming the value and what is valid."""
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            elif isinstance(default, str):
                ok = isinstance(value, str)
            else:
                ok, default = isinstance(value, dict), {}  # head_options
            if not ok:
                raise InputError(
                    f"setting {f.name}={value!r} must be {type(default).__name__}, got {type(value).__name__}"
                )
        (lo_s, hi_s), (lo_k, hi_k) = SLICE_SIZES, NUM_CLASSES  # the ranges a run directory may record too
        checks = [
            (1 <= self.directions <= 100_000, f"directions must be in 1..100000, got {self.directions}"),
            (3 <= self.slices <= 10_000, f"slices must be in 3..10000, got {self.slices}"),
            (lo_s <= self.slice_size <= hi_s, f"slice size must be in {lo_s}..{hi_s} pixels, got {self.slice_size}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (0 <= self.seed <= SEED_MAX, f"seed must be in 0..{SEED_MAX}, got {self.seed}"),
            (lo_k <= self.num_classes <= hi_k, f"num_classes must be in {lo_k}..{hi_k}, got {self.num_classes}"),
            (self.geometry in GEOMETRIES, f"unknown geometry {self.geometry!r}; valid: {', '.join(GEOMETRIES)}"),
            (self.extent in EXTENTS, f"unknown extent {self.extent!r}; valid: {', '.join(EXTENTS)}"),
            (self.amp in AMP_MODES, f"unknown amp mode {self.amp!r}; valid: {', '.join(AMP_MODES)}"),
            (self.norm in NORMS, f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}"),
            (
                self.intensity in INTENSITY_MODES,
                f"unknown intensity normalisation {self.intensity!r}; valid: {', '.join(INTENSITY_MODES)}",
            ),
            (
                self.orientation in ORIENTATIONS,
                f"unknown orientation {self.orientation!r}; valid: {', '.join(ORIENTATIONS)}",
            ),
            (self.empty_tol >= 0, f"empty_tol must be >= 0, got {self.empty_tol}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)


def _build(kind: str, spec: Any, **options: Any) -> Any:
    """A component from its registered name, or as given: the boundary where components are validated.

    Options are checked against the component's declaration (name, type, bounds); what the
    factory itself refuses (``ValueError``, ``TypeError``) reaches the caller as
    :class:`~tomofield.errors.InputError` naming the component and its options.
    """
    if not isinstance(spec, str):
        return _check_object(kind, spec)
    comp = plugins.get(kind, spec)
    declared = {o.name: o for o in comp.options}
    unknown = sorted(set(options) - set(declared))
    if comp.options and unknown:
        valid = ", ".join(sorted(declared))
        raise InputError(f"{kind} {spec!r} has no option(s) {', '.join(unknown)}; its options: {valid}")
    owner = f"{kind} {spec!r}"
    options = {k: declared[k].check(v, owner) if k in declared else v for k, v in options.items()}
    try:
        return comp.factory(**options)
    except TomofieldError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise InputError(f"{owner} refused its options {options}: {type(exc).__name__}: {exc}") from exc


#: What a component object given to the Engine (not a name) must have; the rest defaults.
_REQUIRED = {
    "head": ("__call__",),
    "filter": ("pad", "integral", "constant", "__call__"),
    "reconstructor": ("__call__",),
    "sampler": ("plan",),
    "postprocessor": ("__call__",),
}


def _options_of(component: Any) -> dict[str, Any]:
    """A component's settings for the provenance record: a dataclass's fields, else none."""
    if is_dataclass(component) and not isinstance(component, type):
        return json.loads(json.dumps(asdict(component), default=str))
    return {}


def _name(spec: Any, attr: str = "name") -> str:
    """A component's name: the registered name it was given by, or the object's ``attr`` (else its type's)."""
    return spec if isinstance(spec, str) else getattr(spec, attr, type(spec).__name__)


def _check_object(kind: str, obj: Any) -> Any:
    """A component given as an object: refuse one that lacks what its kind needs (tomofield.protocols)."""
    missing = [a for a in _REQUIRED.get(kind, ()) if not (callable(obj) if a == "__call__" else hasattr(obj, a))]
    if missing:
        names = ", ".join(a if a != "__call__" else "__call__ (callable)" for a in missing)
        raise InputError(
            f"{kind} {obj!r} ({type(obj).__name__}) is not a {kind}: it lacks {names}; give a registered name "
            f"(tomofield plugins lists them) or an object as described in tomofield.protocols"
        )
    return obj


class Engine:
    """Reconstruct 3D heatmaps from a 2D encoder's slice scores.

    Args:
        encoder: a registered or timm encoder name, or an ``nn.Module`` (``weights``, if
            given, are loaded into it, strictly).
        head: head name or object (``logit``, ``sum``, ...).
        filter: filter name or object (``tomo``, ``none``).
        reconstructor: how the filtered stacks become the heatmap: ``filled`` (ToNNO plus
            the planes' consensus: large lesions come back filled; the default with the
            ``logit`` head and a ``tomo`` filter, :data:`DEFAULT_RECONSTRUCTORS`), ``fbp``
            (filtered backprojection, streaming: plain ToNNO; every other head's default),
            ``regularized`` (fitted to every stack's scores under a non-negativity prior),
            ``calibrated`` (FBP under a self-consistent monotone link), or an object
            (:mod:`tomofield.reconstructors`).
        preset: ``fast``, ``default`` or ``paper`` (:data:`PRESETS`): directions, slices and
            slice size chosen together, ``fast`` for each volume's grid (:meth:`config_for`);
            what is given explicitly wins, and a run's slice size stays.
        sampler: sampler name or object (``fibonacci``, ``axial``, ``orthogonal``).
        postprocess: post-processor names or callables, applied in order.
        weights: a ``.safetensors`` file, or a run directory of ``tomofield train`` whose
            settings (:data:`tomofield.checkpoint.ENGINE_INHERITED`: encoder name, norm,
            slice size, geometry, extent) become the defaults, and whose ``head_defaults``
            become the defaults of that head's options. What is given here wins.
        device: ``auto``, ``cpu``, ``cuda``...
        **config: fields of :class:`EngineConfig` (directions, slices, slice_size, ...).

    Example:
        The ``sum`` head needs no network: the reconstruction returns the input, here a
        ball of radius 7 mm on a 24^3 grid of 1 mm voxels (docs/design.md, "Reconstruction
        constants"): about 1 inside, about 0 outside.

        >>> from tomofield import Engine
        >>> from tomofield.synth import ball_phantom
        >>> ball = ball_phantom((24, 24, 24), (1.0, 1.0, 1.0), [((0.0, 0.0, 0.0), 7.0, 1.0)])
        >>> engine = Engine(head="sum", filter="tomo", directions=200, slices=24, slice_size=32, device="cpu")
        >>> heatmap = engine.reconstruct(ball, spacing=(1.0, 1.0, 1.0))
        >>> tuple(heatmap.shape)
        (1, 24, 24, 24)
        >>> inside = heatmap[0][ball > 0.5].mean().item()
        >>> outside = heatmap[0][ball < 0.5].abs().mean().item()
        >>> round(inside, 1), outside < 0.05
        (0.9, True)

        A trained run directory gives the encoder, its weights and its slicing; the
        ``Volume`` API keeps the grid and affine for the output (``run`` below is a
        folder written by ``tomofield train``)::

            volume = tomofield.load_volume(["ct.nii.gz"])
            engine = Engine(weights="run/", head="layercam", filter="tomo", head_options={"layer": 3})
            engine.run(volume).save("heatmap.nii.gz")
    """

    def __init__(
        self,
        encoder: str | nn.Module | None = None,
        head: str | Any = "logit",
        filter: str | Any = "tomo",
        sampler: str | Any = "fibonacci",
        postprocess: Sequence[str | Callable[[Tensor, Tensor], Tensor]] = (),
        *,
        reconstructor: str | Any | None = None,
        preset: str | None = None,
        weights: str | None = None,
        device: str | torch.device = "auto",
        **config: Any,
    ) -> None:
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise InputError(f"weights must be a path (a .safetensors file or a run directory), got {weights!r}")
        if isinstance(postprocess, str) or callable(postprocess):
            postprocess = [postprocess]  # one post-processor, not its letters
        run = None
        if weights is not None:  # a run directory, or a weights file that describes its run
            run = RunDir(weights) if is_run_dir(weights) else RunDir.from_weights(weights)
        if run is not None:
            inherited = run.engine_defaults()
            run_encoder = inherited.pop("encoder", None)  # a component, not a setting
            encoder = run_encoder if encoder is None else encoder
            config = {**inherited, **config}
            if isinstance(head, str) and run.head_defaults(head):
                # the run knows how its outputs read under this head (e.g. a density's units); explicit options win
                config["head_options"] = {**run.head_defaults(head), **config.get("head_options", {})}
        #: the preset (:mod:`tomofield.presets`), and the settings it chooses per volume
        self.preset = _presets.resolve(preset)
        self._per_volume: tuple[str, ...] = ()
        if self.preset is not None and self.preset.per_volume:
            self._per_volume = tuple(k for k in self.preset.chooses if k not in config)
        elif self.preset is not None:
            config = {**self.preset.settings, **config}
        unknown = sorted(set(config) - {f.name for f in fields(EngineConfig)})
        if unknown:
            valid = ", ".join(f.name for f in fields(EngineConfig))
            raise InputError(f"unknown engine setting(s) {', '.join(unknown)}; valid: {valid}")
        self.config = EngineConfig(**config)
        self.config.validate()
        #: the config.json of the run directory given as weights ({} otherwise)
        self.run_config = run.config if run is not None else {}
        diagnostics = self.run_config.get("diagnostics", {})
        if diagnostics.get("learned") is False:
            kinds = ", ".join(diagnostics.get("unresolved", [])) or "see its diagnostics"
            warnings.warn(
                f"the run {str(weights)!r} did not learn during training ({kinds}; {run.config_path} records "
                "why): its heatmaps are likely meaningless",
                NotLearningWarning,
                stacklevel=2,
            )
        self.device = resolve_device(device)
        #: the components' names: the registered name, or a given object's ``name`` (else its type's)
        self.head_name, self.filter_name, self.sampler_name = (_name(c) for c in (head, filter, sampler))
        self.head = _build("head", head, **self.config.head_options)
        self.filter = _build("filter", filter)
        if reconstructor is None:
            # filled augments an inverse Radon transform: with the none filter (Averaged) it stays fbp
            integral = getattr(self.filter, "integral", False)
            reconstructor = DEFAULT_RECONSTRUCTORS.get(self.head_name, "fbp") if integral else "fbp"
        self.reconstructor = _build("reconstructor", reconstructor)
        self.reconstructor_name = _name(reconstructor)
        self.sampler = _build("sampler", sampler)
        self.postprocess = [_build("postprocessor", p) for p in postprocess]
        self._post_names = [_name(p, "__name__") for p in postprocess]
        self._encoder_spec = DEFAULT_ENCODER if encoder is None else encoder
        self._weights_path = str(weights) if weights is not None else None
        self._weights = (
            (run.weights() if run is not None else read_safetensors(weights)) if weights is not None else None
        )
        self._encoders: dict[int, nn.Module] = {}
        self._scorers: dict[int, Scorer] = {}

    @property
    def encoder_name(self) -> str:
        """The encoder's name: the registered or timm name, or a given module's type."""
        spec = self._encoder_spec
        return spec if isinstance(spec, str) else type(spec).__name__

    @property
    def random_encoder(self) -> bool:
        """The head runs an encoder that no weights set: built here, neither ``weights`` nor ``pretrained`` given."""
        return (
            getattr(self.head, "needs_encoder", True)
            and not isinstance(self._encoder_spec, nn.Module)
            and self._weights is None
            and not self.config.pretrained
        )

    # -- encoder -------------------------------------------------------------------------
    def _check_channels(self, in_chans: int) -> None:
        expected = first_conv_in_chans(self._weights) if self._weights is not None else None
        if expected is not None and expected != in_chans:
            raise InputError(
                f"weights {self._weights_path!r} expect {expected} input channel(s) but the "
                f"volume has {in_chans}; give {expected} input file(s) or a {expected}-channel 4D NIfTI"
            )

    def encoder_for(self, in_chans: int) -> nn.Module | None:
        """The encoder for volumes of ``in_chans`` channels (built once, cached)."""
        if not getattr(self.head, "needs_encoder", True):
            return None
        if in_chans not in self._encoders:
            self._check_channels(in_chans)
            if isinstance(self._encoder_spec, nn.Module):
                model = self._encoder_spec
            else:
                with torch.random.fork_rng(devices=[]):  # reproducible random init, caller's RNG untouched
                    torch.manual_seed(self.config.seed)
                    model = build_encoder(
                        self._encoder_spec,
                        in_chans=in_chans,
                        num_classes=self.config.num_classes,
                        pretrained=self.config.pretrained and self._weights is None,
                        norm=self.config.norm,
                    )
            if self._weights is not None:
                load_weights(model, self._weights, str(self._weights_path))
            self._encoders[in_chans] = model.to(self.device).eval()
        return self._encoders[in_chans]

    def scorer_for(self, in_chans: int) -> Scorer:
        """The scorer for volumes of ``in_chans`` channels (kept: its batch size survives an OOM)."""
        if in_chans not in self._scorers:
            cfg = self.config
            self._scorers[in_chans] = Scorer(
                self.head,
                self.encoder_for(in_chans),
                self.device,
                amp=cfg.amp,
                channels_last=cfg.channels_last,
                compile=cfg.compile,
                batch_size=cfg.batch_size,
                label=f"head {self.head_name!r} with options {cfg.head_options}",
            )
        return self._scorers[in_chans]

    # -- reconstruction ------------------------------------------------------------------
    def config_for(self, shape: Sequence[int]) -> EngineConfig:
        """The settings a volume of spatial ``shape`` is reconstructed with: :attr:`config`, and what
        a per-volume preset (``fast``) chooses for this grid where nothing was given."""
        chosen = _presets.settings_for(self.preset, self._per_volume, shape)
        if not chosen:
            return self.config
        cfg = replace(self.config, **chosen)
        cfg.validate()
        return cfg

    def plan(self, shape: Sequence[int], spacing: Sequence[float]) -> Plan:
        """The plan (half-extents, direction groups, slice counts) for a volume of spatial ``shape``."""
        cfg = self.config_for(shape)
        sampling = SamplingConfig(
            directions=cfg.directions, slices=cfg.slices, hemisphere=cfg.hemisphere, seed=cfg.seed, extent=cfg.extent
        )
        return Plan.make(
            shape,
            spacing,
            self.sampler,
            sampling,
            cfg.geometry,
            self.filter.pad,
            cfg.slice_size,
            shard=cfg.shard_directions,
        )

    def count_slices(self, shape: Sequence[int], spacing: Sequence[float] = (1, 1, 1)) -> int:
        """Number of slices the encoder will see for a volume of this shape (this rank's, when sharded)."""
        return self.plan(shape, spacing).total_slices

    def reconstruct(
        self,
        volume: Tensor,
        spacing: Sequence[float] | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """Heatmap (K, D, H, W) of a volume (C, D, H, W) or (D, H, W), on the input grid.

        Args:
            volume: the input; finite values.
            spacing: voxel size per (D, H, W) axis in mm (physical geometry); default 1.
            progress: called as ``progress(slices_done, slices_total)``.
        """
        vol = validate_volume(volume)
        spacing = validate_spacing(spacing)
        plan = self.plan(vol.shape[1:], spacing)
        dev, cfg = self.device, self.config
        vol = vol.to(torch.float32)
        if dev.type == "cuda" and vol.device.type == "cpu":
            vol = vol.pin_memory().to(dev, non_blocking=True)  # asynchronous, no stream sync
        given = vol = vol.to(dev)
        vol = normalize(vol, cfg.intensity)  # the encoder sees what it was trained on; post-processors the input
        scorer = self.scorer_for(vol.shape[0])
        total = plan.total_slices
        tick = (lambda n: progress(n, total)) if progress else (lambda n: None)
        ctx = torch.no_grad if getattr(self.head, "needs_grad", False) else torch.inference_mode
        with ctx():
            slicer = Slicer(vol, plan, cfg.skip_empty, cfg.empty_tol)
            probe = scorer.check(vol.shape[0], plan.size)  # the head meets its encoder: errors as InputError
            empty = probe if slicer.occupancy is not None else None

            def chunks() -> Iterator[tuple[Tensor, Any]]:
                for group in plan.groups:
                    for host, dirs in plan.chunks(group, scorer.batch_size, dev):
                        yield scorer.score_chunk(slicer, dirs, slicer.hits(host), empty, tick), dirs

            heat = self.reconstructor(chunks(), Stacks(plan, self.filter, dev))
        if scorer.dtype is not None and not bool(torch.isfinite(heat).all()):
            raise InputError(
                f"the heatmap has non-finite values: the encoder overflowed under amp={cfg.amp!r} "
                f"({scorer.dtype}); rerun with amp='bf16' (wider range) or amp='off'"
            )
        if cfg.shard_directions and distributed.rank_world()[1] > 1:
            distributed.all_reduce_sum(heat)
        for post in self.postprocess:
            heat = post(heat, given)
        return heat

    def run(self, volume: Volume, progress: Progress | None = None) -> Heatmap:
        """The heatmap of a :class:`~tomofield.Volume`, on its grid with its affine.

        The computation of :meth:`reconstruct` on ``volume.data`` and ``volume.spacing``,
        in the frame ``config.orientation`` names: ``canonical`` turns the volume to RAS
        storage first (:class:`~tomofield.io.Reorientation`, flips and axis swaps) and the
        heatmap back, so the heatmap does not depend on how the scan was stored.
        """
        turn = Reorientation.of(volume.affine) if self.config.orientation == "canonical" else Reorientation()
        heat = self.reconstruct(turn.forward(volume.data), turn.spacing(volume.spacing), progress)
        return Heatmap.on(turn.backward(heat).contiguous(), volume)

    def provenance(self) -> dict[str, Any]:
        """What makes this engine's heatmaps: settings, components, head options, weights' hash, version.

        Two engines with equal provenance give the same heatmap of the same volume (up to
        the order of floating-point sums across machines). Settings that change only speed
        or memory (:data:`SPEED_ONLY`) are left out. JSON-serialisable.
        """
        from importlib.metadata import PackageNotFoundError, version

        try:
            tomofield_version = version("tomofield")
        except PackageNotFoundError:  # a source tree that is not installed
            tomofield_version = "unknown"
        settings = {k: v for k, v in asdict(self.config).items() if k not in SPEED_ONLY}
        for k in self._per_volume:  # the preset's choice for each volume's grid
            settings[k] = f"preset {self.preset.name}"
        encoder = self.encoder_name
        return {
            "tomofield": tomofield_version,
            "settings": json.loads(json.dumps(settings, default=str)),
            "head": self.head_name,
            "filter": self.filter_name,
            "reconstructor": self.reconstructor_name,
            "reconstructor_options": _options_of(self.reconstructor),
            "sampler": self.sampler_name,
            "postprocess": self._post_names,
            "encoder": encoder if getattr(self.head, "needs_encoder", True) else None,
            "weights_sha256": self.weights_sha256() if getattr(self.head, "needs_encoder", True) else None,
        }

    def weights_sha256(self) -> str | None:
        """SHA-256 of the encoder's weights (given, from a run, or of a given module); None for a seeded init."""
        if self._weights is not None:
            state = self._weights
        elif isinstance(self._encoder_spec, nn.Module):
            state = self._encoder_spec.state_dict()
        else:
            return None
        h = hashlib.sha256()
        for key in sorted(state):
            t = state[key].detach().cpu().contiguous()
            h.update(key.encode())
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def with_options(self, **changes: Any) -> Engine:
        """A copy of this engine with some config fields changed (components shared, fresh scorers)."""
        new = object.__new__(Engine)
        new.__dict__.update(self.__dict__)
        new.config = replace(self.config, **changes)
        new.config.validate()
        new._per_volume = tuple(k for k in self._per_volume if k not in changes)  # what is set now wins
        new._scorers = {}
        return new


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
