"""Weakly supervised training of the slice encoder (DESIGN section 2, paper A.4).

Every slice inherits its volume's label. A step draws ``B`` volumes (pairs of one
positive and one negative), one uniform random normal per volume and ``M`` slices at
random offsets, with random in-plane bases of random lengths (anisotropic scale),
in-plane translation and an affine intensity change; binary cross-entropy (or MSE /
Huber for regression), Adam, a cosine learning-rate schedule updated every step.

Regression with a ``teacher`` (a classification run on the same kind of data) trains an
encoder whose slice score is a *density*: the mean over the slice of target units per
mL, what the ``tomo`` filter inverts, so the heatmap integrates to the target. Each step
cuts every drawn volume into one full stack of ``M`` parallel slices (stratified offsets
over the volume's support; augmentation that never crops the cross-section), the
teacher scores the slices, and the volume's target is spread over the slices in
proportion to the teacher's excess over its score on negative volumes, so that the stack's
quadrature ``sum_k w_k d_k`` (``w_k`` = slice area x spacing in mL) is exactly the target
(:func:`spread_targets`). The student, initialised from the teacher, regresses those
densities slice by slice. Only volume-level labels are used (docs/features.md).
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
from tomofield.geometry import (
    half_extents,
    sample_slices,
    slice_area,
    slice_points,
    stack_extents,
    unit_volume_mm3,
)
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
    #: regression only: run directory of a classification encoder that places each target (module doc).
    teacher: str | None = None
    #: the teacher's baseline: this quantile of its slice scores on the volumes whose target is 0.
    teacher_quantile: float = 0.95

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
        if self.teacher is not None and self.task != "regression":
            raise InputError(f"--teacher is for --task regression, got task {self.task!r}")
        if not 0 < self.teacher_quantile < 1:
            raise InputError(f"teacher-quantile must be in (0, 1), got {self.teacher_quantile}")
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
    mm3: float = 1.0  # cubic millimetres per unit cube of the geometry (geometry.unit_volume_mm3)


def load_cases(cases: list[Case], geometry: str, device: torch.device) -> list[Loaded]:
    out = []
    for c in cases:
        vol = load_volume(list(c.images))
        e = half_extents(vol.data.shape[1:], vol.spacing, geometry).to(device, torch.float32)
        mm3 = unit_volume_mm3(vol.data.shape[1:], vol.spacing, geometry)
        out.append(Loaded(vol.data.to(device), e, c.label, c, mm3))
    chans = {v.data.shape[0] for v in out}
    if len(chans) > 1:
        raise InputError(f"volumes have different channel counts {sorted(chans)}; every volume needs the same")
    return out


def random_frame(M: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """One uniform random normal shared by ``M`` slices, each with its own random in-plane basis; (M, 3) each."""
    n = torch.randn(3, generator=gen, dtype=torch.float64)
    n = (n / n.norm()).expand(M, 3)
    g = torch.randn(M, 3, generator=gen, dtype=torch.float64)
    u = g - (g * n).sum(-1, keepdim=True) * n
    u = u / u.norm(dim=-1, keepdim=True)
    v = torch.linalg.cross(n, u, dim=-1)
    return n, u, v


def cut_jittered(vol: Loaded, cfg: TrainConfig, gen: torch.Generator, frame: tuple[Tensor, Tensor, Tensor],
                 offsets: Tensor, a_half: Tensor, b_half: Tensor, shift: Tensor) -> Tensor:
    """Sample the slices of ``frame`` (normals, u, v) with an affine intensity jitter (M, C, S, S)."""
    jitter = lambda: cfg.intensity_jitter * (torch.rand(len(offsets), 1, 1, 1, generator=gen, dtype=torch.float64) * 2 - 1)  # noqa: E731
    gain = jitter()
    bias = jitter()
    f = lambda t: t.to(vol.data.device, torch.float32)  # noqa: E731
    n, u, v = frame
    pts = slice_points(f(n), f(u), f(v), f(offsets), f(a_half), f(b_half), (cfg.slice_size, cfg.slice_size))
    x = sample_slices(vol.data, pts + f(shift)[:, None, None, :], vol.e)
    return (1 + f(gain)) * x + f(bias)


def augmented_slices(vol: Loaded, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """``M`` randomly oriented, scaled, shifted, intensity-jittered slices (M, C, S, S)."""
    M = cfg.slices_per_volume
    U = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1  # noqa: E731
    n, u, v = random_frame(M, gen)
    s_half, a_half, b_half = stack_extents(vol.e.cpu().double(), n, u, v, cfg.extent)
    offsets = U(M) * s_half
    a_half = a_half * (1 + cfg.scale_jitter * U(M))
    b_half = b_half * (1 + cfg.scale_jitter * U(M))
    shift = (cfg.translation * U(M, 1) * a_half[:, None]) * u + (cfg.translation * U(M, 1) * b_half[:, None]) * v
    return cut_jittered(vol, cfg, gen, (n, u, v), offsets, a_half, b_half, shift)


def stack_slices(vol: Loaded, cfg: TrainConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """One full stack of ``M`` parallel slices (M, C, S, S) and each slice's weight in mL (M,).

    Offsets are stratified over the stack (one per ``2 s_half / M`` bin, random within
    it) along one random normal; the in-plane frame only zooms out (up to ``1 +
    scale_jitter``) and shifts within the margin that opens, so every slice still covers
    the whole cross-section and ``sum_k w_k mean(slice_k)`` is a quadrature of the volume's
    integral (in mL when the volume is a density per mL).
    """
    M = cfg.slices_per_volume
    U = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1  # noqa: E731
    n, u, v = random_frame(M, gen)
    s_half, a_half, b_half = stack_extents(vol.e.cpu().double(), n, u, v, cfg.extent)
    offsets = (-1 + (2 * torch.arange(M, dtype=torch.float64) + 1 + U(M)) / M) * s_half
    za, zb = 1 + cfg.scale_jitter * U(M).abs(), 1 + cfg.scale_jitter * U(M).abs()
    shift = (cfg.translation * U(M, 1) * ((za - 1) * a_half)[:, None]) * u \
        + (cfg.translation * U(M, 1) * ((zb - 1) * b_half)[:, None]) * v
    a_half, b_half = a_half * za, b_half * zb
    weight = slice_area(a_half, b_half, (cfg.slice_size,) * 2) * (2 * s_half / M) * vol.mm3 / 1000
    x = cut_jittered(vol, cfg, gen, (n, u, v), offsets, a_half, b_half, shift)
    return x, weight.to(x.device, torch.float32)


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
    density = torch.where(t != 0, t * excess / total.clamp_min(torch.finfo(excess.dtype).tiny), torch.zeros_like(excess))
    return density * usable[:, None], usable


class Teacher:
    """A classification run's encoder that says where in a stack each target lies."""

    def __init__(self, run_dir: str | Path, in_chans: int, device: torch.device) -> None:
        from tomofield.checkpoint import is_run_dir, read_run
        from tomofield.encoders import build_encoder, load_weights

        if not is_run_dir(run_dir):
            raise InputError(f"--teacher {str(run_dir)!r} is not a run directory of tomofield train")
        self.state, self.run = read_run(run_dir)
        if self.run.get("task", "classification") != "classification":
            raise InputError(f"--teacher {str(run_dir)!r} is a {self.run.get('task')!r} run; it must be a classification run")
        if int(self.run.get("in_chans", in_chans)) != in_chans:
            raise InputError(f"--teacher {str(run_dir)!r} takes {self.run['in_chans']} channel(s), the volumes have {in_chans}")
        self.model = build_encoder(self.run["encoder"], in_chans=in_chans, num_classes=1, norm=self.run["norm"])
        load_weights(self.model, self.state, str(run_dir))
        self.model.to(device).eval().requires_grad_(False)
        self.baseline = 0.0

    def above_baseline(self, scores: Tensor) -> Tensor:
        return (scores - self.baseline).clamp_min(0)

    @torch.no_grad()
    def excess(self, x: Tensor) -> Tensor:
        """The teacher's evidence per slice: its score above the baseline, (N,)."""
        return self.above_baseline(self.model(x)[:, 0])

    @torch.no_grad()
    def calibrate(self, train: list[Loaded], cfg: TrainConfig, draws: int = 2) -> float:
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
            raise InputError(f"the teacher's scores never exceed its baseline ({self.baseline:.3g}, the "
                             f"{cfg.teacher_quantile} quantile on target-0 volumes) in a volume with a target: "
                             "it does not see what the target measures")
        return float(torch.tensor(peaks).median())


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
    """Each volume's prediction from a fixed set of slices.

    The max of the slice logits, or for a density encoder (regression with a teacher) the
    mean over directions of each stack's quadrature ``sum_k w_k max(g_k, 0)`` in mL.
    """
    sampler, out = FibonacciSampler(), []
    scfg = SamplingConfig(directions=cfg.val_directions, slices=cfg.val_slices, hemisphere=True, seed=0, extent=cfg.extent)
    integral = cfg.teacher is not None
    for vol in vols:
        d = sampler.plan(vol.data.shape[1:], vol.e.cpu().double(), scfg)[0].to(vol.data.device)
        L, M = len(d), d.num_slices
        off = (d.s_half[:, None] * torch.linspace(-1, 1, M, device=vol.data.device)).reshape(-1)
        idx = torch.arange(L, device=vol.data.device).repeat_interleave(M)
        weight = (slice_area(d.a_half, d.b_half, (cfg.slice_size,) * 2) * 2 * d.s_half / (M - 1) * vol.mm3 / 1000)[idx]
        best = torch.tensor(-math.inf, device=vol.data.device)
        total = torch.zeros((), device=vol.data.device)
        for b in range(0, L * M, batch):
            i = idx[b : b + batch]
            pts = slice_points(d.normals[i], d.u[i], d.v[i], off[b : b + batch], d.a_half[i], d.b_half[i],
                               (cfg.slice_size, cfg.slice_size))
            g = model(sample_slices(vol.data, pts, vol.e))[:, 0]
            best = torch.maximum(best, g.max())
            total = total + (g.clamp_min(0) * weight[b : b + batch]).sum()
        out.append(total / L if integral else best)
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


class Scaled(nn.Module):
    """``scale x model(x)``: a density encoder's outputs in target units per mL."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.model(x)


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
        self.scale, self.baseline = 1.0, 0.0  # density regression: output units, the teacher's baseline
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
        } | ({"teacher": str(Path(self.cfg.teacher).resolve()), "teacher_baseline": self.baseline,
              "head_defaults": {"regression": {"scale": self.scale, "nonnegative": True}}} if self.cfg.teacher else {})

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
            scores = volume_scores(Scaled(model, self.scale) if self.cfg.teacher else model, vols, self.cfg)
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
        teacher = None
        if cfg.teacher is not None:
            teacher = Teacher(cfg.teacher, in_chans, self.device)
            mine, theirs = (cfg.encoder, cfg.norm), (teacher.run["encoder"], teacher.run["norm"])
            if mine != theirs:
                raise InputError(f"the student starts from the teacher, so it needs the teacher's encoder and norm "
                                 f"{theirs}, got {mine}")
            self.scale = teacher.calibrate(train, cfg)
            self.baseline = teacher.baseline
            model.load_state_dict(teacher.model.state_dict())
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
            if teacher is None:
                x = torch.cat([augmented_slices(v, cfg, gen) for v in vols])
                y = torch.tensor([v.label for v in vols], device=self.device).repeat_interleave(cfg.slices_per_volume)
                loss = loss_fn(net(x)[:, 0], y)
            else:  # density regression: the teacher spreads each target over a full stack
                xs, ws = zip(*[stack_slices(v, cfg, gen) for v in vols], strict=True)
                x, w = torch.cat(xs), torch.stack(ws)
                targets = torch.tensor([v.label for v in vols], device=self.device)
                density, usable = spread_targets(teacher.excess(x).reshape(len(vols), -1), w, targets)
                per_slice = loss_fn(net(x)[:, 0].reshape(len(vols), -1), density / self.scale, reduction="none")
                loss = (per_slice * usable[:, None]).sum() / (usable.sum() * cfg.slices_per_volume).clamp_min(1)
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
