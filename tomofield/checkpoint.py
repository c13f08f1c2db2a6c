"""Run directories: the trained encoder and everything needed to rebuild and resume it.

A run directory holds ``model.safetensors`` (the encoder's weights), ``config.json``
(encoder name, input channels, norm, slice size, geometry, training arguments, dataset
hash, metrics) and ``state.safetensors`` (weights, optimizer state and RNG state for
``--resume``). Each file is written atomically; ``state.safetensors`` alone suffices to
resume, so a kill between two writes loses nothing.

A run directory is untrusted input: someone else's download, a hand edit, a disk that
filled up. ``config.json`` is checked against one schema (:data:`CONFIG_SCHEMA`) when a
:class:`RunDir` is opened, ``state.safetensors`` against :data:`STATE_SCHEMA` by
:func:`read_state`, and the files are read only from inside the folder (:func:`run_file`):
a link that leads out of it is refused. The paths a run records (the dataset CSV, the
teacher) are provenance, type-checked and never opened.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tomofield.encoders import NORMS
from tomofield.errors import InputError
from tomofield.geometry import EXTENTS, GEOMETRIES
from tomofield.intensity import MODES as INTENSITY_MODES
from tomofield.io import atomic_write

FORMAT = "tomofield-run/1"
MODEL, CONFIG, STATE = "model.safetensors", "config.json", "state.safetensors"
#: The slice sizes a run may record (the engine's range, in pixels).
SLICE_SIZES = (8, 4096)
#: The output counts a run may record (the engine's range).
NUM_CLASSES = (1, 100_000)


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
WEIGHTS_KEYS = ("format", *ENGINE_INHERITED, "in_chans", "task", "head_defaults", "diagnostics")


def weights_metadata(config: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata that makes a weights file describe itself (:meth:`RunDir.from_weights`)."""
    return {WEIGHTS_META: json.dumps({k: config[k] for k in WEIGHTS_KEYS if k in config}, sort_keys=True)}


#: What a run must record to lend its weights to an engine: the encoder they were trained as.
ENGINE_REQUIRED = ("encoder",)
#: What a run must record to be a teacher (:class:`~tomofield.train.Teacher`).
TEACHER_REQUIRED = ("encoder", "norm", "in_chans", "task")


# -- the schema ---------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A JSON number (NaN and infinities included: json writes them for undefined metrics)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_in(lo: int, hi: int | None = None) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and lo <= v and (hi is None or v <= hi)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != "" and "\0" not in v


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, str)) or _is_number(v)


def _object(check: Callable[[Any], bool] = lambda v: True, **fields: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """An object whose values pass ``check`` and whose listed ``fields``, where present, pass theirs."""
    return lambda v: (
        isinstance(v, dict)
        and all(isinstance(k, str) and check(x) for k, x in v.items())
        and all(ok(v[k]) for k, ok in fields.items() if k in v)
    )


def _list(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _choice(values: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in values


@dataclass(frozen=True)
class Key:
    """One key of a run's file: what it holds, in words, and the test of a value.

    Attributes:
        valid: what a valid value is, for messages.
        ok: the test.
        choices: the valid values, when the key takes one of a few names.
        recorded_path: a path kept for the record (provenance); checked as text, never opened.
    """

    valid: str
    ok: Callable[[Any], bool]
    choices: tuple[str, ...] = ()
    recorded_path: bool = False


def _choice_key(values: tuple[str, ...]) -> Key:
    return Key("one of " + ", ".join(values), _choice(values), choices=values)


_METRICS = _object(_is_number)
#: ``config.json``: every key a run may record. Only ``format`` is required of every run; a use
#: requires more (:data:`ENGINE_REQUIRED`, :data:`TEACHER_REQUIRED`). Keys this tomofield does not
#: know are ignored (a plugin may record its own), except near-misses of these, refused as typos.
CONFIG_SCHEMA: dict[str, Key] = {
    "format": Key(repr(FORMAT), lambda v: v == FORMAT),
    # a name, never a path or a hub address (timm reads "local-dir:PATH" and "hf-hub:REPO")
    "encoder": Key(
        "a registered or timm encoder name (a non-empty text without /, \\ or :)",
        lambda v: _text(v) and not any(c in v for c in "/\\:"),
    ),
    "in_chans": Key("an integer >= 1", _int_in(1)),
    "num_classes": Key(f"an integer in {NUM_CLASSES[0]}..{NUM_CLASSES[1]}", _int_in(*NUM_CLASSES)),
    "norm": _choice_key(NORMS),
    "slice_size": Key(f"an integer in {SLICE_SIZES[0]}..{SLICE_SIZES[1]}", _int_in(*SLICE_SIZES)),
    "geometry": _choice_key(GEOMETRIES),
    "extent": _choice_key(EXTENTS),
    # absent in runs from before the setting: they trained on the values as stored ("none")
    "intensity": _choice_key(INTENSITY_MODES),
    "diagnostics": Key(
        "an object with learned (true/false), unresolved (a list of texts) and problems (a list of objects "
        "with iteration, kind, message)",
        _object(
            learned=lambda v: isinstance(v, bool),
            unresolved=_list(_text),
            problems=_list(_object(iteration=_int_in(0), kind=_text, message=_text)),
        ),
    ),
    # the trainer's tasks (tomofield.train.TASKS, a layer above) or a plugin's, e.g. simclr
    "task": Key("a task name (a non-empty text: classification, regression, or a plugin's)", _text),
    "training": Key("an object (the training arguments)", _object()),
    "dataset": Key(
        "an object with csv (a path, kept for the record), sha256 (a text), volumes (an integer >= 0)",
        _object(csv=_text, sha256=_text, volumes=_int_in(0)),
        recorded_path=True,
    ),
    "iteration": Key("an integer >= 0", _int_in(0)),
    "metrics": Key("an object of numbers", _METRICS),
    "loss_log": Key("a list of objects of numbers", _list(_METRICS)),
    "teacher": Key("the teacher's run directory (a path, kept for the record)", _text, recorded_path=True),
    "teacher_baseline": Key("a finite number", _finite),
    "head_defaults": Key(
        "an object of head name -> object of option name -> value (true/false, a number or a text)",
        _object(_object(_scalar)),
    ),
}


def _show(value: Any, limit: int = 80) -> str:
    """``value`` as the file has it (JSON), shortened."""
    text = json.dumps(value, allow_nan=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a text", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number" if _is_number(value) else type(value).__name__)


def check_config(cfg: Any, source: str) -> dict[str, Any]:
    """``cfg`` (a parsed ``config.json``) if it fits :data:`CONFIG_SCHEMA`, else an :class:`InputError`.

    Args:
        cfg: the parsed JSON.
        source: the file's path, for messages.
    """
    if not isinstance(cfg, dict):
        raise InputError(
            f"{source!r} holds {_json_type(cfg)}, not an object; expected the {CONFIG} written by tomofield train"
        )
    if cfg.get("format") != FORMAT:
        got = f"format {cfg['format']!r}" if "format" in cfg else "no 'format' key"
        raise InputError(f"{source!r} has {got}; this tomofield reads {FORMAT!r} (the {CONFIG} of tomofield train)")
    for key, value in cfg.items():
        spec = CONFIG_SCHEMA.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, CONFIG_SCHEMA, n=1, cutoff=0.8)
            if close:
                raise InputError(
                    f"{source!r} has an unknown key {key!r}; did you mean {close[0]!r}? "
                    f"valid keys: {', '.join(CONFIG_SCHEMA)}"
                )
            continue
        if spec.ok(value):
            continue
        if spec.choices and isinstance(value, str):
            raise InputError(f"{source!r} records an unknown {key} {value!r}; valid: {', '.join(spec.choices)}")
        raise InputError(f"{source!r}: key {key!r} holds {_show(value)} ({_json_type(value)}); valid: {spec.valid}")
    return cfg


def run_file(run_dir: str | Path, name: str) -> Path:
    """The file ``name`` of a run directory, refused when missing, not a file, or a link that leads outside.

    Raises:
        InputError: naming the file and what is wrong.
    """
    root = Path(run_dir)
    path = root / name
    if not path.is_file():
        what = (
            "is a folder"
            if path.is_dir()
            else "is not a regular file"
            if path.exists()
            else "is a link to nothing"
            if path.is_symlink()
            else "does not exist"
        )
        raise InputError(f"{str(path)!r} {what}; a run directory of tomofield train holds the file {name}")
    real, inside = path.resolve(), root.resolve()
    if not real.is_relative_to(inside):
        raise InputError(
            f"{str(path)!r} is a link to {str(real)!r}, outside the run directory {str(inside)!r}; "
            "tomofield reads a run's files only from inside it (copy the file in instead)"
        )
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read {str(path)!r}: not UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc


def _parse_json(text: str, what: str) -> Any:
    """``text`` parsed, or an :class:`InputError` naming ``what`` (a file, or a file's entry)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InputError(f"{what} is not usable JSON: nested too deeply") from exc


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
            if not _fits(value, opt):
                valid = "one of " + ", ".join(map(str, opt.choices)) if opt.choices else _TYPE_WORDS[opt.type]
                raise InputError(f"{where}.{name} holds {_show(value)}; valid: {valid}")
        return recorded

    def weights(self) -> dict[str, torch.Tensor]:
        """The encoder's weights (``model.safetensors``, inside the folder; or the bare file itself)."""
        from tomofield.encoders import read_safetensors

        return read_safetensors(self.file if self.file is not None else run_file(self.path, MODEL))


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a text"}


def _fits(value: Any, opt: Any) -> bool:
    """Whether a JSON value is of a declared option's type (an integer is a number) and among its choices."""
    kind = opt.type
    ok = isinstance(value, bool) if kind is bool else _finite(value) if kind is float else _is_int(value)
    if kind is str:
        ok = isinstance(value, str)
    return ok and (not opt.choices or value in opt.choices)


# -- state.safetensors ----------------------------------------------------------------------
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HISTORY = _list(_object(_is_number))
#: ``state.safetensors``'s metadata (texts; all but ``dataset_sha256`` hold JSON): key -> (Key, default).
#: A key without a default is required.
STATE_SCHEMA: dict[str, tuple[Key, str | None]] = {
    "iteration": (Key("an integer >= 0", _int_in(0)), None),
    "param_groups": (
        Key(
            "a list of objects, each with params (a list of integers)",
            _list(lambda g: _object(params=_list(_is_int))(g) and "params" in g),
        ),
        None,
    ),
    "history": (Key("a list of objects of numbers", _HISTORY), None),
    "loss_log": (Key("a list of objects of numbers", _HISTORY), "[]"),
    "training": (Key("an object (the training arguments)", _object()), None),
    "dataset_sha256": (Key("64 hexadecimal digits", lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v))), None),
    "world_size": (Key("an integer >= 1", _int_in(1)), "1"),
}
_TENSOR_NAME = re.compile(r"model\..+|opt\.\d+\..+|rng(\.\d+)?")


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
