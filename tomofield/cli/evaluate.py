"""``tomofield evaluate`` and ``tomofield compare``: the evaluation protocol on heatmaps, and the paper's methods side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tomofield.cli.toolkit import (
    default_of,
    err,
    friendly,
    given,
    out,
    setting_option,
    with_default,
)
from tomofield.compare import FAMILIES, CompareSettings
from tomofield.errors import InputError
from tomofield.report import METRICS, evaluate_heatmaps


@click.command()
@click.argument("heatmaps_dir", type=click.Path())
@click.argument("dataset", type=click.Path())
@setting_option(evaluate_heatmaps, "--folds", "Monte-Carlo cross-validation folds.", type=int)
@setting_option(evaluate_heatmaps, "--iou", "IoU above which a component matches a lesion.", type=float)
@click.option(
    "--boxes",
    "boxes_csv",
    type=click.Path(),
    help="CSV image,i0,j0,k0,i1,j1,k1 (voxels in the viewers' i, j, k order, end exclusive) for box-only data "
    "(MaxIoU).",
)
@setting_option(evaluate_heatmaps, "--seed", "Seed of the cross-validation folds.", type=int)
@setting_option(
    evaluate_heatmaps,
    "--fill-holes/--no-fill-holes",
    "Binarize with each kept component's enclosed holes filled (3D; a component touching the volume's border is "
    "kept as it is), to tune TAU_PRIME and to score; the report records it and tomofield run --mask --thresholds "
    "REPORT follows it.",
)
@setting_option(
    evaluate_heatmaps,
    "--nsd-tolerance",
    "Tolerance in mm of the normalised surface Dice (NSD), reported beside Dice with HD95 (mm) where the dataset "
    "has masks.",
    type=click.FloatRange(min=0),
)
@click.option(
    "--report", "-o", type=click.Path(), help="Write REPORT.json and REPORT.csv (default HEATMAPS_DIR/evaluation)."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier report of the same name.")
@friendly
def evaluate(heatmaps_dir: str, dataset: str, report: str | None, overwrite: bool, **o: Any) -> None:
    """Lesion-wise precision, recall, F1, Dice and balanced accuracy of a folder of heatmaps (paper A.7).

    Where the dataset has masks, beside Dice: HD95 (95th-percentile Hausdorff distance, mm) and the normalised
    surface Dice at --nsd-tolerance mm, in the millimetres of each mask's affine. An empty prediction has no HD95
    (left out of its mean) and an NSD of 0.
    """
    from tomofield.io import check_output_path
    from tomofield.report import report_paths, write_reports

    o = given(o)
    folds = o.get("folds", default_of(evaluate_heatmaps, "folds"))
    prefix = Path(report) if report else Path(heatmaps_dir) / "evaluation"
    for path in report_paths(prefix):  # before the work, the same names write_reports uses, the same checks
        check_output_path(path, overwrite, suffixes=(), inputs=[dataset, *filter(None, [o.get("boxes_csv")])])
    res = evaluate_heatmaps(heatmaps_dir, dataset, **o)
    name = Path(heatmaps_dir).name
    print_table({name: res}, f"{res['volumes']} volumes ({res['positives']} positive), {folds} folds")
    paths = write_reports(
        prefix, {name: res}, overwrite, inputs=[dataset, *([o["boxes_csv"]] if "boxes_csv" in o else [])]
    )
    out.print("wrote " + ", ".join(map(str, paths)))


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--weights", required=True, type=click.Path(), help="Run directory of tomofield train.")
@click.option("--output", "-o", "report_dir", required=True, type=click.Path(), help="Report folder.")
@click.option(
    "--layers",
    default=None,
    help=with_default("CAM layers to try, comma-separated.", ",".join(map(str, default_of(CompareSettings, "layers")))),
)
@click.option("--methods", "families", default=None, help="Comma-separated subset of the method families.")
@setting_option(CompareSettings, "--directions", "ToNNO directions (paper: 2000).", type=int)
@click.option("-L", "directions", type=int, default=None, hidden=True, help="--directions.")
@setting_option(CompareSettings, "--slices", "ToNNO slices per direction (paper: 100).", type=int)
@click.option("-M", "slices", type=int, default=None, hidden=True, help="--slices.")
@setting_option(CompareSettings, "--cam-directions", "Averaged/Tomographic CAM directions (paper: 1000).", type=int)
@setting_option(CompareSettings, "--cam-slices", "Averaged/Tomographic CAM slices per direction.", type=int)
@setting_option(CompareSettings, "--folds", "Monte-Carlo cross-validation folds.", type=int)
@setting_option(CompareSettings, "--seed", "Seed of the directions and the folds.", type=int)
@setting_option(CompareSettings, "--device", "auto | cpu | cuda | cuda:N (gpu, gpu:N: the same).")
@setting_option(
    CompareSettings,
    "--fill-holes/--no-fill-holes",
    "Evaluate with filled components (tomofield evaluate --fill-holes).",
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier comparison's report in the folder.")
@friendly
def compare(
    dataset: str, weights: str, report_dir: str, layers: str | None, families: str | None, overwrite: bool, **o: Any
) -> None:
    """Run and evaluate the paper's methods on a dataset: Table 2 (Markdown, CSV) and Fig. 6 (PNG)."""
    from tomofield.compare import run_comparison, write_outputs

    o = given(o)
    if layers is not None:
        try:
            o["layers"] = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"--layers must be comma-separated integers, got {layers!r}") from None
    if families:
        o["families"] = [f.strip() for f in families.split(",")]
        unknown = [f for f in o["families"] if f not in FAMILIES]
        if unknown:
            raise InputError(f"unknown method(s) {', '.join(map(repr, unknown))}; valid: {', '.join(FAMILIES)}")
    s = CompareSettings(**o)

    def on_method(m: Any, what: str) -> None:
        if what == "start":
            err.print(f"{m.name}: heatmaps and evaluation", highlight=False)

    result = run_comparison(dataset, weights, report_dir, s, on_method, overwrite=overwrite)
    best = {f: result["methods"][n] for f, n in result["best"].items()}
    print_table(best, f"best layer per method, {s.folds} folds")
    paths = write_outputs(report_dir, dataset, result, overwrite=overwrite)
    out.print("wrote " + ", ".join(map(str, paths)))


def _header(metric: str, results: dict[str, dict[str, Any]]) -> str:
    """A metric's column title: its unit for HD95, its tolerance for NSD (where all results share one)."""
    if metric == "hd95":
        return "HD95 mm"
    if metric == "nsd":
        tols = {r.get("surface_metrics", {}).get("nsd_tolerance_mm") for r in results.values() if isinstance(r, dict)}
        tol = tols.pop() if len(tols) == 1 else None
        return f"NSD {tol:g} mm" if isinstance(tol, int | float) else "NSD"
    return metric.replace("_", " ")


def print_table(results: dict[str, dict[str, Any]], caption: str = "") -> None:
    """Mean +- std of each metric, one row per method."""
    from tomofield.report import summary_rows

    rows = summary_rows(results)
    metrics = [m for m in METRICS if any(m in r for r in rows)]
    table = Table(title="evaluation (paper A.7)", caption=caption)
    table.add_column("method")
    for m in metrics:
        table.add_column(_header(m, results), justify="right")
    for r in rows:
        table.add_row(r["method"], *[f"{r[m]:.3f} ± {r[m + '_std']:.3f}" if m in r else "-" for m in metrics])
    out.print(table)
