"""What a run directory's files may hold: the schema of ``config.json`` and of ``state.safetensors``'s metadata, and the rule that its files are read only from inside it."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tomofield.calibration import valid_record as _operating_point
from tomofield.encoders import NORMS
from tomofield.errors import InputError
from tomofield.geometry import EXTENTS, GEOMETRIES
from tomofield.intensity import MODES as INTENSITY_MODES

FORMAT = "tomofield-run/1"


MODEL, CONFIG, STATE = "model.safetensors", "config.json", "state.safetensors"


#: The slice sizes a run may record (the engine's range, in pixels).
SLICE_SIZES = (8, 4096)


#: The output counts a run may record (the engine's range).
NUM_CLASSES = (1, 100_000)


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
    "operating_point": Key(
        "an object with threshold (a finite number), scale (> 0), false_positive_rate (in (0, 0.5)), "
        "slices and volumes (integers >= 1), source (a text): tomofield.calibration.OperatingPoint",
        _operating_point,
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
