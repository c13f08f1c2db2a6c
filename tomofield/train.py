"""Weakly supervised training of the slice encoder (DESIGN section 2, paper A.4).

Every slice inherits its volume's label. A step draws ``B`` volumes (pairs of one
positive and one negative), one uniform random normal per volume and ``M`` slices at
random offsets, with random in-plane bases of random lengths (anisotropic scale),
in-plane translation and an affine intensity change; binary cross-entropy (or MSE /
Huber for regression), Adam, a cosine learning-rate schedule updated every step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from tomofield import checkpoint as ck
from tomofield import distributed
from tomofield.dataset import Case, dataset_hash, read_dataset
from tomofield.engine import resolve_device
from tomofield.errors import InputError
from tomofield.geometry import half_extents, sample_slices, slice_points, stack_extents
from tomofield.io import load_volume
from tomofield.samplers import FibonacciSampler, SamplingConfig

TASKS = {"classification": ("bce",), "regression": ("mse", "huber")}


@dataclass
class TrainConfig:
    """Training arguments; defaults are the paper's except where noted."""

    encoder: str = "resnet10t"
    norm: str = "frozen-bn"
    pretrained: bool = False
    iterations: int = 1000
    slices_per_volume: int = 120
    slice_size: int = 224
    batch_volumes: int = 2
    lr: float = 5e-5
    lr_end: float = 1e-7
    seed: int = 0
    geometry: str = "physical"
    extent: str = "unit"
    task: str = "classification"
    loss: str = "bce"
    scale_jitter: float = 0.3
    translation: float = 0.3
    intensity_jitter: float = 0.3
    val_every: int = 100
    val_directions: int = 8
    val_slices: int = 16
    checkpoint_every: int = 100

    def validate(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        if self.loss not in TASKS[self.task]:
            raise InputError(f"loss {self.loss!r} does not fit task {self.task!r}; valid: {', '.join(TASKS[self.task])}")
        for name, lo in [("iterations", 1), ("slices_per_volume", 1), ("slice_size", 8), ("batch_volumes", 1),
                         ("val_every", 1), ("checkpoint_every", 1), ("val_directions", 1), ("val_slices", 2)]:
            if getattr(self, name) < lo:
                raise InputError(f"{name.replace('_', '-')} must be >= {lo}, got {getattr(self, name)}")
        if self.task == "classification" and self.batch_volumes % 2:
            raise InputError(f"batch-volumes must be even (pairs of one positive and one negative), got {self.batch_volumes}")
        if not self.lr > 0 or not self.lr_end >= 0:
            raise InputError(f"learning rates must be positive, got lr={self.lr}, lr_end={self.lr_end}")


def cosine_lr(step: int, total: int, lr: float, lr_end: float) -> float:
    """Learning rate at ``step`` of ``total``: ``lr`` at 0 down to ``lr_end`` at the end."""
    return lr_end + (lr - lr_end) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


@dataclass
class Loaded:
    """A volume cached on the device with its half-extents and target."""

    data: Tensor
    e: Tensor
    label: float
    case: Case


def load_cases(cases: list[Case], geometry: str, device: torch.device) -> list[Loaded]:
    out = []
    for c in cases:
        vol = load_volume(list(c.images))
        e = half_extents(vol.data.shape[1:], vol.spacing, geometry).to(device, torch.float32)
        out.append(Loaded(vol.data.to(device), e, c.label, c))
    chans = {v.data.shape[0] for v in out}
    if len(chans) > 1:
        raise InputError(f"volumes have different channel counts {sorted(chans)}; every volume needs the same")
    return out


def augmented_slices(vol: Loaded, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """``M`` randomly oriented, scaled, shifted, intensity-jittered slices (M, C, S, S)."""
    M, dev = cfg.slices_per_volume, vol.data.device
    U = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1  # noqa: E731
    n = torch.randn(3, generator=gen, dtype=torch.float64)
    n = (n / n.norm()).expand(M, 3)
    g = torch.randn(M, 3, generator=gen, dtype=torch.float64)
    u = g - (g * n).sum(-1, keepdim=True) * n
    u = u / u.norm(dim=-1, keepdim=True)
    v = torch.linalg.cross(n, u, dim=-1)
    s_half, a_half, b_half = stack_extents(vol.e.cpu().double(), n, u, v, cfg.extent)
    offsets = U(M) * s_half
    a_half = a_half * (1 + cfg.scale_jitter * U(M))
    b_half = b_half * (1 + cfg.scale_jitter * U(M))
    shift = (cfg.translation * U(M, 1) * a_half[:, None]) * u + (cfg.translation * U(M, 1) * b_half[:, None]) * v
    gain, bias = cfg.intensity_jitter * U(M, 1, 1, 1), cfg.intensity_jitter * U(M, 1, 1, 1)
    f = lambda t: t.to(dev, torch.float32)  # noqa: E731
    pts = slice_points(f(n), f(u), f(v), f(offsets), f(a_half), f(b_half), (cfg.slice_size, cfg.slice_size))
    x = sample_slices(vol.data, pts + f(shift)[:, None, None, :], vol.e)
    return (1 + f(gain)) * x + f(bias)


def pick_volumes(train: list[Loaded], cfg: TrainConfig, gen: torch.Generator) -> list[Loaded]:
    """Pairs of one positive and one negative (classification) or a random draw."""
    if cfg.task != "classification":
        return [train[int(i)] for i in torch.randint(len(train), (cfg.batch_volumes,), generator=gen)]
    pos = [v for v in train if v.label == 1]
    neg = [v for v in train if v.label == 0]
    out = []
    for _ in range(cfg.batch_volumes // 2):
        out.append(pos[int(torch.randint(len(pos), (1,), generator=gen))])
        out.append(neg[int(torch.randint(len(neg), (1,), generator=gen))])
    return out


@torch.inference_mode()
def volume_scores(model: nn.Module, vols: list[Loaded], cfg: TrainConfig, batch: int = 128) -> Tensor:
    """Max over a fixed set of slices of each volume's logit (the volume-level prediction)."""
    sampler, out = FibonacciSampler(), []
    scfg = SamplingConfig(directions=cfg.val_directions, slices=cfg.val_slices, hemisphere=True, seed=0, extent=cfg.extent)
    for vol in vols:
        d = sampler.plan(vol.data.shape[1:], vol.e.cpu().double(), scfg)[0].to(vol.data.device)
        L, M = len(d), d.num_slices
        off = (d.s_half[:, None] * torch.linspace(-1, 1, M, device=vol.data.device)).reshape(-1)
        idx = torch.arange(L, device=vol.data.device).repeat_interleave(M)
        best = torch.tensor(-math.inf, device=vol.data.device)
        for b in range(0, L * M, batch):
            i = idx[b : b + batch]
            pts = slice_points(d.normals[i], d.u[i], d.v[i], off[b : b + batch], d.a_half[i], d.b_half[i],
                               (cfg.slice_size, cfg.slice_size))
            best = torch.maximum(best, model(sample_slices(vol.data, pts, vol.e))[:, 0].max())
        out.append(best)
    return torch.stack(out).cpu()


def best_threshold(scores: Tensor, labels: Tensor) -> float:
    """The threshold on volume scores maximising balanced accuracy (midpoint between scores)."""
    s = torch.sort(scores.double()).values
    candidates = torch.cat([s[:1] - 1, (s[1:] + s[:-1]) / 2, s[-1:] + 1])
    accs = [balanced_accuracy(labels, (scores.double() >= t).float()) for t in candidates]
    return float(candidates[int(torch.tensor(accs).argmax())])


def auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve (probability a positive outscores a negative; ties count 1/2)."""
    pos, neg = scores[labels == 1].double(), scores[labels == 0].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def balanced_accuracy(labels: Tensor, predicted: Tensor) -> float:
    """Mean of sensitivity and specificity (a missing class counts as 1)."""
    pos, neg = labels == 1, labels == 0
    sens = float((predicted[pos] == 1).float().mean()) if pos.any() else 1.0
    spec = float((predicted[neg] == 0).float().mean()) if neg.any() else 1.0
    return (sens + spec) / 2


Progress = Callable[[dict[str, Any]], None]


class Trainer:
    """Train an encoder from a dataset CSV into a run directory (resumable)."""

    def __init__(self, train_csv: str | Path, run_dir: str | Path, config: TrainConfig,
                 val_csv: str | Path | None = None, device: str = "auto", resume: bool = False) -> None:
        config.validate()
        self.cfg, self.run_dir, self.device = config, Path(run_dir), resolve_device(device)
        self.train_csv, self.val_csv = Path(train_csv), Path(val_csv) if val_csv else None
        self.cases = read_dataset(self.train_csv, config.task)
        self.val_cases = read_dataset(self.val_csv, config.task) if self.val_csv else []
        if config.task == "classification" and {c.label for c in self.cases} != {0.0, 1.0}:
            raise InputError(f"{self.train_csv}: training needs both positive (1) and negative (0) volumes")
        self.hash = dataset_hash(self.train_csv, self.cases)
        self.resume = resume
        self.loss_log: list[dict[str, float]] = []  # mean training loss between checkpoints
        state = self.run_dir / ck.STATE
        if resume and not state.is_file():
            raise InputError(f"--resume: no checkpoint {str(state)!r} to resume from")
        if resume:
            # writes cut short by a kill: ours (.NAME.XXXX.tmp.EXT) and safetensors' own (.tmpXXXXXX)
            for stale in [*self.run_dir.glob(".*.tmp*"), *self.run_dir.glob(".tmp*")]:
                if stale.is_file():
                    stale.unlink(missing_ok=True)
        if not resume and self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise InputError(f"run directory {str(self.run_dir)!r} is not empty; pass --resume to continue it or choose another")

    def _build(self, in_chans: int) -> nn.Module:
        from tomofield.encoders import build_encoder

        torch.manual_seed(self.cfg.seed)
        return build_encoder(self.cfg.encoder, in_chans=in_chans, num_classes=1, pretrained=self.cfg.pretrained,
                             norm=self.cfg.norm).to(self.device)

    def run_config(self, in_chans: int, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": ck.FORMAT, "encoder": self.cfg.encoder, "in_chans": in_chans, "num_classes": 1,
            "norm": self.cfg.norm, "slice_size": self.cfg.slice_size, "geometry": self.cfg.geometry,
            "extent": self.cfg.extent, "task": self.cfg.task, "training": asdict(self.cfg),
            "dataset": {"csv": str(self.train_csv.resolve()), "sha256": self.hash, "volumes": len(self.cases)},
            "iteration": step, "metrics": metrics, "loss_log": self.loss_log,
        }

    def _save(self, model, opt, gen, step, in_chans, history) -> None:
        """Rank 0 writes; every rank's RNG state is kept so a resume continues each stream."""
        states = distributed.gather_objects(gen.get_state())
        rank, world = distributed.rank_world()
        if rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        opt_t, groups = ck.pack_optimizer(opt)
        rngs = {"rng" if r == 0 else f"rng.{r}": st for r, st in enumerate(states)}
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_t | rngs
        meta = {"iteration": str(step), "param_groups": groups, "history": json.dumps(history),
                "loss_log": json.dumps(self.loss_log),
                "training": json.dumps(asdict(self.cfg)), "dataset_sha256": self.hash, "world_size": str(world)}
        ck.save_tensors(self.run_dir / ck.STATE, tensors, meta)
        ck.save_tensors(self.run_dir / ck.MODEL, model.state_dict())
        ck.write_json(self.run_dir / ck.CONFIG, self.run_config(in_chans, step, history[-1] if history else {}))

    def _restore(self, model, opt, gen) -> tuple[int, list]:
        from safetensors import safe_open

        path = self.run_dir / ck.STATE
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        saved = json.loads(meta["training"])
        mine = asdict(self.cfg)
        differ = [k for k in mine if k != "iterations" and saved.get(k) != mine[k]]
        if differ:
            raise InputError(f"--resume with different training arguments: {', '.join(f'{k} (was {saved.get(k)!r}, now {mine[k]!r})' for k in differ)}")
        if meta["dataset_sha256"] != self.hash:
            raise InputError(f"--resume: the dataset {str(self.train_csv)!r} changed since the checkpoint")
        rank, world = distributed.rank_world()
        if int(meta.get("world_size", "1")) != world:
            raise InputError(f"--resume: the checkpoint was written by {meta.get('world_size', '1')} process(es), "
                             f"this run has {world}; resume with the same number")
        tensors = load_file(str(path))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ck.unpack_optimizer(opt, tensors, meta["param_groups"])
        gen.set_state(tensors["rng" if rank == 0 else f"rng.{rank}"])
        self.loss_log = json.loads(meta.get("loss_log", "[]"))
        return int(meta["iteration"]), json.loads(meta["history"])

    def validate(self, model: nn.Module, vols: list[Loaded], train: list[Loaded]) -> dict[str, float]:
        """Volume-level metrics: the max over a fixed set of slices is the volume's score.

        The decision threshold is the one that maximises balanced accuracy on the
        training volumes (slice logits of weakly labelled data are not calibrated at 0),
        applied unchanged to the validation volumes.
        """
        model.eval()
        try:
            scores = volume_scores(model, vols, self.cfg)
            train_scores = volume_scores(model, train, self.cfg) if self.cfg.task == "classification" else None
        finally:
            model.train()
        labels = torch.tensor([v.label for v in vols])
        if train_scores is not None:
            tau = best_threshold(train_scores, torch.tensor([v.label for v in train]))
            return {"val_balanced_accuracy": balanced_accuracy(labels, (scores >= tau).float()),
                    "val_auc": auc(scores, labels), "threshold": tau}
        r = torch.corrcoef(torch.stack([scores.double(), labels.double()]))[0, 1] if len(vols) > 1 else torch.nan
        return {"val_mae": float((scores - labels).abs().mean()), "val_pearson": float(r)}

    def fit(self, progress: Progress | None = None) -> dict[str, Any]:
        """Train to ``iterations`` steps (continuing a checkpoint with ``resume``)."""
        cfg = self.cfg
        train = load_cases(self.cases, cfg.geometry, self.device)
        val = load_cases(self.val_cases, cfg.geometry, self.device) if self.val_cases else []
        in_chans = int(train[0].data.shape[0])
        if val and int(val[0].data.shape[0]) != in_chans:
            raise InputError(f"validation volumes have {val[0].data.shape[0]} channels, training volumes {in_chans}")
        model = self._build(in_chans).train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        rank, world = distributed.rank_world()
        # each rank draws its own volumes and augmentations; DDP averages the gradients
        gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * rank)
        step, history = (self._restore(model, opt, gen) if self.resume else (0, []))
        net = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        loss_fn = {"bce": F.binary_cross_entropy_with_logits, "mse": F.mse_loss, "huber": F.huber_loss}[cfg.loss]
        t0, seen, loss_v = time.perf_counter(), 0, float("nan")
        window: list[float] = []  # losses since the last checkpoint
        while step < cfg.iterations:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, cfg.iterations, cfg.lr, cfg.lr_end)
            vols = pick_volumes(train, cfg, gen)
            x = torch.cat([augmented_slices(v, cfg, gen) for v in vols])
            y = torch.tensor([v.label for v in vols], device=self.device).repeat_interleave(cfg.slices_per_volume)
            loss = loss_fn(net(x)[:, 0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += x.shape[0]
            loss_v = float(loss.detach())
            window.append(loss_v)
            record: dict[str, Any] = {"iteration": step, "loss": loss_v, "lr": opt.param_groups[0]["lr"]}
            if val and rank == 0 and (step % cfg.val_every == 0 or step == cfg.iterations):
                record |= self.validate(model, val, train)
                history.append(record)
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
                mean = distributed.all_reduce_sum(torch.tensor([sum(window), len(window)], dtype=torch.float64))
                self.loss_log.append({"iteration": step, "train_loss": float(mean[0] / mean[1])})
                window = []
                self._save(model, opt, gen, step, in_chans, history)
            if progress:
                progress(record | {"total": cfg.iterations, "slices_per_s": seen / (time.perf_counter() - t0)})
        return {"iteration": step, "loss": loss_v, "history": history, "run_dir": str(self.run_dir)}


def config_from_options(**options: Any) -> TrainConfig:
    """A TrainConfig from keyword options, ignoring the ones it does not know."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in options.items() if k in names and v is not None})
