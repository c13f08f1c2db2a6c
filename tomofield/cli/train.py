"""``tomofield train``: a slice encoder from volume-level labels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from tomofield import plugins
from tomofield.calibration import FALSE_POSITIVE_RATE
from tomofield.cli.toolkit import (
    default_of,
    err,
    friendly,
    given,
    out,
    setting_option,
)
from tomofield.errors import InputError
from tomofield.train import DEFAULTS as TRAIN_DEFAULTS
from tomofield.train import TrainConfig, Trainer


def _topt(flag: str, **kw: Any) -> Any:
    """The option of TrainConfig's setting ``flag`` stands for: help, choices and the default as declared."""
    return setting_option(TrainConfig, flag, resolved=TRAIN_DEFAULTS, **kw)


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--output", "-o", "run_dir", required=True, type=click.Path(), help="Run directory.")
@_topt("--encoder")
@_topt("--norm")
@_topt("--pretrained/--no-pretrained")
@_topt("--iterations")
@_topt("--slices-per-volume")
@_topt("--slice-size")
@_topt("--batch-volumes")
@_topt("--lr")
@_topt("--warmup")
@_topt("--intensity")
@_topt("--objective")
@_topt("--pool")
@_topt("--pool-temperature")
@_topt("--scale-jitter")
@_topt("--translation")
@_topt("--intensity-jitter")
@_topt("--noise")
@_topt("--slice-weight")
@_topt("--negative-share")
@click.option("--val", "val_csv", type=click.Path(), help="Validation dataset CSV.")
@click.option(
    "--labels",
    type=click.Path(),
    help="With a folder of images as DATASET (nnU-Net's layout too): a CSV case,label giving each case's volume "
    "label (the case is the file name without .nii.gz, or nnU-Net's CASE of CASE_0000.nii.gz).",
)
@click.option(
    "--labels-from-masks",
    is_flag=True,
    default=False,
    help="With an nnU-Net dataset folder as DATASET: a case is positive when its label map in labelsTr/ is not "
    "empty (only where that is what the label maps mean).",
)
@_topt("--val-every")
@_topt("--checkpoint-every")
@_topt("--geometry")
@_topt("--extent")
@_topt("--task")
@_topt("--loss")
@_topt("--teacher", type=click.Path())
@_topt("--teacher-quantile")
@_topt("--seed")
@click.option(
    "--recipe",
    default=None,
    help="Training settings of a registered dataset (e.g. mosmed); options given on the command line win.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@setting_option(Trainer, "--device", "auto | cpu | cuda | cuda:N (gpu, gpu:N: the same).")
@friendly
def train(
    dataset: str, run_dir: str, val_csv: str | None, device: str | None, resume: bool, recipe: str | None, **o: Any
) -> None:
    """Train a slice encoder from volume-level labels.

    DATASET is a CSV with a header image,label[,mask]: one row per volume, the image's path
    relative to the CSV (channels joined by ';'), label 1 if the volume has a lesion and 0 if
    not; masks are optional and only evaluated. docs/datasets.md has the format. DATASET may
    also be a folder of images, or an nnU-Net raw dataset (dataset.json, imagesTr/,
    labelsTr/), with --labels or --labels-from-masks (docs/your-data.md).
    """
    from tomofield import distributed
    from tomofield.train import config_from_options
    from tomofield.train.trainer import check_run_dir

    labels, labels_from_masks = o.pop("labels"), o.pop("labels_from_masks")
    o = given(o)
    # the run folder before any work (the trainer checks it again): writable, not another training's, empty
    inputs = [p for p in (dataset, val_csv, labels) if p]
    check_run_dir(run_dir, resume, inputs, lock=os.environ.get("RANK", "0") == "0")  # torchrun: rank 0 locks
    if Path(dataset).is_dir():  # a folder of images (nnU-Net's layout too): its cases and labels as a dataset CSV
        from tomofield.dataset import folder_dataset, read_labels, write_dataset_csv
        from tomofield.train.trainer import GIVEN_DATASET

        folder = dataset
        cases = folder_dataset(folder, read_labels(labels) if labels else None, labels_from_masks)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        dataset = str(write_dataset_csv(Path(run_dir) / GIVEN_DATASET, cases))
        positives = sum(c.label == 1 for c in cases)
        source = "label maps" if labels_from_masks and not labels else labels
        err.print(
            f"{len(cases)} case(s) of {folder}: {positives} positive, {len(cases) - positives} "
            f"negative (labels from {source}); written as {dataset}",
            highlight=False,
        )
    elif labels or labels_from_masks:
        raise InputError("--labels and --labels-from-masks are for a folder of images; a dataset CSV has its labels")
    if recipe:
        preset = dict(getattr(plugins.get("dataset", recipe).factory(), "recipe", {}) or {})
        o = {**preset, **o}
        err.print(f"recipe {recipe}: " + ", ".join(f"{k}={v}" for k, v in preset.items()), highlight=False)
    cfg = config_from_options(**o)
    device = device or default_of(Trainer, "device")  # the process group needs it before the trainer exists
    rank, world = distributed.init(device)
    try:
        trainer = Trainer(
            dataset, run_dir, cfg, val_csv=val_csv, device=distributed.local_device(device), resume=resume
        )
        result = fit_with_progress(trainer) if rank == 0 else trainer.fit()
    finally:
        distributed.finish()
    if rank != 0:
        return
    last = result["history"][-1] if result["history"] else {}
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("val_"))
    out.print(
        f"trained {result['iteration']} iterations, last loss {result['loss']:.4f}"
        + (f", {metrics}" if metrics else "")
        + f"; run directory {run_dir}"
    )
    diagnostics = result["diagnostics"]
    if not diagnostics["learned"]:
        err.print(
            Text.assemble(
                ("Warning: ", "bold yellow"),
                f"this run did not learn ({', '.join(diagnostics['unresolved'])}); {run_dir}/config.json records "
                "it under diagnostics, and tomofield run will warn when it uses these weights",
            ),
            soft_wrap=True,
        )
    elif diagnostics.get("localisation") == "unchecked":
        err.print(
            "Note: the verdict judged whether the volumes separate, not whether the slice scores mark the lesions "
            "(what the heatmap shows): give --val a CSV whose positives have masks to check that too",
            soft_wrap=True,
            highlight=False,
        )


@click.command()
@click.argument("run_dir", type=click.Path())
@click.argument("dataset", type=click.Path())
@click.option(
    "--false-positive-rate",
    type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
    default=FALSE_POSITIVE_RATE,
    show_default=True,
    help="Share of the negatives' slices above the operating point.",
)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@friendly
def calibrate(run_dir: str, dataset: str, false_positive_rate: float, device: str) -> None:
    """Record a run's operating point (the slice logit that means 'cuts a lesion') from a dataset's negatives.

    A slice of a negative volume never cuts a lesion: the negatives of DATASET (a CSV of
    tomofield train; positives are skipped) give the logit above which only
    --false-positive-rate of their slices lie, and the spread of their logits. The run's
    config.json and weights' metadata record it; with tomofield run --operating-point,
    reconstructors that threshold slice scores (filled) read it instead of their constants.
    Runs trained by this version record one from their validation negatives already.
    """
    from tomofield.train.calibrate import calibrate_run

    point = calibrate_run(run_dir, dataset, false_positive_rate, device)
    out.print(
        f"operating point of {run_dir}: threshold {point.threshold:.3f} (false-positive rate "
        f"{point.false_positive_rate:g} of {point.slices} slices of {point.volumes} negative volume(s)), "
        f"spread {point.scale:.3f}; recorded in {run_dir}/config.json and its weights",
        highlight=False,
    )


def fit_with_progress(trainer: Any) -> dict[str, Any]:
    """Run ``trainer.fit`` under a rich progress bar showing loss and slices/s."""
    with Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("train", total=trainer.cfg.iterations, info="")

        def progress(rec: dict[str, Any]) -> None:
            info = f"loss {rec['loss']:.4f}  {rec['slices_per_s']:,.0f} slices/s"
            if "val_balanced_accuracy" in rec:
                located = (
                    f", lesion slices above their neighbours {rec['val_localisation']:.3f} (0.5: chance)"
                    if "val_localisation" in rec
                    else ""
                )
                bar.console.print(
                    f"iteration {rec['iteration']}: validation balanced accuracy {rec['val_balanced_accuracy']:.3f}"
                    + located,
                    highlight=False,
                )
            elif "val_mae" in rec:
                bar.console.print(
                    f"iteration {rec['iteration']}: validation mean abs. error {rec['val_mae']:.4g}, "
                    f"Pearson r {rec['val_pearson']:.3f}",
                    highlight=False,
                )
            for message in rec.get("warnings", []):  # after the validation line they may be about
                bar.console.print(Text.assemble(("Warning: ", "bold yellow"), message), soft_wrap=True)
            bar.update(task, completed=rec["iteration"], info=info)

        return trainer.fit(progress)
