"""Dataset CSVs: ``image,label[,mask]`` rows, paths relative to the CSV's folder.

``image`` may list several files separated by ``;`` (channels of one volume). Labels are
0/1 for classification (``task="classification"``) or any finite number for regression.
"""

from __future__ import annotations

import csv
import hashlib
import math
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


def read_dataset(path: str | Path, task: str = "classification", require_files: bool = True) -> list[Case]:
    """Parse and validate a dataset CSV; errors name the file, the row and the value."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset CSV {str(path)!r} does not exist")
    root = path.parent
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = {"image", "label"} - set(cols)
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; found {cols or 'no header'} "
                "(expected image,label[,mask])"
            )
        cases, seen = [], {}
        for i, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path}, row {i}"
            if not row.get("image"):
                raise InputError(f"{where}: empty image")
            images = tuple(root / p.strip() for p in row["image"].split(";") if p.strip())
            try:
                label = float(row["label"])
            except ValueError:
                raise InputError(f"{where}: label {row['label']!r} is not a number") from None
            if task == "classification" and label not in (0.0, 1.0):  # "any" skips this check
                raise InputError(f"{where}: label {row['label']!r} must be 0 or 1")
            if not math.isfinite(label):
                raise InputError(f"{where}: label {row['label']!r} is not finite")
            mask = root / row["mask"] if row.get("mask") else None
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
