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


#: What a run directory provides to an :class:`~tomofield.Engine` built on it (under explicit settings).
ENGINE_INHERITED = ("encoder", "slice_size", "geometry", "extent", "norm", "num_classes")
#: What a teacher run provides to a :class:`~tomofield.train.TrainConfig` (under explicit settings).
TRAINING_INHERITED = ("encoder", "norm", "slice_size", "geometry", "extent")


class RunDir:
    """A run directory of ``tomofield train``, read once: the one resolver of runs.

    :class:`~tomofield.Engine` (``weights=RUN``), the trainer (``teacher=RUN``) and the
    CLI all take their inherited settings from here, so the library and the command line
    inherit exactly the same things.

    Attributes:
        path: the folder.
        config: its ``config.json``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not is_run_dir(self.path):
            raise InputError(
                f"{str(self.path)!r} is not a run directory (no {CONFIG}); expected the output of tomofield train"
            )
        try:
            cfg = json.loads((self.path / CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {str(self.path / CONFIG)!r}: {exc}") from exc
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
            raise InputError(f"{str(self.path / CONFIG)!r} has format {got!r}; this tomofield reads {FORMAT!r}")
        self.config: dict[str, Any] = cfg

    def inherited(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The values of ``keys`` this run records (absent keys left out)."""
        return {k: self.config[k] for k in keys if k in self.config}

    def engine_defaults(self) -> dict[str, Any]:
        """Engine settings this run provides: :data:`ENGINE_INHERITED`."""
        return self.inherited(ENGINE_INHERITED)

    def training_defaults(self) -> dict[str, Any]:
        """Training settings this run provides as a teacher: :data:`TRAINING_INHERITED`."""
        return self.inherited(TRAINING_INHERITED)

    def head_defaults(self, head: str) -> dict[str, Any]:
        """Options of head ``head`` this run records (e.g. a density run's regression scale)."""
        return dict(self.config.get("head_defaults", {}).get(head, {}))

    def weights(self) -> dict[str, torch.Tensor]:
        """The encoder's weights (``model.safetensors``)."""
        from tomofield.encoders import read_safetensors

        return read_safetensors(self.path / MODEL)


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
