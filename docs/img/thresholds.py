"""Draw docs/img/thresholds.png: the evaluation protocol's two thresholds on a 1D heatmap profile.

``tau`` decides at the volume level: a volume is positive when its heatmap maximum reaches
it. ``tau'`` (at most ``tau``) draws the lesions' extent: the mask is every connected run of
``heatmap >= tau'`` that contains a voxel ``>= tau``; runs above ``tau'`` that never reach
``tau`` (background noise, a weak bump) are dropped. The mask bars under the profiles are
computed by the protocol's own rule, ``tomofield.evaluation.protocol.binarize``, on each
profile as a 1 x 1 x N volume (where 26-connectivity is 1D adjacency), so they are what
``tomofield evaluate`` and ``tomofield run --mask --threshold TAU,TAU_PRIME`` give for these
profiles. The profiles are made up: a lesion's bump, a weaker bump and smooth noise.

Run from the repository root: ``python docs/img/thresholds.py`` (about a second).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import ndimage  # noqa: E402

from tomofield.evaluation.protocol import binarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img" / "thresholds.png"
TAU, TAU_PRIME = 0.6, 0.3
N = 200  # voxels along the line
KEPT, DROPPED = "tab:red", "0.6"


def bump(x: np.ndarray, centre: float, height: float, width: float) -> np.ndarray:
    return height * np.exp(-0.5 * ((x - centre) / width) ** 4)  # flat-topped, like a filled lesion


def profiles() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x``, a positive volume's profile (a lesion and a weak bump) and a negative one's (a weak bump)."""
    rng = np.random.default_rng(3)
    x = np.arange(N, dtype=float)
    noise = [0.1 + ndimage.gaussian_filter1d(rng.normal(0, 0.15, N), 3) for _ in range(2)]
    positive = noise[0] + bump(x, 60, 0.85, 14) + bump(x, 150, 0.33, 7)
    negative = noise[1] + bump(x, 110, 0.4, 9)
    return x, positive, negative


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2], strict=True))


def panel(ax, bar, x: np.ndarray, h: np.ndarray, title: str) -> np.ndarray:
    """The profile, its runs above ``tau'`` (kept or dropped) and, in ``bar``, its mask; returns the mask."""
    mask = binarize(h[None, None, :], TAU_PRIME, TAU)[0, 0]
    ax.plot(x, h, color="k", lw=1.3, zorder=3)
    for start, stop in runs(h >= TAU_PRIME):
        kept = bool(mask[start:stop].all())
        ax.fill_between(
            x[start:stop], TAU_PRIME, h[start:stop], color=KEPT if kept else DROPPED, alpha=0.4 if kept else 0.5, lw=0
        )
    ax.axhline(TAU, color="tab:blue", ls="--", lw=1.4)
    ax.axhline(TAU_PRIME, color="tab:orange", ls="--", lw=1.4)
    peak = int(np.argmax(h))
    verdict = "max $\\geq \\tau$: positive volume" if h[peak] >= TAU else "max $< \\tau$: negative volume, empty mask"
    ax.plot([x[peak]], [h[peak]], "v", color="k", ms=7, zorder=4)
    ax.annotate(
        verdict,
        (x[peak], h[peak]),
        xytext=(0, 36),
        textcoords="offset points",
        fontsize=10,
        ha="center",
        arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.8, "shrinkB": 6},
    )
    ax.set_title(title, fontsize=11)
    ax.set_xlim(0, N - 1)
    ax.set_ylim(-0.1, 1.3)
    ax.tick_params(labelsize=9, labelbottom=False)
    ax.grid(alpha=0.25)

    bar.imshow(mask[None, :], aspect="auto", cmap="Reds", vmin=0, vmax=1.4, extent=(-0.5, N - 0.5, 0, 1))
    bar.set_yticks([0.5], ["mask"], fontsize=10)
    bar.set_xlabel("voxels along a line through the volume", fontsize=10)
    bar.tick_params(labelsize=9)
    bar.set_xlim(0, N - 1)
    if not mask.any():
        bar.text(N / 2, 0.5, "empty", ha="center", va="center", fontsize=10, color="0.3")
    return mask


def main() -> None:
    x, positive, negative = profiles()
    fig, axes = plt.subplots(
        2, 2, figsize=(12, 4.2), gridspec_kw={"height_ratios": (6, 1), "hspace": 0.08, "wspace": 0.12}, sharex=True
    )
    panel(axes[0, 0], axes[1, 0], x, positive, "a volume with a lesion")
    panel(axes[0, 1], axes[1, 1], x, negative, "a volume without")
    axes[0, 0].set_ylabel("heatmap", fontsize=10)
    handles = [
        Line2D([], [], color="tab:blue", ls="--", lw=1.4, label=f"$\\tau$ = {TAU}: is the volume's peak high enough?"),
        Line2D([], [], color="tab:orange", ls="--", lw=1.4, label=f"$\\tau'$ = {TAU_PRIME}: how far a lesion extends"),
        Patch(color=KEPT, alpha=0.4, lw=0, label="above $\\tau'$ and reaches $\\tau$: kept"),
        Patch(color=DROPPED, alpha=0.5, lw=0, label="above $\\tau'$, never reaches $\\tau$: dropped"),
    ]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=10, frameon=False)
    fig.suptitle(
        "The protocol's two thresholds: the mask is every connected run of heatmap $\\geq \\tau'$ that reaches $\\tau$",
        fontsize=11.5,
    )
    fig.savefig(OUT, dpi=140, facecolor="white", bbox_inches="tight", pad_inches=0.06)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
