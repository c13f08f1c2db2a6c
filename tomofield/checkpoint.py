"""Run directories: the trained encoder and everything needed to rebuild and resume it.

A run directory holds ``model.safetensors`` (the encoder's weights), ``config.json``
(encoder name, input channels, norm, slice size, geometry, training arguments, dataset
hash, metrics) and ``state.safetensors`` (weights, optimizer state and RNG state for
``--resume``). Each file is written atomically; ``state.safetensors`` alone suffices to
resume, so a kill between two writes loses nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tomofield.errors import InputError
from tomofield.io import atomic_write

FORMAT = "tomofield-run/1"
MODEL, CONFIG, STATE = "model.safetensors", "config.json", "state.safetensors"


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True)), overwrite=True)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata), overwrite=True)


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file()


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run directory (no weights read)."""
    p = Path(path)
    if not is_run_dir(p):
        raise InputError(f"{str(p)!r} is not a run directory (no {CONFIG}); expected the output of tomofield train")
    try:
        cfg = json.loads((p / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {str(p / CONFIG)!r}: {exc}") from exc
    if cfg.get("format") != FORMAT:
        raise InputError(f"{str(p / CONFIG)!r} has format {cfg.get('format')!r}; this tomofield reads {FORMAT!r}")
    return cfg


def read_run(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The encoder weights and config of a run directory."""
    from tomofield.encoders import read_safetensors

    cfg = read_run_config(path)
    return read_safetensors(Path(path) / MODEL), cfg


def pack_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Optimizer state as flat tensors plus its JSON hyper-parameters (no pickles)."""
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            tensors[f"opt.{pid}.{key}"] = val if isinstance(val, torch.Tensor) else torch.tensor(val)
    return tensors, json.dumps(sd["param_groups"])


def unpack_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups)})
