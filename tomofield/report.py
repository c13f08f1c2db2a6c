"""Evaluation of a folder of heatmaps against a dataset CSV (paper A.7), as data and files."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tomofield.batch import check_records, heatmap_path
from tomofield.dataset import Case, csv_rows, read_dataset
from tomofield.errors import InputError
from tomofield.io import atomic_write_all, load_volume

#: The metrics of a report's summary, in its columns' order: HD95 (mm) and the normalised
#: surface Dice beside Dice where the data has masks (not boxes).
METRICS = ("precision", "recall", "f1", "dice", "hd95", "nsd", "max_iou", "balanced_accuracy")
#: The default tolerance of the normalised surface Dice, in mm (tomofield.evaluation.NSD_TOLERANCE_MM).
NSD_TOLERANCE_MM = 2.0


#: The columns of a boxes CSV in the viewers' (i, j, k) voxel order, and in the tensors' (d, h, w)
#: order that datasets written before (the medical plugin's Duke set) use.
BOX_COLUMNS_IJK = ("i0", "j0", "k0", "i1", "j1", "k1")
BOX_COLUMNS_DHW = ("d0", "h0", "w0", "d1", "h1", "w1")


def read_boxes(path: str | Path, cases: list[Case]) -> list[tuple[int, ...] | None]:
    """Boxes per case from a CSV ``image,i0,j0,k0,i1,j1,k1`` (voxel indices in the order the
    affine, nibabel, ITK-SNAP and 3D Slicer use; end exclusive), as ``(d0, h0, w0, d1, h1, w1)``.

    A CSV with columns ``d0,h0,w0,d1,h1,w1`` (the tensors' order, ``d = k``, ``h = j``,
    ``w = i``) is read as before.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"boxes CSV {str(path)!r} does not exist")
    rows = csv_rows(path, "boxes CSV")
    header = {(c or "").strip() for c in rows.fieldnames or []}
    ijk = set(BOX_COLUMNS_IJK) <= header
    if not ijk and not set(BOX_COLUMNS_DHW) <= header:
        raise InputError(f"{path}: expected the columns image,i0,j0,k0,i1,j1,k1; found {sorted(header)}")
    by_name: dict[str, tuple[int, ...]] = {}
    for i, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() if isinstance(v, str) else v for k, v in row.items()}
        if not any(row.values()):
            continue
        try:
            name = Path(row["image"].split(";")[0].strip()).name
            if ijk:
                i0, j0, k0, i1, j1, k1 = (int(row[k]) for k in BOX_COLUMNS_IJK)
                by_name[name] = (k0, j0, i0, k1, j1, i1)
            else:
                by_name[name] = tuple(int(row[k]) for k in BOX_COLUMNS_DHW)
        except (KeyError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}, row {i}: expected image,i0,j0,k0,i1,j1,k1 integers ({exc})") from None
    return [by_name.get(c.images[0].name) for c in cases]


def load_heatmaps(
    heatmaps_dir: str | Path, cases: list[Case], dataset_csv: str | Path = "DATASET.csv"
) -> list[np.ndarray]:
    """First channel of each case's heatmap, (D, H, W); missing ones are named.

    Heatmaps that carry a provenance record (:mod:`tomofield.batch`) must all come from one
    run and from the cases' current images; :func:`tomofield.batch.check_records` refuses others.
    """
    missing = [c.name for c in cases if not heatmap_path(heatmaps_dir, c).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(
            f"{heatmaps_dir}: no heatmap for {', '.join(missing[:5])}{more}; make them first with "
            f"tomofield run {dataset_csv} -o {heatmaps_dir}"
        )
    heats, headers = [], []
    for c in cases:
        vol = load_volume(heatmap_path(heatmaps_dir, c))
        heats.append(vol.data[0].numpy())
        headers.append(vol.header)
    check_records(heatmaps_dir, cases, headers, dataset_csv)
    return heats


def evaluate_heatmaps(
    heatmaps_dir: str | Path,
    dataset_csv: str | Path,
    *,
    folds: int = 10,
    iou: float = 0.125,
    boxes_csv: str | Path | None = None,
    seed: int = 0,
    fill_holes: bool = False,
    nsd_tolerance: float = NSD_TOLERANCE_MM,
) -> dict[str, Any]:
    """Run the evaluation protocol on the heatmaps of every volume of a dataset.

    ``fill_holes``: binarize with each kept component's enclosed holes filled
    (:func:`tomofield.evaluation.binarize`), in the folds, the stored thresholds and the
    per-case rows alike; the result records it under ``fill_holes``, and a mask made from
    the report's thresholds (:func:`mask_fill_holes`) follows it.

    With masks (not ``boxes_csv``) the folds and the per-case rows also give HD95 (mm) and
    the normalised surface Dice at ``nsd_tolerance`` mm of the same binarization, in the
    millimetres of each mask's affine (:func:`tomofield.evaluation.surface_scores`; an
    empty prediction has no HD95, NaN, left out of the means, and an NSD of 0); the result
    records how under ``surface_metrics``.
    """
    from tomofield.evaluation import evaluate, surface_backend, tune_thresholds

    cases = read_dataset(dataset_csv)
    if len(cases) < 2:
        raise InputError(
            f"{str(dataset_csv)!r} lists {len(cases)} volume(s); the evaluation protocol (paper A.7) tunes the "
            "threshold on some volumes and scores the others, so it needs at least 2 (both classes for "
            "balanced accuracy)"
        )
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1 or not 0 <= iou < 1:
        raise InputError(f"need folds >= 1 and 0 <= iou < 1, got folds={folds!r}, iou={iou!r}")
    if not isinstance(fill_holes, bool):
        raise InputError(f"fill_holes must be True or False, got {fill_holes!r}")
    if (
        isinstance(nsd_tolerance, bool)
        or not isinstance(nsd_tolerance, int | float)
        or not 0 <= nsd_tolerance < math.inf
    ):
        raise InputError(f"need an NSD tolerance of 0 mm or more, got {nsd_tolerance!r}")
    heats = load_heatmaps(heatmaps_dir, cases, dataset_csv)
    labels = [int(c.label) for c in cases]
    masks = boxes = spacings = None
    if boxes_csv:
        boxes = read_boxes(boxes_csv, cases)
    else:
        masks, spacings = [], []
        for c, h in zip(cases, heats, strict=True):
            vol = load_volume(c.mask) if c.mask else None
            m = vol.data[0].numpy() > 0 if vol is not None else None
            if m is not None and m.shape != h.shape:
                raise InputError(f"mask {c.mask} has grid {m.shape} but its heatmap has {h.shape}")
            masks.append(m)
            # mm per array axis (D, H, W) = (k, j, i): the mask affine's column norms, reversed
            spacings.append(vol.spacing if vol is not None else None)
    surface = surface_backend() if masks is not None else "auto"  # one implementation for folds and cases
    tolerance = float(nsd_tolerance)
    res = evaluate(
        heats,
        labels,
        masks=masks,
        boxes=boxes,
        folds=folds,
        iou_threshold=iou,
        seed=seed,
        fill_holes=fill_holes,
        spacings=spacings,
        nsd_tolerance=tolerance,
        surface=surface,
    )
    res["fill_holes"] = fill_holes  # how it binarized; a mask from these thresholds does the same
    if masks is not None:
        res["surface_metrics"] = {
            "implementation": surface,  # monai where it imports, else tomofield's own (the two agree)
            "hd95_percentile": 95,
            "nsd_tolerance_mm": tolerance,
            "empty_prediction": "hd95 NaN, left out of the means (n_test_hd95 counts the rest); nsd 0",
        }
    # the thresholds a mask of a new volume uses (tomofield run --mask --thresholds REPORT)
    res["thresholds"] = tune_thresholds(heats, labels, masks=masks, boxes=boxes, seed=seed, fill_holes=fill_holes)
    res["cases"] = case_metrics(
        cases, heats, masks, res["thresholds"], iou, fill_holes, spacings, nsd_tolerance=tolerance, surface=surface
    )
    res["volumes"] = len(cases)
    res["positives"] = int(sum(labels))
    res["inputs"] = [str(p) for p in (dataset_csv, boxes_csv) if p]  # files write_reports never replaces
    return res


#: The columns of a report's per-case table.
CASE_COLUMNS = ("image", "label", "score", "predicted", "precision", "recall", "f1", "dice", "hd95", "nsd")


def case_metrics(
    cases: list[Case],
    heats: list[np.ndarray],
    masks: list[np.ndarray | None] | None,
    thresholds: dict[str, float],
    iou: float,
    fill_holes: bool = False,
    spacings: Sequence[Sequence[float] | None] | None = None,
    nsd_tolerance: float = NSD_TOLERANCE_MM,
    surface: str = "auto",
) -> list[dict[str, Any]]:
    """Each volume at the thresholds tuned on all of them: its score, the decision, its lesion metrics.

    The lesion metrics (of the protocol's binarization against the mask, its components as
    the folds match them) are given for the positives with a mask, as in the evaluation's
    means; ``None`` elsewhere. With ``spacings`` (mm per (D, H, W) axis of each volume)
    they include ``hd95`` (mm; NaN for an empty prediction) and ``nsd`` (at
    ``nsd_tolerance`` mm); without, those two are ``None``.
    """
    from tomofield.evaluation import kept_components, lesion_scores, surface_scores

    tau, tau_prime = thresholds["tau"], thresholds["tau_prime"]
    rows = []
    for i, (case, heat) in enumerate(zip(cases, heats, strict=True)):
        score = float(heat.max())
        row: dict[str, Any] = {
            "image": ";".join(str(p) for p in case.images),
            "label": int(case.label),
            "score": score,
            "predicted": int(score >= tau),
        }
        truth = masks[i] if masks is not None else None
        if case.label == 1 and truth is not None and truth.any():
            kept = kept_components(heat, tau_prime, tau, fill_holes=fill_holes)
            scores = lesion_scores(None, truth, iou, pred_components=kept)
            row.update({k: float(scores[k]) for k in ("precision", "recall", "f1", "dice")})
            spacing = spacings[i] if spacings is not None else None
            if spacing is not None:
                row.update(surface_scores(kept[0], truth, spacing, nsd_tolerance, backend=surface))
            else:
                row.update(dict.fromkeys(("hd95", "nsd")))
        else:
            row.update(dict.fromkeys(("precision", "recall", "f1", "dice", "hd95", "nsd")))
        rows.append(row)
    return rows


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


def report_paths(prefix: str | Path) -> list[Path]:
    """``PREFIX.json``, ``PREFIX.csv`` and ``PREFIX_cases.csv``; a ``.json`` or ``.csv`` ending of ``prefix`` is dropped."""
    prefix = Path(prefix)
    name = prefix.name[: -len(prefix.suffix)] if prefix.suffix.lower() in (".json", ".csv") else prefix.name
    return [prefix.with_name(name + ".json"), prefix.with_name(name + ".csv"), prefix.with_name(name + "_cases.csv")]


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no such numbers; strict readers refuse them)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def report_writes(prefix: str | Path, results: dict[str, dict[str, Any]]) -> list[tuple[Path, Any]]:
    """The two files of :func:`write_reports` as ``(path, write(tmp))`` pairs for ``atomic_write_all``."""
    rows = summary_rows(results)
    cols = ["method"] + [c for m in METRICS for c in (m, f"{m}_std") if any(c in r for r in rows)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    text = json.dumps(_json_safe(results), indent=2, default=float, allow_nan=False)
    per_case = io.StringIO()
    cases = csv.DictWriter(per_case, fieldnames=["method", *CASE_COLUMNS], extrasaction="ignore")
    cases.writeheader()
    for method, res in results.items():
        for row in res.get("cases", []) if isinstance(res, dict) else []:
            cases.writerow({"method": method, **{k: "" if v is None else v for k, v in row.items()}})
    paths = report_paths(prefix)
    return [
        (paths[0], lambda t: t.write_text(text, encoding="utf-8")),
        (paths[1], lambda t: t.write_text(buf.getvalue(), encoding="utf-8")),
        (paths[2], lambda t: t.write_text(per_case.getvalue(), encoding="utf-8")),
    ]


def report_inputs(results: dict[str, dict[str, Any]]) -> list[str]:
    """The files the results were computed from (each result's ``inputs``)."""
    return [p for r in results.values() if isinstance(r, dict) for p in r.get("inputs", ())]


def write_reports(
    prefix: str | Path,
    results: dict[str, dict[str, Any]],
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
) -> list[Path]:
    """``PREFIX.json`` (everything; NaN as null), ``PREFIX.csv`` (one row per method) and ``PREFIX_cases.csv``
    (one row per method and volume, where the results have per-case metrics): all or none.

    Neither replaces an existing file unless ``overwrite``, nor ever one of ``inputs`` or
    of the files the results were computed from (their ``inputs``).
    """
    return atomic_write_all(
        report_writes(prefix, results), overwrite=overwrite, inputs=[*inputs, *report_inputs(results)]
    )
