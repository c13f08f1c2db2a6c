"""Training data: volumes cached on the device, the volumes of a step and their augmented slices.

Every function taking a :class:`~tomofield.train.TrainConfig` needs a resolved one
(:meth:`~tomofield.train.TrainConfig.resolved`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from tomofield.dataset import Case
from tomofield.errors import InputError
from tomofield.geometry import half_extents, sample_slices, slice_area, slice_points, stack_extents, unit_volume_mm3
from tomofield.intensity import normalize
from tomofield.io import load_volume

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

    from tomofield.train.config import ResolvedTrainConfig

Frame = tuple[Tensor, Tensor, Tensor]


#: Points of a volume's foreground kept to find a stack's range (a fixed stride through it).
SUPPORT_POINTS = 4096


@dataclass
class Loaded:
    """A volume cached on the device with its half-extents and target."""

    data: Tensor
    e: Tensor
    label: float
    case: Case
    mm3: float = 1.0  # cubic millimetres per unit cube of the geometry (geometry.unit_volume_mm3)
    #: up to SUPPORT_POINTS foreground voxel centres in the box's coordinates (K, 3), float64 on the CPU
    support: Tensor | None = None
    #: the lesion mask (1, D, H, W) of a positive, 1 inside a lesion, where the case has one and it was asked for
    mask: Tensor | None = None


def foreground_points(data: Tensor, e: Tensor) -> Tensor:
    """Where a (C, D, H, W) volume has structure: its foreground voxels' centres in the box ``[-e, e]``, (K, 3).

    A voxel is foreground where any channel lies above its 1st percentile by a tenth of the
    way to its 99th (the rule of :mod:`tomofield.intensity`: air and the scanner's floor
    are not). At most :data:`SUPPORT_POINTS`, a fixed stride through them; the whole box's
    corners when nothing stands out.
    """
    flat = data.detach().reshape(data.shape[0], -1).float()
    stride = max(1, -(-flat.shape[1] // (1 << 21)))
    q = torch.quantile(flat[:, ::stride], torch.tensor([0.01, 0.99], device=flat.device), dim=1)
    fg = (flat > (q[0] + 0.1 * (q[1] - q[0]))[:, None]).any(0)
    idx = torch.nonzero(fg).flatten().cpu()
    shape = torch.tensor(data.shape[1:])
    if idx.numel() == 0:
        corners = torch.tensor([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=torch.float64)
        return corners * e.cpu().double()
    idx = idx[:: max(1, -(-idx.numel() // SUPPORT_POINTS))]
    ijk = torch.stack([idx // (shape[1] * shape[2]), (idx // shape[2]) % shape[1], idx % shape[2]], -1)
    return (ijk.double() / (shape - 1).clamp_min(1).double() * 2 - 1) * e.cpu().double()


def spatial_shapes(cases: list[Case]) -> list[tuple[int, ...]]:
    """The grid of each case's first image, from the NIfTI header alone (the data is not read)."""
    import nibabel as nib

    shapes = []
    for c in cases:
        try:
            shape = tuple(int(v) for v in cast("SpatialImage", nib.load(str(c.images[0]))).shape[:3])
        except Exception:  # not a NIfTI nibabel reads lazily: load it (load_volume names what is wrong)
            shape = tuple(load_volume([c.images[0]]).data.shape[1:])
        shapes.append(shape)
    return shapes


def load_cases(
    cases: list[Case], geometry: str, device: torch.device, intensity: str = "none", masks: bool = False
) -> list[Loaded]:
    """Load every case onto ``device``, normalised by ``intensity``; all must have the same number of channels.

    With ``masks``, a positive's lesion mask (its CSV's ``mask`` column, any value above 0 a
    lesion) is loaded too (:attr:`Loaded.mask`); it must have the image's grid.
    """
    out = []
    for c in cases:
        vol = load_volume(list(c.images))
        e = half_extents(vol.data.shape[1:], vol.spacing, geometry).to(device, torch.float32)
        mm3 = unit_volume_mm3(vol.data.shape[1:], vol.spacing, geometry)
        data = vol.data.to(device)
        mask = None
        if masks and c.mask is not None and c.label == 1:
            m = load_volume([c.mask])
            if m.grid_ijk != vol.grid_ijk:  # (i, j, k), as the viewers show it
                raise InputError(
                    f"mask {str(c.mask)!r} has the grid {m.grid_ijk} (i, j, k), its image {vol.grid_ijk}; "
                    "a mask needs its image's grid"
                )
            mask = (m.data[:1] > 0).to(device, torch.float32)
        out.append(Loaded(normalize(data, intensity), e, c.label, c, mm3, foreground_points(data, e), mask))
    chans = {v.data.shape[0] for v in out}
    if len(chans) > 1:
        raise InputError(f"volumes have different channel counts {sorted(chans)}; every volume needs the same")
    return out


def random_frame(M: int, gen: torch.Generator) -> Frame:
    """One uniform random normal shared by ``M`` slices, each with its own random in-plane basis; (M, 3) each."""
    n = torch.randn(3, generator=gen, dtype=torch.float64)
    n = (n / n.norm()).expand(M, 3)
    g = torch.randn(M, 3, generator=gen, dtype=torch.float64)
    u = g - (g * n).sum(-1, keepdim=True) * n
    u = u / u.norm(dim=-1, keepdim=True)
    v = torch.linalg.cross(n, u, dim=-1)
    return n, u, v


def cut_jittered(
    vol: Loaded,
    cfg: ResolvedTrainConfig,
    gen: torch.Generator,
    frame: Frame,
    offsets: Tensor,
    a_half: Tensor,
    b_half: Tensor,
    shift: Tensor,
) -> Tensor:
    """Sample the slices of ``frame`` (normals, u, v) with an affine intensity jitter (M, C, S, S)."""

    def jitter() -> Tensor:
        return cfg.intensity_jitter * (torch.rand(len(offsets), 1, 1, 1, generator=gen, dtype=torch.float64) * 2 - 1)

    gain = jitter()
    bias = jitter()
    f = lambda t: t.to(vol.data.device, torch.float32)  # noqa: E731
    n, u, v = frame
    pts = slice_points(f(n), f(u), f(v), f(offsets), f(a_half), f(b_half), (cfg.slice_size, cfg.slice_size))
    x = (1 + f(gain)) * sample_slices(vol.data, pts + f(shift)[:, None, None, :], vol.e) + f(bias)
    if cfg.noise > 0:  # drawn only when asked: runs without it keep their random stream
        sigma = cfg.noise * torch.rand(len(offsets), 1, 1, 1, generator=gen)
        x = x + (sigma * torch.randn(x.shape, generator=gen)).to(x.device)
    return x


def augmented_slices(vol: Loaded, cfg: ResolvedTrainConfig, gen: torch.Generator) -> Tensor:
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


def stack_slices(
    vol: Loaded, cfg: ResolvedTrainConfig, gen: torch.Generator, support: bool = False
) -> tuple[Tensor, Tensor]:
    """One full stack of ``M`` parallel slices (M, C, S, S) and each slice's weight in mL (M,).

    Offsets are stratified over the stack (one per bin of its range, random within it)
    along one random normal: the range is the stack's whole extent ``[-s_half, s_half]``,
    or with ``support`` the span of the volume's foreground along the normal
    (:attr:`Loaded.support`) widened by a bin on each side, within that extent, so that
    every slice but the outermost cuts the body and the slices lie denser there. The
    in-plane frame only zooms out (up to ``1 + scale_jitter``) and shifts within the margin
    that opens, so every slice still covers the whole cross-section and ``sum_k w_k
    mean(slice_k)`` is a quadrature of the volume's integral (in mL when the volume is a
    density per mL; over the whole extent only).
    """
    M = cfg.slices_per_volume
    U = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1  # noqa: E731
    n, u, v = random_frame(M, gen)
    s_half, a_half, b_half = stack_extents(vol.e.cpu().double(), n, u, v, cfg.extent)
    lo, hi = -s_half, s_half
    if support and vol.support is not None:
        s = vol.support @ n[0]
        pad = (s.max() - s.min()) / max(M - 2, 1)
        lo, hi = torch.maximum(s.min() - pad, -s_half), torch.minimum(s.max() + pad, s_half)
    offsets = lo + (torch.arange(M, dtype=torch.float64) + (1 + U(M)) / 2) * (hi - lo) / M
    za, zb = 1 + cfg.scale_jitter * U(M).abs(), 1 + cfg.scale_jitter * U(M).abs()
    shift = (cfg.translation * U(M, 1) * ((za - 1) * a_half)[:, None]) * u + (
        cfg.translation * U(M, 1) * ((zb - 1) * b_half)[:, None]
    ) * v
    a_half, b_half = a_half * za, b_half * zb
    weight = slice_area(a_half, b_half, (cfg.slice_size,) * 2) * ((hi - lo) / M) * vol.mm3 / 1000
    x = cut_jittered(vol, cfg, gen, (n, u, v), offsets, a_half, b_half, shift)
    return x, weight.to(x.device, torch.float32)


def pick_volumes(train: list[Loaded], cfg: ResolvedTrainConfig, gen: torch.Generator) -> list[Loaded]:
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
