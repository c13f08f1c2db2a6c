"""Command-line interface: a thin layer of click and rich over :class:`tomofield.Engine`."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from tomofield import plugins
from tomofield.errors import InputError, TomofieldError

_WIDTH = None if sys.stdout.isatty() else 200  # no wrapping when piped or captured
err = Console(stderr=True)
out = Console(width=_WIDTH)


class _Rate(ProgressColumn):
    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} slices/s" if speed else "- slices/s", style="cyan")


@contextmanager
def slice_progress(description: str):
    """A rich progress bar; yields ``callback(n, total)`` for :meth:`Engine.reconstruct`."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)

        def tick(n: int, total: int) -> None:
            bar.update(task, total=total, advance=n)

        yield tick


def friendly(fn: Callable) -> Callable:
    """Turn tomofield's own errors into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TomofieldError as exc:
            err.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.version_option(package_name="tomofield")
def cli() -> None:
    """tomofield: turn any 2D image encoder into a dense 3D predictor (ToNNO)."""


def engine_options(fn: Callable) -> Callable:
    """Options shared by every command that builds an Engine."""
    opts = [
        click.option("--encoder", default="resnet10t", show_default=True, help="Registered or timm encoder name."),
        click.option("--weights", type=click.Path(dir_okay=True), help="Encoder weights (.safetensors)."),
        click.option("--pretrained/--no-pretrained", default=False, show_default=True,
                     help="timm pretrained weights from the local cache (never downloaded)."),
        click.option("--head", default="logit", show_default=True, help="Per-slice score head."),
        click.option("--target", default=0, show_default=True, help="Output logit used by the logit and CAM heads."),
        click.option("--layer", default=4, show_default=True, help="Encoder stage of CAM heads (1..4 for a ResNet)."),
        click.option("--pool", default=16, show_default=True, help="Pooling of the avgpool head."),
        click.option("--filter", "filter_", default="tomo", show_default=True, help="none | tomo | plugin filter."),
        click.option("--sampler", default="fibonacci", show_default=True, help="fibonacci | axial | orthogonal."),
        click.option("--directions", "-L", default=500, show_default=True, help="Number of slicing directions L."),
        click.option("--slices", "-M", default=48, show_default=True, help="Slices per direction M."),
        click.option("--slice-size", default=224, show_default=True, help="Slice side in pixels."),
        click.option("--hemisphere/--sphere", default=True, show_default=True, help="Directions on a hemisphere (half the work) or the sphere."),
        click.option("--geometry", type=click.Choice(["physical", "normalized"]), default="physical", show_default=True),
        click.option("--extent", type=click.Choice(["unit", "tight"]), default="unit", show_default=True,
                     help="Slice offsets in [-1, 1] (paper) or covering the volume's whole support."),
        click.option("--seed", default=0, show_default=True, help="Seed of the random in-plane bases."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N."),
        click.option("--batch-size", default=64, show_default=True, help="Slices per encoder batch."),
        click.option("--post", multiple=True, help="Post-processor(s), applied in order (e.g. clip-negative)."),
        click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True,
                     help="Encoder autocast: auto = fp16 on CUDA (fp32 for CAM heads), off on CPU."),
        click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
                     help="torch.compile the encoder (logit head; pays off on long runs)."),
        click.option("--skip-empty/--no-skip-empty", default=True, show_default=True,
                     help="Give slices that sample nothing the score of an empty slice without running the encoder."),
        click.option("--empty-tol", default=0.0, show_default=True, help="Values up to this count as empty."),
        click.option("--channels-last/--no-channels-last", default=True, show_default=True),
        click.option("--nan-policy", type=click.Choice(["refuse", "zero"]), default="refuse", show_default=True,
                     help="NaN/Inf voxels: refuse the volume, or replace them by 0 (reported)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


CAM_HEADS = ("gradcam", "gradcam++", "layercam", "scorecam")


def head_options_for(head: str, o: dict[str, Any]) -> dict[str, Any]:
    """The CLI options a built-in head takes (plugin heads take none from the CLI)."""
    if head == "logit":
        return {"target": o["target"]}
    if head in CAM_HEADS:
        return {"layer": o["layer"], "target": o["target"]}
    if head == "avgpool":
        return {"pool": o["pool"]}
    return {}


#: Options a run directory given to --weights provides unless set on the command line.
RUN_INHERITED = ("encoder", "slice_size", "geometry", "extent")


def explicit(name: str) -> bool:
    """Whether option ``name`` was given on the command line (not its default)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return True
    src = ctx.get_parameter_source(name)
    return src is not None and src != click.core.ParameterSource.DEFAULT


def build_engine(o: dict[str, Any]):
    from tomofield.checkpoint import is_run_dir
    from tomofield.engine import Engine

    o = dict(o)
    if o.get("weights") and is_run_dir(o["weights"]):
        for key in RUN_INHERITED:
            if not explicit(key):
                o.pop(key, None)
    head_options = head_options_for(o["head"], o)
    config = {k: o[k] for k in ("directions", "slices", "slice_size", "hemisphere", "geometry", "extent",
                                "seed", "batch_size", "pretrained", "amp", "skip_empty", "empty_tol",
                                "channels_last") if k in o}
    if "compile_" in o:
        config["compile"] = o["compile_"]
    return Engine(o.get("encoder"), o["head"], o["filter_"], o["sampler"], list(o["post"]), weights=o["weights"],
                  device=o["device"], head_options=head_options, **config)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(),
              help="Output heatmap (.nii or .nii.gz); a folder when the input is a dataset CSV.")
@click.option("--preview", type=click.Path(), help="Also write a PNG of three planes through the maximum.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (dataset runs skip finished volumes without it).")
@engine_options
@friendly
def run(inputs: tuple[str, ...], output: str, preview: str | None, overwrite: bool, **o: Any) -> None:
    """Reconstruct the heatmap of a volume (several INPUTS are its channels) or of every volume of a dataset CSV."""
    from tomofield import distributed

    rank, world = distributed.init(o["device"])
    o["device"] = distributed.local_device(o["device"])
    try:
        if len(inputs) == 1 and inputs[0].lower().endswith(".csv"):
            run_csv(inputs[0], output, overwrite, o, rank, world)
        else:
            run_volume(inputs, output, preview, overwrite, o, rank, world)
    finally:
        distributed.finish()


def run_volume(inputs: tuple[str, ...], output: str, preview: str | None, overwrite: bool, o: dict[str, Any],
               rank: int = 0, world: int = 1) -> None:
    """One volume; under torchrun its directions are shared by the ranks and rank 0 writes."""
    from tomofield.io import check_output_path, load_volume, save_heatmap

    check_output_path(output, overwrite)
    if preview:
        check_output_path(preview, overwrite, suffixes=(".png",))
    volume = load_volume(inputs, nan_policy=o["nan_policy"], check_content=True)
    if volume.replaced and rank == 0:
        err.print(f"[yellow]replaced {volume.replaced} non-finite voxel(s) by 0[/]")
    engine = build_engine(o)
    if world > 1:
        engine = engine.with_options(shard_directions=True)
    c, *shape = volume.data.shape
    err.print(
        f"{volume.paths[0].name}: {c} channel(s), grid {tuple(shape)}, spacing "
        f"{tuple(round(s, 3) for s in volume.spacing)} mm; {engine.count_slices(shape, volume.spacing):,} "
        f"slices of {engine.config.slice_size}px on {engine.device}", highlight=False,
    )
    t0 = time.perf_counter()
    with slice_progress("slices" if world == 1 else f"rank {rank}/{world} slices") as tick:
        heat = engine.reconstruct(volume.data, volume.spacing, progress=tick)
    if rank != 0:
        return
    save_heatmap(output, heat.cpu(), volume, overwrite)
    if preview:
        from tomofield.preview import write_preview

        write_preview(preview, heat[0].cpu().numpy(), volume.data[0].numpy(), volume.spacing,
                      title=f"{o['head']} / {o['filter_']}: {volume.paths[0].name}", overwrite=overwrite)
    out.print(f"wrote {output}" + (f" and {preview}" if preview else "") + f" in {time.perf_counter() - t0:.1f} s")


def run_csv(csv_path: str, out_dir: str, overwrite: bool, o: dict[str, Any], rank: int = 0, world: int = 1) -> Any:
    """Dataset mode of ``run``: one heatmap per volume in ``out_dir``, finished ones skipped."""
    from tomofield.batch import run_dataset, shard
    from tomofield.dataset import read_dataset

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"output {out_dir!r} must be a folder when the input is a dataset CSV")
    all_cases = read_dataset(csv_path, require_files=True, task="any")
    cases = shard(all_cases, rank, world)
    engine = build_engine(o)
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err) as bar:
        vols = bar.add_task("volumes", total=len(cases))

        def on_volume(case: Any, what: str) -> None:
            if what != "start":
                bar.update(vols, advance=1, description=f"volumes ({case.name} {what})")

        result = run_dataset(engine, cases, out_dir, overwrite, on_volume, nan_policy=o["nan_policy"])
    from tomofield import distributed

    parts = distributed.gather_objects((len(result.written), len(result.skipped)))
    if rank == 0:
        written, skipped = sum(p[0] for p in parts), sum(p[1] for p in parts)
        ranks = f" by {world} processes" if world > 1 else ""
        out.print(f"{written} heatmap(s) written, {skipped} already done, in {out_dir}{ranks} "
                  f"({time.perf_counter() - t0:.1f} s)")
    return result


@cli.command()
@click.argument("heatmaps_dir", type=click.Path())
@click.argument("dataset", type=click.Path())
@click.option("--folds", default=10, show_default=True, help="Monte-Carlo cross-validation folds.")
@click.option("--iou", default=0.125, show_default=True, help="IoU above which a component matches a lesion.")
@click.option("--boxes", type=click.Path(), help="CSV image,d0,h0,w0,d1,h1,w1 for box-only data (MaxIoU).")
@click.option("--seed", default=0, show_default=True)
@click.option("--report", "-o", type=click.Path(), help="Write REPORT.json and REPORT.csv (default HEATMAPS_DIR/evaluation).")
@click.option("--overwrite", is_flag=True)
@friendly
def evaluate(heatmaps_dir: str, dataset: str, folds: int, iou: float, boxes: str | None, seed: int,
             report: str | None, overwrite: bool) -> None:
    """Lesion-wise precision, recall, F1, Dice and balanced accuracy of a folder of heatmaps (paper A.7)."""
    from tomofield.report import evaluate_heatmaps, write_reports

    if folds < 1 or not 0 <= iou < 1:
        raise InputError(f"need --folds >= 1 and 0 <= --iou < 1, got folds={folds}, iou={iou}")
    prefix = Path(report) if report else Path(heatmaps_dir) / "evaluation"
    for suffix in (".json", ".csv"):
        if prefix.with_suffix(suffix).exists() and not overwrite:
            raise InputError(f"report {str(prefix.with_suffix(suffix))!r} exists; pass --overwrite")
    res = evaluate_heatmaps(heatmaps_dir, dataset, folds=folds, iou=iou, boxes_csv=boxes, seed=seed)
    name = Path(heatmaps_dir).name
    print_table({name: res}, f"{res['volumes']} volumes ({res['positives']} positive), {folds} folds")
    paths = write_reports(prefix, {name: res}, overwrite)
    out.print("wrote " + ", ".join(map(str, paths)))


@cli.command()
@click.argument("dataset", type=click.Path())
@click.option("--weights", required=True, type=click.Path(), help="Run directory of tomofield train.")
@click.option("--output", "-o", "report_dir", required=True, type=click.Path(), help="Report folder.")
@click.option("--layers", default="1,2,3,4", show_default=True, help="CAM layers to try.")
@click.option("--methods", "families", default=None, help="Comma-separated subset of the method families.")
@click.option("--directions", "-L", default=256, show_default=True, help="ToNNO directions (paper: 2000).")
@click.option("--slices", "-M", default=32, show_default=True, help="ToNNO slices per direction (paper: 100).")
@click.option("--cam-directions", default=64, show_default=True, help="Averaged/Tomographic CAM directions (paper: 1000).")
@click.option("--cam-slices", default=24, show_default=True)
@click.option("--folds", default=10, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@friendly
def compare(dataset: str, weights: str, report_dir: str, layers: str, families: str | None, **o: Any) -> None:
    """Run and evaluate the paper's methods on a dataset: Table 2 (Markdown, CSV) and Fig. 6 (PNG)."""
    from tomofield.compare import FAMILIES, CompareSettings, run_comparison, write_outputs

    try:
        layer_list = [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--layers must be comma-separated integers, got {layers!r}") from None
    fams = [f.strip() for f in families.split(",")] if families else list(FAMILIES)
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(map(repr, unknown))}; valid: {', '.join(FAMILIES)}")
    s = CompareSettings(layers=layer_list, families=fams, **o)

    def on_method(m: Any, what: str) -> None:
        if what == "start":
            err.print(f"{m.name}: heatmaps and evaluation", highlight=False)

    result = run_comparison(dataset, weights, report_dir, s, on_method)
    best = {f: result["methods"][n] for f, n in result["best"].items()}
    print_table(best, f"best layer per method, {s.folds} folds")
    paths = write_outputs(report_dir, dataset, result)
    out.print("wrote " + ", ".join(map(str, paths)))


def print_table(results: dict[str, dict[str, Any]], caption: str = "") -> None:
    """Mean +- std of each metric, one row per method."""
    from tomofield.report import summary_rows

    rows = summary_rows(results)
    metrics = [m for m in ("precision", "recall", "f1", "dice", "max_iou", "balanced_accuracy") if any(m in r for r in rows)]
    table = Table(title="evaluation (paper A.7)", caption=caption)
    table.add_column("method")
    for m in metrics:
        table.add_column(m.replace("_", " "), justify="right")
    for r in rows:
        table.add_row(r["method"], *[f"{r[m]:.3f} ± {r[m + '_std']:.3f}" if m in r else "-" for m in metrics])
    out.print(table)


@cli.command()
@click.argument("out_dir", type=click.Path())
@click.option("--n", default=40, show_default=True, help="Number of volumes (half positive).")
@click.option("--size", default=48, show_default=True, help="Volume side in voxels.")
@click.option("--seed", default=0, show_default=True)
@click.option("--val-fraction", default=0.25, show_default=True, help="Share of volumes in val.csv.")
@friendly
def synth(out_dir: str, n: int, size: int, seed: int, val_fraction: float) -> None:
    """Write a synthetic weakly supervised dataset (NIfTI images, masks, CSVs)."""
    from tomofield.synth import write_dataset

    if n < 4 or size < 16:
        raise InputError(f"need --n >= 4 and --size >= 16, got n={n}, size={size}")
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise InputError(f"output directory {out_dir!r} is not empty; choose another")
    with err.status(f"writing {n} volumes of {size}^3"):
        paths = write_dataset(out_dir, n=n, size=size, seed=seed, val_fraction=val_fraction)
    out.print("wrote " + ", ".join(f"{k}: {v}" for k, v in paths.items()))


@cli.command()
@click.argument("dataset", type=click.Path())
@click.option("--output", "-o", "run_dir", required=True, type=click.Path(), help="Run directory.")
@click.option("--encoder", default="resnet10t", show_default=True)
@click.option("--norm", type=click.Choice(["frozen-bn", "group-norm", "batch-norm"]), default="frozen-bn", show_default=True)
@click.option("--pretrained/--no-pretrained", default=False, show_default=True, help="timm weights from the local cache.")
@click.option("--iterations", default=1000, show_default=True)
@click.option("--slices-per-volume", default=120, show_default=True)
@click.option("--slice-size", default=224, show_default=True)
@click.option("--batch-volumes", default=2, show_default=True)
@click.option("--lr", default=5e-5, show_default=True)
@click.option("--val", "val_csv", type=click.Path(), help="Validation dataset CSV.")
@click.option("--val-every", default=100, show_default=True)
@click.option("--checkpoint-every", default=100, show_default=True)
@click.option("--geometry", type=click.Choice(["physical", "normalized"]), default="physical", show_default=True)
@click.option("--extent", type=click.Choice(["unit", "tight"]), default="unit", show_default=True)
@click.option("--task", type=click.Choice(["classification", "regression"]), default="classification", show_default=True)
@click.option("--loss", default=None, help="bce (classification), mse or huber (regression).")
@click.option("--teacher", type=click.Path(), default=None,
              help="Regression: a classification run on the same data; trains a density encoder whose tomo "
                   "heatmap integrates to the target (docs/features.md). Encoder, norm, slice size, geometry "
                   "and extent default to the teacher's.")
@click.option("--teacher-quantile", default=0.95, show_default=True,
              help="The teacher's baseline: this quantile of its slice scores on target-0 volumes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--recipe", default=None, help="Training settings of a registered dataset (e.g. mosmed); options given on the command line win.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@click.option("--device", default="auto", show_default=True)
@friendly
def train(dataset: str, run_dir: str, val_csv: str | None, device: str, resume: bool, recipe: str | None,
          **o: Any) -> None:
    """Train a slice encoder from volume-level labels (the paper's recipe)."""
    from tomofield.train import Trainer, config_from_options

    if recipe:
        preset = dict(getattr(plugins.get("dataset", recipe).factory(), "recipe", {}) or {})
        o.update({k: v for k, v in preset.items() if k in o and not explicit(k)})
        err.print(f"recipe {recipe}: " + ", ".join(f"{k}={v}" for k, v in preset.items()), highlight=False)
    from tomofield import distributed

    if o["loss"] is None:
        o["loss"] = "bce" if o["task"] == "classification" else "mse"
    if o.get("teacher"):
        from tomofield.checkpoint import is_run_dir, read_run_config

        if is_run_dir(o["teacher"]):  # else the trainer says what is wrong with it
            run = read_run_config(o["teacher"])
            o.update({k: run[k] for k in ("encoder", "norm", "slice_size", "geometry", "extent")
                      if not explicit(k) and k in run})
    cfg = config_from_options(**o)
    rank, world = distributed.init(device)
    try:
        trainer = Trainer(dataset, run_dir, cfg, val_csv=val_csv, device=distributed.local_device(device),
                          resume=resume)
        result = fit_with_progress(trainer) if rank == 0 else trainer.fit()
    finally:
        distributed.finish()
    if rank != 0:
        return
    last = result["history"][-1] if result["history"] else {}
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("val_"))
    out.print(f"trained {result['iteration']} iterations, last loss {result['loss']:.4f}"
              + (f", {metrics}" if metrics else "") + f"; run directory {run_dir}")


def fit_with_progress(trainer: Any) -> dict[str, Any]:
    """Run ``trainer.fit`` under a rich progress bar showing loss and slices/s."""
    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("train", total=trainer.cfg.iterations, info="")

        def progress(rec: dict[str, Any]) -> None:
            info = f"loss {rec['loss']:.4f}  {rec['slices_per_s']:,.0f} slices/s"
            if "val_balanced_accuracy" in rec:
                bar.console.print(f"iteration {rec['iteration']}: validation balanced accuracy "
                                  f"{rec['val_balanced_accuracy']:.3f}", highlight=False)
            elif "val_mae" in rec:
                bar.console.print(f"iteration {rec['iteration']}: validation mean abs. error {rec['val_mae']:.4g}, "
                                  f"Pearson r {rec['val_pearson']:.3f}", highlight=False)
            bar.update(task, completed=rec["iteration"], info=info)

        return trainer.fit(progress)


@cli.command()
@click.argument("name")
@click.argument("raw_dir", type=click.Path())
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(), help="Output dataset directory.")
@click.option("--seed", default=0, show_default=True, help="Seed of the patient-level train/validation split.")
@click.option("--val-fraction", default=0.2, show_default=True)
@friendly
def prepare(name: str, raw_dir: str, out_dir: str, seed: int, val_fraction: float) -> None:
    """Turn a public dataset, as downloaded, into tomofield dataset CSVs (plugins register NAME)."""
    comp = plugins.get("dataset", name)
    if not Path(raw_dir).is_dir():
        raise InputError(f"raw dataset folder {raw_dir!r} does not exist or is not a folder")
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise InputError(f"output directory {out_dir!r} is not empty; choose another")
    preparer = comp.factory()
    with err.status(f"preparing {name} from {raw_dir}"):
        paths = preparer.prepare(Path(raw_dir), Path(out_dir), seed=seed, val_fraction=val_fraction)
    out.print(f"{name}: " + ", ".join(f"{k}: {v}" for k, v in paths.items()))


@cli.command("plugins")
def plugins_cmd() -> None:
    """List every registered component and the package it comes from."""
    table = Table(title="tomofield components")
    for col in ("kind", "name", "plugin", "source"):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for comp in plugins.components():
        table.add_row(comp.kind, comp.name, comp.plugin, comp.source, comp.description)
    out.print(table)
    for name, why in plugins.failed_plugins().items():
        err.print(f"[yellow]plugin {name} failed to load:[/] {why}", highlight=False)


@cli.command()
@click.option("--output-dir", "-o", default="tomofield-demo", show_default=True, type=click.Path())
@click.option("--phantom", is_flag=True, help="Only the reconstruction sanity check on a ball phantom (sum head).")
@click.option("--iterations", default=None, type=int, help="Training iterations (default 1200).")
@click.option("--directions", "-L", default=None, type=int, help="Directions (default 128; phantom 500).")
@click.option("--slices", "-M", default=None, type=int, help="Slices per direction (default 32; phantom 48).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo's outputs.")
@friendly
def demo(output_dir: str, phantom: bool, iterations: int | None, directions: int | None, slices: int | None,
         seed: int, device: str, overwrite: bool) -> None:
    """Synthesise data, train from volume labels, reconstruct held-out lesions (a few CPU minutes)."""
    from tomofield.demo import DemoSettings, full_demo, phantom_demo

    if phantom:
        phantom_demo(Path(output_dir), directions or 500, slices or 48, 64, device, overwrite, slice_progress, out)
        return
    s = DemoSettings(seed=seed, device=device)
    s.iterations = iterations or s.iterations
    s.directions = directions or s.directions
    s.slices = slices or s.slices
    full_demo(Path(output_dir), s, overwrite, slice_progress, fit_with_progress, out)


plugins.add_commands(cli)


def main() -> None:
    cli()
