"""A run directory: :class:`RunDir`, the one reader of runs (and builder of their encoders), and :func:`write_run`, the one writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tomofield.calibration import OperatingPoint
from tomofield.checkpoint.schema import (
    CONFIG,
    CONFIG_SCHEMA,
    FORMAT,
    MODEL,
    _parse_json,
    _read_text,
    _show,
    check_config,
    run_file,
)
from tomofield.errors import InputError
from tomofield.io import atomic_write


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
ENGINE_INHERITED = ("encoder", "slice_size", "geometry", "extent", "norm", "num_classes", "intensity")


#: What a teacher run provides to a :class:`~tomofield.train.TrainConfig` (under explicit settings).
TRAINING_INHERITED = ("encoder", "norm", "slice_size", "geometry", "extent", "intensity")


#: The metadata key of ``model.safetensors`` that holds the run's settings (JSON), and which
#: keys of ``config.json`` it copies: what an engine inherits, how the outputs read, the verdict.
WEIGHTS_META = "tomofield"


WEIGHTS_KEYS = ("format", *ENGINE_INHERITED, "in_chans", "task", "head_defaults", "diagnostics", "operating_point")


def weights_metadata(config: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata that makes a weights file describe itself (:meth:`RunDir.from_weights`)."""
    return {WEIGHTS_META: json.dumps({k: config[k] for k in WEIGHTS_KEYS if k in config}, sort_keys=True)}


#: What a run must record to lend its weights to an engine: the encoder they were trained as.
ENGINE_REQUIRED = ("encoder",)


#: What a run must record to be a teacher (:class:`~tomofield.train.Teacher`).
TEACHER_REQUIRED = ("encoder", "norm", "in_chans", "task")


class RunDir:
    """A run directory of ``tomofield train``, read once and checked: the one resolver of runs.

    :class:`~tomofield.Engine` (``weights=RUN``), the trainer (``teacher=RUN``) and the
    CLI all take their inherited settings from here, so the library and the command line
    inherit exactly the same things.

    Attributes:
        path: the folder.
        config: its ``config.json``, checked against :data:`CONFIG_SCHEMA`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        #: the bare weights file this run was read from (:meth:`from_weights`), or None for a folder
        self.file: Path | None = None
        if not is_run_dir(self.path):
            raise InputError(
                f"{str(self.path)!r} is not a run directory (no {CONFIG}); expected the output of tomofield train"
            )
        source = run_file(self.path, CONFIG)
        cfg = _parse_json(_read_text(source), f"{str(source)!r}")
        self.config: dict[str, Any] = check_config(cfg, str(source))

    @classmethod
    def from_weights(cls, path: str | Path) -> RunDir | None:
        """The run a bare ``.safetensors`` file describes in its metadata (:data:`WEIGHTS_META`), or None.

        ``tomofield train`` writes the settings an engine inherits (:data:`WEIGHTS_KEYS`) into
        its ``model.safetensors``, so ``--weights run/model.safetensors`` alone reconstructs
        what ``--weights run/`` does. A file without them (any other safetensors) gives None.

        Raises:
            InputError: the metadata is there but not valid JSON or does not fit the schema.
        """
        path = Path(path)
        if not path.is_file() or path.suffix.lower() != ".safetensors":
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # not a safetensors file: read_safetensors says so when the weights are read
            return None
        if WEIGHTS_META not in meta:
            return None
        where = f"{path} metadata {WEIGHTS_META}"
        run = object.__new__(cls)
        run.path, run.file = path.parent, path
        run.config = check_config(_parse_json(meta[WEIGHTS_META], repr(where)), where)
        return run

    @property
    def config_path(self) -> Path:
        """The run's ``config.json`` (or, for a bare weights file, the file that holds its settings)."""
        return self.file if self.file is not None else self.path / CONFIG

    def require(self, keys: tuple[str, ...], use: str) -> None:
        """Refuse a run whose ``config.json`` lacks one of ``keys``, which ``use`` needs."""
        missing = [k for k in keys if k not in self.config]
        if missing:
            what = "; ".join(f"{k}: {CONFIG_SCHEMA[k].valid}" for k in missing)
            raise InputError(
                f"{str(self.config_path)!r} lacks the key(s) {', '.join(map(repr, missing))}, which {use} needs "
                f"({what}); is it a run directory written by tomofield train?"
            )

    def inherited(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The values of ``keys`` this run records (absent keys left out)."""
        return {k: self.config[k] for k in keys if k in self.config}

    def engine_defaults(self) -> dict[str, Any]:
        """Engine settings this run provides: :data:`ENGINE_INHERITED` (it must name its encoder)."""
        self.require(ENGINE_REQUIRED, "an engine built on its weights")
        return self.inherited(ENGINE_INHERITED)

    def training_defaults(self) -> dict[str, Any]:
        """Training settings this run provides as a teacher: :data:`TRAINING_INHERITED`."""
        return self.inherited(TRAINING_INHERITED)

    def operating_point(self) -> OperatingPoint | None:
        """The encoder's operating point (:mod:`tomofield.calibration`) the run records, or None."""
        record = self.config.get("operating_point")
        return OperatingPoint.from_json(record) if record is not None else None

    def head_defaults(self, head: str) -> dict[str, Any]:
        """Options of head ``head`` this run records (e.g. a density run's regression scale).

        Each must be an option the head declares, of its type; a text only where the option
        takes one of a few choices, so that a run never makes tomofield open a file it names.
        """
        recorded = dict(self.config.get("head_defaults", {}).get(head, {}))
        if not recorded:
            return {}
        from tomofield import plugins

        try:
            declared = {o.name: o for o in plugins.get("head", head).options}
        except LookupError:
            return recorded  # the engine names the unknown head and the valid ones
        where = f"{str(self.config_path)!r}: head_defaults.{head}"
        for name, value in recorded.items():
            opt = declared.get(name)
            if opt is None:
                valid = ", ".join(sorted(declared)) or "(none)"
                raise InputError(f"{where} sets {name!r}, which head {head!r} does not take; its options: {valid}")
            if opt.type is str and not opt.choices:
                raise InputError(
                    f"{where}.{name} is {_show(value)}: a run may not set the text option {name!r} "
                    "(it may name a file); give it on the command line instead"
                )
            if not opt.fits(value, strict=True):  # the option's own declaration: type, bounds, choices
                raise InputError(f"{where}.{name} holds {_show(value)}; valid: {opt.valid()}")
        return recorded

    def weights(self) -> dict[str, torch.Tensor]:
        """The encoder's weights (``model.safetensors``, inside the folder; or the bare file itself), read once."""
        from tomofield.encoders import read_safetensors

        if getattr(self, "_weights", None) is None:
            self._weights = read_safetensors(self.file if self.file is not None else run_file(self.path, MODEL))
        return self._weights

    def build_encoder(
        self, in_chans: int | None = None, *, norm: str | None = None, num_classes: int | None = None
    ) -> torch.nn.Module:
        """The run's encoder with its weights: the one loader of a run's network.

        Built by the name, norm and output count the run records (``norm`` and
        ``num_classes`` given here win), for ``in_chans`` input channels (default: the
        run's), its weights loaded strictly. No pretrained weights are fetched: the run's
        own replace them.

        Raises:
            InputError: the run names no encoder, or its weights do not fit the network.
        """
        from tomofield.encoders import build_encoder, load_weights

        self.require(ENGINE_REQUIRED, "building its encoder")
        cfg = self.config
        model = build_encoder(
            cfg["encoder"],
            in_chans=int(in_chans if in_chans is not None else cfg.get("in_chans", 1)),
            num_classes=int(num_classes if num_classes is not None else cfg.get("num_classes", 1)),
            norm=norm if norm is not None else cfg.get("norm", "frozen-bn"),
        )
        source = self.file if self.file is not None else self.path / MODEL
        return load_weights(model, self.weights(), str(source))


def write_run(run_dir: str | Path, weights: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write a run directory: ``model.safetensors`` (carrying the settings an engine inherits) and ``config.json``.

    The one writer of runs, for the trainer and every plugin that trains: ``config`` gets
    ``format`` and is checked against :data:`CONFIG_SCHEMA` before anything is written,
    each file is written atomically, and the weights carry :func:`weights_metadata`, so a
    bare copy of ``model.safetensors`` is a run too. Returns the folder.

    Raises:
        InputError: ``config`` does not fit the schema (naming the key).
    """
    path = Path(run_dir)
    config = check_config({"format": FORMAT, **config}, str(path / CONFIG))
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / MODEL, weights, weights_metadata(config))
    write_json(path / CONFIG, config)
    return path
