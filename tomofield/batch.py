"""Runs over a dataset CSV: one heatmap per volume, resumable, optionally sharded.

A finished heatmap is written atomically under the volume's name, so a killed run
loses at most the volume in progress and the next run skips what is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tomofield.dataset import Case
from tomofield.engine import Engine
from tomofield.io import load_volume, save_heatmap


@dataclass
class DatasetRunResult:
    """What a dataset run did, by case name."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def heatmap_path(out_dir: str | Path, case: Case) -> Path:
    """Where the heatmap of ``case`` goes: ``OUT_DIR/<first image name>.nii.gz``."""
    return Path(out_dir) / f"{case.name}.nii.gz"


def shard(cases: list[Case], rank: int = 0, world: int = 1) -> list[Case]:
    """The cases rank ``rank`` of ``world`` processes handles (round robin)."""
    return cases[rank::world]


def run_dataset(
    engine: Engine,
    cases: list[Case],
    out_dir: str | Path,
    overwrite: bool = False,
    on_volume: Callable[[Case, str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    nan_policy: str = "refuse",
) -> DatasetRunResult:
    """Reconstruct every case into ``out_dir``; finished heatmaps are skipped unless ``overwrite``.

    Args:
        on_volume: called as ``on_volume(case, "start" | "done" | "skipped")``.
        progress: per-slice progress of the volume in work, as for ``Engine.reconstruct``.
    """
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        from tomofield.errors import InputError

        raise InputError(f"several volumes would write the same heatmap name: {', '.join(sorted(dupes))}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for stale in Path(out_dir).glob(".*.tmp.nii*"):  # left by a run killed while writing
        stale.unlink(missing_ok=True)
    result = DatasetRunResult()
    for case in cases:
        target = heatmap_path(out_dir, case)
        if target.exists() and not overwrite:
            result.skipped.append(case.name)
            on_volume and on_volume(case, "skipped")
            continue
        on_volume and on_volume(case, "start")
        volume = load_volume(list(case.images), nan_policy=nan_policy, check_content=True)
        heat = engine.reconstruct(volume.data, volume.spacing, progress=progress)
        save_heatmap(target, heat.cpu(), volume, overwrite=True)
        result.written.append(case.name)
        on_volume and on_volume(case, "done")
    return result
