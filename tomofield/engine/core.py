"""The :class:`Engine`: a volume planned once, streamed through the stages of :mod:`tomofield.pipeline`."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tomofield import distributed, plugins
from tomofield import presets as _presets
from tomofield.calibration import FALSE_POSITIVE_RATE, OperatingPoint
from tomofield.checkpoint import RunDir, is_run_dir
from tomofield.encoders import (
    build_encoder,
    first_conv_in_chans,
    load_weights,
    read_safetensors,
)
from tomofield.engine.budget import Estimate, estimate
from tomofield.engine.checks import check_heatmap, post_process
from tomofield.engine.config import (
    DEFAULT_ENCODER,
    DEFAULT_RECONSTRUCTORS,
    SPEED_ONLY,
    EngineConfig,
    PlanReport,
    Progress,
    resolve_device,
    validate_spacing,
    validate_volume,
)
from tomofield.errors import ComponentError, InputError, NotLearningWarning, TomofieldError, UncalibratedWarning
from tomofield.intensity import normalize
from tomofield.io import Heatmap, Reorientation, Volume
from tomofield.pipeline import Plan, Scorer, Slicer, Stacks
from tomofield.samplers import SamplingConfig


def _options_of(component: Any) -> dict[str, Any]:
    """A component's settings for the provenance record: a dataclass's fields, else none."""
    if is_dataclass(component) and not isinstance(component, type):
        return json.loads(json.dumps(asdict(component), default=str))
    return {}


def _name(spec: Any, attr: str = "name") -> str:
    """A component's name: the registered name it was given by, or the object's ``attr`` (else its type's)."""
    return spec if isinstance(spec, str) else getattr(spec, attr, type(spec).__name__)


#: (run, kind, component) already told that the run records no operating point
_UNCALIBRATED: set[tuple[str, str, str]] = set()


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
        filter_options, reconstructor_options, sampler_options: the options that component
            declares (``Engine(filter="tomo-sg", filter_options={"window": 7})``), checked
            against its declaration by name, type and bounds; the head's are the setting
            ``head_options``, which a run directory can default.
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
        filter_options: dict[str, Any] | None = None,
        reconstructor_options: dict[str, Any] | None = None,
        sampler_options: dict[str, Any] | None = None,
        preset: str | None = None,
        weights: str | Path | None = None,
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
            assert run is not None  # run_config is {} without a run
            warnings.warn(
                f"the run {str(weights)!r} did not learn during training ({kinds}; {run.config_path} records "
                "why): its heatmaps are likely meaningless",
                NotLearningWarning,
                stacklevel=2,
            )
        self.device = resolve_device(device)
        #: the components' names: the registered name, or a given object's ``name`` (else its type's)
        self.head_name, self.filter_name, self.sampler_name = (_name(c) for c in (head, filter, sampler))
        self.head = plugins.build("head", head, **self.config.head_options)
        given_options = {"filter": filter_options, "reconstructor": reconstructor_options, "sampler": sampler_options}
        for kind, given in given_options.items():
            if given is not None and not isinstance(given, dict):
                raise InputError(f"{kind}_options={given!r} must be a dict, got {type(given).__name__}")
        self._component_options: dict[str, dict[str, Any]] = {k: dict(v or {}) for k, v in given_options.items()}
        self.filter = plugins.build("filter", filter, **self._component_options["filter"])
        if reconstructor is None:
            # filled augments an inverse Radon transform: with the none filter (Averaged) it stays fbp
            integral = getattr(self.filter, "integral", False)
            reconstructor = DEFAULT_RECONSTRUCTORS.get(self.head_name, "fbp") if integral else "fbp"
        self.reconstructor = plugins.build(
            "reconstructor", reconstructor, **self._calibrated("reconstructor", reconstructor, run)
        )
        self.reconstructor_name = _name(reconstructor)
        self.sampler = plugins.build("sampler", sampler, **self._component_options["sampler"])
        self.postprocess = [plugins.build("postprocessor", p) for p in postprocess]
        self._post_names = [_name(p, "__name__") for p in postprocess]
        #: how messages name each component: kind, name and the plugin it comes from
        self._labels = {
            kind: plugins.describe(kind, spec)
            for kind, spec in (
                ("head", head),
                ("filter", filter),
                ("reconstructor", reconstructor),
                ("sampler", sampler),
            )
        }
        self._post_labels = [plugins.describe("postprocessor", p) for p in postprocess]
        self._encoder_spec = DEFAULT_ENCODER if encoder is None else encoder
        self._run = run
        self._weights_path = str(weights) if weights is not None else None
        self._weights = (
            (run.weights() if run is not None else read_safetensors(weights)) if weights is not None else None
        )
        self._encoders: dict[int, nn.Module] = {}
        self._scorers: dict[int, Scorer] = {}
        #: scorers of networks given to :meth:`run`: id -> (the network, in_chans -> scorer)
        self._given: dict[int, tuple[nn.Module, dict[int, Scorer]]] = {}

    def _calibrated(self, kind: str, spec: Any, run: RunDir | None) -> dict[str, Any]:
        """The options to build component ``spec`` with: the given ones over what the run's operating point sets.

        With the ``operating_point`` setting, a registered component that thresholds slice
        scores and declares ``operating_point_options(point)`` (:mod:`tomofield.calibration`)
        takes its options from the run's operating point; a run that records none leaves it
        on its constants, said once per run and component. Off by default: on the demo's
        encoder it filled large lesions better and cost lesion-wise F1 on the usual ones
        (docs/results.md, "Filled lesions on the encoder's own operating point").
        """
        given = self._component_options[kind]
        hook = (
            getattr(plugins.get(kind, spec).factory, "operating_point_options", None) if isinstance(spec, str) else None
        )
        if hook is None or run is None or not self.config.operating_point:
            return given
        point = run.operating_point()
        if point is not None:
            return {**hook(point), **given}
        sets = set(hook(OperatingPoint(0.0, 1.0, FALSE_POSITIVE_RATE, 1, 1, "names")))
        key = (str(run.config_path), kind, spec)
        if key not in _UNCALIBRATED and not sets <= set(given):  # options given on the command line need none
            _UNCALIBRATED.add(key)
            warnings.warn(
                f"the run {str(run.config_path.parent)!r} records no operating point: {kind} {spec!r} uses its "
                "constants, tuned on another encoder; `tomofield calibrate RUN DATASET.csv` records one from "
                "the run's negatives",
                UncalibratedWarning,
                stacklevel=3,
            )
        return given

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
            run, spec, cfg = self._run, self._encoder_spec, self.config
            if run is not None and isinstance(spec, str) and spec == run.config.get("encoder"):
                model = run.build_encoder(in_chans, norm=cfg.norm, num_classes=cfg.num_classes)  # network and weights
            else:
                if isinstance(spec, nn.Module):
                    model = spec
                else:
                    with torch.random.fork_rng(devices=[]):  # reproducible random init, caller's RNG untouched
                        torch.manual_seed(cfg.seed)
                        model = build_encoder(
                            spec,
                            in_chans=in_chans,
                            num_classes=cfg.num_classes,
                            pretrained=cfg.pretrained and self._weights is None,
                            norm=cfg.norm,
                        )
                if self._weights is not None:
                    load_weights(model, self._weights, str(self._weights_path))
            self._encoders[in_chans] = model.to(self.device).eval()
        return self._encoders[in_chans]

    def scorer_for(self, in_chans: int, encoder: nn.Module | None = None) -> Scorer:
        """The scorer for volumes of ``in_chans`` channels, of this engine's encoder or of ``encoder``.

        Kept, one per network and channel count: its batch size survives an out-of-memory error.
        """
        scorers = self._scorers
        if encoder is not None:
            if not isinstance(encoder, nn.Module):
                raise InputError(f"encoder must be a torch.nn.Module (a 2D network), got {type(encoder).__name__}")
            kept = self._given.get(id(encoder))
            if kept is None or kept[0] is not encoder:
                kept = self._given[id(encoder)] = (encoder, {})
            scorers = kept[1]
        if in_chans not in scorers:
            cfg = self.config
            if encoder is not None and getattr(self.head, "needs_encoder", True):
                net: nn.Module | None = encoder.to(self.device).eval()
            else:
                net = self.encoder_for(in_chans)
            scorers[in_chans] = Scorer(
                self.head,
                net,
                self.device,
                amp=cfg.amp,
                channels_last=cfg.channels_last,
                compile=cfg.compile,
                batch_size=cfg.batch_size,
                label=f"{self._labels['head']} with options {cfg.head_options}",
            )
        return scorers[in_chans]

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
        sampling = SamplingConfig.of(cfg)
        return Plan.make(
            shape,
            spacing,
            self.sampler,
            sampling,
            cfg.geometry,
            self._pad_of if hasattr(self.filter, "pad_for") else self.filter.pad,
            cfg.slice_size,
            shard=cfg.shard_directions,
            label=self._labels["sampler"],
        )

    def _pad_of(self, groups: list[Any]) -> int:
        """The padding of a filter whose padding follows the volume's slice spacings (``pad_for``)."""
        return int(self.filter.pad_for(torch.cat([g.slice_spacing().cpu() for g in groups])))

    def report(self, plan: Plan) -> PlanReport:
        """The :class:`PlanReport` of a plan of this engine."""
        return PlanReport(
            directions=plan.n_dirs,
            slices=tuple(sorted({g.num_slices for g in plan.groups})),
            slice_size=plan.size[0],
            preset=self.preset.name if self.preset is not None else None,
            device=str(self.device),
            total=plan.total_slices,
        )

    def estimate(self, plan: Plan, channels: int = 1) -> Estimate:
        """The least time and memory of reconstructing a volume of ``channels`` channels by ``plan``
        (:mod:`tomofield.engine.budget`): what :meth:`reconstruct` checks before any work."""
        per_stack = "/".join(str(n) for n in sorted({g.num_slices + 2 * plan.pad for g in plan.groups}))
        size = plan.size[0]
        return estimate(
            plan.total_slices,
            size,
            channels,
            self._scorers[channels].batch_size if channels in self._scorers else self.config.batch_size,
            self.device,
            grid=plan.shape,
            encoder=getattr(self.head, "needs_encoder", True),
            what=f"{plan.total_slices:,} slices (L {plan.n_dirs} x M {per_stack or 0}) of {size} x {size} px",
        )

    def _check_estimate(self, plan: Plan, channels: int) -> None:
        self.estimate(plan, channels).check(
            time_fix="lower directions (L), slices (M) or slice_size",
            memory_fix="lower batch_size or slice_size",
        )

    def check(
        self, shape: Sequence[int] | None = None, spacing: Sequence[float] | None = None, channels: int | None = None
    ) -> None:
        """What :meth:`reconstruct` refuses before its work, checked without any: for a volume of spatial
        ``shape`` and ``spacing`` (mm), the job's estimate (:meth:`estimate`); then the head meeting its encoder
        on one zero slice of ``channels`` channels (default: the run's), as :meth:`reconstruct` first does.

        For a caller that builds several engines (a comparison of methods) and refuses a bad one before
        the first does any work.

        Raises:
            InputError: naming what is refused (a setting, a head option, the job's size).
        """
        if channels is None:
            channels = int(self.run_config.get("in_chans", 1))
        size = (self.config.slice_size, self.config.slice_size)
        if shape is not None:
            plan = self.plan(shape, validate_spacing(spacing))
            self._check_estimate(plan, channels)
            size = plan.size
        self.scorer_for(channels).check(channels, size)

    def count_slices(self, shape: Sequence[int], spacing: Sequence[float] = (1, 1, 1)) -> int:
        """Number of slices the encoder will see for a volume of this shape (this rank's, when sharded)."""
        return self.plan(shape, spacing).total_slices

    def reconstruct(
        self,
        volume: Tensor,
        spacing: Sequence[float] | None = None,
        progress: Progress | None = None,
        encoder: nn.Module | None = None,
        on_plan: Callable[[PlanReport], None] | None = None,
    ) -> Tensor:
        """Heatmap (K, D, H, W) of a volume (C, D, H, W) or (D, H, W), on the input grid.

        Args:
            volume: the input; finite values.
            spacing: voxel size per (D, H, W) axis in mm (physical geometry); default 1.
            progress: called as ``progress(slices_done, slices_total)``.
            encoder: run this network instead of the engine's own (as it is: no weights are
                loaded into it), for an integration that holds its networks itself.
            on_plan: called once with the :class:`PlanReport` (L, M, slice size, preset,
                device, slices) before any work, so a caller need not plan again.

        Raises:
            InputError: the job would need more memory than the machine has, or far more
                time than any job should (:meth:`estimate`), before any work.
        """
        vol = validate_volume(volume)
        spacing = validate_spacing(spacing)
        plan = self.plan(vol.shape[1:], spacing)
        self._check_estimate(plan, int(vol.shape[0]))  # a job far beyond this machine: refused before any work
        if on_plan is not None:
            on_plan(self.report(plan))
        dev, cfg = self.device, self.config
        vol = vol.to(torch.float32)
        if dev.type == "cuda" and vol.device.type == "cpu":
            vol = vol.pin_memory().to(dev, non_blocking=True)  # asynchronous, no stream sync
        given = vol = vol.to(dev)
        vol = normalize(vol, cfg.intensity)  # the encoder sees what it was trained on; post-processors the input
        scorer = self.scorer_for(vol.shape[0], encoder)
        total = plan.total_slices
        tick = (lambda n: progress(n, total)) if progress else (lambda n: None)
        ctx = torch.no_grad if getattr(self.head, "needs_grad", False) else torch.inference_mode
        with ctx():
            slicer = Slicer(vol, plan, cfg.skip_empty, cfg.empty_tol)
            probe = scorer.check(vol.shape[0], plan.size)  # the head meets its encoder: errors as InputError
            empty = probe if slicer.occupancy is not None else None
            stacks = Stacks(plan, self.filter, dev, label=self._labels["filter"])
            finite: list[Tensor] = []  # per chunk, whether its scores are finite (read only when the heatmap is not)
            failed: list[Exception] = []  # what the engine's own stages raised inside the reconstructor's loop

            def chunks() -> Iterator[tuple[Tensor, Any]]:
                try:
                    for group in plan.groups:
                        for host, dirs in plan.chunks(group, scorer.batch_size, dev):
                            scores = scorer.score_chunk(slicer, dirs, slicer.hits(host), empty, tick)
                            finite.append(torch.isfinite(scores).all())
                            yield scores, dirs
                except Exception as exc:
                    failed.append(exc)
                    raise

            try:
                heat = self.reconstructor(chunks(), stacks)
            except (TomofieldError, torch.OutOfMemoryError):
                raise
            except Exception as exc:
                if failed:
                    raise
                raise ComponentError(f"{self._labels['reconstructor']} failed: {type(exc).__name__}: {exc}") from exc
        network = self.encoder_name if encoder is None else type(encoder).__name__
        check_heatmap(heat, plan.shape, scorer, finite, stacks, network, self._labels, self.config.amp)
        if cfg.shard_directions and distributed.rank_world()[1] > 1:
            distributed.all_reduce_sum(heat)
        for post, label in zip(self.postprocess, self._post_labels, strict=True):
            heat = post_process(post, label, heat, given)
        return heat

    def run(
        self,
        volume: Volume,
        progress: Progress | None = None,
        encoder: nn.Module | None = None,
        on_plan: Callable[[PlanReport], None] | None = None,
    ) -> Heatmap:
        """The heatmap of a :class:`~tomofield.Volume`, on its grid with its affine.

        The computation of :meth:`reconstruct` on ``volume.data`` and ``volume.spacing``,
        in the frame ``config.orientation`` names: ``canonical`` turns the volume to RAS
        storage first (:class:`~tomofield.io.Reorientation`, flips and axis swaps) and the
        heatmap back, so the heatmap does not depend on how the scan was stored. ``encoder``:
        a network to run instead of the engine's own (:meth:`reconstruct`); ``on_plan``:
        called with the :class:`PlanReport` before any work (:meth:`reconstruct`).
        """
        if not isinstance(volume, Volume):
            raise InputError(
                f"Engine.run takes a tomofield.Volume (load_volume(path), or Volume.from_array(array, affine)), got "
                f"{type(volume).__name__}; Engine.reconstruct takes a (C, D, H, W) tensor and its spacing"
            )
        turn = Reorientation.of(volume.affine) if self.config.orientation == "canonical" else Reorientation()
        heat = self.reconstruct(turn.forward(volume.data), turn.spacing(volume.spacing), progress, encoder, on_plan)
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
            assert self.preset is not None  # _per_volume is empty without a preset
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
            # options of the filter and sampler, where given (the reconstructor's are its fields, above)
            **{f"{k}_options": v for k, v in self._component_options.items() if v and k != "reconstructor"},
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
        new._scorers, new._given = {}, {}
        return new
