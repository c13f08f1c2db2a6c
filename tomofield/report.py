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

from tomofield.batch import check_records, heatmap_path, read_record
from tomofield.dataset import Case, csv_rows, read_dataset
from tomofield.errors import InputError
from tomofield.io import Volume, atomic_write_all, load_volume

#: The metrics of a report's summary, in its columns' order: HD95 (mm) and the normalised
#: surface Dice beside Dice where the data has masks (not boxes).
METRICS = (
    "precision",
    "recall",
    "f1",
    "dice",
    "hd95",
    "nsd",
    "max_iou",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
)
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
    return [vol.data[0].numpy() for vol in _heatmap_volumes(heatmaps_dir, cases, dataset_csv)]


def _heatmap_volumes(heatmaps_dir: str | Path, cases: list[Case], dataset_csv: str | Path) -> list[Volume]:
    """Each case's heatmap as a :class:`~tomofield.io.Volume` (grid and affine kept): :func:`load_heatmaps`."""
    missing = [c.name for c in cases if not heatmap_path(heatmaps_dir, c).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(
            f"{heatmaps_dir}: no heatmap for {', '.join(missing[:5])}{more}; make them first with "
            f"tomofield run {dataset_csv} -o {heatmaps_dir}"
        )
    vols = [load_volume(heatmap_path(heatmaps_dir, c)) for c in cases]
    check_records(heatmaps_dir, cases, [v.header for v in vols], dataset_csv)
    return vols


#: A mask is on its heatmap's grid when their affines place every corner of the grid within this many mm.
AFFINE_TOLERANCE_MM = 1e-3


def _ijk(values: Sequence[float]) -> str:
    """(d, h, w) values as the viewers' ``i x j x k``."""
    return " x ".join(f"{v:g}" for v in reversed(tuple(values)))


def _grid_differences(mask: Volume, heat: Volume) -> tuple[list[str], float]:
    """What differs between the geometry of a mask and of its heatmap (same shape), and by how many mm at most
    the corners of the grid lie apart."""
    import nibabel as nib

    shape = mask.data.shape[:0:-1]  # (i, j, k)
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    )
    a, b = np.asarray(mask.affine, dtype=np.float64), np.asarray(heat.affine, dtype=np.float64)
    apart = float(np.max(np.linalg.norm((corners @ a.T - corners @ b.T)[:, :3], axis=1)))
    diffs = []
    if not np.allclose(mask.spacing, heat.spacing, rtol=0, atol=AFFINE_TOLERANCE_MM):
        diffs.append(f"voxel size {_ijk(mask.spacing)} mm against {_ijk(heat.spacing)} mm")
    codes = "".join(nib.aff2axcodes(a)), "".join(nib.aff2axcodes(b))
    if codes[0] != codes[1]:
        diffs.append(f"orientation {codes[0]} against {codes[1]}, an axis flipped or swapped")
    if not np.allclose(a[:3, 3], b[:3, 3], rtol=0, atol=AFFINE_TOLERANCE_MM):
        where = ", ".join(f"{v:.6g}" for v in a[:3, 3])
        there = ", ".join(f"{v:.6g}" for v in b[:3, 3])
        diffs.append(f"origin ({where}) mm against ({there}) mm")
    if not diffs:
        diffs.append("the affines' directions differ (a rotation)")
    return diffs, apart


#: How to put a mask on its image's grid: tomofield compares masks as they are and resamples none.
_ON_THE_GRID = (
    "save the mask on its image's grid (the image's shape and affine), e.g. resampled with nearest-neighbour "
    "interpolation in 3D Slicer or ITK-SNAP; tomofield does not resample masks"
)


def load_mask(path: str | Path, heatmap: Volume, heatmap_file: str | Path | None = None) -> np.ndarray:
    """A case's lesion mask as a boolean (D, H, W) array on its heatmap's grid.

    Refused, naming the file and what differs, rather than scored voxel by voxel against other
    places or other values: a mask whose grid (shape) or affine differs from the heatmap's (the
    corners of the grid more than :data:`AFFINE_TOLERANCE_MM` apart: another voxel size, a flipped
    axis, another origin), a mask of several channels (4D), and values other than 0 and 1 (a
    label map of several labels, another pair such as 0/255, fractions or non-finite values):
    tomofield neither resamples nor thresholds a mask.
    """
    path = Path(path)
    shown = str(heatmap_file) if heatmap_file is not None else "its heatmap"
    vol = load_volume(path, nan_policy="zero")  # NaN refused below, in a mask's words
    if vol.data.shape[0] != 1:
        raise InputError(
            f"mask {str(path)!r} has {vol.data.shape[0]} channels (a 4D image, grid {_ijk(vol.data.shape[1:])}); "
            "a mask is one 3D volume of 0 (background) and 1 (lesion): save the lesion's channel alone"
        )
    if tuple(vol.data.shape[1:]) != tuple(heatmap.data.shape[1:]):
        raise InputError(
            f"mask {str(path)!r} has grid {_ijk(vol.data.shape[1:])} (i, j, k) but its heatmap {shown!r} has "
            f"{_ijk(heatmap.data.shape[1:])}: {_ON_THE_GRID}"
        )
    diffs, apart = _grid_differences(vol, heatmap)
    if apart > AFFINE_TOLERANCE_MM:
        raise InputError(
            f"mask {str(path)!r} has the grid of its heatmap {shown!r} but not its affine ({'; '.join(diffs)}: "
            f"voxels up to {apart:.4g} mm apart); scored voxel by voxel it would compare other places: {_ON_THE_GRID}"
        )
    if vol.replaced:
        raise InputError(
            f"mask {str(path)!r} holds {vol.replaced} NaN or infinite voxel(s); a mask holds 0 (background) and 1 "
            "(lesion)"
        )
    arr = vol.data[0].numpy()
    ones = arr == 1
    if not np.all(ones | (arr == 0)):
        raise InputError(_not_binary(path, arr))
    return ones


def _not_binary(path: Path, arr: np.ndarray) -> str:
    """Why a mask of values other than 0 and 1 is refused, and how to make it one."""
    values = np.unique(arr)
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (f", ... ({len(values)} values)" if len(values) > 6 else "")
    whole = bool(np.all(values == np.round(values)))
    labels = values[values != 0]
    if whole and len(labels) >= 2:
        return (
            f"mask {str(path)!r} is a label map (values {shown}), not a 0/1 lesion mask; tomofield does not choose "
            "the lesion's labels: binarize it (1 for the lesion's label or labels, 0 elsewhere) and save it again"
        )
    if whole:
        return (
            f"mask {str(path)!r} holds the values {shown}; a mask holds 0 (background) and 1 (lesion): save it as "
            "0/1 (tomofield does not threshold masks)"
        )
    return (
        f"mask {str(path)!r} holds values other than 0 and 1 ({shown}): a probability map, or a mask resampled "
        "with linear interpolation? threshold it and save it as 0/1 (nearest-neighbour resampling keeps a mask "
        "binary; tomofield does not threshold masks)"
    )


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
    if isinstance(iou, int | float) and not isinstance(iou, bool) and not math.isfinite(iou):
        raise InputError(f"iou={iou!r} is not finite; it takes a number 0 <= iou < 1")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1 or not 0 <= iou < 1:
        raise InputError(f"need folds >= 1 and 0 <= iou < 1, got folds={folds!r}, iou={iou!r}")
    if not isinstance(fill_holes, bool):
        raise InputError(f"fill_holes must be True or False, got {fill_holes!r}")
    if (
        isinstance(nsd_tolerance, bool)
        or not isinstance(nsd_tolerance, int | float)
        or not 0 <= nsd_tolerance < math.inf
    ):
        if isinstance(nsd_tolerance, float) and not math.isfinite(nsd_tolerance):
            raise InputError(f"NSD tolerance {nsd_tolerance!r} is not finite; it takes a number of mm >= 0")
        raise InputError(f"need an NSD tolerance of 0 mm or more, got {nsd_tolerance!r}")
    vols = _heatmap_volumes(heatmaps_dir, cases, dataset_csv)
    heats = [v.data[0].numpy() for v in vols]
    labels = [int(c.label) for c in cases]
    masks = boxes = spacings = None
    if boxes_csv:
        boxes = read_boxes(boxes_csv, cases)
    else:
        masks, spacings = [], []
        for c, vol in zip(cases, vols, strict=True):
            masks.append(load_mask(c.mask, vol, heatmap_path(heatmaps_dir, c)) if c.mask else None)
            # mm per array axis (D, H, W) = (k, j, i): the affine's column norms (the mask's, the heatmap's)
            spacings.append(vol.spacing if c.mask else None)
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
    _one_class_accuracy(res, labels)
    res["fill_holes"] = fill_holes  # how it binarized; a mask from these thresholds does the same
    # what made the heatmaps (one engine: check_records refused a mix); run --thresholds compares its own with it
    made = next((r for r in (read_record(v.header) for v in vols) if r is not None), None)
    if made is not None and isinstance(made.get("engine"), dict):
        res["heatmaps"] = made["engine"]
    if masks is not None:
        res["surface_metrics"] = {
            "implementation": surface,  # monai where it imports, else tomofield's own (the two agree)
            "hd95_percentile": 95,
            "nsd_tolerance_mm": tolerance,
            "empty_prediction": "hd95 NaN, left out of the means (n_test_hd95 counts the rest); nsd 0",
        }
    # the thresholds a mask of a new volume uses (tomofield run --mask --thresholds REPORT)
    res["thresholds"] = tune_thresholds(heats, labels, masks=masks, boxes=boxes, seed=seed, fill_holes=fill_holes)
    # the per-case rows are cut at those thresholds, tuned on these same volumes: the folds are the held-out figures
    res["case_thresholds"] = "tuned on these same volumes (in-sample); the folds' scores are cross-fitted"
    res["cases"] = case_metrics(
        cases, heats, masks, res["thresholds"], iou, fill_holes, spacings, nsd_tolerance=tolerance, surface=surface
    )
    res["volumes"] = len(cases)
    res["positives"] = int(sum(labels))
    res["inputs"] = [str(p) for p in (dataset_csv, boxes_csv) if p]  # files write_reports never replaces
    return res


def _one_class_accuracy(res: dict[str, Any], labels: list[int]) -> None:
    """With one class only, the protocol's "balanced accuracy" is the sensitivity (no negatives) or the
    specificity (no positives): name it so in ``res``, its ``std`` and its folds."""
    if 0 in labels and 1 in labels:
        return
    name = "sensitivity" if 1 in labels else "specificity"
    for entry in [res, res.get("std", {}), *res.get("folds", [])]:
        if isinstance(entry, dict) and "balanced_accuracy" in entry:
            entry[name] = entry.pop("balanced_accuracy")


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
