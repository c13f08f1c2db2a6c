"""Runs over a dataset CSV: one heatmap per volume, resumable, optionally split or sharded, safe to run twice at once.

**What made a heatmap.** Each heatmap carries its provenance record inside its NIfTI header
(an extension of code ``comment`` holding ``{"tomofield_heatmap": RECORD}`` as JSON), so the
record is written in the same atomic rename as the heatmap and travels with it when the
folder is copied. ``RECORD`` holds:

* ``engine``: :meth:`Engine.provenance` (the settings that change the result, the
  component names, the head options, the weights' SHA-256, tomofield's version; the speed
  settings of :data:`tomofield.engine.SPEED_ONLY` are left out) and ``autocast``, the
  precision the encoder ran in (``amp="auto"`` is fp16 on CUDA, fp32 on CPU);
* ``inputs``: per input file its name, size, mtime and SHA-256;
* ``nan_policy`` and ``nonfinite_replaced``: whether non-finite voxels were set to 0.

**Resuming.** A finished heatmap whose record matches what this run would write is skipped.
One made otherwise (other settings, weights, version, changed input) or without a record
(an older tomofield, another tool) is refused before any work, naming it and what differs,
unless ``overwrite`` (redo every heatmap) or ``on_stale="redo"`` (redo only those). An input
is unchanged when its size and mtime are those recorded, or else its SHA-256 is.

**Several jobs on one folder.** Every temporary file a run writes is named with its writer
(``tomofield-PID@HOST``); a run removes only those whose writer is gone (same host, no such
process) or that are older than :data:`STALE_AFTER_S`. Before a volume, a run claims it
(``.NAME.nii.gz.claim``, created exclusively) and leaves volumes claimed by a live job to the
end, so two jobs share the work; a heatmap is published by a hard link that fails when the
other job published it first (then its record is checked like a finished one). Independent
jobs (a SLURM array) may instead split the dataset beforehand, each taking its :func:`part`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Collection
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tomofield.dataset import Case
from tomofield.engine import Engine
from tomofield.errors import InputError
from tomofield.io import Heatmap, Reorientation, load_volume

#: The key of a heatmap's provenance record in its NIfTI ``comment`` extension.
RECORD_KEY = "tomofield_heatmap"
#: Version of the record's layout.
RECORD_FORMAT = 1
#: Temporary files and claims older than this are removed whoever wrote them (an unfinished
#: write or one volume's work never takes this long); younger ones only when their writer is gone.
STALE_AFTER_S = 24 * 3600
_NIFTI_COMMENT = 6
_OWNER = re.compile(r"tomofield-(\d+)@([A-Za-z0-9_-]+)")
_HASH_CHUNK = 1 << 20


@dataclass
class DatasetRunResult:
    """What a dataset run did, by case name (``skipped``: finished before, or by another job meanwhile)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def heatmap_path(out_dir: str | Path, case: Case) -> Path:
    """Where the heatmap of ``case`` goes: ``OUT_DIR/<first image name>.nii.gz``."""
    return Path(out_dir) / f"{case.name}.nii.gz"


def shard(cases: list[Case], rank: int = 0, world: int = 1) -> list[Case]:
    """The cases rank ``rank`` of ``world`` processes handles (round robin)."""
    return cases[rank::world]


def part(cases: list[Case], part_id: int = 0, num_parts: int = 1) -> list[Case]:
    """The cases part ``part_id`` of ``num_parts`` independent jobs handles (a SLURM array, a shell loop).

    The parts are consecutive blocks of ``cases`` in their order (a dataset CSV's rows, a
    folder's sorted names), the first ones one case larger where ``num_parts`` does not divide
    the count (as ``numpy.array_split``): disjoint, together every case, and the same in
    every job that computes them from the same list. With more parts than cases the last
    parts are empty. Under torchrun a part is shared further by :func:`shard`;
    pass the whole dataset to :func:`run_dataset` as ``check``, so that all parts refuse a
    stale heatmap alike::

        mine = part(cases, part_id, num_parts)
        run_dataset(engine, shard(mine, rank, world), out_dir, check=cases)

    Raises:
        InputError: ``num_parts`` < 1, or ``part_id`` not in ``0 .. num_parts - 1``.
    """
    if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
        raise InputError(f"num_parts {num_parts!r}: the number of parts must be an integer >= 1")
    if isinstance(part_id, bool) or not isinstance(part_id, int) or not 0 <= part_id < num_parts:
        raise InputError(f"part_id {part_id!r} is not a part of {num_parts}: valid part ids are 0 to {num_parts - 1}")
    size, more = divmod(len(cases), num_parts)  # the first ``more`` parts hold one case more
    start = part_id * size + min(part_id, more)
    return cases[start : start + size + (part_id < more)]


# -- provenance records ----------------------------------------------------------------------
def engine_record(engine: Engine) -> dict[str, Any]:
    """What in ``engine`` makes its heatmaps: :meth:`Engine.provenance` and the encoder's precision."""
    return {**engine.provenance(), "autocast": _autocast(engine)}


def _autocast(engine: Engine) -> str:
    """The dtype the encoder runs in, as the scorer chooses it (``float32`` without autocast)."""
    from tomofield.pipeline import amp_dtype

    if not getattr(engine.head, "needs_encoder", True):
        return "float32"
    dtype = amp_dtype(engine.config.amp, engine.device)
    if engine.config.amp == "auto" and getattr(engine.head, "needs_grad", False):
        dtype = None  # as tomofield.pipeline.Scorer: CAM heads stay in fp32 unless asked
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def input_fingerprint(path: Path) -> dict[str, Any]:
    """Name, size, mtime (ns) and SHA-256 of an input file."""
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
            st = path.stat()
        except OSError:
            diffs.append(f"input {path.name} is missing")
            continue
        if st.st_size != rec.get("size"):
            diffs.append(f"input {path.name} changed (size {rec.get('size')} -> {st.st_size} bytes)")
        elif st.st_mtime_ns != rec.get("mtime_ns") and _sha256(path) != rec.get("sha256"):
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


# -- the output folder -----------------------------------------------------------------------
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
    return out


def _owner_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"
    return f"tomofield-{os.getpid()}@{host}"


def _writer_gone(owner: str | None, age_s: float) -> bool:
    """Whether a temporary file or claim of ``owner`` (``tomofield-PID@HOST``) may be removed."""
    if age_s > STALE_AFTER_S:
        return True
    m = _OWNER.fullmatch(owner) if owner else None
    if m is None or m.group(2) != _owner_tag().split("@", 1)[1] or os.name != "posix":
        return False  # unknown writer, or another host: only its age tells
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


def _claim_owner(path: Path) -> str | None:
    with suppress(OSError, UnicodeDecodeError):
        return path.read_text().strip() or None
    return None


def sweep(out_dir: Path, keep: Collection[str] = ()) -> list[Path]:
    """Remove the temporary files and claims in ``out_dir`` whose writer is gone (never those named in ``keep``)."""
    removed = []
    now = time.time()
    for p in out_dir.glob(".*"):
        name = p.name
        if name in keep:  # a heatmap whose volume's name looks like a temporary file's
            continue
        if name.endswith(".claim"):
            owner = _claim_owner(p)
        elif re.search(r"\.tmp\.nii(\.gz)?$", name):
            m = _OWNER.search(name)
            owner = m.group(0) if m else None
        else:
            continue
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        if _writer_gone(owner, age):
            with suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _claim(target: Path, tag: str) -> bool:
    """Claim ``target``'s volume for this process; False when a live job holds it."""
    claim = target.with_name(f".{target.name}.claim")
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - claim.stat().st_mtime
            except FileNotFoundError:
                continue
            if not _writer_gone(_claim_owner(claim), age):
                return False
            with suppress(FileNotFoundError):
                claim.unlink()
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(tag)
        return True
    return False


def _release(target: Path) -> None:
    """Remove the claim on ``target``'s volume (once it is published, whoever held it)."""
    with suppress(FileNotFoundError):
        target.with_name(f".{target.name}.claim").unlink()


def _publish(tmp: Path, target: Path, replace: bool) -> bool:
    """Move ``tmp`` to ``target``; without ``replace``, False (and ``tmp`` kept) when ``target`` exists."""
    if replace:
        os.replace(tmp, target)
        return True
    try:
        os.link(tmp, target)  # atomic, and fails when another job published first
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: check, then rename
        if target.exists():
            return False
        os.replace(tmp, target)
        return True
    tmp.unlink()
    return True


# -- the run ---------------------------------------------------------------------------------
def run_dataset(
    engine: Engine,
    cases: list[Case],
    out_dir: str | Path,
    overwrite: bool = False,
    on_volume: Callable[[Case, str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    nan_policy: str = "refuse",
    on_stale: str = "refuse",
    check: list[Case] | None = None,
) -> DatasetRunResult:
    """Reconstruct every case into ``out_dir``; finished heatmaps made as this run would make them are skipped.

    Args:
        overwrite: redo every heatmap, finished or not.
        on_volume: called as ``on_volume(case, "start" | "done" | "skipped")``.
        progress: per-slice progress of the volume in work, as for ``Engine.reconstruct``.
        on_stale: what to do with finished heatmaps made otherwise (other settings, weights,
            version or inputs, or without a record): ``refuse`` before any work (InputError
            naming them and what differs) or ``redo`` them.
        check: the cases whose finished heatmaps (and names) are checked before any work
            (default: ``cases``); the ranks of one job and the parts of a split run
            (``cases`` = ``shard(part(dataset, i, k), rank, world)``, see :func:`part`) pass
            the whole dataset, so that all refuse alike.
    """
    if on_stale not in ("refuse", "redo"):
        raise InputError(f"unknown on_stale {on_stale!r}; valid: refuse, redo")
    names = [c.name for c in dict.fromkeys([*(check or []), *cases])]  # every case once, another job's too
    counts = Counter(n.casefold() for n in names)
    dupes = {n for n in names if counts[n.casefold()] > 1}
    if dupes:
        raise InputError(
            f"several volumes would write the same heatmap name: {', '.join(sorted(dupes))} "
            "(names that differ only in case clash on macOS and Windows); rename the files"
        )
    out = check_output_folder([*cases, *(check or [])], out_dir)
    engine_rec = engine_record(engine)
    seen: dict[str, int | None] = {}  # each finished heatmap's mtime before this run (None: absent)
    stale: dict[str, list[str]] = {}  # finished heatmaps made otherwise, with what differs
    verified: set[str] = set()  # finished heatmaps made as this run would make them
    for case in check if check is not None else cases:
        target = heatmap_path(out, case)
        try:
            seen[case.name] = target.stat().st_mtime_ns
        except OSError:
            seen[case.name] = None
            continue
        if not overwrite:
            reasons = stale_reasons(target, case, engine_rec, nan_policy)
            if reasons:
                stale[target.name] = reasons
            else:
                verified.add(case.name)
    if stale and on_stale == "refuse" and not overwrite:
        raise _refusal(out_dir, stale)
    out.mkdir(parents=True, exist_ok=True)
    sweep(out, keep={heatmap_path(out, c).name for c in [*cases, *(check or [])]})
    tag = _owner_tag()
    result = DatasetRunResult()

    def finished(case: Case, target: Path) -> bool:
        """Whether ``target`` holds this run's heatmap already; InputError when another job made it otherwise."""
        try:
            mtime = target.stat().st_mtime_ns
        except OSError:
            return False
        before = mtime == seen.get(case.name)
        if before and (overwrite or target.name in stale):
            return False  # the heatmap this run is to replace
        if before and case.name in verified:
            return True
        reasons = stale_reasons(target, case, engine_rec, nan_policy)  # written by another job meanwhile
        if not reasons:
            return True
        if overwrite or on_stale == "redo":
            return False
        raise _refusal(out_dir, {target.name: reasons})

    def one(case: Case, defer: bool) -> bool:
        """Do one case; False when it is left for later (``defer`` and claimed by a live job)."""
        target = heatmap_path(out, case)
        if finished(case, target):
            result.skipped.append(case.name)
            on_volume and on_volume(case, "skipped")
            return True
        claimed = _claim(target, tag)
        if not claimed and defer:
            return False
        tmp = out / f".{target.name}.{tag}.tmp.nii.gz"
        published = False
        try:
            on_volume and on_volume(case, "start")
            inputs = [input_fingerprint(p) for p in case.images]
            volume = load_volume(list(case.images), nan_policy=nan_policy, check_content=True)
            heat = Heatmap.on(engine.run(volume, progress=progress).data.cpu(), volume)
            heat.header = _with_record(
                volume.header,
                {
                    "format": RECORD_FORMAT,
                    "engine": engine_rec,
                    "inputs": inputs,
                    "nan_policy": nan_policy,
                    "nonfinite_replaced": volume.replaced,
                },
            )
            heat.save(tmp, overwrite=True)
            published = _publish(tmp, target, replace=overwrite or target.name in stale)
            if not published and finished(case, target):  # another job published first, as this run would
                result.skipped.append(case.name)
                on_volume and on_volume(case, "skipped")
                return True
            if not published:  # another job's heatmap, made otherwise: redone (overwrite, on_stale="redo")
                os.replace(tmp, target)
                published = True
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()
            if claimed or published:
                _release(target)
        result.written.append(case.name)
        on_volume and on_volume(case, "done")
        return True

    later = [case for case in cases if not one(case, defer=True)]
    for case in later:  # claimed by a live job: finished by now, or done here too (only one publishes)
        one(case, defer=False)
    return result
