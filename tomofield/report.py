"""Evaluation of a folder of heatmaps against a dataset CSV (paper A.7), as data and files."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tomofield.batch import heatmap_path
from tomofield.dataset import Case, read_dataset
from tomofield.errors import InputError
from tomofield.io import atomic_write, load_volume

METRICS = ("precision", "recall", "f1", "dice", "max_iou", "balanced_accuracy")


def read_boxes(path: str | Path, cases: list[Case]) -> list[tuple[int, ...] | None]:
    """Boxes per case from a CSV ``image,d0,h0,w0,d1,h1,w1`` (voxels, end exclusive)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"boxes CSV {str(path)!r} does not exist")
    by_name: dict[str, tuple[int, ...]] = {}
    with path.open(newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            try:
                name = Path(row["image"].split(";")[0].strip()).name
                by_name[name] = tuple(int(row[k]) for k in ("d0", "h0", "w0", "d1", "h1", "w1"))
            except (KeyError, ValueError, AttributeError) as exc:
                raise InputError(f"{path}, row {i}: expected image,d0,h0,w0,d1,h1,w1 integers ({exc})") from None
    return [by_name.get(c.images[0].name) for c in cases]


def load_heatmaps(heatmaps_dir: str | Path, cases: list[Case]) -> list[np.ndarray]:
    """First channel of each case's heatmap, (D, H, W); missing ones are named."""
    missing = [c.name for c in cases if not heatmap_path(heatmaps_dir, c).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(
            f"{heatmaps_dir}: no heatmap for {', '.join(missing[:5])}{more}; run tomofield run DATASET.csv first"
        )
    return [load_volume(heatmap_path(heatmaps_dir, c)).data[0].numpy() for c in cases]


def evaluate_heatmaps(
    heatmaps_dir: str | Path,
    dataset_csv: str | Path,
    *,
    folds: int = 10,
    iou: float = 0.125,
    boxes_csv: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the evaluation protocol on the heatmaps of every volume of a dataset."""
    from tomofield.evaluation import evaluate

    cases = read_dataset(dataset_csv)
    heats = load_heatmaps(heatmaps_dir, cases)
    labels = [int(c.label) for c in cases]
    masks = boxes = None
    if boxes_csv:
        boxes = read_boxes(boxes_csv, cases)
    else:
        masks = []
        for c, h in zip(cases, heats, strict=True):
            m = load_volume(c.mask).data[0].numpy() > 0 if c.mask else None
            if m is not None and m.shape != h.shape:
                raise InputError(f"mask {c.mask} has grid {m.shape} but its heatmap has {h.shape}")
            masks.append(m)
    res = evaluate(heats, labels, masks=masks, boxes=boxes, folds=folds, iou_threshold=iou, seed=seed)
    res["volumes"] = len(cases)
    res["positives"] = int(sum(labels))
    return res


def summary_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: mean and std of each metric."""
    rows = []
    for method, res in results.items():
        row: dict[str, Any] = {"method": method}
        for m in METRICS:
            if m in res and res[m] is not None and not (isinstance(res[m], float) and math.isnan(res[m])):
                row[m] = float(res[m])
                row[f"{m}_std"] = float(res.get("std", {}).get(m, float("nan")))
        rows.append(row)
    return rows


def write_reports(prefix: str | Path, results: dict[str, dict[str, Any]], overwrite: bool = False) -> list[Path]:
    """``PREFIX.json`` (everything) and ``PREFIX.csv`` (one row per method)."""
    prefix = Path(prefix)
    rows = summary_rows(results)
    cols = ["method"] + [c for m in METRICS for c in (m, f"{m}_std") if any(c in r for r in rows)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    text = json.dumps(results, indent=2, default=float)
    paths = [prefix.with_suffix(".json"), prefix.with_suffix(".csv")]
    atomic_write(paths[0], lambda t: t.write_text(text), overwrite=overwrite)
    atomic_write(paths[1], lambda t: t.write_text(buf.getvalue()), overwrite=overwrite)
    return paths
