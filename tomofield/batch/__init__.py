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

The package: :mod:`~tomofield.batch.records` (the provenance records and their checks),
:mod:`~tomofield.batch.claims` (claims and publishing), :mod:`~tomofield.batch.parts`
(parts, shards, output names) and :func:`run_dataset` here.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tomofield.batch.claims import STALE_AFTER_S, _claim, _publish, _release, owner_tag, sweep
from tomofield.batch.parts import heatmap_path, part, shard
from tomofield.batch.records import (
    RECORD_FORMAT,
    RECORD_KEY,
    _refusal,
    _with_record,
    check_output_folder,
    check_records,
    engine_differences,
    engine_record,
    input_differences,
    input_fingerprint,
    read_heatmap_record,
    read_record,
    stale_reasons,
)
from tomofield.dataset import Case
from tomofield.engine import Engine
from tomofield.errors import InputError
from tomofield.io import load_volume

__all__ = [
    "RECORD_FORMAT",
    "RECORD_KEY",
    "STALE_AFTER_S",
    "DatasetRunResult",
    "check_output_folder",
    "check_records",
    "engine_differences",
    "engine_record",
    "heatmap_path",
    "input_differences",
    "input_fingerprint",
    "part",
    "read_heatmap_record",
    "read_record",
    "run_dataset",
    "shard",
    "stale_reasons",
    "sweep",
]


@dataclass
class DatasetRunResult:
    """What a dataset run did, by case name (``skipped``: finished before, or by another job meanwhile)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


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
    tag = owner_tag()
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
            if on_volume:
                on_volume(case, "skipped")
            return True
        claimed = _claim(target, tag)
        if not claimed and defer:
            return False
        tmp = out / f".{target.name}.{tag}.tmp.nii.gz"
        published = False
        try:
            if on_volume:
                on_volume(case, "start")
            inputs = [input_fingerprint(p) for p in case.images]
            volume = load_volume(list(case.images), nan_policy=nan_policy, check_content=True)
            heat = engine.run(volume, progress=progress)
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
                if on_volume:
                    on_volume(case, "skipped")
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
        if on_volume:
            on_volume(case, "done")
        return True

    later = [case for case in cases if not one(case, defer=True)]
    for case in later:  # claimed by a live job: finished by now, or done here too (only one publishes)
        one(case, defer=False)
    return result
