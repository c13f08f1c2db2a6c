"""``tomofield run``: the heatmap of a volume, or of every volume of a dataset CSV, a folder or a pattern."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

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

from tomofield.cli.toolkit import (
    EngineCommand,
    build_engine,
    default_of,
    engine_options,
    err,
    friendly,
    given,
    out,
    slice_progress,
)
from tomofield.dataset import folder_cases, is_volume_list
from tomofield.errors import InputError
from tomofield.io import is_dicom_folder, same_file
from tomofield.outputs import Extras, read_fill_holes, read_thresholds
from tomofield.outputs.statistics import TABLE_SUFFIXES

if TYPE_CHECKING:
    from tomofield.engine import PlanReport


@click.command(cls=EngineCommand)
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option(
    "--input",
    "-i",
    "more_inputs",
    multiple=True,
    type=click.Path(),
    help="An input, as the arguments are: a volume (several: its channels), a dataset CSV, a folder of volumes "
    "or a quoted glob pattern ('scans/*.nii.gz').",
)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(),
    help="Output heatmap (.nii or .nii.gz); a folder when the input is a dataset CSV, a folder or a pattern.",
)
@click.option(
    "--preview",
    type=click.Path(),
    help="Also write a PNG: three planes in RAS through the heatmap's strongest component, the heatmap over the scan.",
)
@click.option(
    "--window",
    help="The preview's display range LO,HI (CT: -1000,400 lung, -160,240 soft tissue).  [default: soft tissue for a "
    "CT in HU, else the 1st-99th percentile inside the body]",
)
@click.option(
    "--mask",
    type=click.Path(),
    help="Also write a uint8 segmentation (1 = lesion) on the input grid: the evaluation protocol's binarization "
    "(components of heatmap >= TAU_PRIME whose maximum reaches TAU). A folder for a dataset CSV, one mask per volume.",
)
@click.option(
    "--statistics",
    type=click.Path(),
    help="Also write a table of the mask's lesions (connected components): volume in mL, RAS centroid in mm, "
    "(i, j, k) bounding box, peak and mean heatmap value, mean intensity per channel; .csv or .json. A folder run "
    "writes one table with a case column.",
)
@click.option("--threshold", help="The mask's TAU, or TAU,TAU_PRIME (TAU_PRIME defaults to TAU).")
@click.option(
    "--thresholds",
    "thresholds_from",
    help="The mask's TAU and TAU_PRIME as tomofield evaluate tuned them: its REPORT.json (REPORT.json#METHOD "
    "for a report of several methods).",
)
@click.option(
    "--fill-holes/--no-fill-holes",
    "fill_holes",
    default=None,
    help="Each of the mask's components also takes the background it encloses (3D; a component touching the "
    "volume's border is kept as it is), as tomofield evaluate --fill-holes binarizes.  [default: as the "
    "--thresholds report binarized; off with --threshold]",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs (dataset runs skip finished volumes without it)."
)
@click.option(
    "--num-parts",
    type=int,
    default=None,
    metavar="K",
    help="Split a dataset, folder or pattern run into K independent jobs (a SLURM array), each given its --part-id: "
    "consecutive blocks of the volumes in the CSV's or the folder's order. Every part checks the finished heatmaps "
    "of all volumes and writes only its own.  [default: 1]",
)
@click.option(
    "--part-id",
    type=int,
    default=None,
    metavar="I",
    help="Which part of --num-parts K this job writes, 0 to K-1.  [default: with --num-parts in a SLURM array job, "
    "its task's index, (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP; otherwise 0, which "
    "needs K = 1]",
)
@engine_options()
@friendly
def run(
    inputs: tuple[str, ...],
    more_inputs: tuple[str, ...],
    output: str,
    preview: str | None,
    window: str | None,
    mask: str | None,
    statistics: str | None,
    threshold: str | None,
    thresholds_from: str | None,
    fill_holes: bool | None,
    overwrite: bool,
    num_parts: int | None,
    part_id: int | None,
    **o: Any,
) -> None:
    """Reconstruct the heatmap of a volume (several INPUTS are its channels) or of every volume of a dataset CSV,
    a folder or a glob pattern (one heatmap each in the --output folder, finished ones skipped).

    Head options (--target, --layer, --pool, and those plugin heads declare) apply to the
    heads that declare them; `tomofield plugins` lists the heads. --num-parts K --part-id I
    splits a dataset run into K independent jobs.
    """
    from tomofield import distributed
    from tomofield.engine import Engine

    device = o["device"] or default_of(Engine, "device")
    rank, world = distributed.init(device)
    if o["device"] is not None or distributed.launched():
        o["device"] = distributed.local_device(device)
    inputs = (*inputs, *more_inputs)
    if not inputs:
        raise InputError("no input: give a volume, a dataset CSV, a folder of volumes or a pattern (or -i INPUT)")
    shown = parse_window(window) if window is not None else None
    cuts, filled = None, False
    if mask is not None or statistics is not None:
        cuts = mask_thresholds(threshold, thresholds_from, "--mask" if mask is not None else "--statistics")
        filled = mask_fill_holes(fill_holes, thresholds_from)
    elif threshold is not None or thresholds_from is not None or fill_holes is not None:
        raise InputError(
            "--threshold, --thresholds and --fill-holes set the binarization of --mask and --statistics; give "
            "--mask PATH too, or --statistics FILE"
        )
    try:
        extras = Extras(
            mask=mask,
            cuts=cuts,
            preview=preview,
            window=shown,
            fill_holes=filled,
            statistics=statistics,
            report=thresholds_from if cuts is not None else None,
        )
        many = len(inputs) == 1 and inputs[0].lower().endswith(".csv")
        if many or (is_volume_list(inputs) and not is_dicom_folder(inputs[0])):
            run_csv(inputs[0], output, overwrite, o, rank, world, extras, dataset_part(num_parts, part_id))
        else:
            if num_parts is not None or part_id is not None:
                flags = " ".join(
                    f"{f} {v}" for f, v in (("--num-parts", num_parts), ("--part-id", part_id)) if v is not None
                )
                raise InputError(
                    f"{flags}: --num-parts and --part-id split a run of several volumes (a dataset CSV, a folder "
                    f"or a glob pattern) into parts; {inputs[0]!r} is one volume, drop them"
                )
            run_volume(inputs, output, overwrite, o, rank, world, extras)
    finally:
        distributed.finish()


def dataset_part(num_parts: int | None, part_id: int | None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """``(part_id, num_parts)`` of a dataset run from ``--num-parts`` and ``--part-id`` (None: not given).

    Without ``--part-id``, a run given ``--num-parts`` in a SLURM array job takes its task's
    index in the array, ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP``
    (each variable that is set); otherwise the part is 0, which is the only one when K = 1.
    """
    env = os.environ if environ is None else environ
    k = 1 if num_parts is None else num_parts
    if k < 1:
        raise InputError(f"--num-parts {k}: the number of parts to split the volumes into must be 1 or more")
    if part_id is not None:
        i, where = part_id, f"--part-id {part_id}"
    elif num_parts is not None and env.get("SLURM_ARRAY_TASK_ID"):
        i, where = _slurm_array_index(env)
    elif k > 1:
        raise InputError(
            f"--num-parts {k} needs --part-id I, the part this job writes (0 to {k - 1}), or a SLURM array job "
            "(SLURM_ARRAY_TASK_ID)"
        )
    else:
        i, where = 0, "--part-id 0"
    if not 0 <= i < k:
        raise InputError(f"{where} is not a part of --num-parts {k}: valid part ids are 0 to {k - 1}")
    return i, k


def _slurm_array_index(env: Any) -> tuple[int, str]:
    """This SLURM array task's index in its array, and how it was found (for messages)."""
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")
    values = []
    for name, default in zip(names, ("", "0", "1"), strict=True):
        text = env.get(name) or default
        try:
            values.append(int(text))
        except ValueError:
            raise InputError(f"{name}={text!r} is not an integer; give --part-id I instead") from None
    task, low, step = values
    index = (task - low) // max(step, 1)
    how = " - ".join(f"{n}={env[n]}" for n in names[:2] if env.get(n))
    how += f" over SLURM_ARRAY_TASK_STEP={step}" if step > 1 else ""
    return index, f"SLURM array task {index} ({how})"


def run_volume(
    inputs: tuple[str, ...],
    output: str,
    overwrite: bool,
    o: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    extras: Extras | None = None,
) -> None:
    """One volume; under torchrun its directions are shared by the ranks and rank 0 writes."""
    extras = extras or Extras()
    from tomofield.io import check_output_path, load_volume

    mask, preview, statistics = extras.mask, extras.preview, extras.statistics

    check_output_path(output, overwrite, inputs=inputs)  # never the input, even with --overwrite
    if preview:
        check_output_path(preview, overwrite, suffixes=(".png",), inputs=[*inputs, output])
    if mask:
        check_output_path(mask, overwrite, inputs=[*inputs, output, *([preview] if preview else [])])
    if statistics:
        others = [output, *([mask] if mask else []), *([preview] if preview else [])]
        check_output_path(statistics, overwrite, suffixes=TABLE_SUFFIXES, inputs=[*inputs, *others])
    distinct_output("--mask", mask, {"-o": output})
    distinct_output("--statistics", statistics, {"-o": output, "--mask": mask, "--preview": preview})
    volume = load_volume(inputs, check_content=True, **given({"nan_policy": o["nan_policy"]}))
    if volume.replaced and rank == 0:
        err.print(Text(f"replaced {volume.replaced} non-finite voxel(s) by 0", style="yellow"))
    engine = build_engine(o)
    extras.check_engine(engine)
    if world > 1:
        engine = engine.with_options(shard_directions=True)
    c, *shape = volume.data.shape

    def banner(report: PlanReport) -> None:
        err.print(
            f"{volume.paths[0].name}: {c} channel(s), {volume.describe()}; {report}",
            highlight=False,
        )

    t0 = time.perf_counter()
    with slice_progress("slices" if world == 1 else f"rank {rank}/{world} slices") as tick:
        heat = engine.run(volume, progress=tick, on_plan=banner)
    if rank != 0:
        return
    channels = heat.data.shape[0]
    for flag, value in (("--mask", mask), ("--statistics", statistics)):
        if value and channels != 1:
            raise InputError(f"{flag} needs a single-channel heatmap; head {engine.head_name!r} gave {channels}")
    heat.save(output, overwrite)
    title = f"{engine.head_name} / {engine.filter_name}: {volume.paths[0].name}"
    paths = [Path(p) if p else None for p in (mask, preview, statistics)]
    extras.write(paths[0], paths[1], heat, volume, title, overwrite, table=paths[2])
    written = [output, *(p for p in (mask, preview, statistics) if p)]
    out.print(f"wrote {', '.join(map(str, written))} in {time.perf_counter() - t0:.1f} s")


def distinct_output(flag: str, path: str | None, others: dict[str, str | None]) -> None:
    """Refuse the output ``path`` of ``flag`` (None: not given) where it names one of ``others`` (``{flag: path}``).

    Checked before any work: an output not yet written has no file to compare, so the
    paths are compared as they resolve (and as files where both exist).
    """
    if not path:
        return
    for other, other_path in others.items():
        if other_path and (Path(path).resolve() == Path(other_path).resolve() or same_file(path, other_path)):
            raise InputError(
                f"{flag} {path!r} is also the {other} output {other_path!r}; one would replace the other: give "
                f"{flag} another name"
            )


def parse_window(text: str) -> tuple[float, float]:
    """``--window LO,HI`` as two finite numbers, ``LO < HI``."""
    from tomofield.outputs.preview import check_window

    parts = text.split(",")
    return check_window(parts if len(parts) == 2 else [text], f"--window {text!r}")


def run_csv(
    csv_path: str,
    out_dir: str,
    overwrite: bool,
    o: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    extras: Extras | None = None,
    part_of: tuple[int, int] = (0, 1),
) -> Any:
    """Dataset mode of ``run``: one heatmap per volume in ``out_dir``, finished ones skipped.

    The volumes come from a dataset CSV, a folder of volumes or a glob pattern (``csv_path``).
    A finished heatmap counts as done only when its provenance record matches this run
    (settings, weights, version, inputs); otherwise the run refuses before any work, unless
    ``--overwrite``. ``part_of`` = ``(I, K)``: this job writes part I of K of the volumes
    (:func:`tomofield.batch.part`), shared by the ranks under torchrun. Every part and rank
    checks the whole dataset, so that all refuse alike. ``mask`` and ``preview`` are
    folders: one mask and one PNG per volume (of this part).
    """
    from tomofield.batch import check_output_folder, part, run_dataset, shard
    from tomofield.dataset import is_nnunet_dataset, nnunet_cases, read_dataset

    extras = extras or Extras()

    is_csv = csv_path.lower().endswith(".csv") and not Path(csv_path).is_dir()
    check_output_folder([], out_dir, csv_path if is_csv else None)
    if is_csv:
        all_cases = read_dataset(csv_path, require_files=True, task="any")
    elif is_nnunet_dataset(csv_path):  # nnU-Net's raw dataset: its test images, else its training images
        which = "imagesTs" if (Path(csv_path) / "imagesTs").is_dir() else "imagesTr"
        all_cases = nnunet_cases(csv_path, which)
        err.print(f"nnU-Net dataset {csv_path}: the {len(all_cases)} case(s) of {which}/", highlight=False)
    else:
        all_cases = folder_cases(csv_path)
    check_output_folder(all_cases, out_dir, csv_path if is_csv else None)
    mask, preview, statistics = extras.mask, extras.preview, extras.statistics
    if preview is not None and preview.lower().endswith(".png"):
        raise InputError(f"--preview {preview!r}: a run of several volumes writes one PNG each; give a folder")
    for extra in (mask, preview):
        if extra is not None:
            check_output_folder(all_cases, extra, csv_path if is_csv else None)
    part_id, num_parts = part_of
    if statistics is not None:
        if num_parts > 1:
            raise InputError(
                f"--statistics {statistics!r}: a run split into --num-parts {num_parts} writes no lesion table (the "
                "parts would write one file each); when every part has finished, run once more without --num-parts "
                "and --part-id, with --statistics (finished heatmaps are skipped)"
            )
        from tomofield.io import check_output_path

        sources = [f for c in all_cases for f in (*c.images, *([c.mask] if c.mask else []))]
        check_output_path(
            statistics, overwrite, suffixes=TABLE_SUFFIXES, inputs=[*([csv_path] if is_csv else []), *sources]
        )
    distinct_output("--mask", mask, {"-o": out_dir})
    distinct_output("--statistics", statistics, {"-o": out_dir, "--mask": mask, "--preview": preview})
    mine = part(all_cases, part_id, num_parts)
    share = f", part {part_id} of {num_parts}: {len(mine)} of {len(all_cases)} volume(s)" if num_parts > 1 else ""
    if not mine and rank == 0:
        out.print(
            f"part {part_id} of {num_parts} holds none of the {len(all_cases)} volume(s): nothing to write "
            "(the finished heatmaps are checked all the same)",
            highlight=False,
        )
    cases = shard(mine, rank, world)
    engine = build_engine(o)
    extras.check_engine(engine)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        vols = bar.add_task("volumes", total=len(cases))

        def on_volume(case: Any, what: str) -> None:
            if what != "start":
                bar.update(vols, advance=1, description=f"volumes ({case.name} {what})")

        result = run_dataset(
            engine, cases, out_dir, overwrite, on_volume, check=all_cases, **given({"nan_policy": o["nan_policy"]})
        )
    from tomofield import distributed

    parts = distributed.gather_objects((len(result.written), len(result.skipped)))
    if rank == 0:
        written, skipped = sum(p[0] for p in parts), sum(p[1] for p in parts)
        ranks = f" by {world} processes" if world > 1 else ""
        out.print(
            f"{written} heatmap(s) written, {skipped} already done, in {out_dir}{ranks}{share} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    if (mask or preview or statistics) and rank == 0:
        made, kept = extras.write_dataset(mine, out_dir, overwrite)
        if mask is not None:
            tau, tau_prime = extras.cuts or (float("nan"), float("nan"))
            out.print(
                f"{made[0]} mask(s) written, {kept[0]} up to date, in {mask} (tau {tau:.4g}, tau' {tau_prime:.4g}"
                + (", holes filled)" if extras.fill_holes else ")")
            )
        if preview is not None:
            out.print(f"{made[1]} preview(s) written, {kept[1]} up to date, in {preview}")
        if statistics is not None:
            out.print(f"wrote the lesion table of {len(mine)} volume(s) to {statistics}")
    return result


def parse_threshold(text: str) -> tuple[float, float]:
    """``--threshold TAU`` or ``TAU,TAU_PRIME`` as ``(tau, tau_prime)`` (``tau_prime`` = ``tau`` when not given).

    >>> parse_threshold("0.8"), parse_threshold("0.8,0.3")
    ((0.8, 0.8), (0.8, 0.3))
    """
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) for v in values):
        raise InputError(
            f"--threshold {text!r} is not TAU or TAU,TAU_PRIME (finite numbers: components of heatmap >= TAU_PRIME "
            "are kept when their maximum reaches TAU)"
        )
    tau, tau_prime = values[0], values[-1]
    if tau_prime > tau:
        raise InputError(f"--threshold {text!r}: TAU_PRIME ({tau_prime}) must not exceed TAU ({tau})")
    return tau, tau_prime


def mask_thresholds(threshold: str | None, thresholds: str | None, flag: str = "--mask") -> tuple[float, float]:
    """The thresholds of ``--mask`` (or of ``--statistics``, named by ``flag``, whose lesions are the mask's):
    from ``--threshold`` or from ``--thresholds``, exactly one of them."""
    if (threshold is None) == (thresholds is None):
        raise InputError(
            f"{flag} needs its thresholds: --threshold TAU[,TAU_PRIME], or --thresholds REPORT.json (what tomofield "
            "evaluate tuned), not both"
        )
    # exactly one is given (checked above)
    return parse_threshold(threshold) if threshold is not None else read_thresholds(cast(str, thresholds))


def mask_fill_holes(fill_holes: bool | None, thresholds: str | None) -> bool:
    """Whether ``--mask`` fills holes: ``--fill-holes/--no-fill-holes`` when given (None: not given), else as the
    ``--thresholds`` report binarized (its ``tau'`` was tuned on that binarization), else not."""
    if fill_holes is not None:
        return bool(fill_holes)
    return read_fill_holes(thresholds) if thresholds is not None else False
