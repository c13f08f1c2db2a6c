"""The training loop: :class:`Trainer` (fit, checkpoints, resume) and its learning-rate schedule."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomofield import checkpoint as ck
from tomofield import distributed
from tomofield.batch.claims import acquire_lock, lock_holder, release_lock
from tomofield.calibration import OperatingPoint
from tomofield.dataset import dataset_hash, read_dataset
from tomofield.engine import resolve_device
from tomofield.engine.budget import Estimate, estimate
from tomofield.errors import InputError, NotLearningWarning
from tomofield.io import check_output_path, write_error
from tomofield.train.config import TrainConfig
from tomofield.train.curves import write_curves
from tomofield.train.monitor import Monitor
from tomofield.train.objective import chance_loss, mil_loss, pool
from tomofield.train.slicing import (
    Loaded,
    augmented_slices,
    load_cases,
    pick_volumes,
    spatial_shapes,
    stack_slices,
)
from tomofield.train.teacher import Teacher, spread_targets
from tomofield.train.validation import (
    classification_metrics,
    negatives_operating_point,
    regression_metrics,
    scores_and_localisation,
    volume_scores,
)

Progress = Callable[[dict[str, Any]], None]
#: The dataset CSV ``tomofield train`` writes into the run folder when it is given a folder of images.
GIVEN_DATASET = "dataset.csv"
#: The lock file of a run folder while a training writes it: its owner (``tomofield-PID@HOST``) and start time.
RUN_LOCK = ".tomofield-train.lock"
#: Training volumes of each class scored at a validation for its decision threshold.
THRESHOLD_VOLUMES = 8
LOSSES: dict[str, Callable[..., Tensor]] = {
    "bce": F.binary_cross_entropy_with_logits,
    "mse": F.mse_loss,
    "huber": F.huber_loss,
}


def cosine_lr(step: int, total: int, lr: float, lr_end: float, warmup: int = 0) -> float:
    """Learning rate at ``step`` of ``total``: up linearly to ``lr`` over ``warmup`` steps, then cosine down to ``lr_end``.

    >>> [round(cosine_lr(s, 10, 1.0, 0.0, warmup=2), 3) for s in (0, 1, 2, 6, 10)]
    [0.333, 0.667, 1.0, 0.5, 0.0]
    """
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    return lr_end + (lr - lr_end) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def check_run_dir(
    run_dir: str | Path, resume: bool = False, inputs: Sequence[str | Path] = (), lock: bool = True
) -> Path:
    """Refuse, before any work, a run folder a training cannot write or must not.

    Refused: what :func:`tomofield.io.check_output_path` refuses of a folder (a file, a path
    under a file, an unwritable folder, a name too long), a folder another training is
    writing (its lock, :data:`RUN_LOCK`, held by a live process: named with its start time;
    ``lock=False`` skips this, for the ranks of a job whose rank 0 holds it), and without
    ``resume`` a folder that holds anything but the dataset CSV ``tomofield train`` writes
    into it (:data:`GIVEN_DATASET`) or a stale lock.
    """
    path = check_output_path(run_dir, inputs=inputs, folder=True)
    if lock:
        holder = lock_holder(path / RUN_LOCK)
        if holder is not None:
            raise InputError(_busy(path, holder))
    if not resume and path.is_dir() and any(p.name not in (GIVEN_DATASET, RUN_LOCK) for p in path.iterdir()):
        raise InputError(f"run directory {str(run_dir)!r} is not empty; pass --resume to continue it or choose another")
    return path


def _busy(run_dir: Path, holder: str) -> str:
    return (
        f"run directory {str(run_dir)!r} is being trained by {holder} (its lock {str(run_dir / RUN_LOCK)!r}); "
        "wait until that training ends (then --resume continues it), or choose another folder. If that process "
        "is gone (on another machine, or killed there), remove the lock file"
    )


class Scaled(nn.Module):
    """``scale x model(x)``: a density encoder's outputs in target units per mL."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.model(x)


class Trainer:
    """Train an encoder from a dataset CSV into a run directory (resumable).

    Attributes:
        cfg: the resolved configuration (:meth:`TrainConfig.resolved`): every setting concrete,
            as written to ``config.json`` and ``state.safetensors``.
    """

    def __init__(
        self,
        train_csv: str | Path,
        run_dir: str | Path,
        config: TrainConfig,
        val_csv: str | Path | None = None,
        device: str = "auto",
        resume: bool = False,
    ) -> None:
        config.validate()
        self.train_csv, self.val_csv = Path(train_csv), Path(val_csv) if val_csv else None
        # the run folder first: nothing is read or computed for a folder that cannot be, or must not be, written
        inputs = [self.train_csv, *([self.val_csv] if self.val_csv else [])]
        check_run_dir(run_dir, resume, inputs, lock=distributed.rank_world()[0] == 0)
        self.cases = read_dataset(self.train_csv, config.task)
        needs_shapes = config.slice_size is None and config.teacher is None
        config = config.resolved(spatial_shapes(self.cases) if needs_shapes else None)
        config.validate()
        self.cfg, self.run_dir, self.device = config, Path(run_dir), resolve_device(device)
        self.estimate().check(
            time_fix="lower iterations, batch_volumes, slices_per_volume or slice_size",
            memory_fix="lower batch_volumes, slices_per_volume or slice_size",
        )
        #: watches the run for signs of not learning (recorded as the run's diagnostics)
        self.val_cases = read_dataset(self.val_csv, config.task) if self.val_csv else []
        chance = (
            chance_loss(config.objective, config.slice_weight, config.negative_share, config.pool)
            if config.task == "classification"
            else None
        )
        self.monitor = Monitor.for_loss(
            config.task, config.loss, config.iterations, config.lr, chance=chance, validated=bool(self.val_cases)
        )
        if config.task == "classification" and {c.label for c in self.cases} != {0.0, 1.0}:
            raise InputError(f"{self.train_csv}: training needs both positive (1) and negative (0) volumes")
        self.hash = dataset_hash(self.train_csv, self.cases)
        self.resume = resume
        self.loss_log: list[dict[str, float]] = []  # mean training loss between checkpoints
        self.scale, self.baseline = 1.0, 0.0  # density regression: output units, the teacher's baseline
        #: the encoder's operating point (tomofield.calibration), taken when the run ends
        self.point: OperatingPoint | None = None
        state = self.run_dir / ck.STATE
        if resume and not (state.exists() or state.is_symlink()):
            raise InputError(f"--resume: no checkpoint {str(state)!r} to resume from")
        #: the checkpoint to resume from, its header and metadata checked (:func:`tomofield.checkpoint.read_state`)
        self.state = ck.read_state(self.run_dir) if resume else None

    def estimate(self) -> Estimate:
        """The least time and memory of this training (:mod:`tomofield.engine.budget`): each step's slices
        through the encoder forward and backward (three passes), a step's input in memory at once."""
        cfg = self.cfg
        per_step = cfg.batch_volumes * cfg.slices_per_volume
        channels = min((len(c.images) for c in self.cases), default=1)  # a 4D file may hold more: a lower bound
        return estimate(
            per_step * cfg.iterations,
            cfg.slice_size,
            channels,
            per_step,
            self.device,
            passes=3.0,
            halves=False,
            what=f"{cfg.iterations:,} steps of {cfg.batch_volumes} x {cfg.slices_per_volume} slices of "
            f"{cfg.slice_size} x {cfg.slice_size} px",
        )

    def _build(self, in_chans: int) -> nn.Module:
        from tomofield.encoders import build_encoder

        torch.manual_seed(self.cfg.seed)
        return build_encoder(
            self.cfg.encoder, in_chans=in_chans, num_classes=1, pretrained=self.cfg.pretrained, norm=self.cfg.norm
        ).to(self.device)

    def run_config(self, in_chans: int, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """The run directory's ``config.json``."""
        return (
            {
                "format": ck.FORMAT,
                "encoder": self.cfg.encoder,
                "in_chans": in_chans,
                "num_classes": 1,
                "norm": self.cfg.norm,
                "slice_size": self.cfg.slice_size,
                "geometry": self.cfg.geometry,
                "extent": self.cfg.extent,
                "intensity": self.cfg.intensity,
                "task": self.cfg.task,
                "training": asdict(self.cfg),
                "dataset": {"csv": str(self.train_csv.resolve()), "sha256": self.hash, "volumes": len(self.cases)},
                "iteration": step,
                "metrics": metrics,
                "loss_log": self.loss_log,
                "diagnostics": self.monitor.record(),
            }
            | (
                {
                    "teacher": str(Path(self.cfg.teacher).resolve()),
                    "teacher_baseline": self.baseline,
                    "head_defaults": {"regression": {"scale": self.scale, "nonnegative": True}},
                }
                if self.cfg.teacher
                else {}
            )
            | ({"operating_point": self.point.to_json()} if self.point is not None else {})
        )

    def _save(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        gen: torch.Generator,
        step: int,
        in_chans: int,
        history: list[dict[str, Any]],
    ) -> None:
        """Rank 0 writes (atomically, through :mod:`tomofield.checkpoint`); every rank's RNG state is kept."""
        states = distributed.gather_objects(gen.get_state())
        rank, world = distributed.rank_world()
        if rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        opt_t, groups = ck.pack_optimizer(opt)
        rngs = {"rng" if r == 0 else f"rng.{r}": st for r, st in enumerate(states)}
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_t | rngs
        meta = {
            "iteration": str(step),
            "param_groups": groups,
            "history": json.dumps(history),
            "loss_log": json.dumps(self.loss_log),
            "training": json.dumps(asdict(self.cfg)),
            "dataset_sha256": self.hash,
            "world_size": str(world),
        }
        config = self.run_config(in_chans, step, history[-1] if history else {})
        ck.save_tensors(self.run_dir / ck.STATE, tensors, meta)
        ck.write_run(self.run_dir, model.state_dict(), config)
        write_curves(self.run_dir, self.loss_log, history)  # history.csv / .png: the whole run, resumed or not

    def _remove_stale(self) -> None:
        """Delete writes cut short by a kill: ours (.NAME.XXXX.tmp.EXT) and safetensors' own (.tmpXXXXXX)."""
        for stale in [*self.run_dir.glob(".*.tmp*"), *self.run_dir.glob(".tmp*")]:
            if stale.is_file():
                stale.unlink(missing_ok=True)

    def _restore(self, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> tuple[int, list]:
        """Load the checkpoint into ``model``, ``opt`` and ``gen``; return its step and history."""
        from tomofield.encoders import load_weights

        st = self.state if self.state is not None else ck.read_state(self.run_dir)
        saved, mine = st.training, asdict(self.cfg)
        differ = [k for k in mine if k != "iterations" and saved.get(k) != mine[k]]
        if differ:
            raise InputError(
                f"--resume with different training arguments: {', '.join(f'{k} (was {saved.get(k)!r}, now {mine[k]!r})' for k in differ)}"
            )
        if st.dataset_sha256 != self.hash:
            raise InputError(f"--resume: the dataset {str(self.train_csv)!r} changed since the checkpoint")
        rank, world = distributed.rank_world()
        if st.world_size != world:
            raise InputError(
                f"--resume: the checkpoint was written by {st.world_size} process(es), "
                f"this run has {world}; resume with the same number"
            )
        tensors = st.tensors()
        load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(st.path))
        try:
            ck.unpack_optimizer(opt, tensors, st.param_groups)
            gen.set_state(tensors["rng" if rank == 0 else f"rng.{rank}"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"--resume: the optimizer or random state in {str(st.path)!r} does not fit this run: {exc}"
            ) from exc
        self.loss_log = st.loss_log
        if ck.is_run_dir(self.run_dir):
            self.monitor.restore(ck.RunDir(self.run_dir).config.get("diagnostics", {}))
        return st.iteration, st.history

    def take_operating_point(self, model: nn.Module, val: list[Loaded], train: list[Loaded]) -> None:
        """Record the encoder's operating point from the validation negatives (the training ones without).

        Their stacks are the validation's (:func:`~tomofield.train.validation.stack_logits`).
        Only a classifier trained without a teacher has one.
        """
        if self.cfg.task != "classification" or self.cfg.teacher is not None:
            return
        negatives = [v for v in val if v.label == 0]
        source = "validation"
        if not negatives:
            negatives, source = [v for v in train if v.label == 0], "training"
        model.eval()
        try:
            self.point = negatives_operating_point(model, negatives, self.cfg, source)
        except InputError as exc:  # too few negative slices: the run says so and records none
            warnings.warn(f"no operating point recorded: {exc}", UserWarning, stacklevel=2)
        finally:
            model.train()

    def validate(self, model: nn.Module, vols: list[Loaded], train: list[Loaded]) -> dict[str, float]:
        """Volume-level metrics: the pooled slices of a fixed set of stacks are the volume's score.

        The decision threshold is the one that maximises balanced accuracy on the
        training volumes (slice logits of weakly labelled data are not calibrated at 0;
        at most :data:`THRESHOLD_VOLUMES` of each class), applied unchanged to the
        validation volumes. A classifier's validation positives that have a mask also give
        ``val_localisation`` (:func:`~tomofield.train.validation.localisation`, their mean)
        and ``val_localised_volumes`` (how many).
        """
        train = [v for c in (1.0, 0.0) for v in [v for v in train if v.label == c][:THRESHOLD_VOLUMES]]
        model.eval()
        located: dict[str, float] = {}
        try:
            if self.cfg.task == "classification":
                scores, loc, n = scores_and_localisation(model, vols, self.cfg)
                located = {"val_localisation": loc, "val_localised_volumes": n} if n else {}
            else:
                scores = volume_scores(Scaled(model, self.scale) if self.cfg.teacher else model, vols, self.cfg)
            train_scores = volume_scores(model, train, self.cfg) if self.cfg.task == "classification" else None
        finally:
            model.train()
        labels = torch.tensor([v.label for v in vols])
        if train_scores is not None:
            train_labels = torch.tensor([v.label for v in train])
            return classification_metrics(scores, labels, train_scores, train_labels) | located
        return regression_metrics(scores, labels)

    def _teacher(self, model: nn.Module, train: list[Loaded], in_chans: int) -> Teacher:
        """Load and calibrate the teacher and start ``model`` from its weights."""
        cfg = self.cfg
        assert cfg.teacher is not None  # called for a run with a teacher only
        teacher = Teacher(cfg.teacher, in_chans, self.device)
        mine, theirs = (cfg.encoder, cfg.norm), (teacher.run["encoder"], teacher.run["norm"])
        if mine != theirs:
            raise InputError(
                f"the student starts from the teacher, so it needs the teacher's encoder and norm {theirs}, got {mine}"
            )
        self.scale = teacher.calibrate(train, cfg)
        self.baseline = teacher.baseline
        model.load_state_dict(teacher.model.state_dict())
        return teacher

    def _loss(
        self, net: nn.Module, vols: list[Loaded], teacher: Teacher | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One step's slices, loss, outputs and each volume's score (its slices pooled; None for regression).

        Classification: ``mil`` cuts one stack per volume and pools it (:mod:`tomofield.train.objective`),
        ``slice`` gives every slice its volume's label; with a teacher, each slice its density.
        """
        cfg, loss_fn = self.cfg, LOSSES[self.cfg.loss]
        M = cfg.slices_per_volume
        if teacher is None:
            mil = cfg.task == "classification" and cfg.objective == "mil"
            support = cfg.stack_range == "support"
            cut = (
                (lambda v: stack_slices(v, cfg, gen, support)[0]) if mil else (lambda v: augmented_slices(v, cfg, gen))
            )
            x = torch.cat([cut(v) for v in vols])
            out = net(x)[:, 0]
            labels = torch.tensor([v.label for v in vols], device=self.device)
            if cfg.task != "classification":
                return x, loss_fn(out, labels.repeat_interleave(M)), out, None
            z = out.reshape(len(vols), M)
            if mil:
                loss = mil_loss(
                    z,
                    labels,
                    cfg.pool,
                    temperature=cfg.pool_temperature,
                    k=cfg.pool_k,
                    slice_weight=cfg.slice_weight,
                    negative_share=cfg.negative_share,
                )
            else:
                loss = loss_fn(out, labels.repeat_interleave(M))
            return x, loss, out, pool(z.detach(), cfg.pool, temperature=cfg.pool_temperature, k=cfg.pool_k)
        # density regression: the teacher spreads each target over a full stack
        xs, ws = zip(*[stack_slices(v, cfg, gen) for v in vols], strict=True)
        x, w = torch.cat(xs), torch.stack(ws)
        targets = torch.tensor([v.label for v in vols], device=self.device)
        density, usable = spread_targets(teacher.excess(x).reshape(len(vols), -1), w, targets)
        out = net(x)[:, 0]
        per_slice = loss_fn(out.reshape(len(vols), -1), density / self.scale, reduction="none")
        return x, (per_slice * usable[:, None]).sum() / (usable.sum() * M).clamp_min(1), out, None

    def fit(self, progress: Progress | None = None) -> dict[str, Any]:
        """Train to ``iterations`` steps (continuing a checkpoint with ``resume``).

        The run folder is locked while it trains (:data:`RUN_LOCK`, by rank 0): another training
        into it, or a ``resume`` of it, is refused meanwhile, naming this process and its start
        time. The lock goes at the end, however the training ends; the lock of a process that is
        gone from this host is taken over, with a warning.
        """
        rank, _ = distributed.rank_world()
        if rank != 0:
            return self._fit(progress)
        lock, made = self._lock()
        try:
            return self._fit(progress)
        finally:
            release_lock(lock)
            for folder in made:  # folders made for the lock, still empty: the run wrote nothing
                with suppress(OSError):
                    folder.rmdir()

    def _lock(self) -> tuple[Path, list[Path]]:
        """Take the run folder's lock (making the folder); returns it and the folders made for it, innermost first."""
        made = [p for p in [self.run_dir, *self.run_dir.parents] if not p.exists()]
        lock = self.run_dir / RUN_LOCK
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            taken, holder = acquire_lock(lock)
        except OSError as exc:
            for folder in made:
                with suppress(OSError):
                    folder.rmdir()
            raise write_error(lock, exc) from exc
        if not taken:
            for folder in made:
                with suppress(OSError):
                    folder.rmdir()
            raise InputError(_busy(self.run_dir, holder or "another process"))
        if holder is not None:
            warnings.warn(
                f"took over the lock of run directory {str(self.run_dir)!r} from {holder}, which no longer runs "
                "on this host (killed, or it crashed)",
                stacklevel=3,
            )
        return lock, made

    def _fit(self, progress: Progress | None = None) -> dict[str, Any]:
        cfg = self.cfg
        train = load_cases(self.cases, cfg.geometry, self.device, cfg.intensity)
        classify = cfg.task == "classification"
        val = (
            load_cases(self.val_cases, cfg.geometry, self.device, cfg.intensity, masks=classify)
            if self.val_cases
            else []
        )
        in_chans = int(train[0].data.shape[0])
        if val and int(val[0].data.shape[0]) != in_chans:
            raise InputError(f"validation volumes have {val[0].data.shape[0]} channels, training volumes {in_chans}")
        model = self._build(in_chans).train()
        teacher = self._teacher(model, train, in_chans) if cfg.teacher is not None else None
        opt = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8
        )
        rank, world = distributed.rank_world()
        # each rank draws its own volumes and augmentations; DDP averages the gradients
        gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * rank)
        step, history = self._restore(model, opt, gen) if self.resume else (0, [])
        if self.resume:  # the checkpoint is loaded: only now is anything in the folder touched
            self._remove_stale()
        net = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        t0, seen, loss_v = time.perf_counter(), 0, float("nan")
        window: list[float] = []  # losses since the last checkpoint
        while step < cfg.iterations:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, cfg.iterations, cfg.lr, cfg.lr_end, cfg.warmup)
            drawn = pick_volumes(train, cfg, gen)
            x, loss, outputs, scores = self._loss(net, drawn, teacher, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += x.shape[0]
            spread = (
                outputs.detach().float().std() if outputs.numel() > 1 else outputs.new_zeros((), dtype=torch.float32)
            )
            fetched = [loss.detach().float(), spread] + ([] if scores is None else list(scores.float()))
            loss_v, spread_v, *score_v = torch.stack(fetched).tolist()  # one transfer from the device
            window.append(loss_v)
            self.monitor.step(loss_v, spread_v, score_v or None, [v.label for v in drawn] if score_v else None)
            record: dict[str, Any] = {"iteration": step, "loss": loss_v, "lr": opt.param_groups[0]["lr"]}
            problems = [p for p in [self.monitor.diverged(step, loss_v)] if p is not None]
            if val and rank == 0 and (step % cfg.val_every == 0 or step == cfg.iterations):
                metrics = self.validate(model, val, train)
                record |= metrics
                history.append(record)
                problems += self.monitor.validation(step, metrics)
            stop = not math.isfinite(loss_v)
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations or stop:
                mean = distributed.all_reduce_sum(torch.tensor([sum(window), len(window)], dtype=torch.float64))
                logged = {"iteration": step, "train_loss": float(mean[0] / mean[1]), "lr": opt.param_groups[0]["lr"]}
                separation = self.monitor.separation()
                self.loss_log.append(logged | ({"train_auc": separation} if math.isfinite(separation) else {}))
                window = []
                problems += self.monitor.checkpoint(step)
                if step == cfg.iterations and rank == 0 and not stop:
                    self.take_operating_point(model, val or [], train)
                if not stop:
                    self._save(model, opt, gen, step, in_chans, history)
            if problems and rank == 0 and not progress:
                for p in problems:
                    warnings.warn(f"training may not be learning: {p.message}", NotLearningWarning, stacklevel=3)
            if progress:
                rate = seen / (time.perf_counter() - t0)
                said = {"warnings": [p.message for p in problems]} if problems else {}
                progress(record | said | {"total": cfg.iterations, "slices_per_s": rate})
            if stop:
                self._record_diagnostics(in_chans, step, history)
                raise InputError(
                    f"training diverged at iteration {step} (loss {loss_v}); the last checkpoint in "
                    f"{str(self.run_dir)!r} is kept, its diagnostics say so. Try a lower --lr (now {cfg.lr:g})"
                )
        return {
            "iteration": step,
            "loss": loss_v,
            "history": history,
            "run_dir": str(self.run_dir),
            "diagnostics": self.monitor.record(),
        }

    def _record_diagnostics(self, in_chans: int, step: int, history: list[dict[str, Any]]) -> None:
        """Write the diagnostics into ``config.json`` without a new checkpoint (the weights are not finite)."""
        rank, _ = distributed.rank_world()
        if rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last = ck.RunDir(self.run_dir).config if ck.is_run_dir(self.run_dir) else None
        cfg = self.run_config(in_chans, step, history[-1] if history else {})
        if last is not None:  # the checkpoint's iteration and metrics stay; only the verdict changes
            cfg |= {"iteration": last.get("iteration", 0), "metrics": last.get("metrics", {})}
        ck.write_json(self.run_dir / ck.CONFIG, cfg)
