"""``tomofield train``: a slice encoder from volume-level labels."""

from __future__ import annotations

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
from tomofield.cli.toolkit import (
    default_of,
    err,
    friendly,
    given,
    out,
    setting_option,
    with_default,
)
from tomofield.encoders import NORMS
from tomofield.geometry import EXTENTS, GEOMETRIES
from tomofield.intensity import MODES as INTENSITY_MODES
from tomofield.train import DEFAULTS as TRAIN_DEFAULTS
from tomofield.train import TASKS, TrainConfig, Trainer
from tomofield.train.objective import OBJECTIVES, POOLS


def _train_default(name: str) -> Any:
    """The library's default of a TrainConfig field (settings a teacher may provide: its DEFAULTS)."""
    value = default_of(TrainConfig, name)
    return TRAIN_DEFAULTS.get(name, value) if value is None else value


def _topt(flag: str, help: str, **kw: Any) -> Any:
    name = flag.lstrip("-").split("/")[0].replace("-", "_")
    return click.option(flag, name, default=None, help=with_default(help, _train_default(name)), **kw)


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--output", "-o", "run_dir", required=True, type=click.Path(), help="Run directory.")
@_topt("--encoder", "Registered or timm encoder name (a teacher's, with --teacher).")
@_topt(
    "--norm",
    "Normalisation layers.  [default: batch-norm from scratch, frozen-bn with --pretrained]",
    type=click.Choice(NORMS),
)
@_topt("--pretrained/--no-pretrained", "timm weights from the local cache.")
@_topt("--iterations", "Training steps.", type=int)
@_topt("--slices-per-volume", "Slices drawn per volume and step.", type=int)
@_topt(
    "--slice-size",
    "Slice side in pixels (a teacher's, with --teacher).  [default: the volumes' largest side rounded up to 16, "
    "in 32..224]",
    type=int,
)
@_topt("--batch-volumes", "Volumes per step (pairs of one positive and one negative).", type=int)
@_topt("--lr", "Peak learning rate (cosine schedule).  [default: 3e-4]", type=float)
@_topt("--warmup", "Steps of linear learning-rate warm-up.  [default: 5% of --iterations]", type=int)
@_topt(
    "--intensity",
    "Intensity normalisation of every volume (recorded in the run; tomofield run applies the same): volume = "
    "per channel, background to 0 and the foreground's median to 1; zscore = per channel, mean 0 and standard "
    "deviation 1; none = the values as stored.",
    type=click.Choice(INTENSITY_MODES),
)
@_topt(
    "--objective",
    "Classification loss: mil = one stack of parallel slices per volume, pooled to the volume's logit (a "
    "positive needs one lesion slice, every slice of a negative is negative); slice = every slice takes its "
    "volume's label (the paper's).",
    type=click.Choice(OBJECTIVES),
)
@_topt("--pool", "mil: how a stack's slice logits pool to the volume's.", type=click.Choice(POOLS))
@_topt(
    "--scale-jitter",
    "Augmentation: in-plane zoom, a share of the slice's side.  [default: 0 for classification, 0.3 for regression]",
    type=float,
)
@_topt(
    "--translation",
    "Augmentation: in-plane shift, a share of the slice's side.  [default: 0 for classification, 0.3 for regression]",
    type=float,
)
@_topt(
    "--intensity-jitter",
    "Augmentation: each slice's gain and offset, up to this much.  [default: 0 for classification, 0.3 for regression]",
    type=float,
)
@_topt("--slice-weight", "mil: weight of the per-slice loss added to it.", type=float)
@click.option("--val", "val_csv", type=click.Path(), help="Validation dataset CSV.")
@_topt("--val-every", "Validate every this many steps.  [default: an eighth of --iterations]", type=int)
@_topt("--checkpoint-every", "Checkpoint every this many steps.", type=int)
@_topt("--geometry", "Slicing geometry (a teacher's, with --teacher).", type=click.Choice(GEOMETRIES))
@_topt("--extent", "Slice offsets (a teacher's, with --teacher).", type=click.Choice(EXTENTS))
@_topt("--task", "What the volume-level targets are.", type=click.Choice(list(TASKS)))
@click.option(
    "--loss",
    default=None,
    help="Loss per task (the first is the default): "
    + "; ".join(f"{task}: {', '.join(losses)}" for task, losses in TASKS.items())
    + ".",
)
@_topt(
    "--teacher",
    "Regression: a classification run on the same data; trains a density encoder whose tomo "
    "heatmap integrates to the target (docs/features.md). Encoder, norm, slice size, geometry, extent and intensity "
    "default to the teacher's.",
    type=click.Path(),
)
@_topt(
    "--teacher-quantile", "The teacher's baseline: this quantile of its slice scores on target-0 volumes.", type=float
)
@_topt("--seed", "Seed of the initialisation and of the draws.", type=int)
@click.option(
    "--recipe",
    default=None,
    help="Training settings of a registered dataset (e.g. mosmed); options given on the command line win.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@setting_option(Trainer, "--device", "auto | cpu | cuda | cuda:N.")
@friendly
def train(
    dataset: str, run_dir: str, val_csv: str | None, device: str | None, resume: bool, recipe: str | None, **o: Any
) -> None:
    """Train a slice encoder from volume-level labels."""
    from tomofield import distributed
    from tomofield.train import config_from_options

    o = given(o)
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
                bar.console.print(
                    f"iteration {rec['iteration']}: validation balanced accuracy {rec['val_balanced_accuracy']:.3f}",
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
