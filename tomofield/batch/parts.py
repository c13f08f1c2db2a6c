"""How a dataset is shared out: independent parts (a SLURM array), ranks under torchrun, and where each heatmap goes."""

from __future__ import annotations

from pathlib import Path

from tomofield.dataset import Case
from tomofield.errors import InputError


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
