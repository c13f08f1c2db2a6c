"""Duke-Breast-Cancer-MRI (Saha et al. 2018, TCIA), as the paper used it (A.4).

On disk, as the NBIA Data Retriever writes it ("classic" or "descriptive" folder names both
work) with the collection's tables beside it::

    Duke-Breast-Cancer-MRI/Breast_MRI_001/<study>/<series>/1-001.dcm ...   one folder per series
    Annotation_Boxes.xlsx (or .csv)            Patient ID, Start/End Row, Column, Slice
    Clinical_and_Other_Features.xlsx (or .csv) Patient ID, ..., Contralateral Breast Involvement
    Breast-Cancer-MRI-filepath_filename-mapping.xlsx (or .csv), optional but recommended

Of the six series of a study the pre-contrast (``pre``) and first post-contrast (``post_1``)
ones are used, as channels in that order, each z-normalised over the whole study. The
mapping table names every file's sequence (``DICOM_Images/Breast_MRI_001/post_1/...``) and
is matched to the files by SOPInstanceUID; without it, series descriptions decide ("pre";
"1st", "1/ax", "ph1", "post_1"). The post series is resampled onto the pre grid if theirs
differ. The study is cut in two at the middle of its left-right axis (found from the DICOM
orientation): ``<patient>_L`` and ``<patient>_R``. The half holding the centre of the
annotated box is positive, the other too when the clinical table marks contralateral
involvement. ``boxes.csv`` gives each annotated volume's box in its own voxel indices,
(d0, h0, w0, d1, h1, w1), inclusive-exclusive: the table's 1-based inclusive rows, columns
and slices, the slices numbered as the mapping table's file names (else InstanceNumber).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomofield.errors import InputError
from tomofield_medical.common import Progress, Writer, find_dir, find_file, recipe, write_csv, zscore
from tomofield_medical.dicom import Series, SeriesInfo, read_series, series_info
from tomofield_medical.geometry import resample, same_grid, shifted_affine
from tomofield_medical.tables import iter_rows, read_table, to_int

PATIENT = r"Breast_MRI_\d+"
SEQUENCES = ("pre", "post_1")
BOX_COLUMNS = ("Patient ID", "Start Row", "End Row", "Start Column", "End Column", "Start Slice", "End Slice")
CONTRALATERAL = "Contralateral Breast Involvement"
BOXES_TABLE = ("Annotation_Boxes",)
CLINICAL_TABLE = ("Clinical_and_Other_Features",)
MAPPING_TABLE = ("Breast-Cancer-MRI-filepath_filename-mapping",)

_DESCRIPTION_RULES = {
    "pre": re.compile(r"(?<![a-z])pre(?![a-z])|pre[-_ ]?contrast", re.I),
    "post_1": re.compile(r"1st|(?<![0-9a-z])1\s*/?\s*ax|ph(ase)?\s*1(?![0-9])|post[-_ ]?1(?![0-9])", re.I),
}


@dataclass(frozen=True)
class Box:
    """A Duke annotation: 1-based inclusive rows, columns and slice numbers."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    slices: tuple[int, int]


def read_boxes(path: Path) -> dict[str, Box]:
    out = {}
    for rec in read_table(path, BOX_COLUMNS, key="Patient ID", key_pattern=PATIENT):
        where = f"{path}, patient {rec['Patient ID']}"
        v = [to_int(rec[c], where) for c in BOX_COLUMNS[1:]]
        box = Box((v[0], v[1]), (v[2], v[3]), (v[4], v[5]))
        for lo, hi in (box.rows, box.cols, box.slices):
            if not 1 <= lo <= hi:
                raise InputError(f"{where}: box bounds {lo}..{hi} are not 1-based and increasing")
        out[rec["Patient ID"]] = box
    if not out:
        raise InputError(f"{str(path)!r}: no Breast_MRI_NNN row")
    return out


def read_contralateral(path: Path) -> dict[str, bool]:
    out = {}
    for rec in read_table(path, ("Patient ID", CONTRALATERAL), key="Patient ID", key_pattern=PATIENT):
        v = rec[CONTRALATERAL].strip()
        if v.lower() in ("", "na", "nan", "n/a"):
            out[rec["Patient ID"]] = False
            continue
        out[rec["Patient ID"]] = to_int(v, f"{path}, patient {rec['Patient ID']}, {CONTRALATERAL}") == 1
    if not out:
        raise InputError(f"{str(path)!r}: no Breast_MRI_NNN row")
    return out


def read_mapping(path: Path, patients: set[str]) -> dict[str, tuple[str, int]]:
    """SOPInstanceUID -> (sequence, slice number) for the pre and post_1 files of ``patients``."""
    rows = iter_rows(path)
    header = [c.strip().lower() for c in next(rows, [])]
    try:
        orig = next(i for i, c in enumerate(header) if c.startswith("original_path"))
        uid = next(i for i, c in enumerate(header) if "sop" in c and "uid" in c)
    except StopIteration:
        raise InputError(
            f"{str(path)!r}: expected columns original_path_and_filename and sop_instance_UID, found {header}"
        ) from None
    out = {}
    pattern = re.compile(rf"(?:^|/)({PATIENT})/(pre|post_1)/[^/]*?_(\d+)\.dcm$", re.I)
    for row in rows:
        if len(row) <= max(orig, uid):
            continue
        hit = pattern.search(row[orig].replace("\\", "/"))
        if hit and hit.group(1) in patients:
            out[row[uid].strip()] = (hit.group(2).lower(), int(hit.group(3)))
    return out


def _series_of(patient_dir: Path) -> list[SeriesInfo]:
    folders = sorted({f.parent for f in patient_dir.rglob("*") if f.is_file() and not f.name.startswith(".")})
    infos = [series_info(f) for f in folders]
    return [i for i in infos if i is not None]


def identify(patient_dir: Path, infos: list[SeriesInfo], mapping: dict[str, tuple[str, int]]) -> dict[str, SeriesInfo]:
    """The pre and post_1 series of a patient, by the mapping table, else by description."""
    found: dict[str, SeriesInfo] = {}
    for seq in SEQUENCES:
        by_map = [i for i in infos if mapping.get(i.uid, ("",))[0] == seq]
        hits = by_map or [
            i
            for i in infos
            if _DESCRIPTION_RULES[seq].search(i.description)
            and not (seq == "pre" and _DESCRIPTION_RULES["post_1"].search(i.description))
        ]
        if len(hits) != 1:
            broken = [i.error for i in infos if i.error]
            if broken:
                raise InputError(f"{str(patient_dir)!r}: cannot tell its {seq} series: {broken[0]}")
            listing = "; ".join(f"{i.folder.name!r}: {i.description!r}" for i in infos) or "no series"
            why = "no" if not hits else f"{len(hits)} candidate"
            raise InputError(
                f"{str(patient_dir)!r}: {why} {seq} series ({listing}). Put "
                "Breast-Cancer-MRI-filepath_filename-mapping.csv (or .xlsx) in the raw folder "
                "to name the series"
            )
        found[seq] = hits[0]
    return found


def slice_numbers(series: Series, mapping: dict[str, tuple[str, int]]) -> np.ndarray:
    """The annotation's number of each tensor slice: the mapping's file number, else InstanceNumber."""
    nums = [mapping.get(u, ("", None))[1] for u in series.uids]
    if all(n is not None for n in nums):
        return np.array(nums)
    return series.instance.copy()


def box_in_volume(box: Box, numbers: np.ndarray, shape: tuple[int, int, int], where: str) -> tuple[int, ...]:
    """The annotation as (d0, h0, w0, d1, h1, w1), inclusive-exclusive, in the tensor's indices."""
    ds = np.flatnonzero((numbers >= box.slices[0]) & (numbers <= box.slices[1]))
    if len(ds) == 0:
        raise InputError(
            f"{where}: box slices {box.slices[0]}..{box.slices[1]} are outside the series "
            f"(slices {numbers.min()}..{numbers.max()})"
        )
    h0, h1, w0, w1 = box.rows[0] - 1, box.rows[1], box.cols[0] - 1, box.cols[1]
    if h1 > shape[1] or w1 > shape[2]:
        raise InputError(f"{where}: box rows {box.rows} / columns {box.cols} exceed the {shape[1]} x {shape[2]} image")
    return (int(ds.min()), h0, w0, int(ds.max()) + 1, h1, w1)


def split_sides(series: Series) -> tuple[int, int, bool]:
    """(axis, mid, high_is_left): the tensor axis closest to patient left-right and where to cut it."""
    axes = series.lps_axes  # rows: d, h, w directions in LPS (x grows toward the patient's left)
    axis = int(np.argmax(np.abs(axes[:, 0])))
    n = series.data.shape[axis]
    if n < 2:
        raise InputError(f"{str(series.folder)!r}: one voxel across the left-right axis; cannot split the breasts")
    return axis, n // 2, bool(axes[axis, 0] > 0)


class DukeBreastMRI:
    """``tomofield prepare duke RAW -o OUT`` (RAW holds the images folder and the tables)."""

    recipe = recipe(62_500)

    def prepare(
        self,
        raw_dir: str | Path,
        out_dir: str | Path,
        *,
        seed: int = 0,
        val_fraction: float = 0.2,
        progress: Progress | None = None,
    ) -> dict[str, Path]:
        raw = Path(raw_dir)
        root = find_dir(
            raw,
            lambda p: any(c.is_dir() and re.fullmatch(PATIENT, c.name) for c in p.iterdir()),
            "Duke-Breast-Cancer-MRI (Breast_MRI_NNN/...)",
            depth=3,
        )
        boxes_path, clinical_path = find_file(raw, BOXES_TABLE), find_file(raw, CLINICAL_TABLE)
        for stem, p in ((BOXES_TABLE[0], boxes_path), (CLINICAL_TABLE[0], clinical_path)):
            if p is None:
                raise InputError(f"{str(raw)!r}: no {stem}.xlsx or {stem}.csv (download it from the collection's page)")
        assert boxes_path is not None and clinical_path is not None
        boxes, contra = read_boxes(boxes_path), read_contralateral(clinical_path)
        patients = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(PATIENT, p.name))
        names = {p.name for p in patients}
        mapping_path = find_file(raw, MAPPING_TABLE)
        mapping = read_mapping(mapping_path, names) if mapping_path else {}
        writer = Writer(out_dir, 2 * len(patients), progress)
        box_rows = []
        for pdir in patients:
            pid = pdir.name
            for table, path in ((boxes, boxes_path), (contra, clinical_path)):
                if pid not in table:
                    raise InputError(f"{str(path)!r}: no row for patient {pid}")
            seqs = identify(pdir, _series_of(pdir), mapping)
            pre = read_series(seqs["pre"].folder, seqs["pre"].files)
            post = read_series(seqs["post_1"].folder, seqs["post_1"].files)
            post_data = (
                post.data
                if same_grid(post.data.shape, post.affine, pre.data.shape, pre.affine)
                else resample(post.data, post.affine, pre.data.shape, pre.affine, order=1, cval=float(post.data.min()))
            )
            data = zscore(np.stack([pre.data, post_data]), [str(pre.folder), str(post.folder)])
            box = box_in_volume(boxes[pid], slice_numbers(pre, mapping), pre.data.shape, f"{boxes_path}, {pid}")
            axis, mid, high_is_left = split_sides(pre)
            centre = (box[axis] + box[axis + 3] - 1) / 2
            box_high = centre >= mid - 0.5
            for high in (False, True):
                lo, hi = (mid, pre.data.shape[axis]) if high else (0, mid)
                part = [slice(None)] * 4
                part[axis + 1] = slice(lo, hi)
                start = [0, 0, 0]
                start[axis] = lo
                side = "L" if high == high_is_left else "R"
                has_box = high == box_high
                label = int(has_box or contra[pid])
                entry = writer.add(
                    f"{pid}_{side}",
                    pid,
                    label,
                    data[tuple(part)],
                    shifted_affine(pre.affine, start),
                    source=f"{pre.folder};{post.folder}",
                )
                if has_box:
                    b = list(box)
                    b[axis], b[axis + 3] = max(b[axis] - lo, 0), min(b[axis + 3], hi) - lo
                    box_rows.append([entry.image, *b])
        paths = writer.finish(seed=seed, val_fraction=val_fraction)
        paths["boxes"] = write_csv(
            Path(out_dir) / "boxes.csv", ["image", "d0", "h0", "w0", "d1", "h1", "w1"], sorted(box_rows)
        )
        return paths
