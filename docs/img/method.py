"""Draw docs/img/method.png: ToNNO as one row of panels, from a volume to a mask.

volume -> slices at many orientations -> 2D encoder -> score profile along the normal ->
second derivative -> backprojection -> heatmap -> mask. The panels are computed, not drawn
by hand, on one synthetic case (``tomofield.synth.make_case((40, 40, 40), positive=True,
rng=np.random.default_rng(5))``), all shown on its axial slice through the lesion:

- the volume with the traces of three families of parallel cutting planes (normals in the
  slice's plane, 0, 60 and 120 degrees);
- one real slice of each family through the lesion (``scipy.ndimage.map_coordinates``);
- the ideal slice score, the lesion's area in each slice of the 0-degree stack (slices one
  voxel apart along W), and its discrete second derivative (shown negated: ToNNO's
  constant ``-1 / (8 pi^2)`` is negative, so the lesion's dip becomes a peak);
- the backprojection of the three families' filtered profiles alone (each smeared along its
  planes, summed): they cross at the lesion;
- the heatmap of ``tomofield.Engine(head="sum", filter="tomo", directions=200, slices=40,
  slice_size=48)`` run on the lesion mask itself. The ``sum`` head's slice score is the
  slice's integral, the ideal score above, so ToNNO inverts exact plane integrals and
  returns the mask itself, up to the discretisation (the script prints the Dice of
  ``heatmap > 0.5`` against the mask: 0.97): an encoder whose score were each slice's
  lesion area would segment perfectly;
- the mask ``heatmap > 0.5``, with the true lesion outlined.

Run from the repository root: ``python docs/img/method.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from scipy import ndimage  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img" / "method.png"
ANGLES = (0.0, 60.0, 120.0)  # the cutting planes' normals in the (W, H) plane, degrees
COLOURS = ("tab:orange", "tab:cyan", "tab:pink")
LESION = "tab:red"
TITLE = 10.5  # the figure is shown about 900 px wide: keep the text large


def case() -> tuple[np.ndarray, np.ndarray]:
    from tomofield.synth import make_case

    image, mask = make_case((40, 40, 40), positive=True, rng=np.random.default_rng(5))
    return image, mask.astype(bool)


def heatmap_of(mask: np.ndarray) -> np.ndarray:
    """ToNNO with the ``sum`` head on the mask: the exact plane integrals, so the mask comes back."""
    import torch

    import tomofield

    torch.manual_seed(0)
    engine = tomofield.Engine(head="sum", filter="tomo", directions=200, slices=40, slice_size=48, device="cpu")
    heat = engine.reconstruct(torch.from_numpy(mask.astype(np.float32))[None], spacing=(1, 1, 1))
    return heat.numpy()[0]


def normal(angle: float) -> np.ndarray:
    """Unit normal (h, w) of a family of planes that contain the D axis."""
    a = np.deg2rad(angle)
    return np.array([np.sin(a), np.cos(a)])


def profile(mask: np.ndarray, angle: float, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets ``s`` (voxels, one slice per voxel) and the lesion's area in each slice of that stack."""
    _, h, w = np.nonzero(mask)
    s = (np.stack([h, w], axis=1) - centre) @ normal(angle)
    half = int(np.ceil(np.hypot(*mask.shape[1:]) / 2))
    edges = np.arange(-half, half + 1) - 0.5
    area, _ = np.histogram(s, bins=edges)
    return edges[:-1] + 0.5, area.astype(float)


def minus_second_derivative(p: np.ndarray) -> np.ndarray:
    """``-(p[m+1] + p[m-1] - 2 p[m])``, zero at the two ends (what the ``tomo`` filter computes, negated)."""
    q = np.zeros_like(p)
    q[1:-1] = -(p[2:] + p[:-2] - 2 * p[1:-1])
    return q


def backprojection(shape: tuple[int, int], centre: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sum over the three families of their filtered profile, each smeared along its planes."""
    hh, ww = np.mgrid[0 : shape[0], 0 : shape[1]]
    out = np.zeros(shape)
    for angle in ANGLES:
        s_axis, p = profile(mask, angle, centre)
        s = (np.stack([hh, ww], axis=-1) - centre) @ normal(angle)
        out += np.interp(s, s_axis, minus_second_derivative(p))
    return out


def oblique_slice(image: np.ndarray, angle: float, point: np.ndarray) -> np.ndarray:
    """The (D, t) slice of the family ``angle`` through ``point`` (h, w), t along the plane."""
    u = np.array([np.cos(np.deg2rad(angle)), -np.sin(np.deg2rad(angle))])  # in the plane, normal to n
    t = np.arange(-20, 20)
    d = np.arange(image.shape[0])
    dd, tt = np.meshgrid(d, t, indexing="ij")
    hw = point[None, None, :] + tt[..., None] * u
    return ndimage.map_coordinates(image, [dd, hw[..., 0], hw[..., 1]], order=1, mode="constant")


def plane_lines(ax, centre: np.ndarray, angle: float, colour: str, n: int = 5, step: float = 5.0) -> None:
    """Traces of ``n`` parallel planes of the family ``angle`` on the axial slice."""
    nrm = normal(angle)
    u = np.array([nrm[1], -nrm[0]])
    t = np.array([-40.0, 40.0])
    for k in range(n):
        off = (k - n // 2) * step
        p = centre + off * nrm
        hw = p[None, :] + t[:, None] * u
        ax.plot(hw[:, 1], hw[:, 0], color=colour, lw=1.0, alpha=0.9)


def outline(ax, mask2d: np.ndarray, colour: str = LESION) -> None:
    ax.contour(mask2d.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)


def image_axes(ax, title: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=TITLE)


def curve_axes(ax, title: str) -> None:
    ax.set_title(title, fontsize=TITLE)
    ax.set_xlabel("s (voxels)", fontsize=9, labelpad=1)
    ax.tick_params(labelsize=8.5, pad=2)
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlim(-14, 14)


def main() -> None:
    image, mask = case()
    heat = heatmap_of(mask)
    com = np.array(ndimage.center_of_mass(mask))
    d = int(round(com[0]))
    centre = np.array([19.5, 19.5])  # the stacks are centred on the grid's centre
    lesion = com[1:]
    extent = (-0.5, 39.5, 39.5, -0.5)

    fig = plt.figure(figsize=(15, 3.0), dpi=140)
    n, left, right, width, inset = 8, 0.006, 0.995, 0.1, 0.028
    height = width * 15 / 3.0  # square panels, so that every title sits at the same height
    gap = (right - left - n * width) / (n - 1)
    slots = [(left + k * (width + gap), left + k * (width + gap) + width) for k in range(n)]
    curves = (3, 4)  # these panels keep room on their left for the tick labels
    axes = [
        fig.add_axes((x0 + inset * (k in curves), 0.2, width - inset * (k in curves), height))
        for k, (x0, _) in enumerate(slots)
    ]
    for (_, a1), (b0, _) in zip(slots[:-1], slots[1:], strict=True):
        fig.add_artist(
            FancyArrowPatch(
                (a1 + 0.005, 0.2 + height / 2),
                (b0 - 0.005, 0.2 + height / 2),
                transform=fig.transFigure,
                arrowstyle="-|>",
                mutation_scale=14,
                color="0.25",
                lw=1.4,
            )
        )
    zoom = (lesion[1] - 13, lesion[1] + 13, lesion[0] + 13, lesion[0] - 13)  # panels 6-8: x, then y downwards

    # 1. the volume and three families of cutting planes
    ax = axes[0]
    ax.imshow(image[d], cmap="gray", extent=extent)
    for angle, colour in zip(ANGLES, COLOURS, strict=True):
        plane_lines(ax, lesion, angle, colour)
    outline(ax, mask[d])
    ax.set_xlim(-0.5, 39.5)
    ax.set_ylim(39.5, -0.5)
    image_axes(ax, "1  volume, cut by\nparallel planes")

    # 2. one slice of each family through the lesion, as a deck
    ax = axes[1]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    size = 0.56
    for k, (angle, colour) in enumerate(zip(ANGLES, COLOURS, strict=True)):
        sl, ml = oblique_slice(image, angle, lesion), oblique_slice(mask.astype(float), angle, lesion)
        x0, y0 = 0.04 + 0.2 * k, 0.4 - 0.2 * k
        box = (x0, x0 + size, y0, y0 + size)
        ax.imshow(sl, cmap="gray", extent=box, zorder=3 * k, vmin=image.min(), vmax=image.max())
        xs = np.linspace(x0, x0 + size, ml.shape[1])
        ys = np.linspace(y0 + size, y0, ml.shape[0])  # row 0 at the top, as imshow draws it
        ax.contour(xs, ys, ml, levels=[0.5], colors=[LESION], linewidths=0.8, zorder=3 * k + 1)
        ax.add_patch(plt.Rectangle((x0, y0), size, size, fill=False, ec=colour, lw=2, zorder=3 * k + 2))
    ax.set_title("2  slices: L directions\n$\\times$ M slices each", fontsize=TITLE)

    # 3. the encoder
    ax = axes[2]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    box = FancyBboxPatch((0.08, 0.2), 0.84, 0.6, boxstyle="round,pad=0.02", fc="#dfe9f7", ec="tab:blue", lw=1.5)
    ax.add_patch(box)
    ax.text(0.5, 0.62, "2D encoder", ha="center", va="center", fontsize=12, weight="bold")
    ax.text(0.5, 0.4, "+ head\nslice $\\mapsto$ score $p$", ha="center", va="center", fontsize=10)
    ax.set_title("3  score\nevery slice", fontsize=TITLE)

    # 4. the score profile along the normal of the 0-degree stack
    s, p = profile(mask, ANGLES[0], centre)
    s = s + centre @ normal(ANGLES[0]) - lesion @ normal(ANGLES[0])  # s = 0 at the lesion's centre
    ax = axes[3]
    ax.plot(s, p, "-o", color=COLOURS[0], ms=2.5, lw=1.2)
    curve_axes(ax, "4  score profile $p(s)$\nalong the normal")

    # 5. its second derivative
    ax = axes[4]
    ax.plot(s, minus_second_derivative(p), "-o", color=COLOURS[0], ms=2.5, lw=1.2)
    curve_axes(ax, "5  second derivative\n$-\\partial^2 p / \\partial s^2$")

    # 6. backprojection of three directions
    ax = axes[5]
    bp = backprojection(image.shape[1:], centre, mask)
    lim = np.abs(bp).max()
    ax.imshow(bp, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent)
    outline(ax, mask[d], "k")
    ax.set_xlim(*zoom[:2])
    ax.set_ylim(*zoom[2:])
    image_axes(ax, "6  backprojection\n(3 of L directions)")

    # 7. the heatmap (all 200 directions, the engine)
    ax = axes[6]
    ax.imshow(heat[d], cmap="inferno", vmin=0, vmax=1, extent=extent)
    ax.set_xlim(*zoom[:2])
    ax.set_ylim(*zoom[2:])
    image_axes(ax, "7  heatmap\n(L = 200, M = 40)")

    # 8. the mask
    ax = axes[7]
    ax.imshow(heat[d] > 0.5, cmap="gray", extent=extent)
    outline(ax, mask[d])
    ax.set_xlim(*zoom[:2])
    ax.set_ylim(*zoom[2:])
    image_axes(ax, "8  mask\nheatmap > 0.5")

    fig.text(
        0.5,
        0.025,
        "One synthetic case, on the axial slice through its lesion (red; 6-8 zoomed). Ideal slice scores: each "
        "slice's lesion area (the sum head run on the mask), so the heatmap is the mask itself.",
        ha="center",
        fontsize=9.5,
        color="0.3",
    )
    fig.savefig(OUT, dpi=140, facecolor="white", bbox_inches="tight", pad_inches=0.06)
    dice = 2 * np.count_nonzero((heat > 0.5) & mask) / (np.count_nonzero(heat > 0.5) + np.count_nonzero(mask))
    print(f"wrote {OUT.relative_to(ROOT)} (Dice of heatmap > 0.5 against the mask: {dice:.3f})")


if __name__ == "__main__":
    main()
