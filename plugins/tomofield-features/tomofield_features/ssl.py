"""Self-supervised slice encoders: SimCLR (Chen et al. 2020) on slices of unlabelled volumes.

A step draws ``B`` volumes and ``M`` planes per volume (uniform random normal, offset in
the central ``offset_range`` of the stack); each plane is cut twice with independent
in-plane rotation, anisotropic scale, translation, intensity change and noise: two views
of the same slice. Encoder pre-logits -> 2-layer MLP projector -> NT-Xent loss. The
result is a run directory that ``Engine(weights=RUN)`` and ``--weights RUN`` read (the
encoder keeps an untrained 1-logit classifier so its state dict fits the core's encoders).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomofield import checkpoint as ck
from tomofield.encoders import DEFAULT_ENCODER, NORMS
from tomofield.engine import validate_volume
from tomofield.errors import InputError
from tomofield.geometry import EXTENTS, GEOMETRIES, half_extents, sample_slices, slice_points, stack_extents
from tomofield.io import atomic_write, check_output_path
from tomofield.protocols import SEED_MAX, check_settings, setting
from tomofield.train import cosine_lr
from tomofield_features.heads import encoder_features


@dataclass
class SimCLRConfig:
    """SimCLR pretraining arguments (CPU-sized defaults), each declared once: default, bounds, help."""

    encoder: str = setting(DEFAULT_ENCODER, "Registered or timm encoder name.")
    norm: str = setting("group-norm", "Normalisation layers.", choices=NORMS)
    iterations: int = setting(200, "Training steps.", min=1, max=10_000_000)
    batch_volumes: int = setting(2, "Volumes per step.", min=1, max=4096)
    slices_per_volume: int = setting(16, "Planes per volume (two views each).", min=2, max=65536)
    slice_size: int = setting(48, "Slice side in pixels.", min=8, max=4096)
    lr: float = setting(1e-3, "Peak learning rate.", min=1e-12, max=1000.0)
    lr_end: float = setting(1e-5, "Learning rate at the end of the cosine schedule.", min=0.0, max=1000.0, cli=False)
    weight_decay: float = setting(1e-6, "AdamW weight decay.", min=0.0, max=10.0, cli=False)
    temperature: float = setting(0.2, "Contrastive temperature.", min=1e-4, max=100.0)
    projection_dim: int = setting(64, "Output width of the projector.", min=1, max=65536, cli=False)
    offset_range: float = setting(0.7, "Central share of the stack the planes' offsets come from.", min=0.01, max=1.0)
    scale_jitter: float = setting(0.2, "Anisotropic scale change of a view, +-.", min=0.0, max=0.9, cli=False)
    translation: float = setting(0.1, "Translation of a view, a share of the slice.", min=0.0, max=1.0, cli=False)
    intensity_jitter: float = setting(0.2, "Intensity change of a view, +-.", min=0.0, max=10.0, cli=False)
    noise: float = setting(0.03, "Gaussian noise of a view, a share of the intensity.", min=0.0, max=10.0, cli=False)
    geometry: str = setting("physical", "Slicing geometry.", choices=GEOMETRIES)
    extent: str = setting("unit", "Slice offsets.", choices=EXTENTS)
    seed: int = setting(0, "Seed of the initialisation and the draws.", min=0, max=SEED_MAX)

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of bounds: one loop over the declarations."""
        check_settings(self)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """NT-Xent (SimCLR): cross-entropy of each view against its partner among 2N - 1 others.

    Args:
        z1, z2: (N, d) projections of the two views; row i of both comes from slice i.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise InputError(
            f"nt_xent needs two (N >= 2, d) batches of equal shape, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


def two_views(volume: Tensor, e: Tensor, count: int, cfg: SimCLRConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two augmented views (count, C, S, S) each of ``count`` random planes of ``volume``."""
    U = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64) * 2 - 1  # noqa: E731
    n = torch.randn(count, 3, generator=gen, dtype=torch.float64)
    n = n / n.norm(dim=-1, keepdim=True)
    s_half, _, _ = stack_extents(e.double(), n, n, n, cfg.extent)
    offsets = cfg.offset_range * U(count) * s_half
    views = []
    for _ in range(2):
        g = torch.randn(count, 3, generator=gen, dtype=torch.float64)
        u = g - (g * n).sum(-1, keepdim=True) * n
        u = u / u.norm(dim=-1, keepdim=True)
        v = torch.linalg.cross(n, u, dim=-1)
        _, a_half, b_half = stack_extents(e.double(), n, u, v, cfg.extent)
        a_half = a_half * (1 + cfg.scale_jitter * U(count))
        b_half = b_half * (1 + cfg.scale_jitter * U(count))
        shift = (cfg.translation * U(count, 1) * a_half[:, None]) * u + (
            cfg.translation * U(count, 1) * b_half[:, None]
        ) * v
        size = (cfg.slice_size, cfg.slice_size)
        f = lambda t: t.to(volume.device, torch.float32)  # noqa: E731
        pts = slice_points(f(n), f(u), f(v), f(offsets), f(a_half), f(b_half), size) + f(shift)[:, None, None, :]
        x = sample_slices(volume, pts, f(e))
        gain, bias = f(cfg.intensity_jitter * U(count, 1, 1, 1)), f(cfg.intensity_jitter * U(count, 1, 1, 1))
        noise = torch.randn(x.shape, generator=gen).to(x) * cfg.noise
        views.append((1 + gain) * x + bias + noise)
    return views[0], views[1]


class SimCLRModel(nn.Module):
    """Encoder (pre-logits features) + MLP projector."""

    def __init__(self, encoder: nn.Module, features: int, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(encoder_features(self.encoder, x).flatten(1))


Progress = Callable[[dict[str, Any]], None]


def build_encoder(name: str, in_chans: int, norm: str) -> nn.Module:
    from tomofield import plugins
    from tomofield.encoders import timm_encoder

    try:
        factory = plugins.get("encoder", name).factory
    except LookupError:
        factory = timm_encoder
    return factory(name, in_chans=in_chans, num_classes=1, pretrained=False, norm=norm)


def check_run_folder(run_dir: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse, before any work, a run folder pretraining cannot write or must not: what
    :func:`tomofield.io.check_output_path` refuses of a folder (a file, under a file, unwritable,
    too long a name), and a folder that is not empty."""
    path = check_output_path(run_dir, inputs=inputs, folder=True)
    if path.is_dir() and any(path.iterdir()):
        raise InputError(f"run directory {str(run_dir)!r} is not empty; choose another")
    return path


def pretrain_simclr(
    volumes: Sequence[Tensor],
    cfg: SimCLRConfig,
    spacings: Sequence[Sequence[float]] | None = None,
    run_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train an encoder with SimCLR on slices of ``volumes``; returns it and the loss history.

    With ``run_dir`` the encoder is saved as a tomofield run directory (not resumable).
    """
    cfg.validate()
    if not volumes:
        raise InputError("SimCLR pretraining needs at least one volume")
    dev = torch.device(device)
    vols = [validate_volume(v).float().to(dev) for v in volumes]
    spacings = list(spacings) if spacings is not None else [(1.0, 1.0, 1.0)] * len(vols)
    es = [half_extents(v.shape[1:], sp, cfg.geometry) for v, sp in zip(vols, spacings, strict=True)]
    chans = {int(v.shape[0]) for v in vols}
    if len(chans) > 1:
        raise InputError(f"volumes have different channel counts {sorted(chans)}; every volume needs the same")
    in_chans = chans.pop()
    if run_dir is not None:
        check_run_folder(run_dir)
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.encoder, in_chans, cfg.norm)
    with torch.no_grad():
        c = encoder_features(encoder.eval(), torch.zeros(2, in_chans, cfg.slice_size, cfg.slice_size)).shape[1]
    model = SimCLRModel(encoder, c, cfg.projection_dim).to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for step in range(cfg.iterations):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.iterations, cfg.lr, cfg.lr_end)
        pick = torch.randint(len(vols), (cfg.batch_volumes,), generator=gen).tolist()
        pairs = [two_views(vols[i], es[i], cfg.slices_per_volume, cfg, gen) for i in pick]
        x1, x2 = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        z = model(torch.cat([x1, x2]))
        loss = nt_xent(z[: len(x1)], z[len(x1) :], cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec = {"iteration": step + 1, "loss": float(loss.detach()), "lr": opt.param_groups[0]["lr"]}
        history.append(rec)
        if progress:
            progress(rec | {"total": cfg.iterations, "seconds": time.perf_counter() - t0})
    encoder = model.encoder.eval()
    if run_dir is not None:
        save_run(run_dir, encoder, cfg, in_chans, history)
    return encoder, history


def save_run(
    run_dir: str | Path, encoder: nn.Module, cfg: SimCLRConfig, in_chans: int, history: list[dict[str, float]]
) -> Path:
    """A tomofield run directory (model.safetensors, config.json) for ``--weights``."""
    last = history[-1] if history else {}
    first = history[0] if history else {}
    p = ck.write_run(
        run_dir,
        encoder.state_dict(),
        {
            "encoder": cfg.encoder,
            "in_chans": in_chans,
            "num_classes": 1,
            "norm": cfg.norm,
            "slice_size": cfg.slice_size,
            "geometry": cfg.geometry,
            "extent": cfg.extent,
            "task": "simclr",
            "training": asdict(cfg),
            "iteration": int(last.get("iteration", 0)),
            "metrics": {"loss_first": first.get("loss", math.nan), "loss": last.get("loss", math.nan)},
        },
    )
    atomic_write(p / "history.json", lambda tmp: tmp.write_text(json.dumps(history)), overwrite=True)
    return p
