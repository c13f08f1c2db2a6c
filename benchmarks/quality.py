"""``python -m benchmarks quality``: heatmap quality against encoder slices actually run.

One trained encoder (``--weights``, the demo's run), held-out datasets of new seeds
(``--data``: the usual lesions; ``--large``: large ones, ``tomofield synth --lesion-radius``),
ToNNO (logit head) for a grid of directions L, slices M and slice sizes, each heatmap
scored with the evaluation protocol (paper A.7: F1, Dice, balanced accuracy, ``--folds``
Monte-Carlo folds). The encoder's work is counted as the slices it scored (empty slices
skipped are not run). Every setting's scores are reconstructed from the same encoder run
by each of :data:`VARIANTS` (``fbp`` with ``tomo``, ``tomo-sg`` and ``tomo-gauss``,
``regularized``, ``filled``), so they are compared at equal encoder slices exactly; a
smoothed filter's count is its own padding's. The paired column is the mean per-positive
Dice difference to the reference, each volume at the thresholds tuned on its own set,
with its standard error: what the fold means cannot resolve, the pairs may.

Writes ``OUT/results.json``, ``OUT/quality.md`` (the table) and ``OUT/pareto.png`` (F1 and
Dice against encoder slices per volume, per dataset); heatmaps under ``OUT/heatmaps/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

#: (L, M, slice size or None for the run's): the reference first.
GRID = (
    (1024, 64, 32),
    (256, 32, 32),
    (128, 32, 32),
    (128, 16, 32),
    (64, 24, 32),
    (32, 16, 32),
    (128, 32, None),
)
QUICK = ((256, 32, None), (64, 16, None))
#: the regularized fit also runs on settings of at most this many directions (each of its
#: 18 operator applications slices the heatmap at every plane; at L = 1024 x M = 64 that
#: is as long as the encoder)
REGULARIZE_UP_TO = 256
#: What each setting's encoder run is reconstructed by: (label, reconstructor, filter). The
#: engine runs with the widest filter's padding and every other one takes the inner slices,
#: so all of them see the same encoder scores; the reference (the first setting) runs plain
#: ``fbp`` with ``tomo`` alone.
VARIANTS = (
    ("fbp", "fbp", "tomo"),
    ("fbp tomo-sg", "fbp", "tomo-sg"),
    ("fbp tomo-gauss", "fbp", "tomo-gauss"),
    ("regularized", "regularized", "tomo"),
    ("filled", "filled", "tomo"),
)


class Keep:
    """FBP that keeps the chunks' scores and the stacks of the last volume, for the other reconstructions."""

    name = "fbp"

    def __init__(self) -> None:
        self.kept: list = []
        self.stacks: Any = None

    def __call__(self, chunks, stacks):
        from tomofield.reconstructors import FilteredBackprojection

        self.kept, self.stacks = [(scores.clone(), dirs) for scores, dirs in chunks], stacks
        return FilteredBackprojection()(iter(self.kept), stacks)


def reconstruct_as(kept: list, stacks: Any, reconstructor: Any, filt: Any):
    """``reconstructor`` with filter ``filt`` on the inner slices of scores kept with a wider padding.

    The stack's ``M`` slices lie where they lie whatever the padding
    (:func:`tomofield.geometry.slice_offsets`), so this is what an engine with ``filt``
    would have returned from the same directions.
    """
    from dataclasses import replace

    from tomofield.pipeline import Stacks

    trim = stacks.plan.pad - filt.pad
    if trim < 0:
        raise ValueError(f"filter {filt.name!r} needs {filt.pad} padding slices, the run kept {stacks.plan.pad}")
    inner = [(s[:, trim : s.shape[1] - trim] if trim else s, d) for s, d in kept]
    return reconstructor(iter(inner), Stacks(replace(stacks.plan, pad=filt.pad), filt, stacks.device))


def run_setting(
    weights: str, csv: str, out: Path, L: int, M: int, size: int | None, amp: str = "auto", reference: bool = False
) -> dict[str, Any]:
    """Every variant's heatmaps of every volume of ``csv`` from one encoder run each; the protocol's scores."""
    from benchmarks.suite import _Counting
    from tomofield import plugins
    from tomofield.dataset import read_dataset
    from tomofield.engine import Engine
    from tomofield.heads import LogitHead
    from tomofield.io import Heatmap, Reorientation, load_volume, save_heatmap
    from tomofield.report import evaluate_heatmaps, summary_rows

    variants = [v for v in VARIANTS if not reference or v[0] == "fbp"]
    variants = [v for v in variants if v[1] != "regularized" or L <= REGULARIZE_UP_TO]
    filters = {f: plugins.get("filter", f).factory() for f in {v[2] for v in variants}}
    widest = max(filters.values(), key=lambda f: f.pad)
    recs = {v[1]: plugins.get("reconstructor", v[1]).factory() for v in variants}
    runs, keep = [0], Keep()
    opts = {"slice_size": size, "amp": amp} if size else {"amp": amp}
    engine = Engine(
        weights=weights,
        head=_Counting(LogitHead(), runs),
        filter=widest,
        reconstructor=keep,
        directions=L,
        slices=M,
        device="cpu",
        **opts,
    )
    cases = read_dataset(csv)
    t0 = time.perf_counter()
    for case in cases:
        vol = load_volume(case.images)
        heat = engine.run(vol)
        turn = Reorientation.of(vol.affine)
        for label, rec, filt in variants:
            data = turn.backward(reconstruct_as(keep.kept, keep.stacks, recs[rec], filters[filt])).contiguous()
            save_heatmap(
                out / label.replace(" ", "-") / f"{case.name}.nii.gz",
                Heatmap(data.float().cpu(), heat.affine, heat.spacing, heat.header),
                overwrite=True,
            )
    seconds = time.perf_counter() - t0
    rows: dict[str, Any] = {}
    for label, _, filt in variants:
        res = evaluate_heatmaps(out / label.replace(" ", "-"), csv, folds=FOLDS)
        rows[label] = summary_rows({label: res})[0]
        rows[label]["case_dice"] = [c["dice"] for c in res["cases"]]
        # the slices this filter alone would have run: its own padding instead of the widest's
        rows[label]["slices_per_volume"] = runs[0] / len(cases) * (M + 2 * filters[filt].pad) / (M + 2 * widest.pad)
    return {
        "L": L,
        "M": M,
        "amp": amp,
        "slice_size": size or engine.config.slice_size,
        "slices_per_volume": runs[0] / len(cases),
        "seconds": round(seconds, 1),
        **rows,
    }


METRICS = ("f1", "dice", "balanced_accuracy")
FOLDS = 10


def paired_dice(row: dict[str, Any], reference: dict[str, Any]) -> tuple[float, float]:
    """Mean and standard error of the per-positive Dice difference to the reference (each at its tuned thresholds)."""
    import numpy as np

    pairs = [(a, b) for a, b in zip(row["case_dice"], reference["case_dice"], strict=True) if a is not None]
    if len(pairs) < 2:
        return float("nan"), float("nan")
    d = np.array([a - b for a, b in pairs], dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


MARKERS = {"fbp": "o", "fbp tomo-sg": "v", "fbp tomo-gauss": "^", "regularized": "s", "filled": "D"}


def pareto_png(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True, squeeze=False)
    for row_axes, (name, rows) in zip(axes, results.items(), strict=False):
        for ax, metric in zip(row_axes, ("f1", "dice"), strict=True):
            for label, marker in MARKERS.items():
                mine = [r for r in rows if label in r]
                xs = [r[label]["slices_per_volume"] for r in mine]
                ys = [r[label][metric] for r in mine]
                ax.plot(xs, ys, marker=marker, ls="", label=label)
                if label == "fbp":
                    for r, x, y in zip(mine, xs, ys, strict=True):
                        ax.annotate(
                            f"{r['L']}x{r['M']}@{r['slice_size']}",
                            (x, y),
                            fontsize=6,
                            xytext=(2, 2),
                            textcoords="offset points",
                        )
            if rows:
                ax.axhline(rows[0]["fbp"][metric], color="k", lw=0.6, ls="--", label="reference")
                ax.axhspan(rows[0]["fbp"][metric] - 0.02, rows[0]["fbp"][metric] + 0.02, color="k", alpha=0.08)
            ax.set_xscale("log")
            ax.set_xlabel("encoder slices per volume (run, not skipped)")
            ax.set_ylabel(("F1" if metric == "f1" else "Dice") + f" ({name} set)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("ToNNO quality against encoder work (10 Monte-Carlo folds; band: reference +- 0.02)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    global FOLDS
    p = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True, help="held-out dataset CSV, usual lesions")
    p.add_argument("--large", help="held-out dataset CSV, large lesions")
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="two settings only (a check of the benchmark itself)")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--grid", nargs="+", metavar="L,M[,S]", help="settings instead of the built-in grid")
    p.add_argument("--amp", default="auto", help="comma-separated encoder precisions to compare (auto, bf16, ...)")
    a = p.parse_args(argv)
    FOLDS = a.folds
    out = Path(a.out)
    sets = {"usual": a.data, **({"large": a.large} if a.large else {})}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sets}
    grid = QUICK if a.quick else GRID
    if a.grid:
        grid = [
            (*(int(v) for v in g.split(",")[:2]), int(g.split(",")[2]) if g.count(",") == 2 else None) for g in a.grid
        ]
    t_all = time.perf_counter()
    for i, ((L, M, size), amp) in enumerate((g, amp) for g in grid for amp in a.amp.split(",")):
        for name, csv in sets.items():
            where = out / "heatmaps" / name / f"L{L}-M{M}-S{size or 'run'}-{amp}"
            row = run_setting(a.weights, csv, where, L, M, size, amp, reference=i == 0 and not a.quick)
            results[name].append(row)
            got = ", ".join(f"{k} {row[k]['f1']:.3f}/{row[k]['dice']:.3f}" for k in MARKERS if k in row)
            print(f"{name} L={L} M={M} S={row['slice_size']} amp={amp}: {row['seconds']} s; F1/Dice {got}", flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| set | L | M | slice | amp | encoder slices / volume | reconstruction | F1 | Dice | "
        "paired Dice - reference | balanced acc. | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            for label in MARKERS:
                if label not in r:
                    continue
                m = r[label]
                d, se = paired_dice(m, rows[0]["fbp"])
                lines.append(
                    f"| {name} | {r['L']} | {r['M']} | {r['slice_size']} | {r['amp']} | {m['slices_per_volume']:.0f} | "
                    f"{label} | {m['f1']:.3f} ± {m.get('f1_std', 0):.3f} | {m['dice']:.3f} ± {m.get('dice_std', 0):.3f} | "
                    f"{d:+.3f} ± {se:.3f} | {m['balanced_accuracy']:.3f} | {r['seconds']} |"
                )
    lines.append(f"\nwall time {time.perf_counter() - t_all:.0f} s")
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    pareto_png(results, out / "pareto.png")


if __name__ == "__main__":
    main()
