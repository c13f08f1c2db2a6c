"""What every reader shares: the patient-level split, intensity normalisation, output writing.

Output layout of ``tomofield prepare`` (every path in a CSV is relative to that CSV)::

    OUT_DIR/images/<name>.nii.gz   the preprocessed volume, channels last when C > 1
    OUT_DIR/masks/<name>.nii.gz    uint8 lesion mask on the same grid, where one exists
    OUT_DIR/dataset.csv            image,label,mask for every volume
    OUT_DIR/train.csv, val.csv     the same rows, split by patient
    OUT_DIR/cases.csv              name,patient,label,split,source: where each volume came from
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomofield.encoders import DEFAULT_ENCODER
from tomofield.errors import InputError
from tomofield.io import atomic_write, save_nifti

#: ``progress(done, total, name)``; readers call it after each volume when given.
Progress = Callable[[int, int, str], None]

RECIPE_BASE: dict[str, object] = {
    # Paper, A.4: ResNet-10-T, ImageNet weights, frozen batch-norm, Adam at 5e-5 (cosine to 1e-7),
    # B = 2 volumes (one positive, one negative), M_train = 120 slices of 224 x 224.
    "encoder": DEFAULT_ENCODER,
    "norm": "frozen-bn",
    "pretrained": True,
    "lr": 5e-5,
    # Paper, A.6: every slice takes its volume's label; scale and translation jitter of 0.3,
    # an affine intensity change y = a x + b with a, b in (-0.3, 0.3)
    "objective": "slice",
    "scale_jitter": 0.3,
    "translation": 0.3,
    "intensity_jitter": 0.3,
    "batch_volumes": 2,
    "slices_per_volume": 120,
    "slice_size": 224,
    # Not from the paper: validating and checkpointing every 100 of 10^5 steps would cost more
    # than the training itself.
    "val_every": 2500,
    "checkpoint_every": 2500,
}


def recipe(iterations: int) -> dict[str, object]:
    """The paper's training settings with a dataset's number of iterations."""
    return {**RECIPE_BASE, "iterations": iterations}


@dataclass
class Entry:
    """One written volume, before the split decides where it goes."""

    name: str
    patient: str
    label: int
    image: str  # relative to the output folder
    mask: str | None
    source: str
    force_val: bool = False


def check_val_fraction(val_fraction: float) -> float:
    f = float(val_fraction)
    if not 0.0 <= f < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    return f


def split_patients(
    labels: Mapping[str, int], *, seed: int, val_fraction: float, force_val: Iterable[str] = ()
) -> set[str]:
    """The validation patients, drawn per label class so both classes keep their share.

    Each class of ``n`` patients gets ``round(val_fraction * n)`` validation patients (at least
    one, and at most ``n - 1``, when ``n >= 2`` and ``val_fraction > 0``); patients in
    ``force_val`` count first, the others are drawn from the sorted ids with
    ``numpy.random.default_rng(seed)``, so the split depends on the seed and the set of
    patients only, not on the order files were found in.
    """
    f = check_val_fraction(val_fraction)
    forced = set(force_val)
    unknown = forced - set(labels)
    if unknown:
        raise ValueError(f"forced validation patients not in the dataset: {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for cls in sorted(set(labels.values())):
        ids = sorted(p for p, y in labels.items() if y == cls)
        n = len(ids)
        k = int(round(f * n))
        if f > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        pinned = [p for p in ids if p in forced]
        free = [p for p in ids if p not in forced]
        val.update(pinned)
        k_free = max(k - len(pinned), 0)
        order = rng.permutation(len(free))
        val.update(free[i] for i in order[:k_free])
    return val


def zscore(data: np.ndarray, sources: Sequence[str] = ()) -> np.ndarray:
    """Channel-wise z-normalisation of a (C, D, H, W) array over all of its voxels."""
    out = np.empty(data.shape, dtype=np.float32)
    for c in range(data.shape[0]):
        x = data[c].astype(np.float64)
        mean, std = float(x.mean()), float(x.std())
        if not std > 0:
            where = sources[c] if c < len(sources) else f"channel {c}"
            raise InputError(f"{where}: the image is constant ({mean:g}); cannot z-normalise it")
        out[c] = (x - mean) / std
    return out


def safe_name(text: str) -> str:
    """A file-name-safe version of an id (letters, digits, ``.``, ``_``, ``-``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    if not name:
        raise InputError(f"cannot make a file name from {text!r}")
    return name


class Writer:
    """Writes preprocessed volumes and masks into ``out_dir`` and collects their entries."""

    def __init__(self, out_dir: str | Path, total: int = 0, progress: Progress | None = None) -> None:
        self.out = Path(out_dir)
        self.entries: list[Entry] = []
        self.total, self.progress = total, progress

    def add(
        self,
        name: str,
        patient: str,
        label: int,
        data: np.ndarray,
        affine: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        header: object | None = None,
        source: str = "",
        force_val: bool = False,
    ) -> Entry:
        """Write ``data`` (C, D, H, W) as ``images/<name>.nii.gz`` (and its mask) atomically."""
        if any(e.name == name for e in self.entries):
            raise InputError(f"two volumes are both named {name!r} ({source})")
        image = f"images/{name}.nii.gz"
        save_nifti(
            self.out / image, np.asarray(data, dtype=np.float32), affine, header, description="tomofield-medical"
        )
        mask_rel = None
        if mask is not None:
            mask_rel = f"masks/{name}.nii.gz"
            save_nifti(
                self.out / mask_rel,
                np.asarray(mask, dtype=np.uint8),
                affine,
                header,
                dtype=np.uint8,
                description="tomofield-medical mask",
            )
        entry = Entry(name, patient, int(label), image, mask_rel, source, force_val)
        self.entries.append(entry)
        if self.progress:
            self.progress(len(self.entries), self.total, name)
        return entry

    def finish(self, *, seed: int, val_fraction: float) -> dict[str, Path]:
        """Split by patient and write ``dataset.csv``, ``train.csv``, ``val.csv``, ``cases.csv``."""
        if not self.entries:
            raise InputError("no volume was prepared")
        patient_label: dict[str, int] = {}
        for e in self.entries:
            patient_label[e.patient] = max(patient_label.get(e.patient, 0), e.label)
        val = split_patients(
            patient_label,
            seed=seed,
            val_fraction=val_fraction,
            force_val={e.patient for e in self.entries if e.force_val},
        )
        rows = sorted(self.entries, key=lambda e: e.name)
        paths = {
            "dataset": write_csv(
                self.out / "dataset.csv", ["image", "label", "mask"], [[e.image, e.label, e.mask or ""] for e in rows]
            )
        }
        train = [e for e in rows if e.patient not in val]
        paths["train"] = write_csv(
            self.out / "train.csv", ["image", "label", "mask"], [[e.image, e.label, e.mask or ""] for e in train]
        )
        if val:
            paths["val"] = write_csv(
                self.out / "val.csv",
                ["image", "label", "mask"],
                [[e.image, e.label, e.mask or ""] for e in rows if e.patient in val],
            )
        paths["cases"] = write_csv(
            self.out / "cases.csv",
            ["name", "patient", "label", "split", "source"],
            [[e.name, e.patient, e.label, "val" if e.patient in val else "train", e.source] for e in rows],
        )
        return paths


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write a CSV atomically (never over an existing file)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def find_dir(root: Path, test: Callable[[Path], bool], what: str, depth: int = 2) -> Path:
    """``root`` or the one folder at most ``depth`` levels below it for which ``test`` holds."""
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is not a folder")
    level, found = [root], []
    for _ in range(depth + 1):
        found = [p for p in level if test(p)]
        if found:
            break
        level = [c for p in level for c in sorted(p.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    if len(found) > 1:
        raise InputError(f"{str(root)!r}: several {what} folders: {', '.join(str(p) for p in found)}; point to one")
    if not found:
        listing = ", ".join(sorted(p.name for p in root.iterdir())[:12]) or "nothing"
        raise InputError(f"{str(root)!r}: no {what} folder here or up to {depth} levels below (it holds: {listing})")
    return found[0]


def find_file(
    root: Path, stems: Sequence[str], suffixes: Sequence[str] = (".csv", ".xlsx"), depth: int = 2
) -> Path | None:
    """The first file named ``<stem><suffix>`` (case-insensitive) at most ``depth`` levels below ``root``."""
    wanted = {f"{s}{x}".lower() for s in stems for x in suffixes}
    level = [root]
    for _ in range(depth + 1):
        hits = sorted(p for d in level for p in d.iterdir() if p.is_file() and p.name.lower() in wanted)
        if hits:
            # a CSV export beside the original xlsx wins: it is much faster to read
            return min(hits, key=lambda p: (not p.name.lower().endswith(".csv"), str(p)))
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    return None


def nifti_stem(path: Path) -> str:
    n = path.name
    for suffix in (".nii.gz", ".nii"):
        if n.lower().endswith(suffix):
            return n[: -len(suffix)]
    return path.stem
