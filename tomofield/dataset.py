"""Dataset CSVs: ``image,label[,mask]`` rows, paths relative to the CSV's folder.

``image`` may list several files separated by ``;`` (channels of one volume). Labels are
0/1 for classification (``task="classification"``) or any finite number for regression.

CSVs as spreadsheet programs save them are read: UTF-8 with or without a byte-order mark,
any line ending, and separated by commas or, when the header has no comma, by semicolons or
tabs (the "CSV" of locales with a decimal comma). Other encodings, workbooks and binary files
are refused with a message saying how to save the file instead; rows with only empty cells
(a spreadsheet's trailing rows) are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from tomofield.errors import InputError


@dataclass(frozen=True)
class Case:
    """One row of a dataset CSV (``row`` is the 1-based line number in the file)."""

    images: tuple[Path, ...]
    label: float
    mask: Path | None
    row: int
    #: the case's identifier where the files do not give it (nnU-Net's ``CASE`` of ``CASE_0000.nii.gz``)
    case_id: str | None = None

    @property
    def name(self) -> str:
        """The case's identifier, else the first image's file name without its NIfTI suffix."""
        if self.case_id is not None:
            return self.case_id
        return strip_volume_suffix(self.images[0].name)


def strip_volume_suffix(name: str) -> str:
    """``name`` without ``.nii.gz`` / ``.nii`` (any case)."""
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


#: How to save a table so that tomofield reads it.
SAVE_AS = "save it as 'CSV UTF-8' (in a spreadsheet program: Save As, CSV UTF-8 (comma delimited))"


def read_csv_text(path: str | Path, what: str = "CSV") -> str:
    """The text of a CSV file: UTF-8, a byte-order mark dropped; other encodings and binary files refused."""
    from tomofield.io.files import check_regular_file  # here: the dataset's module stays light to import

    path = check_regular_file(path, what)  # a FIFO or a device: reading would wait or never end
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{what} {str(path)!r} is UTF-16 text (a spreadsheet's 'Unicode Text'), not UTF-8; {SAVE_AS}")
    elif data.startswith(b"PK\x03\x04"):
        raise InputError(f"{what} {str(path)!r} is a spreadsheet workbook (.xlsx or .ods), not CSV text; {SAVE_AS}")
    elif data.startswith(b"\x1f\x8b") or b"\x00" in data[:4096]:
        raise InputError(
            f"{what} {str(path)!r} is a binary file (compressed, or an image), not CSV text; expected rows "
            "such as image,label[,mask]"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{what} {str(path)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); it was saved "
            f"in another encoding, such as Windows-1252 or Latin-1: {SAVE_AS}"
        ) from None


def csv_rows(path: str | Path, what: str = "CSV") -> csv.DictReader:
    """A ``csv.DictReader`` over a CSV as spreadsheets save it (see the module's docstring)."""
    text = read_csv_text(path, what)
    header = text.lstrip("\r\n").splitlines()[0] if text.strip() else ""
    delimiter = ","
    if "," not in header:
        delimiter = ";" if ";" in header else "\t" if "\t" in header else ","
    return csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)


def _resolve(root: Path, name: str) -> Path:
    """``name`` in the CSV's folder; Windows separators (``images\\a.nii.gz``) read as ``/`` when only that exists."""
    path = root / name
    if "\\" in name and os.sep == "/" and not path.exists() and (root / name.replace("\\", "/")).exists():
        return root / name.replace("\\", "/")
    return path


def _identity(path: Path) -> object:
    """What names one file however it is spelled: its device and inode where it exists (through
    ``..``, symbolic and hard links), else its resolved absolute path."""
    try:
        st = path.stat()
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino)


def read_dataset(path: str | Path, task: str = "classification", require_files: bool = True) -> list[Case]:
    """Parse and validate a dataset CSV; errors name the file, the row and the value."""
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{str(path)!r} is a folder; this needs each volume's label: give a dataset CSV with a header "
            "image,label[,mask]: one row per volume, image a path relative to the CSV (channels joined by ';'), "
            "label 1 if the volume has a lesion and 0 if not, e.g.\n  image,label\n  scans/case01.nii.gz,1\n  "
            "scans/case02.nii.gz,0\n(docs/datasets.md has the format; tomofield run takes a folder as it is)"
        )
    if not path.is_file():
        from tomofield.io.files import check_regular_file

        check_regular_file(path, "dataset CSV")  # a FIFO or a device: not "missing"
        raise InputError(f"dataset CSV {str(path)!r} does not exist")
    root = path.parent
    reader = csv_rows(path, "dataset CSV")
    cols = [c.strip() for c in (reader.fieldnames or [])]
    missing = {"image", "label"} - set(cols)
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(sorted(missing))}; found {cols or 'no header'} "
            "(expected image,label[,mask])"
        )
    cases: list[Case] = []
    seen: dict[tuple[object, ...], tuple[int, str]] = {}  # the images' identities -> row, as written
    for i, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        where = f"{path}, row {i}"
        if not row.get("image"):
            raise InputError(f"{where}: empty image")
        images = tuple(_resolve(root, p.strip()) for p in row["image"].split(";") if p.strip())
        try:
            label = float(row["label"])
        except ValueError:
            hint = ""
            with suppress(ValueError):
                if row["label"].count(",") == 1:
                    hint = f" (write decimals with a point: {float(row['label'].replace(',', '.'))!r})"
            raise InputError(f"{where}: label {row['label']!r} is not a number{hint}") from None
        if not math.isfinite(label):
            raise InputError(f"{where}: label {row['label']!r} is not finite; a label is a finite number")
        if task == "classification" and label not in (0.0, 1.0):  # "any" skips this check
            raise InputError(f"{where}: label {row['label']!r} must be 0 or 1")
        mask = _resolve(root, row["mask"]) if row.get("mask") else None
        if require_files:
            from tomofield.io.readers import is_dicom_folder  # here: the dataset's module stays light to import

            for f in (*images, *([mask] if mask else [])):
                if f.is_dir() and not is_dicom_folder(f):  # a DICOM series: read as `tomofield run FOLDER` reads it
                    raise InputError(
                        f"{where}: {str(f)!r} is a folder but not a DICOM series; a row names NIfTI files "
                        "(or a folder of one DICOM series)"
                    )
                if not f.exists():
                    raise InputError(f"{where}: file {str(f)!r} does not exist")
        key = tuple(_identity(f) for f in images)
        if key in seen:
            first, text = seen[key]
            same = "the same file" if len(images) == 1 else "the same files"
            raise InputError(
                f"{where}: duplicate of row {first}: image {row['image']!r} is {same} as row {first}'s ({text!r}), "
                f"whatever their labels; list each scan once (remove row {i} or row {first})"
            )
        seen[key] = (i, row["image"])
        cases.append(Case(images, label, mask, i, _nnunet_case(images)))
    if not cases:
        raise InputError(f"{path}: no rows")
    return cases


def _nnunet_case(images: Sequence[Path]) -> str | None:
    """``CASE`` when ``images`` are exactly nnU-Net's channel files ``CASE_0000``, ``CASE_0001``, ... in order."""
    grouped = nnunet_channels_or_none(images)
    if grouped is None or len(grouped) != 1:
        return None
    case, files = next(iter(grouped.items()))
    return case if list(files) == list(images) else None


def nnunet_channels_or_none(files: Sequence[Path]) -> dict[str, tuple[Path, ...]] | None:
    """:func:`nnunet_channels`, or ``None`` where the channels differ between cases (no error)."""
    try:
        return nnunet_channels(files)
    except InputError:
        return None


def dataset_hash(path: str | Path, cases: list[Case]) -> str:
    """SHA-256 over the CSV's bytes and each referenced file's name and size (a DICOM series folder's: each of
    its files')."""
    h = hashlib.sha256(Path(path).read_bytes())
    for c in cases:
        for f in (*c.images, *([c.mask] if c.mask else [])):
            if f.is_dir():
                h.update(f"{f.name}/".encode())
                for g in sorted(p for p in f.iterdir() if p.is_file()):
                    h.update(f"{g.name}:{g.stat().st_size};".encode())
                continue
            h.update(f"{f.name}:{f.stat().st_size};".encode())
    return h.hexdigest()


#: File endings of the volumes a folder run takes.
VOLUME_SUFFIXES = (".nii.gz", ".nii")


def is_volume_list(inputs: Sequence[str]) -> bool:
    """Whether ``inputs`` name several volumes (a folder, or a glob pattern), not the channels of one."""
    if len(inputs) != 1:
        return False
    path = Path(inputs[0])  # a file named like a pattern ("scan[1].nii.gz") is that file
    return path.is_dir() or (not path.exists() and any(c in inputs[0] for c in "*?["))


def folder_cases(source: str) -> list[Case]:
    """The volumes of a folder (every ``.nii``/``.nii.gz`` in it, by name) or of a glob pattern, one case each.

    Raises:
        InputError: nothing matches, naming what was looked for.
    """
    import glob

    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
        what = f"folder {source!r} holds no NIfTI volume (.nii or .nii.gz)"
    else:
        files = sorted(Path(p) for p in glob.glob(source) if Path(p).is_file())
        what = f"pattern {source!r} matches no file"
    if not files:
        raise InputError(what)
    grouped = nnunet_channels(files)
    if grouped is not None:
        return [Case(images, 0.0, None, i, name) for i, (name, images) in enumerate(grouped.items(), start=1)]
    return [Case((f,), 0.0, None, i) for i, f in enumerate(files, start=1)]


#: nnU-Net's file name of one channel of a case: ``CASE_XXXX`` and the file ending.
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def nnunet_channels(files: Sequence[Path]) -> dict[str, tuple[Path, ...]] | None:
    """Files named as nnU-Net names its images (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``: the
    channels of ``CASE``), grouped by case in channel order; ``None`` when not every file is so named.

    Raises:
        InputError: the cases do not all have the same channels (``0000`` up to the number of
            channels), naming the first that differs.
    """
    parsed = [_NNUNET_CHANNEL.match(strip_volume_suffix(f.name)) for f in files]
    if not files or any(m is None for m in parsed):
        return None
    by_case: dict[str, dict[int, Path]] = {}
    for f, m in zip(files, parsed, strict=True):
        assert m is not None
        by_case.setdefault(m["case"], {})[int(m["channel"])] = f
    expected = list(range(max(len(c) for c in by_case.values())))
    for case, channels in sorted(by_case.items()):
        if sorted(channels) != expected:
            have = ", ".join(f"{c:04d}" for c in sorted(channels))
            want = ", ".join(f"{c:04d}" for c in expected)
            raise InputError(
                f"case {case!r} has channel file(s) {have}; in nnU-Net's layout every case has the same channels "
                f"({want}): {case}_0000.nii.gz, {case}_0001.nii.gz, ..."
            )
    return {case: tuple(channels[c] for c in expected) for case, channels in sorted(by_case.items())}


def is_nnunet_dataset(path: str | Path) -> bool:
    """Whether ``path`` is an nnU-Net raw dataset folder: ``dataset.json`` beside ``imagesTr`` or ``imagesTs``."""
    path = Path(path)
    return (path / "dataset.json").is_file() and ((path / "imagesTr").is_dir() or (path / "imagesTs").is_dir())


def nnunet_cases(
    path: str | Path, part: str = "imagesTr", labels: dict[str, float] | None = None, labels_from_masks: bool = False
) -> list[Case]:
    """The cases of an nnU-Net raw dataset's ``imagesTr`` (masks from ``labelsTr``) or ``imagesTs``.

    Args:
        path: the dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``).
        part: ``imagesTr`` or ``imagesTs``.
        labels: volume-level labels by case identifier (a case missing from them is refused).
        labels_from_masks: with no ``labels``, a case is positive when its label map in
            ``labelsTr`` has a nonzero voxel (only when asked: a label map is not a volume label
            in every dataset).

    Without ``labels`` and ``labels_from_masks`` every label is 0 (inference only).

    Raises:
        InputError: no dataset.json, an unreadable one, a file ending other than NIfTI's, a
            missing case in ``labels``, or a missing label map.
    """
    import json

    path = Path(path)
    try:
        meta = json.loads((path / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{str(path / 'dataset.json')!r} is not a readable nnU-Net dataset.json: {exc}") from exc
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending.lower() not in VOLUME_SUFFIXES:
        raise InputError(f"{str(path)!r}: file_ending {ending!r}; tomofield reads nnU-Net datasets of NIfTI files")
    folder = path / part
    if not folder.is_dir():
        raise InputError(f"{str(path)!r} has no {part}/ folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(ending.lower()))
    grouped = nnunet_channels(files)
    if not grouped:
        raise InputError(f"{str(folder)!r} holds no files named CASE_XXXX{ending}")
    channels = meta.get("channel_names") or meta.get("modality") or {}
    if channels and len(channels) != len(next(iter(grouped.values()))):
        raise InputError(
            f"{str(path)!r}: dataset.json names {len(channels)} channel(s), the files have "
            f"{len(next(iter(grouped.values())))}"
        )
    cases = []
    for i, (name, images) in enumerate(grouped.items(), start=1):
        mask = path / "labelsTr" / f"{name}{ending}" if part == "imagesTr" else None
        if mask is not None and not mask.is_file():
            mask = None
        if labels is not None:
            if name not in labels:
                raise InputError(f"no label for case {name!r} of {str(folder)!r} in the labels given")
            label = labels[name]
        elif labels_from_masks:
            if mask is None:
                raise InputError(f"case {name!r} has no label map {name}{ending} in labelsTr/ to take its label from")
            label = float(_any_nonzero(mask))
        else:
            label = 0.0
        cases.append(Case(images, label, mask, i, name))
    return cases


def _any_nonzero(path: Path) -> bool:
    import nibabel as nib
    import numpy as np

    image = nib.load(path)
    return bool(np.any(np.asarray(image.dataobj)))  # type: ignore[attr-defined]  # a NIfTI image (file_ending)


def read_labels(path: str | Path) -> dict[str, float]:
    """Volume-level labels from a CSV with columns ``case,label`` (a case identifier, 0 or 1)."""
    reader = csv_rows(path, "labels CSV")
    cols = [c.strip() for c in (reader.fieldnames or [])]
    if "case" not in cols or "label" not in cols:
        raise InputError(f"{path}: a labels CSV needs the columns case,label; found {cols or 'no header'}")
    labels: dict[str, float] = {}
    for i, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        if row["label"] not in ("0", "1", "0.0", "1.0"):
            raise InputError(f"{path}, row {i}: label must be 0 or 1, got {row['label']!r}")
        if row["case"] in labels:
            raise InputError(f"{path}, row {i}: case {row['case']!r} is listed twice")
        labels[row["case"]] = float(row["label"])
    if not labels:
        raise InputError(f"{path}: no rows")
    return labels


def folder_dataset(
    path: str | Path, labels: dict[str, float] | None = None, labels_from_masks: bool = False
) -> list[Case]:
    """The labelled cases of a folder: an nnU-Net raw dataset's ``imagesTr`` (masks from
    ``labelsTr``), or a folder of volumes (nnU-Net-named channels grouped), for training.

    Labels come from ``labels`` (by case identifier: the file name without its NIfTI
    suffix, or nnU-Net's ``CASE``), or, for an nnU-Net dataset and only when asked, from
    whether each case's label map is empty (``labels_from_masks``).

    Raises:
        InputError: no labels given, saying how to give them; a case without a label.
    """
    path = Path(path)
    nnunet = is_nnunet_dataset(path)
    if labels is None and not (labels_from_masks and nnunet):
        how = (
            "--labels FILE (a CSV case,label: one row per case, 1 if it has a lesion, 0 if not) or, to call a case "
            "positive when its label map in labelsTr/ is not empty, --labels-from-masks"
            if nnunet
            else "--labels FILE (a CSV case,label: the case is the file name without .nii.gz, or nnU-Net's CASE of "
            "CASE_0000.nii.gz), or give a dataset CSV instead of the folder, with a header image,label[,mask]: one "
            "row per volume, image a path relative to the CSV (channels joined by ';'), label 1 if the volume has a "
            "lesion and 0 if not, e.g.\n  image,label\n  scans/case01.nii.gz,1\n  scans/case02.nii.gz,0\n"
            "(docs/your-data.md)"
        )
        raise InputError(f"{str(path)!r} is a folder of images without volume labels; give them with {how}")
    if labels_from_masks and not nnunet:
        raise InputError(
            f"--labels-from-masks takes the labels from an nnU-Net dataset's labelsTr/; {str(path)!r} has no "
            "dataset.json with imagesTr/"
        )
    if nnunet:
        return nnunet_cases(path, "imagesTr", labels, labels_from_masks)
    cases = folder_cases(str(path))
    assert labels is not None
    missing = [c.name for c in cases if c.name not in labels]
    if missing:
        raise InputError(f"no label for case(s) {', '.join(missing[:5])} of {str(path)!r} in the labels given")
    return [Case(c.images, labels[c.name], None, c.row, c.case_id) for c in cases]


def write_dataset_csv(path: str | Path, cases: Sequence[Case]) -> Path:
    """A dataset CSV of ``cases`` (absolute paths, channels joined by ``;``), written atomically."""
    from tomofield.io import atomic_write

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["image", "label", "mask"])
            for c in cases:
                label = int(c.label) if float(c.label).is_integer() else c.label
                out.writerow([";".join(str(p.resolve()) for p in c.images), label, c.mask.resolve() if c.mask else ""])

    return atomic_write(path, write, overwrite=True)
