"""``python -m benchmarks quality``: heatmap quality against encoder slices actually run.

One trained encoder (``--weights``, the demo's run), held-out datasets of new seeds
(``--data``: the usual lesions; ``--large``: large ones, ``tomofield synth --lesion-radius``),
ToNNO (logit head) for a grid of directions L, slices M and slice sizes, each heatmap
scored with the evaluation protocol (paper A.7: F1, Dice, balanced accuracy, ``--folds``
Monte-Carlo folds). The encoder's work is counted as the slices it scored (empty slices
skipped are not run). Every setting's scores are reconstructed twice from the same encoder
run, by ``fbp`` and by ``regularized``, so the two reconstructors are compared at equal
encoder slices exactly.

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
    (1024, 64, None),
    (256, 32, None),
    (128, 32, None),
    (128, 16, None),
    (64, 24, None),
    (32, 16, None),
    (128, 32, 32),
)
QUICK = ((256, 32, None), (64, 16, None))
#: the regularized fit also runs on settings of at most this many directions (each of its
#: 18 operator applications slices the heatmap at every plane; at L = 1024 x M = 64 that
#: is as long as the encoder)
REGULARIZE_UP_TO = 256


class Tee:
    """A reconstructor that returns FBP and keeps the regularized fit of the same scores in ``other``."""

    name = "fbp"

    def __init__(self, regularized: Any) -> None:
        self.regularized, self.other = regularized, None

    def __call__(self, chunks, stacks):
        from tomofield.reconstructors import FilteredBackprojection

        kept = [(scores.clone(), dirs) for scores, dirs in chunks]
        self.other = self.regularized(iter(kept), stacks)
        return FilteredBackprojection()(iter(kept), stacks)


def run_setting(
    weights: str, csv: str, out: Path, L: int, M: int, size: int | None, amp: str = "auto"
) -> dict[str, Any]:
    """Heatmaps of every volume of ``csv`` by fbp and regularized from one encoder run; the protocol's scores."""
    from benchmarks.suite import _Counting
    from tomofield.dataset import read_dataset
    from tomofield.engine import Engine
    from tomofield.heads import LogitHead
    from tomofield.io import Reorientation, load_volume, save_heatmap
    from tomofield.reconstructors import Regularized
    from tomofield.report import evaluate_heatmaps, summary_rows

    runs = [0]
    head, tee = _Counting(LogitHead(), runs), Tee(Regularized())
    regularize = L <= REGULARIZE_UP_TO
    opts = {"slice_size": size, "amp": amp} if size else {"amp": amp}
    engine = Engine(
        weights=weights,
        head=head,
        reconstructor=tee if regularize else "fbp",
        directions=L,
        slices=M,
        device="cpu",
        **opts,
    )
    dirs = {r: out / f"{r}" for r in (("fbp", "regularized") if regularize else ("fbp",))}
    cases = read_dataset(csv)
    t0 = time.perf_counter()
    for case in cases:
        vol = load_volume(case.images)
        heat = engine.run(vol)
        save_heatmap(dirs["fbp"] / f"{case.name}.nii.gz", heat, overwrite=True)
        if not regularize:
            continue
        other = type(heat)(tee.other.cpu(), heat.affine, heat.spacing, heat.header)
        # the regularized fit ran in the engine's frame: the same turn back as the FBP heatmap
        other.data = Reorientation.of(vol.affine).backward(other.data).contiguous()
        save_heatmap(dirs["regularized"] / f"{case.name}.nii.gz", other, overwrite=True)
    seconds = time.perf_counter() - t0
    rows = {}
    for r, folder in dirs.items():
        rows[r] = summary_rows({r: evaluate_heatmaps(folder, csv, folds=FOLDS)})[0]
    return {
        "L": L,
        "M": M,
        "amp": amp,
        "slice_size": size or engine.config.slice_size,
        "slices_per_volume": runs[0] / len(cases),
        "seconds": round(seconds, 1),
        **{r: rows[r] for r in rows},
    }


METRICS = ("f1", "dice", "balanced_accuracy")
FOLDS = 10


def pareto_png(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("f1", "dice"), strict=True):
        for name, rows in results.items():
            for rec, marker in (("fbp", "o"), ("regularized", "s")):
                mine = [r for r in rows if rec in r]
                xs = [r["slices_per_volume"] for r in mine]
                ys = [r[rec][metric] for r in mine]
                ax.scatter(xs, ys, marker=marker, label=f"{name}, {rec}")
                for r, x, y in zip(mine, xs, ys, strict=True):
                    ax.annotate(
                        f"{r['L']}x{r['M']}" + (f"@{r['slice_size']}" if r["slice_size"] != 48 else ""),
                        (x, y),
                        fontsize=6,
                        xytext=(2, 2),
                        textcoords="offset points",
                    )
        ax.set_xscale("log")
        ax.set_xlabel("encoder slices per volume (run, not skipped)")
        ax.set_ylabel(metric.upper() if metric == "f1" else "Dice")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("ToNNO quality against encoder work (10 Monte-Carlo folds)")
    fig.savefig(path, dpi=120)


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
    for (L, M, size), amp in ((g, amp) for g in grid for amp in a.amp.split(",")):
        for name, csv in sets.items():
            where = out / "heatmaps" / name / f"L{L}-M{M}-S{size or 'run'}-{amp}"
            row = run_setting(a.weights, csv, where, L, M, size, amp)
            results[name].append(row)
            print(
                f"{name} L={L} M={M} S={row['slice_size']} amp={amp}: {row['slices_per_volume']:.0f} slices/volume, "
                f"{row['seconds']} s; F1 fbp {row['fbp']['f1']:.3f} "
                f"reg {row.get('regularized', {}).get('f1', float('nan')):.3f}; "
                f"Dice fbp {row['fbp']['dice']:.3f} reg {row.get('regularized', {}).get('dice', float('nan')):.3f}",
                flush=True,
            )
            (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| set | L | M | slice | amp | encoder slices / volume | reconstructor | F1 | Dice | balanced acc. | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            for rec in ("fbp", "regularized"):
                if rec not in r:
                    continue
                m = r[rec]
                lines.append(
                    f"| {name} | {r['L']} | {r['M']} | {r['slice_size']} | {r['amp']} | {r['slices_per_volume']:.0f} | "
                    f"{rec} | "
                    f"{m['f1']:.3f} ± {m.get('f1_std', 0):.3f} | {m['dice']:.3f} ± {m.get('dice_std', 0):.3f} | "
                    f"{m['balanced_accuracy']:.3f} | {r['seconds']} |"
                )
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    pareto_png(results, out / "pareto.png")


if __name__ == "__main__":
    main()
