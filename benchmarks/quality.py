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

#: (L, M, slice size or None for the run's): the reference first, at the encoder's own slice size.
GRID = (
    (1024, 64, None),
    (512, 16, None),
    (256, 32, None),
    (128, 32, None),
)
QUICK = ((256, 32, None), (64, 16, None))
#: subsets of each setting's directions (those below its L), each reconstructed as a setting
#: of its own (:func:`direction_subset`): the curve in L at each M for no encoder time
SUBSETS = (512, 256, 128, 64, 32)
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


def direction_subset(kept: list, stacks: Any, n: int, seed: int = 0) -> tuple[list, Any]:
    """The kept scores and the stacks of the first ``n`` of a fixed random order of a run's directions.

    A run with only those directions would have scored exactly these slices (each
    direction's stack is cut from the volume alone), so the subset is that run at the
    encoder cost of ``n`` directions. It is another direction set than a Fibonacci set of
    ``n``, and F1 on a few positives moves with the direction set (docs/benchmarks.md
    section 10: up to 0.4 between a subset and the real run at the same L x M).
    """
    from dataclasses import replace

    import torch

    from tomofield.pipeline import Stacks

    plan = stacks.plan
    total = sum(len(g) for g in plan.groups)
    if not 0 < n <= total:
        raise ValueError(f"a subset of {n} directions of a run of {total}")
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]] = True

    def pick(items: list, size) -> list:
        picked, start = [], 0
        for item in items:
            k = size(item)
            mask = chosen[start : start + k]
            start += k
            if mask.any():
                picked.append((item, mask))
        if start != total:
            raise ValueError(f"the kept chunks hold {start} directions, the plan {total}")
        return picked

    sub_kept = [
        (scores[mask.to(scores.device)], dirs[mask.to(dirs.normals.device)])
        for (scores, dirs), mask in pick(kept, lambda c: len(c[1]))
    ]
    groups = [g[mask] for g, mask in pick(plan.groups, len)]
    return sub_kept, Stacks(replace(plan, groups=groups, n_dirs=n), stacks._filter, stacks.device)


def save_variant(path: Path, data: Any, like: Any) -> None:
    """A reconstruction ``data`` on the stored grid of heatmap ``like``, saved to ``path`` (replacing it)."""
    from tomofield.io import Heatmap, save_heatmap

    save_heatmap(path, Heatmap(data.float().cpu(), like.affine, like.spacing, like.header), overwrite=True)


def contrast(heat_dir: Path, csv: str) -> dict[str, float]:
    """Background noise and lesion contrast of a heatmap set.

    ``noise``: the median over volumes of the heatmap's standard deviation outside the
    lesion masks (the heatmap's units); ``cnr``: the mean over positives of (mean inside
    the lesions - mean outside) / that standard deviation.
    """
    import nibabel as nib
    import numpy as np

    from tomofield.dataset import read_dataset

    noise, cnr = [], []
    for case in read_dataset(csv):
        h = np.asarray(nib.load(str(heat_dir / f"{case.name}.nii.gz")).dataobj, dtype=np.float64)
        h = h[..., 0] if h.ndim == 4 else h
        m = np.asarray(nib.load(str(case.mask)).dataobj) > 0 if case.mask else np.zeros(h.shape, bool)
        sd = float(h[~m].std())
        noise.append(sd)
        if m.any() and sd > 0:
            cnr.append((float(h[m].mean()) - float(h[~m].mean())) / sd)
    return {"noise": float(np.median(noise)), "cnr": float(np.mean(cnr)) if cnr else float("nan")}


def run_setting(
    weights: str,
    csv: str,
    out: Path,
    L: int,
    M: int,
    size: int | None,
    amp: str = "auto",
    subsets: tuple[int, ...] = (),
) -> list[dict[str, Any]]:
    """Every variant's heatmaps of every volume of ``csv`` from one encoder run each; the protocol's scores.

    One row for the setting, then one per subset of its directions (:func:`direction_subset`).
    """
    from benchmarks.suite import _Counting
    from tomofield import plugins
    from tomofield.dataset import read_dataset
    from tomofield.engine import Engine
    from tomofield.heads import LogitHead
    from tomofield.io import Reorientation, load_volume
    from tomofield.report import evaluate_heatmaps, summary_rows

    filters = {f: plugins.get("filter", f).factory() for f in {v[2] for v in VARIANTS}}
    widest = max(filters.values(), key=lambda f: f.pad)
    recs = {v[1]: plugins.get("reconstructor", v[1]).factory() for v in VARIANTS}
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
    views = [(L, "")] + [(n, f"sub{n}-") for n in subsets if n < L]

    def variants(n: int) -> list[tuple[str, str, str]]:
        return [v for v in VARIANTS if v[1] != "regularized" or n <= REGULARIZE_UP_TO]

    cases = read_dataset(csv)
    t0 = time.perf_counter()
    for case in cases:
        vol = load_volume(case.images)
        heat = engine.run(vol)
        turn = Reorientation.of(vol.affine)
        for n, tag in views:
            kept, stacks = (keep.kept, keep.stacks) if n == L else direction_subset(keep.kept, keep.stacks, n)
            for label, rec, filt in variants(n):
                data = turn.backward(reconstruct_as(kept, stacks, recs[rec], filters[filt])).contiguous()
                save_variant(out / (tag + label.replace(" ", "-")) / f"{case.name}.nii.gz", data, heat)
    seconds = time.perf_counter() - t0
    per_volume = runs[0] / len(cases)
    rows = []
    for n, tag in views:
        row: dict[str, Any] = {
            "L": n,
            "M": M,
            "amp": amp,
            "slice_size": size or engine.config.slice_size,
            "subset_of": L if n != L else None,
            "slices_per_volume": per_volume * n / L,
            "seconds": round(seconds * n / L, 1),
        }
        for label, _, filt in variants(n):
            where = out / (tag + label.replace(" ", "-"))
            res = evaluate_heatmaps(where, csv, folds=FOLDS)
            row[label] = summary_rows({label: res})[0]
            row[label]["case_dice"] = [c["dice"] for c in res["cases"]]
            row[label].update(contrast(where, csv))
            # the slices this filter alone would have run: its own padding instead of the widest's
            row[label]["slices_per_volume"] = per_volume * n / L * (M + 2 * filters[filt].pad) / (M + 2 * widest.pad)
        rows.append(row)
    return rows


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
    import matplotlib.ticker

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
                ax.axvline(
                    rows[0]["fbp"]["slices_per_volume"] / 4, color="k", lw=0.6, ls=":", label="1/4 of its slices"
                )
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("encoder slices per volume (run, not skipped)")
            ax.set_ylabel(("F1" if metric == "f1" else "Dice") + f" ({name} set)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("ToNNO quality against encoder work (10 Monte-Carlo folds; band: reference +- 0.02)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fitted_exponent(xs: list[float], ys: list[float]) -> float:
    """The slope of ``log y`` against ``log x`` (least squares)."""
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def noise_lines(rows: list[dict[str, Any]], L: int = 128) -> tuple[dict[int, list], list]:
    """The rows at the first row's slice size as lines: ``{M: rows by L}`` and the rows at ``L`` by M.

    Where a real run and a subset share (L, M), the real run is kept.
    """
    size = rows[0]["slice_size"]
    by_lm: dict[tuple[int, int], dict[str, Any]] = {}
    for r in rows:
        if r["slice_size"] == size and r["amp"] == rows[0]["amp"]:
            if (r["L"], r["M"]) not in by_lm or not r.get("subset_of"):
                by_lm[(r["L"], r["M"])] = r
    along_l: dict[int, list] = {}
    for (_, m), r in sorted(by_lm.items()):
        along_l.setdefault(m, []).append(r)
    along_m = [r for (l_, _), r in sorted(by_lm.items(), key=lambda kv: kv[0][1]) if l_ == L]
    return along_l, along_m


def noise_png(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Background noise and lesion contrast-to-noise of ``fbp`` against L (per M) and against M (at L = 128).

    Dotted: the white-noise law (the second difference divides by the slice spacing
    squared, the backprojection averages L directions: ``(M - 1)^2 / sqrt(L)``,
    ``tests/numeric/test_noise_law.py``); the legend gives each measured line's exponent.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    styles = {"usual": "-", "large": "--"}
    for name, rows in results.items():
        along_l, along_m = noise_lines(rows)
        for m, line in along_l.items():
            if len(line) < 2:
                continue
            xs, noise = [r["L"] for r in line], [r["fbp"]["noise"] for r in line]
            (dots,) = axes[0][0].plot(
                xs, noise, "o" + styles.get(name, "-"), label=f"{name}, M={m}: L^{fitted_exponent(xs, noise):.2f}"
            )
            if name == "usual":
                axes[0][0].plot(xs, [noise[0] * (x / xs[0]) ** -0.5 for x in xs], ":", color=dots.get_color())
            axes[1][0].plot(
                xs,
                [r["fbp"]["cnr"] for r in line],
                "o" + styles.get(name, "-"),
                color=dots.get_color(),
                label=f"{name}, M={m}: fbp",
            )
            axes[1][0].plot(
                xs,
                [r["filled"]["cnr"] for r in line],
                "D:",
                color=dots.get_color(),
                alpha=0.6,
                label=f"{name}, M={m}: filled",
            )
        if len(along_m) >= 2:
            xs, noise = [r["M"] for r in along_m], [r["fbp"]["noise"] for r in along_m]
            (dots,) = axes[0][1].plot(
                xs, noise, "o" + styles.get(name, "-"), label=f"{name}, fbp: M^{fitted_exponent(xs, noise):.2f}"
            )
            axes[0][1].plot(
                xs,
                [noise[0] * ((x - 1) / (xs[0] - 1)) ** 2 for x in xs],
                ":",
                color=dots.get_color(),
                label=f"{name}: white noise, (M-1)^2",
            )
            for label, marker in (("fbp", "o"), ("fbp tomo-gauss", "^"), ("filled", "D")):
                axes[1][1].plot(
                    xs,
                    [r[label]["cnr"] for r in along_m],
                    marker + styles.get(name, "-"),
                    label=f"{name}: {label}",
                    alpha=0.8,
                )
    titles = (
        ("L (directions); subsets of each run's directions", "M (slices per direction), L = 128"),
        ("background noise: heatmap std outside the lesions", "lesion contrast-to-noise ratio"),
    )
    for r in range(2):
        for c in range(2):
            ax = axes[r][c]
            ax.set_xscale("log", base=2)
            if r == 0:
                ax.set_yscale("log")
            ax.set_xlabel(titles[0][c])
            ax.set_ylabel(titles[1][r])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.suptitle("Why more slices can be worse: FBP noise against L and M (dotted: white-noise scores)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def condensed(results: dict[str, list[dict[str, Any]]]) -> str:
    """One line per setting: F1 / Dice of each variant, fbp's noise and contrast-to-noise (Markdown)."""
    labels = [label for label in MARKERS if any(label in r for rows in results.values() for r in rows)]
    lines = [
        "| set | L x M | encoder slices / volume | "
        + " | ".join(f"{label} F1 / Dice" for label in labels)
        + " | fbp noise | fbp CNR |",
        "|---|---|---|" + "---|" * len(labels) + "---|---|",
    ]
    for name, rows in results.items():
        for r in sorted(rows, key=lambda r: (r["slice_size"], r["M"], r["L"])):
            cells = [f"{r[k]['f1']:.3f} / {r[k]['dice']:.3f}" if k in r else "" for k in labels]
            sub = f" (of {r['subset_of']})" if r.get("subset_of") else ""
            lines.append(
                f"| {name} | {r['L']} x {r['M']}{sub}"
                + (f" @ {r['slice_size']}" if r["slice_size"] != rows[0]["slice_size"] else "")
                + f" | {r['fbp']['slices_per_volume']:.0f} | "
                + " | ".join(cells)
                + f" | {r['fbp']['noise']:.1f} | {r['fbp']['cnr']:.2f} |"
            )
    return "\n".join(lines) + "\n"


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
    p.add_argument("--no-subsets", action="store_true", help="no subsets of the settings' directions")
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
    for (L, M, size), amp in ((g, amp) for g in grid for amp in a.amp.split(",")):
        for name, csv in sets.items():
            where = out / "heatmaps" / name / f"L{L}-M{M}-S{size or 'run'}-{amp}"
            subsets = () if a.quick or a.no_subsets else SUBSETS
            for row in run_setting(a.weights, csv, where, L, M, size, amp, subsets):
                results[name].append(row)
                got = ", ".join(f"{k} {row[k]['f1']:.3f}/{row[k]['dice']:.3f}" for k in MARKERS if k in row)
                print(
                    f"{name} L={row['L']} M={M} S={row['slice_size']} amp={amp}: {row['seconds']} s; {got}", flush=True
                )
            (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| set | L | M | slice | amp | encoder slices / volume | reconstruction | F1 | Dice | "
        "paired Dice - reference | balanced acc. | CNR | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            for label in MARKERS:
                if label not in r:
                    continue
                m = r[label]
                d, se = paired_dice(m, rows[0]["fbp"])
                sub = f" (of {r['subset_of']})" if r.get("subset_of") else ""
                lines.append(
                    f"| {name} | {r['L']}{sub} | {r['M']} | {r['slice_size']} | {r['amp']} | "
                    f"{m['slices_per_volume']:.0f} | {label} | {m['f1']:.3f} ± {m.get('f1_std', 0):.3f} | "
                    f"{m['dice']:.3f} ± {m.get('dice_std', 0):.3f} | {d:+.3f} ± {se:.3f} | "
                    f"{m['balanced_accuracy']:.3f} | {m['cnr']:.2f} | {r['seconds']} |"
                )
    lines.append(f"\nwall time {time.perf_counter() - t_all:.0f} s")
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    (out / "condensed.md").write_text(condensed(results))
    pareto_png(results, out / "pareto.png")
    noise_png(results, out / "noise.png")


if __name__ == "__main__":
    main()
