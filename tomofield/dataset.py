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

    @property
    def name(self) -> str:
        """The first image's file name without its NIfTI suffix."""
        n = self.images[0].name
        for suffix in (".nii.gz", ".nii"):
            if n.lower().endswith(suffix):
                return n[: -len(suffix)]
        return n


#: How to save a table so that tomofield reads it.
SAVE_AS = "save it as 'CSV UTF-8' (in a spreadsheet program: Save As, CSV UTF-8 (comma delimited))"


def read_csv_text(path: str | Path, what: str = "CSV") -> str:
    """The text of a CSV file: UTF-8, a byte-order mark dropped; other encodings and binary files refused."""
    path = Path(path)
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
    seen: dict[tuple[Path, ...], int] = {}  # images -> row
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
        if task == "classification" and label not in (0.0, 1.0):  # "any" skips this check
            raise InputError(f"{where}: label {row['label']!r} must be 0 or 1")
        if not math.isfinite(label):
            raise InputError(f"{where}: label {row['label']!r} is not finite")
        mask = _resolve(root, row["mask"]) if row.get("mask") else None
        if require_files:
            for f in (*images, *([mask] if mask else [])):
                if not f.is_file():
                    raise InputError(f"{where}: file {str(f)!r} does not exist")
        key = images
        if key in seen:
            raise InputError(f"{where}: duplicate of row {seen[key]} ({row['image']})")
        seen[key] = i
        cases.append(Case(images, label, mask, i))
    if not cases:
        raise InputError(f"{path}: no rows")
    return cases


def dataset_hash(path: str | Path, cases: list[Case]) -> str:
    """SHA-256 over the CSV's bytes and each referenced file's name and size."""
    h = hashlib.sha256(Path(path).read_bytes())
    for c in cases:
        for f in (*c.images, *([c.mask] if c.mask else [])):
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
    return [Case((f,), 0.0, None, i) for i, f in enumerate(files, start=1)]
