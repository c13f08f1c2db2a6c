"""Writing a dataset: cases as NIfTI, the CSVs, the record of its settings, and the settings' checks."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import numpy as np

from tomofield.synth.case import make_case, scan_grid
from tomofield.synth.lesions import _count_range, _lesion_problems, _tuple
from tomofield.synth.settings import BACKGROUNDS, LAYOUTS, LESION_RADIUS_UNIT, LIMITS


def _save(path: Path, array_dhw: np.ndarray, spacing: Sequence[float]) -> None:
    """Atomically write a (D, H, W) array as NIfTI (stored W, H, D; affine diag(sW, sH, sD))."""
    import nibabel as nib

    from tomofield.io import atomic_write

    path = Path(path)
    dtype = (
        np.uint8 if array_dhw.dtype in (np.bool_, np.uint8) else np.int16 if array_dhw.dtype == np.int16 else np.float32
    )
    s_d, s_h, s_w = (float(s) for s in spacing)
    affine = np.diag([s_w, s_h, s_d, 1.0])
    nii = nib.Nifti1Image(np.ascontiguousarray(array_dhw.astype(dtype).transpose(2, 1, 0)), affine)
    nii.set_data_dtype(dtype)
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    nii.header.set_xyzt_units("mm")
    atomic_write(path, lambda tmp: nib.save(nii, str(tmp)))


def _write_csv(path: Path, rows: list[tuple[str, int, str]]) -> None:
    """Atomically write an ``image,label,mask`` CSV (UTF-8)."""
    from tomofield.io import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "label", "mask"])
            writer.writerows(rows)

    atomic_write(path, write)


#: The file beside a dataset's CSVs that records how :func:`write_dataset` made it.
RECORD = "synth.json"


def _write_record(path: Path, settings: dict) -> None:
    """Atomically write the settings of :func:`write_dataset` as JSON, with the generator and its version."""
    import json
    from importlib.metadata import PackageNotFoundError, version

    from tomofield.io import atomic_write

    try:
        tomofield_version = version("tomofield")
    except PackageNotFoundError:  # a source tree that is not installed
        tomofield_version = "unknown"

    def plain(v):
        return (
            [plain(x) for x in v] if isinstance(v, (tuple, list, np.ndarray)) else v.item() if hasattr(v, "item") else v
        )

    record = {
        "generator": "tomofield.synth.write_dataset",
        "tomofield": tomofield_version,
        **{k: plain(v) for k, v in settings.items()},
        "lesion_radius_unit": LESION_RADIUS_UNIT,
    }
    text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_settings(
    *,
    n: int,
    size: int,
    seed: int,
    spacing: Sequence[float],
    val_fraction: float,
    background: str = "plain",
    lesion_radius: Sequence[float] | None = None,
    n_lesions: int | Sequence[int] | None = None,
    lesion_contrast: Sequence[float] | None = None,
    layout: str = "tomofield",
) -> None:
    """Refuse settings :func:`write_dataset` cannot honour, naming the value and the valid range.

    Lesion sizes are checked against the smallest grid the settings give (``realistic``
    grids vary per case: :func:`scan_grid`) and the thinnest body (:func:`lesion_limits`).
    """
    from tomofield.errors import InputError
    from tomofield.protocols import SEED_MAX

    def integer(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    (n_lo, n_hi), (s_lo, s_hi), (mm_lo, mm_hi) = LIMITS["n"], LIMITS["size"], LIMITS["spacing"]
    problems = []
    if not integer(n) or not n_lo <= n <= n_hi:
        problems.append(f"n={n!r} (valid: an integer in {n_lo}..{n_hi}; half the cases are positive)")
    if not integer(size) or not s_lo <= size <= s_hi:
        problems.append(f"size={size!r} (valid: an integer in {s_lo}..{s_hi} voxels)")
    if not integer(seed) or not 0 <= seed <= SEED_MAX:
        problems.append(f"seed={seed!r} (valid: an integer in 0..{SEED_MAX})")
    try:
        sp = [float(x) for x in spacing]
    except (TypeError, ValueError):
        sp = []
    if len(sp) != 3 or not all(mm_lo <= x <= mm_hi for x in sp):
        problems.append(
            f"spacing={tuple(spacing) if isinstance(spacing, (list, tuple)) else spacing!r} "
            f"(valid: three voxel sizes in {mm_lo}..{mm_hi} mm)"
        )
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
        problems.append(f"val_fraction={val_fraction!r} (valid: a number strictly between 0 and 1)")
    if background not in BACKGROUNDS:
        problems.append(f"background={background!r} (valid: {', '.join(BACKGROUNDS)})")
    if layout not in LAYOUTS:
        problems.append(f"layout={layout!r} (valid: {', '.join(LAYOUTS)})")
    c_lo, c_hi = _count_range(n_lesions)
    if c_lo is None or c_hi is None or not LIMITS["n_lesions"][0] <= c_lo <= c_hi <= LIMITS["n_lesions"][1]:
        problems.append(
            f"n_lesions={_tuple(n_lesions)} (valid: a count N or a range (LO, HI) of counts per positive, "
            f"{LIMITS['n_lesions'][0]} <= LO <= HI <= {LIMITS['n_lesions'][1]})"
        )
    if lesion_contrast is not None:
        k_lo, k_hi = LIMITS["lesion_contrast"]
        try:
            c = [float(v) for v in lesion_contrast]
        except (TypeError, ValueError):
            c = []
        if len(c) != 2 or not all(np.isfinite(c)) or not k_lo <= c[0] <= c[1] <= k_hi:
            problems.append(
                f"lesion_contrast={_tuple(lesion_contrast)} (valid: (LO, HI) with {k_lo:g} <= LO <= HI <= {k_hi:g}; "
                "0.5 is 50 % brighter than the surroundings)"
            )
    if not problems:  # lesion sizes against a valid grid
        shape = _smallest_grid(size, sp, background)
        grid = f"{'x'.join(map(str, shape))} voxels of {'x'.join(f'{v:g}' for v in sp)} mm"
        if background == "realistic" and shape != (size,) * 3:
            grid += f" (the smallest case grid of size={size})"
        problems += _lesion_problems(shape, sp, lesion_radius, n_lesions, grid=grid)
    if problems:
        raise InputError("cannot synthesise this dataset: " + "; ".join(problems))


def _smallest_grid(size: int, spacing: Sequence[float], background: str = "plain") -> tuple[int, int, int]:
    """The smallest (D, H, W) grid a case of :func:`write_dataset` can have (``realistic``: :func:`scan_grid`'s least)."""
    if background != "realistic":
        return (int(size),) * 3
    sp = np.asarray(spacing, dtype=float)
    return cast("tuple[int, int, int]", tuple(int(v) for v in np.maximum(np.rint(size * sp.min() / sp * 0.85), 8)))


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    n: int = 40,
    size: int = 48,
    seed: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    val_fraction: float = 0.25,
    background: str = "plain",
    lesion_radius: tuple[float, float] | None = None,
    n_lesions: int | tuple[int, int] | None = None,
    lesion_contrast: tuple[float, float] | None = None,
    layout: str = "tomofield",
) -> dict[str, Path]:
    """Write ``n`` cases (half positive) as NIfTI plus ``dataset/train/val`` CSVs and ``synth.json``.

    Args:
        out_dir: new or empty directory; a non-empty one is refused.
        n: number of cases (at least 4).
        size: grid size along each axis.
        seed: seed of the case order, the contents and the split.
        spacing: voxel size in mm per (D, H, W) axis.
        val_fraction: fraction of each class held out for validation.
        background: ``plain`` (normalised intensities, a cubic grid) or ``realistic``
            (int16 in a scanner's unit and offset, texture, bias field, Rician noise, a grid
            that keeps the field of view cubic under anisotropic spacing; the module's doc).
        lesion_radius: ``(lo, hi)``: every lesion's equivalent radius ``(3 V / 4 pi)^(1/3)``
            as measured from its mask, in voxels of the finest spacing (:func:`make_case`);
            ``(8, 10)`` gives lesions of 8 to 10 voxels' radius, one per positive on the
            default grid. Default: the built-in sizes (3-8 voxels of a 48-voxel grid, scaled
            with the grid), the very datasets of earlier versions.
        n_lesions: lesions per positive, a count or an inclusive range (default 1 to 3; with
            ``lesion_radius``, 1 to as many as fit, at most 3).
        lesion_contrast: ``(lo, hi)``: each lesion ``1 + c`` times as bright as the tissue
            around it, ``c`` drawn in this range (:func:`make_case`; ``(0.35, 0.7)``: faint
            lesions). Default: the built-in step, about 2-3 times as bright.
        layout: ``tomofield`` (``images/``, ``masks/``) or ``nnunet`` (:data:`LAYOUTS`: nnU-Net's
            raw dataset, ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``,
            ``dataset.json``, with the volume labels in ``labels.csv`` as ``case,label``); the
            CSVs are written either way.

    The settings are recorded in ``synth.json`` beside the CSVs (the generator, its version
    and every argument but ``out_dir``), so that the dataset says how it was made.

    Returns:
        Paths of the CSVs, keyed ``"dataset"``, ``"train"`` and ``"val"``.

    Raises:
        InputError: a setting out of range (:func:`check_settings`; lesions too large for the
            grid name the largest that fits), ``out_dir`` not an empty folder, a file or
            under one, or not writable (full disk, permissions); what was written is removed
            again.
    """
    from tomofield.errors import InputError
    from tomofield.io import check_output_path, write_error

    out = Path(out_dir)
    settings: dict[str, Any] = {
        "n": n,
        "size": size,
        "seed": seed,
        "spacing": spacing,
        "val_fraction": val_fraction,
        "background": background,
        "lesion_radius": lesion_radius,
        "n_lesions": n_lesions,
        "lesion_contrast": lesion_contrast,
        "layout": layout,
    }
    check_settings(**settings)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {str(out)!r} is a file; give a new or empty folder for the dataset")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"output directory {str(out)!r} is not empty; choose another")
    check_output_path(out, folder=True)  # every command's output checks: under a file, unwritable, too long a name
    made = [p for p in (*reversed(out.parents), out) if not p.exists()]
    try:
        paths = _write_cases(
            out, n, size, seed, spacing, val_fraction, background, lesion_radius, n_lesions, lesion_contrast, layout
        )
        _write_record(out / RECORD, settings)
        return paths
    except BaseException as exc:
        for p in [*sorted(out.rglob("*"), key=lambda q: len(q.parts), reverse=True), *reversed(made)]:
            with suppress(OSError):
                if p.is_dir():
                    p.rmdir()
                else:
                    p.unlink()
        if isinstance(exc, OSError):
            raise write_error(out, exc) from exc
        raise


def _write_cases(
    out: Path,
    n: int,
    size: int,
    seed: int,
    spacing: Sequence[float],
    val_fraction: float,
    background: str,
    lesion_radius: tuple[float, float] | None = None,
    n_lesions: int | tuple[int, int] | None = None,
    lesion_contrast: tuple[float, float] | None = None,
    layout: str = "tomofield",
) -> dict[str, Path]:
    """The work of :func:`write_dataset` in a checked ``out`` folder."""
    lesions: dict[str, Any] = {}  # only what was given: the default call is the one earlier versions made
    if lesion_radius is not None:
        lesions["lesion_radius"] = tuple(float(v) for v in lesion_radius)
    if n_lesions is not None:  # negatives draw them too (unrendered), as their positive twins
        lesions["n_lesions"] = tuple(int(v) for v in n_lesions) if isinstance(n_lesions, (tuple, list)) else n_lesions
    if lesion_contrast is not None:
        lesions["lesion_contrast"] = tuple(float(v) for v in lesion_contrast)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    scanner = np.random.default_rng([seed, n, 1])  # the dataset's unit and offset
    gain0, offset0 = float(np.exp(scanner.uniform(np.log(50), np.log(3000)))), float(scanner.uniform(-1024, 500))
    nnunet = layout == "nnunet"
    images, masks = ("imagesTr", "labelsTr") if nnunet else ("images", "masks")
    (out / images).mkdir(parents=True, exist_ok=True)
    (out / masks).mkdir(exist_ok=True)
    width = max(3, len(str(n - 1)))
    rows = []
    for i, label in enumerate(labels):
        case_rng = np.random.default_rng([seed, i])
        if background == "realistic":
            shape = scan_grid(size, spacing, case_rng)
            scan = (gain0 * float(case_rng.uniform(0.6, 1.6)), offset0)
        else:
            shape, scan = (size,) * 3, None
        image, mask = make_case(shape, positive=bool(label), rng=case_rng, spacing=spacing, scan=scan, **lesions)
        case = f"case_{i:0{width}d}"
        image_name = f"{case}_0000.nii.gz" if nnunet else f"{case}.nii.gz"
        _save(out / images / image_name, image, spacing)
        _save(out / masks / f"{case}.nii.gz", mask, spacing)
        rows.append((f"{images}/{image_name}", int(label), f"{masks}/{case}.nii.gz"))
    val: set[int] = set()
    for c in (0, 1):
        members = np.flatnonzero(labels == c)
        k = min(max(1, round(val_fraction * len(members))), len(members) - 1)
        val.update(int(i) for i in rng.permutation(members)[:k])
    paths = {key: out / f"{key}.csv" for key in ("dataset", "train", "val")}
    _write_csv(paths["dataset"], rows)
    _write_csv(paths["train"], [r for i, r in enumerate(rows) if i not in val])
    _write_csv(paths["val"], [r for i, r in enumerate(rows) if i in val])
    if nnunet:
        _write_nnunet_meta(out, [(Path(r[2]).name[: -len(".nii.gz")], r[1]) for r in rows])
    return paths


def _write_nnunet_meta(out: Path, labels: list[tuple[str, int]]) -> None:
    """nnU-Net's ``dataset.json`` (one channel, background and lesion) and the volume labels, ``labels.csv``."""
    import json

    from tomofield.io import atomic_write

    meta = {
        "channel_names": {"0": "image"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(labels),
        "file_ending": ".nii.gz",
        "name": "tomofield synth",
    }
    atomic_write(out / "dataset.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["case", "label"])
            writer.writerows(labels)

    atomic_write(out / "labels.csv", write)
