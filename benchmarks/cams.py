"""``python -m benchmarks.cams``: Tomographic X for CAM methods X, core heads and pytorch-grad-cam's, side by side.

Every method runs with the same trained encoder (``--weights``, e.g. the demo's run), the
same directions and slices and the same layer, on a held-out dataset (``--data``, e.g.
``tomofield synth``'s), and is scored with the evaluation protocol (paper A.7, ``--folds``
Monte-Carlo folds). Heatmaps go to ``OUT/heatmaps/<method>/`` (a dataset run: an
interrupted benchmark resumes), the table to stdout and ``OUT/results.json``.

Needs the adapter plugin for the ``pgc-*`` heads: ``pip install -e plugins/tomofield-gradcam``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

#: (label, head, filter): built-in Tomographic / Averaged CAMs and the adapter's.
METHODS = (
    ("Tomographic GradCAM", "gradcam", "tomo"),
    ("Tomographic LayerCAM", "layercam", "tomo"),
    ("Tomographic GradCAM (pytorch-grad-cam)", "pgc-gradcam", "tomo"),
    ("Tomographic HiResCAM (pytorch-grad-cam)", "pgc-hirescam", "tomo"),
    ("Tomographic EigenCAM (pytorch-grad-cam)", "pgc-eigencam", "tomo"),
    ("Averaged EigenCAM (pytorch-grad-cam)", "pgc-eigencam", "none"),
    ("ToNNO", "logit", "tomo"),
)


def main(argv: list[str] | None = None) -> None:
    from tomofield.batch import run_dataset
    from tomofield.dataset import read_dataset
    from tomofield.engine import Engine
    from tomofield.report import evaluate_heatmaps, summary_rows

    p = argparse.ArgumentParser(prog="python -m benchmarks.cams", description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="run directory of tomofield train")
    p.add_argument("--data", required=True, help="held-out dataset CSV")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layer", type=int, default=4, help="CAM layer (timm stage), the same for every method")
    p.add_argument("--directions", "-L", type=int, default=64)
    p.add_argument("--slices", "-M", type=int, default=24)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--methods", default="", help="comma-separated labels' heads to keep (default: all)")
    a = p.parse_args(argv)
    keep = set(filter(None, a.methods.split(",")))
    cases, out = read_dataset(a.data), Path(a.out)
    results, timing = {}, {}
    for label, head, filt in METHODS:
        if keep and head not in keep:
            continue
        slug = f"{head}-{filt}"
        opts = {} if head == "logit" else {"layer": a.layer}
        engine = Engine(
            weights=a.weights,
            head=head,
            filter=filt,
            head_options=opts,
            directions=a.directions,
            slices=a.slices,
            device="cpu",
        )
        t0 = time.perf_counter()
        run_dataset(engine, cases, out / "heatmaps" / slug)
        timing[label] = round(time.perf_counter() - t0, 1)
        results[label] = evaluate_heatmaps(out / "heatmaps" / slug, a.data, folds=a.folds)
        print(f"{label}: {timing[label]} s", flush=True)
    rows = summary_rows(results)
    print("\n| method | precision | recall | F1 | Dice | balanced accuracy | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            f"{r[m]:.3f} ± {r[m + '_std']:.3f}" for m in ("precision", "recall", "f1", "dice", "balanced_accuracy")
        ]
        print(f"| {r['method']} | " + " | ".join(cells) + f" | {timing[r['method']]} |")
    (out / "results.json").write_text(json.dumps({"rows": rows, "seconds": timing, "args": vars(a)}, indent=1))


if __name__ == "__main__":
    main()
