"""``python -m benchmarks filled``: plain ToNNO against the filled reconstructions at equal encoder slices.

One trained encoder (``--weights``), held-out datasets (``--data``: the usual lesions;
``--large``: large ones, ``tomofield synth --lesion-radius``). Every volume's encoder run
(logit head, ``-L`` x ``-M`` slices) is kept once and reconstructed by each of ``fbp``
(plain ToNNO), ``filled`` and ``calibrated`` (:mod:`tomofield.reconstructors`), so the
reconstructors are compared on exactly the same slice scores. Each heatmap set is scored
with the evaluation protocol (paper A.7, ``--folds`` Monte-Carlo folds), without and with
``fill_holes`` in the binarization.

Writes ``OUT/results.json``, ``OUT/filled.md`` (the table), ``OUT/filled.png`` (the large
set's first positives: image, plain and filled heatmaps at the lesion's largest axial
cross-section, and the line profile through the lesion's centre), ``OUT/filled-usual.png``
(the same for the usual set) and the heatmaps under
``OUT/heatmaps/SET/RECONSTRUCTOR/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

RECONSTRUCTORS = ("fbp", "filled", "calibrated")


def run_set(weights: str, csv: str, out: Path, L: int, M: int, folds: int) -> dict[str, Any]:
    """Every reconstructor's heatmaps of ``csv`` from one encoder run per volume, and the protocol's scores."""
    from benchmarks.quality import Keep, save_variant
    from tomofield import plugins
    from tomofield.dataset import read_dataset
    from tomofield.engine import Engine
    from tomofield.io import Reorientation, load_volume
    from tomofield.report import evaluate_heatmaps, summary_rows

    keep = Keep()
    engine = Engine(weights=weights, reconstructor=keep, directions=L, slices=M, device="cpu")
    others = {name: plugins.get("reconstructor", name).factory() for name in RECONSTRUCTORS}
    seconds = dict.fromkeys(RECONSTRUCTORS, 0.0)
    cases = read_dataset(csv)
    t0 = time.perf_counter()
    for case in cases:
        vol = load_volume(case.images)
        heat = engine.run(vol)
        turn = Reorientation.of(vol.affine)
        for name, rec in others.items():
            t = time.perf_counter()
            data = heat.data if name == "fbp" else turn.backward(rec(iter(keep.kept), keep.stacks)).contiguous()
            seconds[name] += time.perf_counter() - t
            save_variant(out / name / f"{case.name}.nii.gz", data, heat)
    encoder_s = time.perf_counter() - t0 - sum(seconds.values())
    rows: dict[str, Any] = {}
    for name in RECONSTRUCTORS:
        for fill in (False, True):
            res = evaluate_heatmaps(out / name, csv, folds=folds, fill_holes=fill)
            rows[name + (" + fill_holes" if fill else "")] = summary_rows({name: res})[0]
    return {"volumes": len(cases), "encoder_seconds": round(encoder_s, 1), "seconds": seconds, "rows": rows}


def figure(csv: str, heatmaps: Path, path: Path, n: int = 3) -> None:
    """Image, plain and filled heatmaps of the first ``n`` positives, and the line profiles through their lesions."""
    import matplotlib
    import nibabel as nib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tomofield.dataset import read_dataset

    cases = [c for c in read_dataset(csv) if c.label == 1 and c.mask is not None][:n]
    fig, axes = plt.subplots(len(cases), 4, figsize=(11, 2.7 * len(cases)), squeeze=False, constrained_layout=True)
    for row, case in zip(axes, cases, strict=True):
        img = np.asarray(nib.load(case.images[0]).dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(case.mask).dataobj) > 0
        heat = {
            name: np.asarray(nib.load(heatmaps / name / f"{case.name}.nii.gz").dataobj, dtype=np.float32)
            for name in ("fbp", "filled")
        }
        heat = {k: v[..., 0] if v.ndim == 4 else v for k, v in heat.items()}
        k = int(np.argmax(mask.sum(axis=(0, 1))))  # the axial cut with the most lesion
        cj = int(round(np.nonzero(mask[:, :, k])[1].mean()))
        # both heatmaps on the plain one's scale: the filled one is never lower
        lo, hi = float(heat["fbp"].min()), float(heat["fbp"].max())
        # the arrays are (i, j, k); imshow of the transpose puts i across and j up (origin lower)
        row[0].imshow(img[:, :, k].T, cmap="gray", origin="lower")
        row[0].set_title(f"{case.name}, k = {k}", fontsize=8)
        for ax, name, title in ((row[1], "fbp", "plain ToNNO (fbp)"), (row[2], "filled", "filled (the default)")):
            ax.imshow(heat[name][:, :, k].T, cmap="magma", origin="lower", vmin=lo, vmax=hi)
            ax.contour(mask[:, :, k].T, [0.5], colors="cyan", linewidths=0.8)
            ax.axhline(cj, color="w", lw=0.5, ls=":")
            ax.set_title(title, fontsize=8)
        for name in ("fbp", "filled"):
            row[3].plot(heat[name][:, cj, k] / hi, label=name)
        row[3].fill_between(np.arange(mask.shape[0]), 0, mask[:, cj, k], color="cyan", alpha=0.25, label="lesion")
        row[3].axhline(0, color="k", lw=0.4)
        row[3].set_title("profile along i at the dotted line (/ plain max)", fontsize=8)
        row[3].legend(fontsize=6)
        for ax in row[:3]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks filled", description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True, help="held-out dataset CSV, usual lesions")
    p.add_argument("--large", required=True, help="held-out dataset CSV, large lesions")
    p.add_argument("--out", required=True)
    p.add_argument("-L", "--directions", type=int, default=128)
    p.add_argument("-M", "--slices", type=int, default=32)
    p.add_argument("--folds", type=int, default=10)
    a = p.parse_args(argv)
    out = Path(a.out)
    results = {}
    for name, csv in (("usual", a.data), ("large", a.large)):
        results[name] = run_set(a.weights, csv, out / "heatmaps" / name, a.directions, a.slices, a.folds)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"L = {a.directions}, M = {a.slices}; every row of a set reconstructs the same encoder run.",
        "",
        "| set | reconstructor | F1 | Dice | precision | recall | balanced acc. |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for method, m in res["rows"].items():
            lines.append(
                f"| {name} | {method} | {m['f1']:.3f} ± {m.get('f1_std', 0):.3f} | "
                f"{m['dice']:.3f} ± {m.get('dice_std', 0):.3f} | {m.get('precision', float('nan')):.3f} | "
                f"{m.get('recall', float('nan')):.3f} | {m['balanced_accuracy']:.3f} |"
            )
    (out / "filled.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure(a.large, out / "heatmaps" / "large", out / "filled.png")
    figure(a.data, out / "heatmaps" / "usual", out / "filled-usual.png")


if __name__ == "__main__":
    main()
