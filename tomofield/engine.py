"""The library entry point: :class:`Engine` turns a volume into a heatmap.

The engine streams chunks of directions: cut their slices in batches, score them
with encoder + head, filter each stack along its normal and backproject into the
output grid. Memory is bounded by the chunk, whatever the number of directions.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from tomofield import _fastpath, distributed, plugins
from tomofield.backproject import backproject_grid
from tomofield.checkpoint import is_run_dir, read_run
from tomofield.encoders import build_encoder, first_conv_in_chans, load_weights, read_safetensors
from tomofield.errors import InputError
from tomofield.geometry import (
    EXTENTS,
    GEOMETRIES,
    half_extents,
    slice_area,
    slice_offsets,
)
from tomofield.samplers import SamplingConfig

Progress = Callable[[int, int], None]

#: Engine settings a run directory of ``tomofield train`` provides as defaults.
RUN_FIELDS = ("slice_size", "geometry", "extent", "norm", "num_classes")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else must be usable here."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


@dataclass
class EngineConfig:
    """Everything that defines a reconstruction besides the components."""

    directions: int = 500
    slices: int = 48
    slice_size: int = 224
    hemisphere: bool = True
    geometry: str = "physical"
    extent: str = "unit"
    seed: int = 0
    batch_size: int = 64
    num_classes: int = 1
    pretrained: bool = False
    norm: str = "frozen-bn"
    head_options: dict[str, Any] = field(default_factory=dict)
    # Speed settings (docs/benchmarks.md has the measurements behind the defaults).
    #: autocast of the encoder: auto (fp16 on CUDA but fp32 for CAM heads, off on CPU), off, bf16, fp16.
    amp: str = "auto"
    #: feed the encoder channels-last slices.
    channels_last: bool = True
    #: torch.compile the encoder (logit head only; first batches pay the compile time).
    compile: bool = False
    #: give slices that sample nothing above empty_tol the score of a zero slice, unrun.
    skip_empty: bool = True
    empty_tol: float = 0.0
    #: under torch.distributed, share the directions of one volume among the ranks.
    shard_directions: bool = False

    def validate(self) -> None:
        checks = [
            (1 <= self.directions <= 100_000, f"directions must be in 1..100000, got {self.directions}"),
            (3 <= self.slices <= 10_000, f"slices must be in 3..10000, got {self.slices}"),
            (8 <= self.slice_size <= 4096, f"slice size must be in 8..4096 pixels, got {self.slice_size}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.geometry in GEOMETRIES, f"unknown geometry {self.geometry!r}; valid: {', '.join(GEOMETRIES)}"),
            (self.extent in EXTENTS, f"unknown extent {self.extent!r}; valid: {', '.join(EXTENTS)}"),
            (self.amp in _fastpath.AMP_MODES, f"unknown amp mode {self.amp!r}; valid: {', '.join(_fastpath.AMP_MODES)}"),
            (self.empty_tol >= 0, f"empty_tol must be >= 0, got {self.empty_tol}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)


def _build(kind: str, spec: Any, **options: Any) -> Any:
    if isinstance(spec, str):
        return plugins.get(kind, spec).factory(**options)
    return spec


class Engine:
    """Reconstruct 3D heatmaps from a 2D encoder's slice scores.

    Args:
        encoder: a registered or timm encoder name, or an ``nn.Module``.
        head: head name or object (``logit``, ``sum``, ...).
        filter: filter name or object (``tomo``, ``none``).
        sampler: sampler name or object (``fibonacci``, ``axial``, ``orthogonal``).
        postprocess: post-processor names or callables, applied in order.
        weights: a ``.safetensors`` file, or a run directory of ``tomofield train`` whose
            encoder name, norm, slice size, geometry and extent become the defaults (and,
            for the head it names in ``head_defaults``, that head's options).
        device: ``auto``, ``cpu``, ``cuda``...
        **config: fields of :class:`EngineConfig` (directions, slices, slice_size, ...).

    Example:
        >>> engine = Engine(head="sum", filter="tomo", directions=200, slices=32, slice_size=48)
        >>> heatmap = engine.reconstruct(volume, spacing=(2.5, 1.0, 1.0))  # (K, D, H, W)
    """

    def __init__(
        self,
        encoder: str | nn.Module | None = None,
        head: str | Any = "logit",
        filter: str | Any = "tomo",
        sampler: str | Any = "fibonacci",
        postprocess: Sequence[str | Callable[[Tensor, Tensor], Tensor]] = (),
        *,
        weights: str | None = None,
        device: str | torch.device = "auto",
        **config: Any,
    ) -> None:
        run: dict[str, Any] = {}
        if weights is not None and is_run_dir(weights):
            state, run = read_run(weights)
            inherited = {k: run[k] for k in RUN_FIELDS if k in run}
            config = {**inherited, **config}
            encoder = run["encoder"] if encoder is None else encoder
        if isinstance(head, str) and head in run.get("head_defaults", {}):
            # the run knows how its outputs read under this head (e.g. a density's units); explicit options win
            config["head_options"] = {**run["head_defaults"][head], **config.get("head_options", {})}
        self.config = EngineConfig(**config)
        self.config.validate()
        self.run = run
        self.device = resolve_device(device)
        self.head = _build("head", head, **self.config.head_options)
        self.filter = _build("filter", filter)
        self.sampler = _build("sampler", sampler)
        self.postprocess = [_build("postprocessor", p) for p in postprocess]
        self._encoder_spec = "resnet10t" if encoder is None else encoder
        self._weights_path = str(weights) if weights is not None else None
        self._weights = (state if run else read_safetensors(weights)) if weights is not None else None
        self._encoders: dict[int, nn.Module] = {}

    # -- encoder -------------------------------------------------------------------------
    def encoder_for(self, in_chans: int) -> nn.Module | None:
        """The encoder for volumes of ``in_chans`` channels (built once, cached)."""
        if not getattr(self.head, "needs_encoder", True):
            return None
        if isinstance(self._encoder_spec, nn.Module):
            return self._encoder_spec.to(self.device).eval()
        if in_chans not in self._encoders:
            if self._weights is not None:
                expected = first_conv_in_chans(self._weights)
                if expected is not None and expected != in_chans:
                    raise InputError(
                        f"weights {self._weights_path!r} expect {expected} input channel(s) but the "
                        f"volume has {in_chans}; give {expected} input file(s) or a {expected}-channel 4D NIfTI"
                    )
            name = self._encoder_spec
            with torch.random.fork_rng(devices=[]):  # reproducible random init, caller's RNG untouched
                torch.manual_seed(self.config.seed)
                model = build_encoder(
                    name, in_chans=in_chans, num_classes=self.config.num_classes,
                    pretrained=self.config.pretrained and self._weights is None, norm=self.config.norm,
                )
            if self._weights is not None:
                load_weights(model, self._weights, str(self._weights_path))
            self._encoders[in_chans] = model.to(self.device).eval()
        return self._encoders[in_chans]

    # -- reconstruction ------------------------------------------------------------------
    def plan(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[Tensor, list]:
        """Half-extents and direction groups for a volume of spatial ``shape``."""
        e = half_extents(shape, spacing, self.config.geometry)
        cfg = SamplingConfig(
            directions=self.config.directions, slices=self.config.slices,
            hemisphere=self.config.hemisphere, seed=self.config.seed, extent=self.config.extent,
        )
        return e, self.sampler.plan(tuple(shape), e, cfg)

    def count_slices(self, shape: Sequence[int], spacing: Sequence[float] = (1, 1, 1)) -> int:
        """Number of slices the encoder will see for a volume of this shape."""
        _, groups = self.plan(shape, spacing)
        return sum(len(g) * (g.num_slices + 2 * self.filter.pad) for g in groups)

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
        spacing = tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))
        shape = tuple(vol.shape[1:])
        e, groups = self.plan(shape, spacing)
        dev, cfg = self.device, self.config
        vol = vol.to(torch.float32)
        if dev.type == "cuda" and vol.device.type == "cpu":
            vol = vol.pin_memory().to(dev, non_blocking=True)  # asynchronous, no stream sync
        vol = vol.to(dev)
        encoder = self.encoder_for(vol.shape[0])
        e_dev = e.to(dev, torch.float32)
        pad = self.filter.pad
        n_dirs = sum(len(g) for g in groups)
        total = self.count_slices(shape, spacing)
        rank, world = distributed.rank_world() if cfg.shard_directions else (0, 1)
        if world > 1:  # each rank takes every world-th direction; the sums meet in an all-reduce
            distributed.check_enough(n_dirs, world)
            starts = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]
            groups = [g[distributed.shard_indices(st, len(g), rank, world)] for g, st in zip(groups, starts, strict=True)]
            groups = [g for g in groups if len(g)]
            total = sum(len(g) * (g.num_slices + 2 * pad) for g in groups)
        size = (cfg.slice_size, cfg.slice_size)
        out = None
        grad = getattr(self.head, "needs_grad", False)
        ctx = torch.no_grad if grad else torch.inference_mode
        scorer = _fastpath.Scorer.build(
            self.head, encoder, dev, amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile,
            batch_size=lambda: self.config.batch_size,  # read at each batch: it may shrink after an OOM
        )
        tick = lambda n: progress and progress(n, total)  # noqa: E731
        with ctx():
            skip = _fastpath.Occupancy.of(vol, e, cfg.empty_tol) if cfg.skip_empty else None
            empty = scorer.empty_score(vol.shape[0], size) if skip is not None else None
            for group in groups:
                gdev = group.to(dev)
                per_dir = group.num_slices + 2 * pad
                chunk = max(1, math.ceil(cfg.batch_size / per_dir), 4096 // per_dir)
                for start in range(0, len(gdev), chunk):
                    dirs = gdev[start : start + chunk]
                    hits = None
                    if skip is not None:
                        host = group[start : start + chunk]
                        hits = skip.hits(host, slice_offsets(host.s_half, host.num_slices, pad))
                    scores = self._score(vol, e_dev, dirs, pad, size, scorer, tick, hits, empty)
                    q = self.filter(scores, dirs.slice_spacing())
                    weight = torch.full((len(dirs),), self.filter.constant * 4 * math.pi / n_dirs, device=dev)
                    if self.filter.integral:
                        weight = weight * slice_area(dirs.a_half, dirs.b_half, size)
                    if out is None:
                        check_memory(q.shape[2], shape, dev)
                        out = torch.zeros(q.shape[2], math.prod(shape), device=dev, dtype=q.dtype)
                    backproject_grid(q, dirs, shape, e, size, weights=weight, out=out)
        assert out is not None
        if scorer.dtype is not None and not bool(torch.isfinite(out).all()):
            raise InputError(
                f"the heatmap has non-finite values: the encoder overflowed under amp={cfg.amp!r} "
                f"({scorer.dtype}); rerun with amp='bf16' (wider range) or amp='off'"
            )
        if world > 1:
            distributed.all_reduce_sum(out)
        heat = out.reshape(-1, *shape)
        for post in self.postprocess:
            heat = post(heat, vol)
        return heat

    def _score(self, vol, e, dirs, pad, size, scorer, tick, hits=None, empty=None) -> Tensor:
        """Scores (L, S, K, h, w) of every slice of a chunk of directions.

        Slices cut in batches across directions; where ``hits`` (L, S) is False the
        slice samples nothing above the empty tolerance and gets ``empty`` unrun.
        """
        L, S = len(dirs), dirs.num_slices + 2 * pad
        offsets = slice_offsets(dirs.s_half, dirs.num_slices, pad).reshape(-1)
        frames = _fastpath.normalised_frames(dirs, e)
        if hits is None:
            run = torch.arange(L * S, device=vol.device)
        else:
            run = hits.reshape(-1).nonzero()[:, 0].to(vol.device, non_blocking=True)
        n_run = run.shape[0]
        outs, b = [], 0
        while b < n_run:
            bs = self.config.batch_size
            j = run[b : b + bs]
            try:
                slices = _fastpath.cut_slices(vol, frames, dirs, j // S, offsets[j], size, e)
                outs.append(scorer(slices))
            except torch.OutOfMemoryError:
                if bs == 1:
                    raise
                # carry on with half the batch (kept for the rest of this engine's work)
                self.config.batch_size = max(1, bs // 2)
                if vol.device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(f"out of memory with batches of {bs} slices; continuing with {self.config.batch_size}",
                              RuntimeWarning, stacklevel=2)
                continue
            b += j.shape[0]
            tick(j.shape[0])
        if hits is None:
            scores = torch.cat(outs)
        else:
            scores = empty.expand(L * S, *empty.shape[1:]).clone()
            if outs:
                scores[run] = torch.cat(outs)
            tick(L * S - n_run)
        return scores.reshape(L, S, *scores.shape[1:])

    def with_options(self, **changes: Any) -> Engine:
        """A copy of this engine with some config fields changed (components shared)."""
        new = object.__new__(Engine)
        new.__dict__.update(self.__dict__)
        new.config = replace(self.config, **changes)
        new.config.validate()
        return new


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: the driver's count; CPU: available physical pages)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def check_memory(channels: int, shape: Sequence[int], device: torch.device, free: int | None = None) -> None:
    """Refuse an output grid whose accumulator and result would not fit, saying how much they need."""
    need = 2 * channels * math.prod(shape) * 4  # float32 accumulator + the returned heatmap
    free = available_memory(device) if free is None else free
    if free is not None and need > free:
        raise InputError(
            f"the output grid {tuple(shape)} with {channels} channel(s) needs {need / 2**30:.2f} GiB on {device} "
            f"but {free / 2**30:.2f} GiB are free; use fewer head channels (e.g. a projection) or a smaller volume"
        )


def validate_volume(volume: Tensor) -> Tensor:
    """A (C, D, H, W) float view of ``volume``; refuse what cannot be reconstructed."""
    if not isinstance(volume, Tensor):
        volume = torch.as_tensor(volume)
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
