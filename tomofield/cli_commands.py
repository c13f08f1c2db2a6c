"""tomofield's own commands: a thin layer of click and rich over the library.

The group :data:`tomofield.cli.cli` lists them and imports this module only when one of
them runs, shows its help or completes its options, so ``tomofield --help`` does not wait
for torch. Every option that stands for a library setting defaults to "not given": only
what the user set is passed on, so the library's defaults (and a run directory's) apply
exactly as they do from Python. The shared toolkit (errors, progress, engine options) is
:mod:`tomofield.commands`, which plugins' commands use as well.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from tomofield import plugins
from tomofield.commands import (
    EngineCommand,
    build_engine,
    default_of,
    engine_options,
    err,
    friendly,
    given,
    head_params,
    out,
    setting_option,
    slice_progress,
    with_default,
)
from tomofield.compare import FAMILIES, CompareSettings
from tomofield.dataset import folder_cases, is_volume_list
from tomofield.demo import DemoSettings, full_demo, phantom_demo
from tomofield.encoders import NORMS
from tomofield.errors import InputError
from tomofield.geometry import EXTENTS, GEOMETRIES
from tomofield.intensity import MODES as INTENSITY_MODES
from tomofield.io import is_dicom_folder
from tomofield.report import METRICS, evaluate_heatmaps
from tomofield.synth import BACKGROUNDS, write_dataset
from tomofield.synth import RECORD as SYNTH_RECORD
from tomofield.train import DEFAULTS as TRAIN_DEFAULTS
from tomofield.train import TASKS, TrainConfig, Trainer
from tomofield.train.objective import OBJECTIVES, POOLS


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
    if mask is not None:
        from tomofield.report import mask_fill_holes, mask_thresholds

        cuts = mask_thresholds(threshold, thresholds_from)
        filled = mask_fill_holes(fill_holes, thresholds_from)
    elif threshold is not None or thresholds_from is not None or fill_holes is not None:
        raise InputError(
            "--threshold, --thresholds and --fill-holes set the binarization of --mask; give --mask PATH too"
        )
    try:
        extras = Extras(mask=mask, cuts=cuts, preview=preview, window=shown, fill_holes=filled)
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


@dataclass(frozen=True)
class Extras:
    """What ``run`` writes beside a heatmap: a mask at ``cuts`` = (tau, tau') (its components' holes filled
    with ``fill_holes``), a preview in ``window``.

    For one volume ``mask`` and ``preview`` are files; for a dataset, folder or pattern, folders.
    """

    mask: str | None = None
    cuts: tuple[float, float] | None = None
    preview: str | None = None
    window: tuple[float, float] | None = None
    fill_holes: bool = False

    def write(self, mask: Path | None, png: Path | None, heat: Any, scan: Any, title: str, overwrite: bool) -> Any:
        """Write the mask (to ``mask``) and the preview (to ``png``) of one (D, H, W) heatmap on ``scan``'s grid.

        Returns the mask array (None without ``cuts``).
        """
        labels = None
        if self.cuts is not None:  # the preview outlines the mask, written or not
            from tomofield.report import segmentation

            labels = segmentation(heat, *self.cuts, fill_holes=self.fill_holes)
            if mask is not None:
                write_mask(
                    mask, labels, scan.affine, scan.header, self.cuts, overwrite, scan.paths, fill_holes=self.fill_holes
                )
        if png is not None:
            from tomofield.preview import write_preview

            write_preview(
                png,
                heat,
                scan.data[0].numpy(),
                scan.spacing,
                title=title,
                overwrite=overwrite,
                mask=labels,
                affine=scan.affine,
                window=self.window,
                threshold=self.cuts[1] if self.cuts else None,
            )
        return labels


def run_volume(
    inputs: tuple[str, ...],
    output: str,
    overwrite: bool,
    o: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    extras: Extras = Extras(),
) -> None:
    """One volume; under torchrun its directions are shared by the ranks and rank 0 writes."""
    from tomofield.io import check_output_path, load_volume, save_heatmap

    mask, preview = extras.mask, extras.preview

    check_output_path(output, overwrite, inputs=inputs)  # never the input, even with --overwrite
    if preview:
        check_output_path(preview, overwrite, suffixes=(".png",), inputs=[*inputs, output])
    if mask:
        check_output_path(mask, overwrite, inputs=[*inputs, output, *([preview] if preview else [])])
    volume = load_volume(inputs, check_content=True, **given({"nan_policy": o["nan_policy"]}))
    if volume.replaced and rank == 0:
        err.print(Text(f"replaced {volume.replaced} non-finite voxel(s) by 0", style="yellow"))
    engine = build_engine(o)
    if world > 1:
        engine = engine.with_options(shard_directions=True)
    c, *shape = volume.data.shape
    plan = engine.plan(shape, volume.spacing)
    total = plan.total_slices
    per_stack = "/".join(str(m) for m in sorted({g.num_slices for g in plan.groups}))
    chosen = f", preset {engine.preset.name}" if engine.preset is not None else ""
    err.print(
        f"{volume.paths[0].name}: {c} channel(s), grid {tuple(shape)}, spacing "
        f"{tuple(round(s, 3) for s in volume.spacing)} mm; {total:,} slices (L {plan.n_dirs} x M "
        f"{per_stack}{chosen}) of {plan.size[0]}px on {engine.device}",
        highlight=False,
    )
    t0 = time.perf_counter()
    with slice_progress("slices" if world == 1 else f"rank {rank}/{world} slices", total) as tick:
        heat = engine.run(volume, progress=tick).data
    if rank != 0:
        return
    if mask and heat.shape[0] != 1:
        raise InputError(f"--mask needs a single-channel heatmap; head {engine.head_name!r} gave {heat.shape[0]}")
    save_heatmap(output, heat.cpu(), volume, overwrite)
    title = f"{engine.head_name} / {engine.filter_name}: {volume.paths[0].name}"
    extras.write(
        Path(mask) if mask else None,
        Path(preview) if preview else None,
        heat[0].cpu().numpy(),
        volume,
        title,
        overwrite,
    )
    written = [output, *([mask] if mask else []), *([preview] if preview else [])]
    out.print(f"wrote {', '.join(map(str, written))} in {time.perf_counter() - t0:.1f} s")


def parse_window(text: str) -> tuple[float, float]:
    """``--window LO,HI`` as two numbers, ``LO < HI``."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo = hi = float("nan")
    if not lo < hi:
        raise InputError(f"--window {text!r} is not LO,HI with LO < HI (e.g. -1000,400 for a lung CT)")
    return lo, hi


def write_mask(
    path: str | Path,
    labels: Any,
    affine: Any,
    header: Any,
    cuts: tuple[float, float],
    overwrite: bool,
    inputs: Any = (),
    fill_holes: bool = False,
) -> Path:
    """A uint8 label map (D, H, W), the segmentation at ``cuts`` = (tau, tau'), on the heatmap's grid.

    Its description names the thresholds, and ``filled`` when the components' holes were filled.
    """
    from tomofield.io import save_nifti

    tau, tau_prime = cuts
    return save_nifti(
        path,
        labels,
        affine,
        header,
        overwrite,
        dtype=np.uint8,
        description=f"tomofield mask tau={tau:.4g} tau'={tau_prime:.4g}" + (" filled" if fill_holes else ""),
        inputs=inputs,
    )


def run_csv(
    csv_path: str,
    out_dir: str,
    overwrite: bool,
    o: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    extras: Extras = Extras(),
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
    from tomofield.dataset import read_dataset

    is_csv = csv_path.lower().endswith(".csv") and not Path(csv_path).is_dir()
    check_output_folder([], out_dir, csv_path if is_csv else None)
    all_cases = read_dataset(csv_path, require_files=True, task="any") if is_csv else folder_cases(csv_path)
    check_output_folder(all_cases, out_dir, csv_path if is_csv else None)
    mask, preview = extras.mask, extras.preview
    if preview is not None and preview.lower().endswith(".png"):
        raise InputError(f"--preview {preview!r}: a run of several volumes writes one PNG each; give a folder")
    for extra in (mask, preview):
        if extra is not None:
            check_output_folder(all_cases, extra, csv_path if is_csv else None)
    part_id, num_parts = part_of
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
    if (mask or preview) and rank == 0:
        write_dataset_extras(mine, out_dir, extras, overwrite)
    return result


def write_dataset_extras(cases: list[Any], heat_dir: str, extras: Extras, overwrite: bool) -> None:
    """One mask and one preview per volume from its finished heatmap, each heatmap read once.

    A mask or preview newer than its heatmap is kept unless ``overwrite``.
    """
    from tomofield.batch import heatmap_path
    from tomofield.io import load_volume

    folders = [Path(f) if f else None for f in (extras.mask, extras.preview)]
    for folder in folders:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    made, kept = [0, 0], [0, 0]
    for case in cases:
        heat_file = heatmap_path(heat_dir, case)
        targets = [
            heatmap_path(folders[0], case) if folders[0] else None,
            folders[1] / f"{case.name}.png" if folders[1] else None,
        ]
        if targets[0] is not None and targets[0].resolve() == heat_file.resolve():
            raise InputError(f"--mask {extras.mask!r} is the heatmaps' folder; give another folder for the masks")
        stale = [
            t is not None and (overwrite or not t.exists() or t.stat().st_mtime < heat_file.stat().st_mtime)
            for t in targets
        ]
        for i, t in enumerate(targets):
            made[i] += stale[i]
            kept[i] += t is not None and not stale[i]
        if not any(stale):
            continue
        heat = load_volume(heat_file)
        if heat.data.shape[0] != 1:
            raise InputError(f"--mask needs single-channel heatmaps; {str(heat_file)!r} has {heat.data.shape[0]}")
        scan = load_volume(list(case.images)) if stale[1] else heat  # the heatmap has the scan's grid
        chosen = [t if st else None for t, st in zip(targets, stale, strict=True)]
        extras.write(chosen[0], chosen[1], heat.data[0].numpy(), scan, case.name, True)
    if folders[0] is not None:
        tau, tau_prime = extras.cuts or (float("nan"), float("nan"))
        out.print(
            f"{made[0]} mask(s) written, {kept[0]} up to date, in {extras.mask} (tau {tau:.4g}, tau' {tau_prime:.4g}"
            + (", holes filled)" if extras.fill_holes else ")")
        )
    if folders[1] is not None:
        out.print(f"{made[1]} preview(s) written, {kept[1]} up to date, in {extras.preview}")


@click.command()
@click.argument("heatmaps_dir", type=click.Path())
@click.argument("dataset", type=click.Path())
@setting_option(evaluate_heatmaps, "--folds", "Monte-Carlo cross-validation folds.", type=int)
@setting_option(evaluate_heatmaps, "--iou", "IoU above which a component matches a lesion.", type=float)
@click.option("--boxes", "boxes_csv", type=click.Path(), help="CSV image,d0,h0,w0,d1,h1,w1 for box-only data (MaxIoU).")
@setting_option(evaluate_heatmaps, "--seed", "Seed of the cross-validation folds.", type=int)
@setting_option(
    evaluate_heatmaps,
    "--fill-holes/--no-fill-holes",
    "Binarize with each kept component's enclosed holes filled (3D; a component touching the volume's border is "
    "kept as it is), to tune TAU_PRIME and to score; the report records it and tomofield run --mask --thresholds "
    "REPORT follows it.",
)
@click.option(
    "--report", "-o", type=click.Path(), help="Write REPORT.json and REPORT.csv (default HEATMAPS_DIR/evaluation)."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier report of the same name.")
@friendly
def evaluate(heatmaps_dir: str, dataset: str, report: str | None, overwrite: bool, **o: Any) -> None:
    """Lesion-wise precision, recall, F1, Dice and balanced accuracy of a folder of heatmaps (paper A.7)."""
    from tomofield.report import report_paths, write_reports

    o = given(o)
    folds = o.get("folds", default_of(evaluate_heatmaps, "folds"))
    prefix = Path(report) if report else Path(heatmaps_dir) / "evaluation"
    for path in report_paths(prefix):  # before the work, the same names write_reports uses
        if path.exists() and not overwrite:
            raise InputError(f"report {str(path)!r} exists; pass --overwrite")
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
@setting_option(CompareSettings, "--device", "auto | cpu | cuda | cuda:N.")
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


def print_table(results: dict[str, dict[str, Any]], caption: str = "") -> None:
    """Mean +- std of each metric, one row per method."""
    from tomofield.report import summary_rows

    rows = summary_rows(results)
    metrics = [m for m in METRICS if any(m in r for r in rows)]
    table = Table(title="evaluation (paper A.7)", caption=caption)
    table.add_column("method")
    for m in metrics:
        table.add_column(m.replace("_", " "), justify="right")
    for r in rows:
        table.add_row(r["method"], *[f"{r[m]:.3f} ± {r[m + '_std']:.3f}" if m in r else "-" for m in metrics])
    out.print(table)


@click.command()
@click.argument("out_dir", type=click.Path())
@setting_option(write_dataset, "--n", "Number of volumes (half positive).", type=int)
@setting_option(write_dataset, "--size", "Volume side in voxels.", type=int)
@setting_option(write_dataset, "--seed", "Seed of the volumes.", type=int)
@setting_option(write_dataset, "--val-fraction", "Share of volumes in val.csv.", type=float)
@setting_option(
    write_dataset,
    "--background",
    "plain: normalised intensities on a cubic grid; realistic: a scanner's int16 unit and offset, texture, "
    "bias field, Rician noise, a grid keeping the field of view cubic under --spacing.",
    type=click.Choice(BACKGROUNDS),
)
@click.option(
    "--spacing",
    default=None,
    help="Voxel size in mm along (D, H, W), as D,H,W (e.g. 2.5,1,1 for thick slices).  [default: 1,1,1]",
)
@click.option(
    "--lesion-radius",
    default=None,
    help="Lesion sizes as LO,HI: each lesion's equivalent radius (3 V / 4 pi)^(1/3), measured from its mask, in "
    "voxels of the finest spacing (e.g. 8,10 for large lesions).  [default: the built-in sizes, 3-8 voxels of a "
    "48-voxel grid scaled with --size]",
)
@click.option(
    "--lesions",
    default=None,
    help="Lesions per positive: N, or LO,HI to draw from (e.g. 1 for a large-lesion set).  [default: 1,3; with "
    "--lesion-radius as many of 1-3 as fit]",
)
@click.option(
    "--lesion-contrast",
    default=None,
    help="Lesion brightness as LO,HI: each lesion 1 + C times as bright as the tissue around it, C drawn in this "
    "range (e.g. 0.35,0.7 for faint lesions).  [default: the built-in step, about 2-3 times as bright]",
)
@friendly
def synth(
    out_dir: str,
    spacing: str | None,
    lesion_radius: str | None,
    lesions: str | None,
    lesion_contrast: str | None,
    **o: Any,
) -> None:
    """Write a synthetic weakly supervised dataset (NIfTI images, masks, CSVs).

    synth.json beside the CSVs records the settings it was made with.
    """
    o = given(o)
    if spacing is not None:
        try:
            o["spacing"] = tuple(float(v) for v in spacing.split(","))
        except ValueError:
            raise InputError(f"--spacing {spacing!r} is not three numbers D,H,W (e.g. 2.5,1,1)") from None
    for flag, text, example in (
        ("lesion_radius", lesion_radius, "8,10"),
        ("lesion_contrast", lesion_contrast, "0.35,0.7"),
    ):
        if text is None:
            continue
        parts = text.split(",")
        try:
            o[flag] = tuple(float(v) for v in parts)
        except ValueError:
            parts = []
        if len(parts) != 2:
            raise InputError(f"--{flag.replace('_', '-')} {text!r} is not two numbers LO,HI (e.g. {example})")
    if lesions is not None:
        parts = lesions.split(",")
        try:
            counts = tuple(int(v) for v in parts)
        except ValueError:
            counts = ()
        if len(counts) not in (1, 2):
            raise InputError(f"--lesions {lesions!r} is not a count N or a range LO,HI of counts (e.g. 1 or 1,2)")
        o["n_lesions"] = counts[0] if len(counts) == 1 else counts
    n, size = o.get("n", default_of(write_dataset, "n")), o.get("size", default_of(write_dataset, "size"))
    with err.status(f"writing {n} volumes of {size}^3"):
        paths = write_dataset(out_dir, **o)
    paths = {**paths, "settings": Path(out_dir) / SYNTH_RECORD}
    out.print("wrote " + ", ".join(f"{k}: {v}" for k, v in paths.items()))


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
    """Train a slice encoder from volume-level labels (the paper's recipe)."""
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


@click.command()
@click.argument("name")
@click.argument("raw_dir", type=click.Path())
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(), help="Output dataset directory.")
@click.option("--seed", default=0, show_default=True, help="Seed of the patient-level train/validation split.")
@click.option("--val-fraction", default=0.2, show_default=True, help="Share of each class's patients in val.csv.")
@friendly
def prepare(name: str, raw_dir: str, out_dir: str, seed: int, val_fraction: float) -> None:
    """Turn a public dataset, as downloaded, into tomofield dataset CSVs (plugins register NAME)."""
    comp = plugins.get("dataset", name)
    if not Path(raw_dir).is_dir():
        raise InputError(f"raw dataset folder {raw_dir!r} does not exist or is not a folder")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"output {out_dir!r} is a file; give a new or empty folder for the dataset")
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise InputError(f"output directory {out_dir!r} is not empty; choose another")
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must be strictly between 0 and 1, got {val_fraction}")
    preparer = comp.factory()
    with err.status(f"preparing {name} from {raw_dir}"):
        paths = preparer.prepare(Path(raw_dir), Path(out_dir), seed=seed, val_fraction=val_fraction)
    out.print(f"{name}: " + ", ".join(f"{k}: {v}" for k, v in paths.items()))


@click.command("plugins")
def plugins_cmd() -> None:
    """List every registered component and the package it comes from."""
    table = Table(title="tomofield components")
    for col in ("kind", "name", "plugin", "source"):
        table.add_column(col, no_wrap=True)
    table.add_column("options")
    table.add_column("description")
    flags: dict[str, list[str]] = {}
    for hp in head_params():  # the spelling `tomofield run` gives each head's options
        for head in hp.heads:
            flags.setdefault(head, []).append(hp.flag)
    for comp in plugins.components():
        names = flags.get(comp.name, []) if comp.kind == "head" else [o.name for o in comp.options]
        table.add_row(comp.kind, comp.name, comp.plugin, comp.source, " ".join(sorted(names)), comp.description)
    out.print(table)
    for name, why in plugins.failed_plugins().items():
        err.print(Text.assemble((f"plugin {name} failed to load: ", "yellow"), why))


@click.command()
@click.option(
    "--output-dir", "-o", default="tomofield-demo", show_default=True, type=click.Path(), help="Folder of the outputs."
)
@click.option("--phantom", is_flag=True, help="Only the reconstruction sanity check on a ball phantom (sum head).")
@click.option(
    "--iterations",
    type=int,
    default=None,
    help=with_default("Training iterations.", default_of(TrainConfig, "iterations")),
)
@click.option(
    "--directions",
    "-L",
    type=int,
    default=None,
    help=with_default(
        f"Directions (phantom: {default_of(phantom_demo, 'directions')}).", default_of(DemoSettings, "directions")
    ),
)
@click.option(
    "--slices",
    "-M",
    type=int,
    default=None,
    help=with_default(
        f"Slices per direction (phantom: {default_of(phantom_demo, 'slices')}).", default_of(DemoSettings, "slices")
    ),
)
@setting_option(DemoSettings, "--seed", "Seed of the data, the training and the directions.", type=int)
@setting_option(DemoSettings, "--device", "auto | cpu | cuda | cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo's outputs.")
@friendly
def demo(output_dir: str, phantom: bool, overwrite: bool, **o: Any) -> None:
    """Synthesise data, train from volume labels, reconstruct held-out lesions (a few CPU minutes)."""
    o = given(o)
    if phantom:
        o.pop("seed", None)
        o.pop("iterations", None)
        phantom_demo(Path(output_dir), slice_progress, out, overwrite=overwrite, **o)
        return
    full_demo(Path(output_dir), DemoSettings(**o), overwrite, slice_progress, fit_with_progress, out)
