"""The checkpoint to resume from: ``state.safetensors`` (weights, optimizer, random states), checked, and the optimizer packed without pickles."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tomofield.checkpoint.schema import _TENSOR_NAME, STATE, STATE_SCHEMA, _is_number, _parse_json, _show, run_file
from tomofield.errors import InputError


@dataclass
class State:
    """A checked ``state.safetensors``: its decoded metadata; :meth:`tensors` loads the rest.

    Attributes:
        path: the file.
        iteration: the step it was written at.
        param_groups: the optimizer's hyper-parameters.
        history: the validation records so far.
        loss_log: the mean training loss between checkpoints.
        training: the training arguments it was written with.
        dataset_sha256: the training dataset's hash.
        world_size: the number of processes that wrote it.
    """

    path: Path
    iteration: int
    param_groups: list[dict[str, Any]]
    history: list[dict[str, Any]]
    loss_log: list[dict[str, Any]]
    training: dict[str, Any]
    dataset_sha256: str
    world_size: int

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights, optimizer and RNG tensors."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"cannot read {str(self.path)!r} as safetensors: {exc}") from exc


def read_state(run_dir: str | Path) -> State:
    """The run's ``state.safetensors``, its header and metadata checked against :data:`STATE_SCHEMA`.

    Reads the header only; nothing is written.

    Raises:
        InputError: the file is missing, a link out of the run directory, not a (whole)
            safetensors file, or its metadata or tensor names are not a checkpoint's.
    """
    from safetensors import SafetensorError, safe_open

    path = run_file(run_dir, STATE)
    source = str(path)
    try:
        with safe_open(source, framework="pt") as fh:
            meta = fh.metadata()
            names = list(fh.keys())
            kinds = {n: (fh.get_slice(n).get_dtype(), len(fh.get_slice(n).get_shape())) for n in names if "rng" in n}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(
            f"cannot read {source!r} as safetensors (truncated, or another kind of file): {exc}; "
            "it should be the checkpoint tomofield train writes"
        ) from exc
    if not meta:
        raise InputError(f"{source!r} has no metadata; it is not a checkpoint written by tomofield train")
    values: dict[str, Any] = {}
    for key, (spec, default) in STATE_SCHEMA.items():
        if key not in meta and default is None:
            raise InputError(
                f"{source!r} lacks the metadata key {key!r} ({spec.valid}); "
                "it is not a checkpoint written by tomofield train"
            )
        raw = meta.get(key, default)
        value = raw if key == "dataset_sha256" else _parse_json(raw, f"{source!r}: metadata {key!r}")
        if not spec.ok(value):
            raise InputError(f"{source!r}: metadata {key!r} holds {_show(value)}; valid: {spec.valid}")
        values[key] = value
    odd = [n for n in names if not _TENSOR_NAME.fullmatch(n)]
    if odd:
        raise InputError(
            f"{source!r} holds tensor(s) {', '.join(map(repr, odd[:5]))} that are not a checkpoint's "
            "(model.NAME, opt.N.NAME, rng, rng.N)"
        )
    if not any(n.startswith("model.") for n in names):
        raise InputError(f"{source!r} holds no model weights (model.NAME tensors); it is not a checkpoint")
    for r in range(values["world_size"]):
        name = "rng" if r == 0 else f"rng.{r}"
        if kinds.get(name) != ("U8", 1):
            got = "missing" if name not in kinds else f"{kinds[name][0]} with {kinds[name][1]} dimension(s)"
            raise InputError(
                f"{source!r}: the random state {name!r} of process {r} of {values['world_size']} "
                f"should be a 1-D uint8 tensor, got {got}"
            )
    return State(path=path, **values)


def pack_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Optimizer state as flat tensors plus its JSON hyper-parameters (no pickles)."""
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            tensors[f"opt.{pid}.{key}"] = val if isinstance(val, torch.Tensor) else torch.tensor(val)
    return tensors, json.dumps(sd["param_groups"])


def _same_kind(a: Any, b: Any) -> bool:
    """Whether JSON values ``a`` and ``b`` have the same type (numbers alike), lists element by element."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        seqs = isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
        return seqs and len(a) == len(b) and all(map(_same_kind, a, b))
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b)
    return type(a) is type(b)


def unpack_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str | list[dict[str, Any]]
) -> None:
    """Load :func:`pack_optimizer`'s output into ``opt`` (``groups`` as JSON text or decoded).

    Raises:
        InputError: the groups or the state do not fit ``opt`` (another optimizer, another model).
    """
    groups = json.loads(groups) if isinstance(groups, str) else groups
    mine = opt.state_dict()["param_groups"]
    if len(groups) != len(mine):
        raise InputError(f"{len(groups)} parameter group(s) recorded, the optimizer has {len(mine)}")
    for i, (theirs, ours) in enumerate(zip(groups, mine, strict=True)):
        if theirs.keys() != ours.keys() or theirs["params"] != ours["params"]:
            raise InputError(f"parameter group {i} records {sorted(theirs)}, the optimizer's has {sorted(ours)}")
        bad = [k for k in ours if not _same_kind(theirs[k], ours[k])]
        if bad:
            raise InputError(
                f"parameter group {i}: {', '.join(f'{k}={theirs[k]!r}' for k in bad)} not of the right type"
            )
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            i = int(pid)
            if i >= len(params) or (val.dim() > 0 and val.shape != params[i].shape):
                shape = "no such parameter" if i >= len(params) else f"parameter shape {tuple(params[i].shape)}"
                raise InputError(f"optimizer state {key!r} {tuple(val.shape)} does not fit ({shape})")
            state.setdefault(i, {})[name] = val
    if len({frozenset(st) for st in state.values()}) > 1:
        raise InputError("the optimizer state records different entries for different parameters")
    opt.load_state_dict({"state": state, "param_groups": groups})
