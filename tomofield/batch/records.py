"""What made a heatmap: its provenance record in the NIfTI header, and what a finished heatmap must match to be kept."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tomofield.batch.claims import owner_tag
from tomofield.batch.parts import heatmap_path
from tomofield.dataset import Case
from tomofield.engine import Engine
from tomofield.errors import InputError
from tomofield.io import Reorientation, check_name_lengths, check_output_path, check_regular_file

#: The key of a heatmap's provenance record in its NIfTI ``comment`` extension.
RECORD_KEY = "tomofield_heatmap"


#: Version of the record's layout.
RECORD_FORMAT = 1


_NIFTI_COMMENT = 6


_HASH_CHUNK = 1 << 20


def engine_record(engine: Engine) -> dict[str, Any]:
    """What in ``engine`` makes its heatmaps: :meth:`Engine.provenance` and the encoder's precision."""
    return {**engine.provenance(), "autocast": _autocast(engine)}


def _autocast(engine: Engine) -> str:
    """The dtype the encoder runs in, as the scorer chooses it (``float32`` without autocast)."""
    from tomofield.pipeline import encoder_dtype

    if not getattr(engine.head, "needs_encoder", True):
        return "float32"
    dtype = encoder_dtype(engine.head, engine.config.amp, engine.device)
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _folder_files(path: Path) -> list[Path]:
    """The regular files of an input folder (a DICOM series), by name."""
    return sorted(p for p in path.iterdir() if p.is_file())


def _folder_state(path: Path) -> tuple[int, int]:
    """Total size and latest mtime (ns) of a folder's files: what changes when a file of it does."""
    stats = [p.stat() for p in _folder_files(path)]
    return sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)


def _folder_sha256(path: Path) -> str:
    """SHA-256 over each file's name and content, in name order."""
    h = hashlib.sha256()
    for f in _folder_files(path):
        h.update(f.name.encode() + b"\0" + _sha256(f).encode())
    return h.hexdigest()


def input_fingerprint(path: Path) -> dict[str, Any]:
    """Name, size, mtime (ns) and SHA-256 of an input file, or of a folder's files (a DICOM series)."""
    if path.is_dir():
        size, mtime = _folder_state(path)
        return {"name": path.name, "size": size, "mtime_ns": mtime, "sha256": _folder_sha256(path)}
    check_regular_file(path, "input file")  # hashing a FIFO or a device would wait or never end
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def _record_in(ext: Any) -> dict[str, Any] | None:
    """The provenance record an extension holds, or None."""
    if ext.get_code() != _NIFTI_COMMENT:
        return None
    try:
        content = json.loads(ext.get_content())
    except (ValueError, UnicodeDecodeError):
        return None
    record = content.get(RECORD_KEY) if isinstance(content, dict) else None
    return record if isinstance(record, dict) else None


def read_record(header: Any) -> dict[str, Any] | None:
    """The provenance record in a NIfTI header, or None (a heatmap of an older tomofield or another tool)."""
    for ext in getattr(header, "extensions", None) or ():
        record = _record_in(ext)
        if record is not None:
            return record
    return None


def _heatmap_header(path: Path) -> Any:
    import nibabel as nib

    try:
        return nib.load(str(path)).header
    except Exception as exc:  # nibabel, gzip and OS errors on truncated or foreign files
        raise InputError(f"{str(path)!r} cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc


def read_heatmap_record(path: Path) -> dict[str, Any] | None:
    """The provenance record of a heatmap file (header only); InputError when it cannot be read."""
    return read_record(_heatmap_header(path))


def _with_record(header: Any, record: dict[str, Any]) -> Any:
    """A copy of ``header`` whose extensions hold ``record`` (an input's own record dropped); ``header`` unchanged."""
    import nibabel as nib

    new = header.copy() if header is not None else nib.Nifti1Header()
    kept = [e for e in new.extensions if _record_in(e) is None]  # copy() shares the list: build a new one
    new.extensions = type(new.extensions)(kept)
    text = json.dumps({RECORD_KEY: record}, sort_keys=True, separators=(",", ":"))
    new.extensions.append(nib.nifti1.Nifti1Extension(_NIFTI_COMMENT, text.encode()))
    return new


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text[:12] + "..." if isinstance(value, str) and len(value) == 64 else text


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):  # an empty one adds nothing: {} and an absent key agree
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: Settings added after records were first written, with the value that made the heatmaps
#: of records without them: such a record agrees with an engine that has that value.
SINCE_RECORDED = {"settings.intensity": "none", "settings.orientation": "stored", "reconstructor": "fbp"}


def engine_differences(made: dict[str, Any], now: dict[str, Any], affine: Any = None) -> list[str]:
    """``"NAME HEATMAP'S -> NOW'S"`` per setting that differs between two engine records.

    With the heatmap's ``affine``, the orientation setting counts only where it changes the
    heatmap: not for a volume stored RAS, whose canonical frame is its stored one.
    """
    a, b = _flatten(made), _flatten(now)
    a = {**{k: v for k, v in SINCE_RECORDED.items() if k in b}, **a}
    if affine is not None and Reorientation.of(affine).identity:
        a.pop("settings.orientation", None)
        b.pop("settings.orientation", None)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "(none)") != b.get(key, "(none)"):
            name = key.removeprefix("settings.")
            name = "tomofield version" if name == "tomofield" else name
            diffs.append(f"{name} {_short(a.get(key, '(none)'))} -> {_short(b.get(key, '(none)'))}")
    return diffs


def input_differences(record: dict[str, Any], case: Case, nan_policy: str | None = None) -> list[str]:
    """How the case's input files (and NaN policy, when given) differ from those the record names."""
    inputs = record.get("inputs") or []
    if len(inputs) != len(case.images):
        return [f"made from {len(inputs)} input file(s), the CSV now gives {len(case.images)}"]
    diffs = []
    for rec, path in zip(inputs, case.images, strict=True):
        try:
            size, mtime = _folder_state(path) if path.is_dir() else (path.stat().st_size, path.stat().st_mtime_ns)
        except OSError:
            diffs.append(f"input {path.name} is missing")
            continue
        digest = _folder_sha256 if path.is_dir() else _sha256
        if size != rec.get("size"):
            diffs.append(f"input {path.name} changed (size {rec.get('size')} -> {size} bytes)")
        elif mtime != rec.get("mtime_ns") and digest(path) != rec.get("sha256"):
            diffs.append(f"input {path.name} changed (same size, other content)")
    replaced = int(record.get("nonfinite_replaced") or 0)
    if nan_policy is not None and replaced and record.get("nan_policy") != nan_policy:
        diffs.append(
            f"made with --nan-policy {record.get('nan_policy')} ({replaced} voxel(s) replaced), now {nan_policy}"
        )
    return diffs


def stale_reasons(target: Path, case: Case, engine_rec: dict[str, Any], nan_policy: str) -> list[str]:
    """Why the finished heatmap ``target`` is not what this run would write ([] when it is)."""
    try:
        header = _heatmap_header(target)
    except InputError as exc:
        why = exc.__cause__ or exc
        return [f"unreadable as NIfTI: {type(why).__name__}: {why}"]
    record = read_record(header)
    if record is None:
        return ["no provenance record (made by an older tomofield or another tool)"]
    made = engine_differences(record.get("engine") or {}, engine_rec, header.get_best_affine())
    return made + input_differences(record, case, nan_policy)


def _refusal(out_dir: str | Path, stale: dict[str, list[str]]) -> InputError:
    groups: dict[str, list[str]] = {}
    for name, reasons in stale.items():
        groups.setdefault("; ".join(reasons[:4]) + ("; ..." if len(reasons) > 4 else ""), []).append(name)
    parts = []
    for why, names in list(groups.items())[:4]:
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        parts.append(f"{', '.join(names[:3])}{more} ({why})")
    if len(groups) > 4:
        parts.append(f"{sum(len(n) for n in list(groups.values())[4:])} more")
    return InputError(
        f"{out_dir}: {len(stale)} finished heatmap(s) were not made as this run would make them: "
        f"{'; '.join(parts)}; pass --overwrite to redo every heatmap, or choose another output folder"
    )


def check_records(
    heatmaps_dir: str | Path, cases: list[Case], headers: list[Any], dataset_csv: str | Path = "DATASET.csv"
) -> None:
    """Refuse a folder of heatmaps made by different runs, or from other versions of the cases' images.

    Heatmaps without a record (another tool's) pass when none has one; among recorded ones
    they are refused, as are records that differ in their engine or inputs.
    """
    names = [heatmap_path(heatmaps_dir, c).name for c in cases]
    records = [read_record(h) for h in headers]
    have = [i for i, r in enumerate(records) if r is not None]
    if not have:
        return
    hint = f"redo them with tomofield run {dataset_csv} -o {heatmaps_dir} --overwrite"
    bare = [names[i] for i, r in enumerate(records) if r is None]
    if bare:
        more = f" and {len(bare) - 3} more" if len(bare) > 3 else ""
        raise InputError(
            f"{heatmaps_dir}: {', '.join(bare[:3])}{more} carries no provenance record (made by an older "
            f"tomofield or another tool) but {names[have[0]]} does: the folder mixes runs; {hint}"
        )
    ref = records[have[0]] or {}
    for i in have[1:]:
        diffs = engine_differences(ref.get("engine") or {}, (records[i] or {}).get("engine") or {})
        if diffs:
            raise InputError(
                f"{heatmaps_dir}: {names[i]} was made otherwise than {names[have[0]]} ({'; '.join(diffs[:4])}): "
                f"the folder mixes runs; {hint}"
            )
    for i in have:
        diffs = input_differences(records[i] or {}, cases[i])
        if diffs:
            raise InputError(
                f"{heatmaps_dir}: {names[i]} was made from another version of its input ({'; '.join(diffs)}); {hint}"
            )


def check_output_folder(cases: list[Case], out_dir: str | Path, csv_path: str | Path | None = None) -> Path:
    """Refuse an output folder that is a file, the dataset CSV, or a folder of the dataset's images or masks."""
    out = Path(out_dir)
    if csv_path is not None and out.resolve() == Path(csv_path).resolve():
        raise InputError(
            f"output {str(out_dir)!r} is the dataset CSV itself; give a folder for the heatmaps (e.g. heatmaps/)"
        )
    if out.exists() and not out.is_dir():
        raise InputError(f"output {str(out_dir)!r} must be a folder when the input is a dataset CSV")
    where = out.resolve()
    for case in cases:
        for f in (*case.images, *([case.mask] if case.mask else [])):
            if where in (f.parent.resolve(), f.resolve().parent):
                kind = "mask" if f == case.mask else "image"
                raise InputError(
                    f"output folder {str(out_dir)!r} holds the dataset's {kind} {str(f)!r} (row {case.row}): "
                    "heatmaps would be mixed with, or replace, the inputs; choose another folder (e.g. heatmaps/)"
                )
    check_output_path(out, folder=True)  # every command's output checks: under a file, unwritable, too long a name
    # each heatmap is written as .NAME.tomofield-PID@HOST.tmp.nii.gz beside it, and claimed by .NAME.claim
    temp = len(os.fsencode(f"..{owner_tag()}.tmp.nii.gz"))
    for case in cases:
        target = heatmap_path(out, case)
        what = f"its temporary file .NAME.{owner_tag()}.tmp.nii.gz"
        check_name_lengths(target, beside={what: len(os.fsencode(target.name)) + temp})
    return out
