"""``python -m benchmarks.recipes``: does a training recipe learn? Several seeds, one dataset, side by side.

Writes a training set and a held-out test set (seeds used nowhere else), then for every
recipe and training seed trains an encoder as a user would (``tomofield train`` in a
subprocess with the recipe's flags and ``--seed`` only; ``plain`` runs
:mod:`benchmarks.plain_loop`, a few lines of PyTorch, as the yardstick) and scores it:

* the validation AUC of the run on the training set's ``val.csv``, by one scorer for every
  recipe (:func:`tomofield.train.validation.volume_scores`: stacks of slices pooled per
  volume), and the run's own verdict (its ``config.json`` diagnostics; ``plain`` has none);
* where the slice scores rise: the localisation of the validation and the test positives
  (:func:`tomofield.train.validation.localisation`, the AUC of the slices that cut a lesion
  against the rest of their volume; 0.5 by chance, below it where lesions lower the score);
* ToNNO heatmaps (logit head, tomo filter, plain reconstruction, L = ``--directions``,
  M = ``--slices``) of every test volume: the mean Dice over the test positives at the best
  single threshold, and the evaluation protocol's 10 folds (``tomofield evaluate``: F1,
  Dice, balanced accuracy).

Data (``--data``):

* ``demo``: ``tomofield demo``'s data (``tomofield synth`` realistic, 60 volumes of up to 40
  voxels at 2 x 1 x 1 mm, lesions of 3-8 voxels);
* ``brain``: small, faint lesions on real anatomy (:mod:`benchmarks.brain`: MNI152 at 3 mm,
  1-4 lesions of 3-9 mm semi-axes, 35-70 % brighter than the white matter; ``pip install
  nilearn``);
* ``small``: the same class on the synthetic anatomy (``tomofield synth`` realistic, 72
  voxels, ``--lesion-radius 1,3 --lesions 1,4 --lesion-contrast 0.35,0.7``).

Recipes: ``defaults`` (no flags), ``paper`` (every slice takes its volume's label, the
rest as before issue 27: group norm, lr 1e-3, augmentation 0.3), ``plain`` (the reference
loop, ``--iterations`` steps), ``old`` (the README's recipe before issue 15), ``lite0``
(``--pretrained --encoder tf_efficientnet_lite0``), ``perslice`` (the defaults with the paper's per-slice
objective), ``negshare`` (the defaults with ``--negative-share 0.5``). Results go to ``OUT/results.json`` and a
Markdown table on stdout; a repeated call skips what is done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

#: ``tomofield train`` flags of each recipe (``plain`` is the reference loop, not a flag set).
RECIPES: dict[str, list[str]] = {
    "defaults": [],
    "paper": [
        "--objective",
        "slice",
        "--norm",
        "group-norm",
        "--lr",
        "1e-3",
        "--intensity",
        "volume",
        "--scale-jitter",
        "0.3",
        "--translation",
        "0.3",
        "--intensity-jitter",
        "0.3",
    ],
    "old": [
        "--objective",
        "slice",
        "--slice-size",
        "64",
        "--slices-per-volume",
        "32",
        "--lr",
        "1e-3",
        "--norm",
        "group-norm",
        "--intensity",
        "none",
        "--warmup",
        "0",
        "--scale-jitter",
        "0.3",
        "--translation",
        "0.3",
        "--intensity-jitter",
        "0.3",
    ],
    "lite0": ["--pretrained", "--encoder", "tf_efficientnet_lite0"],
    "perslice": ["--objective", "slice"],
    "negshare": ["--negative-share", "0.5"],
    "contrast": ["--pool", "contrast"],
    "plain": [],
}
#: The data sets: how ``tomofield synth`` or :mod:`benchmarks.brain` writes them (training set; the test set
#: takes the same settings with ``n = --test-n``).
DATA = {
    "demo": ["synth", "--n", "60", "--size", "40", "--background", "realistic", "--spacing", "1,1,2"],
    "small": [
        "synth",
        "--n",
        "64",
        "--size",
        "72",
        "--background",
        "realistic",
        "--lesion-radius",
        "1,3",
        "--lesions",
        "1,4",
        "--lesion-contrast",
        "0.35,0.7",
    ],
    "brain": ["brain", "--n", "64"],
}


def make_data(kind: str, out: Path, seed: int, n: int | None = None) -> None:
    """Write the data set ``kind`` into ``out`` with ``seed`` (``n`` volumes instead of the set's own)."""
    args = list(DATA[kind])
    if n is not None:
        args[args.index("--n") + 1] = str(n)
    if args[0] == "brain":
        cmd = [sys.executable, "-m", "benchmarks.brain", str(out), *args[1:], "--seed", str(seed)]
    else:
        cmd = [sys.executable, "-m", "tomofield", "synth", str(out), *args[1:], "--seed", str(seed)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def val_auc(run: Path, val_csv: Path) -> tuple[float, float]:
    """The AUC of the run's volume scores on ``val_csv``, by the trainer's own scorer at its default settings, and
    the localisation of its positives with masks (:func:`tomofield.train.validation.localisation`; NaN without)."""
    import torch

    from tomofield.checkpoint import RunDir
    from tomofield.dataset import read_dataset
    from tomofield.encoders import build_encoder, load_weights, read_safetensors
    from tomofield.train import TrainConfig, load_cases
    from tomofield.train.validation import auc, scores_and_localisation

    cfg = RunDir(run).config
    train = TrainConfig(slice_size=cfg["slice_size"], geometry=cfg["geometry"], extent=cfg["extent"]).resolved()
    vols = load_cases(read_dataset(val_csv), cfg["geometry"], torch.device("cpu"), cfg["intensity"], masks=True)
    model = build_encoder(cfg["encoder"], in_chans=cfg["in_chans"], norm=cfg["norm"])
    load_weights(model, read_safetensors(run / "model.safetensors"), str(run))
    scores, located, _ = scores_and_localisation(model.eval(), vols, train)
    return auc(scores, torch.tensor([v.label for v in vols])), located


def tonno(run: Path, test_csv: Path, directions: int, slices: int) -> dict[str, float]:
    """ToNNO on every test volume: best-threshold Dice over the positives, and the protocol's 10 folds."""
    import numpy as np

    from tomofield.dataset import read_dataset
    from tomofield.demo import best_dice
    from tomofield.engine import Engine
    from tomofield.evaluation.protocol import evaluate
    from tomofield.io import load_volume

    engine = Engine(
        weights=str(run), head="logit", filter="tomo", reconstructor="fbp", directions=directions, slices=slices
    )
    heats, masks, labels = [], [], []
    for case in read_dataset(test_csv):
        heat = engine.run(load_volume(list(case.images)))
        heats.append(heat.data[0].numpy())
        masks.append(load_volume([case.mask]).data[0].numpy() if case.label == 1 and case.mask else None)
        labels.append(int(case.label))
    pos = [i for i, y in enumerate(labels) if y == 1]
    _, best = best_dice([heats[i] for i in pos], [masks[i] for i in pos])
    ev = evaluate(heats, labels, masks, folds=10)
    peaks = np.array([h.max() for h in heats])
    y = np.array(labels)
    peak_auc = float((peaks[y == 1][:, None] > peaks[y == 0][None]).mean())
    return {
        "dice_best": best,
        "dice": ev["dice"],
        "f1": ev["f1"],
        "balanced_accuracy": ev["balanced_accuracy"],
        "peak_auc": peak_auc,
    }


def train(recipe: str, data: Path, run: Path, seed: int, iterations: int | None) -> None:
    """Train one run of ``recipe`` into ``run`` (output discarded)."""
    if recipe == "plain":
        cmd = [sys.executable, "-m", "benchmarks.plain_loop", str(data / "train.csv"), "-o", str(run)]
        cmd += ["--seed", str(seed), "--steps", str(iterations or 1200)]
    else:
        cmd = [sys.executable, "-m", "tomofield", "train", str(data / "train.csv"), "-o", str(run)]
        cmd += ["--val", str(data / "val.csv"), *RECIPES[recipe], "--seed", str(seed), "--quiet"]
        cmd += ["--iterations", str(iterations)] if iterations else []
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.recipes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the data, runs and results (resumable)")
    p.add_argument("--data", default="demo", choices=sorted(DATA))
    p.add_argument("--recipes", default="plain,paper,defaults", help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the training set")
    p.add_argument("--test-seed", type=int, default=2700, help="seed of the test set (2700-2799: used nowhere else)")
    p.add_argument("--test-n", type=int, default=24, help="test volumes, half positive")
    p.add_argument("--iterations", type=int, help="training steps of every recipe (default: each its own)")
    p.add_argument("--directions", type=int, default=128)
    p.add_argument("--slices", type=int, default=40)
    p.add_argument(
        "--tables",
        type=Path,
        nargs="+",
        metavar="OUT",
        help="print the tables of these results folders together (runs of one data set split across folders) and stop",
    )
    a = p.parse_args(argv)
    if a.tables:
        rows = []
        for folder in [a.out, *a.tables]:
            done = folder / "results.json"
            for row in json.loads(done.read_text()) if done.exists() else []:
                run = folder / f"{row['recipe']}-{row['seed']}"
                row["curve"] = row.get("curve") or curve(run)
                if "test_localisation" not in row and (run / "config.json").exists():  # a row from before: measure
                    row["val_localisation"] = val_auc(run, folder / "data" / "val.csv")[1]
                    row["test_localisation"] = val_auc(run, folder / "test" / "dataset.csv")[1]
                rows.append(row)
        print_tables(rows)
        return 0
    data, test = a.out / "data", a.out / "test"
    if not data.exists():
        make_data(a.data, data, a.data_seed)
    if not test.exists():
        make_data(a.data, test, a.test_seed, n=a.test_n)
    results_path = a.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["recipe"], r["seed"]) for r in results}
    for seed in a.seeds:
        for recipe in a.recipes.split(","):
            if (recipe, seed) in done:
                continue
            run = a.out / f"{recipe}-{seed}"
            if run.exists():  # a run cut short: train it again
                import shutil

                shutil.rmtree(run)
            t0 = time.perf_counter()
            train(recipe, data, run, seed, a.iterations)
            wall = time.perf_counter() - t0
            cfg = json.loads((run / "config.json").read_text())
            diagnostics = cfg.get("diagnostics")
            auc_val, located_val = val_auc(run, data / "val.csv")
            _, located_test = val_auc(run, test / "dataset.csv")
            row = {
                "recipe": recipe,
                "seed": seed,
                "data": a.data,
                "val_auc": auc_val,
                "val_localisation": located_val,
                "test_localisation": located_test,
                "run_val_auc": cfg.get("metrics", {}).get("val_auc"),
                "learned": diagnostics.get("learned") if diagnostics else None,
                "problems": [p["kind"] for p in diagnostics.get("problems", [])] if diagnostics else [],
                "curve": curve(run),
                "final_loss": cfg["loss_log"][-1]["train_loss"],
                "slice_size": cfg["slice_size"],
                "train_s": round(wall, 1),
                **tonno(run, test / "dataset.csv", a.directions, a.slices),
            }
            results.append(row)
            results_path.write_text(json.dumps(results, indent=1))
            print(json.dumps(row), flush=True)
    print_tables(results)
    return 0


def curve(run: Path) -> list[tuple[int, float | None]]:
    """The run's validation AUC at each validation: ``(iteration, auc)`` from its training state."""
    from safetensors import safe_open

    path = run / "state.safetensors"
    if not path.exists():  # the plain loop keeps no state
        return []
    with safe_open(str(path), "pt") as f:
        history = json.loads((f.metadata() or {}).get("history", "[]"))
    return [(int(r["iteration"]), r.get("val_auc")) for r in history]


def half_way(row: dict) -> str:
    """The validation AUC at half the run (the last validation at or before it), or ``-``."""
    points = [tuple(p) for p in row.get("curve") or []]
    if not points:
        return "-"
    last = max(i for i, _ in points)
    before = [a for i, a in points if i <= last / 2 and a is not None]
    return f"{before[-1]:.2f}" if before else "-"


def print_tables(results: list[dict]) -> None:
    """Every run, then each recipe's mean and range."""
    print(
        "| recipe | seed | val AUC | at half the run | val / test localisation | verdict | ToNNO Dice (best "
        "threshold) | protocol Dice | protocol F1 | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r["recipe"], r["seed"])):
        verdict = "-" if r["learned"] is None else ("learned" if r["learned"] else "did not learn")
        located = f"{r.get('val_localisation', float('nan')):.2f} / {r.get('test_localisation', float('nan')):.2f}"
        print(
            f"| {r['recipe']} | {r['seed']} | {r['val_auc']:.3f} | {half_way(r)} | {located} | "
            f"{verdict} {r['problems'] or ''} | {r['dice_best']:.3f} | {r['dice']:.3f} | {r['f1']:.3f} | "
            f"{r['train_s']:.0f} |"
        )
    print()
    print(
        "| recipe | runs | learned | mean val AUC (min) | mean Dice, best threshold (min) | mean protocol Dice | mean F1 |"
    )
    print("|---|---|---|---|---|---|---|")
    for recipe in sorted({r["recipe"] for r in results}):
        rows = [r for r in results if r["recipe"] == recipe]
        learned = sum(1 for r in rows if r["learned"])

        def mean(k: str, rows: list[dict] = rows) -> float:
            return sum(r[k] for r in rows) / len(rows)

        print(
            f"| {recipe} | {len(rows)} | {learned if rows[0]['learned'] is not None else '-'} | "
            f"{mean('val_auc'):.3f} ({min(r['val_auc'] for r in rows):.3f}) | "
            f"{mean('dice_best'):.3f} ({min(r['dice_best'] for r in rows):.3f}) | {mean('dice'):.3f} | {mean('f1'):.3f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
