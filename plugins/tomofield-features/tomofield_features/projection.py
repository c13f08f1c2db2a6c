"""Fitting the features head's projection: PCA on a sample of the engine's own slices.

The sample is drawn from the slices the engine will cut (its sampler, geometry, extent
and slice size), so the components describe the features that get backprojected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from tomofield.engine import Engine, validate_volume
from tomofield.errors import InputError
from tomofield.geometry import sample_slices, slice_offsets, slice_points
from tomofield_features.heads import FeaturesHead, Projection


def engine_slices(
    engine: Engine, volume: Tensor, spacing: Sequence[float] | None, count: int, gen: torch.Generator
) -> Tensor:
    """``count`` slices (count, C, S, S) drawn at random among those the engine would cut."""
    vol = validate_volume(volume).float()
    spacing = tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))
    plan = engine.plan(tuple(vol.shape[1:]), spacing)
    e, groups, pad, size = plan.e, plan.groups, plan.pad, plan.size
    sizes = torch.tensor([len(g) * (g.num_slices + 2 * pad) for g in groups], dtype=torch.float64)
    which = torch.multinomial(sizes / sizes.sum(), count, replacement=True, generator=gen)
    out = []
    for gi, g in enumerate(groups):
        k = int((which == gi).sum())
        if k == 0:
            continue
        S = g.num_slices + 2 * pad
        flat = torch.randint(len(g) * S, (k,), generator=gen)
        rows, cols = flat // S, flat % S
        off = slice_offsets(g.s_half, g.num_slices, pad)[rows, cols]
        pts = slice_points(g.normals[rows], g.u[rows], g.v[rows], off, g.a_half[rows], g.b_half[rows], size)
        out.append(sample_slices(vol, pts.float(), e.float()))
    return torch.cat(out)


def save_projection(
    proj: Projection, path: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()
) -> Path:
    """Write ``mean``, ``matrix`` (and ``explained``) as a ``.npz`` file, atomically, at exactly ``path``.

    The path must end with ``.npz`` (numpy would otherwise append it); an existing file is
    kept unless ``overwrite``, and one of ``inputs`` always. Write failures (full disk,
    permissions) are InputErrors naming the path.
    """
    return proj.save(path, overwrite=overwrite, inputs=inputs)


def pca(rows: Tensor, k: int) -> Projection:
    """Top-``k`` principal components of ``rows`` (R, C); signs fixed (largest entry positive)."""
    if rows.dim() != 2 or rows.shape[0] < 2:
        raise InputError(f"PCA needs at least 2 feature rows, got shape {tuple(rows.shape)}")
    if not 1 <= k <= rows.shape[1]:
        raise InputError(f"components must be in 1..{rows.shape[1]} (the encoder's channels), got {k}")
    x = rows.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comp = vh[:k].T  # (C, k)
    sign = torch.sign(comp.gather(0, comp.abs().argmax(0, keepdim=True)))
    comp = comp * torch.where(sign == 0, torch.ones_like(sign), sign)
    var = s**2
    return Projection(mean.float(), comp.float(), (var[:k] / var.sum().clamp_min(1e-30)).float())


@torch.no_grad()
def fit_projection(
    engine: Engine,
    volumes: Tensor | Sequence[Tensor],
    spacings: Sequence[Sequence[float]] | None = None,
    components: int | None = None,
    samples: int = 256,
    max_rows: int = 50_000,
    seed: int = 0,
) -> Projection:
    """Fit the PCA projection of ``engine``'s features head and install it.

    Args:
        engine: an Engine whose head is a :class:`FeaturesHead`.
        volumes: one volume (C, D, H, W) or (D, H, W), or a list of them.
        spacings: one (d, h, w) spacing per volume (default 1 mm).
        components: K (default: the head's ``components``).
        samples: slices drawn per volume.
        max_rows: feature rows (slice pixels of stage maps) kept for the SVD.
        seed: seed of the slice draw.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"samples (--fit-slices) must be an integer >= 1, got {samples!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise InputError(f"max_rows must be an integer >= 1, got {max_rows!r}")
    head = engine.head
    if not isinstance(head, FeaturesHead):
        raise InputError(f"fit_projection needs the features head, the engine has {getattr(head, 'name', head)!r}")
    k = components or head.components
    if k is None:
        raise InputError("give components=K (or build the head with components=K) to fit a projection")
    if isinstance(volumes, Tensor) and volumes.dim() in (3, 4) and not isinstance(volumes, list):
        volumes = [volumes]
    spacings = list(spacings) if spacings is not None else [None] * len(volumes)
    if len(spacings) != len(volumes):
        raise InputError(f"{len(volumes)} volume(s) but {len(spacings)} spacing(s)")
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    for vol, sp in zip(volumes, spacings, strict=True):
        vol = validate_volume(vol)
        encoder = engine.encoder_for(vol.shape[0])
        slices = engine_slices(engine, vol, sp, samples, gen)
        for b in range(0, len(slices), engine.config.batch_size):
            f = head.raw(encoder, slices[b : b + engine.config.batch_size].to(engine.device)).cpu()
            rows.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    table = torch.cat(rows)
    if table.shape[0] > max_rows:
        table = table[torch.randperm(table.shape[0], generator=gen)[:max_rows]]
    proj = pca(table, int(k))
    head.components = int(k)
    head.set_projection(proj)
    return proj
