"""What a component of each kind must look like: the plugin contract, in one module.

A plugin registers factories through the hooks of :mod:`tomofield.hookspecs`; what the
factories build must satisfy the protocols below (structural typing: no base class to
inherit). A component also declares the options it takes as a tuple of :class:`Option`
in its ``options`` attribute, so every front end (the CLI, a config file) can offer them
without knowing the component: ``tomofield run --head NAME`` gets one command-line option
per declared option, the way the CAM heads get ``--layer``.

docs/plugins.md documents the whole surface with an example plugin.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from tomofield.errors import InputError

if TYPE_CHECKING:  # for the annotations only: this module stays a leaf
    from torch import Tensor, nn

    from tomofield.geometry import Directions
    from tomofield.samplers import SamplingConfig

#: Value types an :class:`Option` may declare.
OPTION_TYPES = (int, float, bool, str)
#: The largest seed tomofield takes (seeds are 0..SEED_MAX, portable across torch and numpy).
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Option:
    """One option of a component, declared by the component itself.

    Attributes:
        name: the keyword the factory takes (``layer``); the CLI spells it ``--layer``.
        type: ``int``, ``float``, ``bool`` (a ``--name/--no-name`` switch) or ``str``.
        default: the factory's default, shown in help texts (the factory applies it).
        help: one line for ``--help``.
        choices: the valid values, if the option takes only a few.
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    #: inclusive bounds of a numeric option (None: unbounded)
    min: float | None = None
    max: float | None = None
    #: from Python the factory also takes objects of its own (a projection matrix for a file name):
    #: those pass unchecked, the factory checks them; the CLI gives ``type``
    objects: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"option name {self.name!r} is not a Python identifier")
        if self.type not in OPTION_TYPES:
            valid = ", ".join(t.__name__ for t in OPTION_TYPES)
            raise ValueError(f"option {self.name!r} has type {self.type!r}; valid: {valid}")

    @property
    def flag(self) -> str:
        """The command-line spelling, ``--name-with-dashes``."""
        return "--" + self.name.replace("_", "-")

    def valid(self) -> str:
        """What the option takes, in words (for messages)."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        words = {int: "an integer", float: "a number", bool: "true or false", str: "a text"}[self.type]
        if self.min is not None and self.max is not None:
            return f"{words} in {self.min}..{self.max}"
        if self.min is not None:
            return f"{words} >= {self.min}"
        if self.max is not None:
            return f"{words} <= {self.max}"
        return words

    def check(self, value: Any, owner: str = "") -> Any:
        """``value`` converted to the option's type and checked against its bounds and choices.

        Raises:
            InputError: naming ``owner``, the option, the value and what is valid.

        >>> Option("pool", int, 16, min=1).check("4")
        4
        >>> Option("pool", int, 16, min=1).check(0, "head 'avgpool'")
        Traceback (most recent call last):
        ...
        tomofield.errors.InputError: head 'avgpool': option pool=0 is not valid; it takes an integer >= 1
        """
        if value is None and self.default is None:
            return None  # an optional option left unset
        if self.objects and not isinstance(value, (str, Path, int, float, bool)):
            return value  # the factory's own kind of object, from Python
        converted = self._convert(value)
        if not self.fits(converted):
            where = f"{owner}: " if owner else ""
            why = "is not finite" if self.type in (int, float) and _non_finite(value) else "is not valid"
            raise InputError(f"{where}option {self.name}={value!r} {why}; it takes {self.valid()}")
        return converted

    def fits(self, value: Any, strict: bool = False) -> bool:
        """Whether ``value`` is of the option's type (with ``strict``, as it is: no text read as a
        number; an integer is a number, a bool is neither) and within its bounds and choices."""
        if strict:
            kind = self.type
            if kind is bool:
                typed = isinstance(value, bool)
            elif kind is float:
                typed = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                typed = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if not typed:
                return False
        elif value is _BAD:
            return False
        if self.choices is not None and value not in self.choices:
            return False
        if self.type in (int, float):
            in_range = (self.min is None or value >= self.min) and (self.max is None or value <= self.max)
            return bool(in_range and math.isfinite(value))
        return True

    def _convert(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text, _BAD)
        if self.type is str:
            return str(value) if isinstance(value, (str, Path)) else _BAD
        if isinstance(value, bool):
            return _BAD
        try:
            number = self.type(value)
        except (TypeError, ValueError, OverflowError):
            return _BAD
        if self.type is int and isinstance(value, float) and value != number:
            return _BAD  # 2.5 is not an integer
        return number


_BAD = object()  # a value that does not convert


def _non_finite(value: Any) -> bool:
    """Whether ``value`` is, or reads as, NaN or an infinity (``nan``, ``inf``, ``1e999``): a number's wrong value,
    which messages call not finite rather than not a number."""
    if isinstance(value, bool):
        return False
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


# -- settings declared once --------------------------------------------------------------------
def setting(
    default: Any,
    help: str = "",
    *,
    type: type | None = None,
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[Any] | None = None,
    short: str | None = None,
    off: str | None = None,
    optional: bool = False,
    cli: bool = True,
    shown: str | None = None,
) -> Any:
    """A field of a settings dataclass, declared once: its default, one-line help, bounds and choices.

    The engine's, the trainer's and the components' settings are such fields; their
    :class:`Option` (:func:`declared`) is what the command line offers, what
    :func:`check_settings` validates and what a run directory's values are checked against.
    ``type`` defaults to the default's; ``short`` is a one-letter alias and ``off`` the
    negative spelling of a switch for the command line, ``cli=False`` keeps it off the command
    line (a run directory sets it); ``optional``: ``None`` is a valid value ("not given",
    resolved later), not only a default; ``shown``: the default as help texts say it, where it
    is resolved later (``None``) or depends on other settings.
    """
    meta = {
        "help": help,
        "type": type,
        "min": min,
        "max": max,
        "choices": tuple(choices) if choices is not None else None,
        "short": short,
        "off": off,
        "optional": optional or default is None,
        "cli": cli,
        "shown": shown,
    }
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: default.copy(), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _option_of(f: dataclasses.Field) -> Option | None:
    """The :class:`Option` a :func:`setting` field declares (None: a plain field)."""
    meta = f.metadata
    if "help" not in meta:
        return None
    default = f.default if f.default is not dataclasses.MISSING else None
    kind = meta["type"] or (type(default) if type(default) in OPTION_TYPES else None)
    if kind is None:
        return None  # a structured setting (a dict of options): its owner checks it
    return Option(f.name, kind, default, meta["help"], meta["choices"], meta["min"], meta["max"])


def declared(cls: Any) -> tuple[Option, ...]:
    """The :class:`Option` of every :func:`setting` field of the dataclass ``cls`` (or of an instance's class)."""
    return tuple(o for f in dataclasses.fields(cls) if (o := _option_of(f)) is not None)


def check_settings(obj: Any, owner: str = "") -> None:
    """Validate every :func:`setting` field of the dataclass instance ``obj``: one loop over the declarations.

    A value must be of the declared type as it is (no text read as a number) and within its
    bounds and choices; ``None`` only where the field is optional.

    Raises:
        InputError: naming ``owner``, the setting, the value and what is valid.

    >>> @dataclass
    ... class Knobs:
    ...     size: int = setting(8, "pixels", min=8, max=64)
    >>> check_settings(Knobs(size=4), "demo")
    Traceback (most recent call last):
    ...
    tomofield.errors.InputError: demo: size must be an integer in 8..64, got 4
    """
    where = f"{owner}: " if owner else ""
    for f in dataclasses.fields(obj):
        opt = _option_of(f)
        if opt is None:
            continue
        value = getattr(obj, f.name)
        if value is None and f.metadata.get("optional"):
            continue
        if not opt.fits(value, strict=True):
            if opt.type in (int, float) and isinstance(value, (int, float)) and _non_finite(value):
                raise InputError(f"{where}{f.name}={value!r} is not finite; it must be {opt.valid()}")
            raise InputError(f"{where}{f.name} must be {opt.valid()}, got {value!r}")


def check_options(options: Sequence[Any]) -> tuple[Option, ...]:
    """``options`` as a tuple, refusing anything but :class:`Option` and repeated names."""
    opts = tuple(options or ())
    bad = [o for o in opts if not isinstance(o, Option)]
    if bad:
        raise TypeError(f"options must be tomofield.protocols.Option objects, got {bad[0]!r}")
    names = [o.name for o in opts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TypeError(f"option(s) declared twice: {', '.join(twice)}")
    return opts


def options_of(obj: Any) -> tuple[Option, ...]:
    """The options ``obj`` (a component class or factory) declares: its ``options``, else the
    :func:`setting` fields of a dataclass (declared once, as the engine's settings are); none if none."""
    if hasattr(obj, "options"):
        return check_options(obj.options)
    return declared(obj) if dataclasses.is_dataclass(obj) else ()


@runtime_checkable
class EncoderFactory(Protocol):
    """Builds a 2D encoder: ``factory(name, *, in_chans, num_classes, pretrained, norm)``.

    The module maps slices (N, C, h, w) to logits (N, num_classes); CAM and feature heads
    also use timm's ``feature_info`` when it has one.
    """

    def __call__(self, name: str, *, in_chans: int, num_classes: int, pretrained: bool, norm: str) -> nn.Module: ...


@runtime_checkable
class Head(Protocol):
    """Scores every slice: ``head(encoder, slices)`` with slices (N, C, h, w) -> (N, K, h', w').

    Attributes:
        needs_encoder: False for heads that read the slice only (``sum``); the engine
            then builds no network.
        needs_grad: True for heads that backpropagate (CAMs): the engine runs them under
            ``no_grad`` instead of ``inference_mode`` and keeps float32 under ``amp=auto``.
        compilable: True when the head only calls the encoder, so ``torch.compile`` of the
            encoder is safe (hooks and autograd tricks do not survive compilation).
        options: what the factory takes, as :class:`Option` (class attribute).
    """

    needs_encoder: bool
    needs_grad: bool
    compilable: bool
    options: ClassVar[tuple[Option, ...]]

    def __call__(self, encoder: nn.Module | None, slices: Tensor) -> Tensor: ...


@runtime_checkable
class Filter(Protocol):
    """Filters each stack along its normal: ``filter(p, ds) -> q``.

    ``p`` (L, M + 2 pad, K, h, w) scores, ``ds`` (L,) slice spacing; ``q`` (L, M, K, h, w).
    The reconstruction is ``constant * 4 pi / L * sum_l w_l q_l`` with ``w_l`` the slice
    area when ``integral`` is true, else 1 (docs/design.md, "Reconstruction constants").
    """

    pad: int
    integral: bool
    constant: float

    def __call__(self, p: Tensor, ds: Tensor) -> Tensor: ...


@runtime_checkable
class Reconstructor(Protocol):
    """Turns the scores of every stack into the heatmap: ``reconstructor(chunks, stacks) -> (K, D, H, W)``.

    ``chunks`` yields ``(scores, dirs)`` per chunk of directions as the encoder scores them:
    scores (L, M + 2 pad, K, h, w), ``dirs`` the chunk's
    :class:`~tomofield.geometry.Directions`. ``stacks`` (:class:`tomofield.pipeline.Stacks`)
    holds the operators of this volume's plan: ``filter(scores, dirs)``,
    ``backprojector()`` (accumulates weighted filtered profiles: filtered backprojection)
    and ``project(x, dirs)`` (the ``sum`` head's scores of a heatmap ``x`` at the chunk's
    planes, with the map heads' cells: the forward model). A streaming reconstructor
    (``fbp``) consumes each chunk as it comes; one that fits the heatmap to the scores
    keeps them (scalar heads: L x (M + 2) numbers per channel).
    """

    def __call__(self, chunks: Iterator[tuple[Tensor, Any]], stacks: Any) -> Tensor: ...


@runtime_checkable
class Sampler(Protocol):
    """Chooses the stacks: ``plan(shape, e, config) -> list[Directions]``.

    ``shape`` the (D, H, W) grid, ``e`` the box half-extents, ``config`` a
    :class:`~tomofield.samplers.SamplingConfig`; all stacks of one group share a slice count.
    """

    def plan(self, shape: Sequence[int], e: Tensor, config: SamplingConfig) -> list[Directions]: ...


#: A post-processor: ``post(heatmap (K, D, H, W), volume (C, D, H, W)) -> heatmap``.
PostProcessor = Callable[["Tensor", "Tensor"], "Tensor"]


@runtime_checkable
class Dataset(Protocol):
    """A public dataset for ``tomofield prepare NAME`` and ``tomofield train --recipe NAME``.

    ``prepare`` writes volumes and dataset CSVs and returns their paths; ``recipe`` holds
    training settings (fields of :class:`tomofield.train.TrainConfig`).
    """

    recipe: dict[str, Any]

    def prepare(self, raw_dir: Path, out_dir: Path, *, seed: int, val_fraction: float) -> dict[str, Path]: ...


def required_attributes(protocol: type) -> tuple[str, ...]:
    """The attributes and methods an object must have to satisfy ``protocol`` (``options`` aside).

    >>> required_attributes(Filter)
    ('pad', 'integral', 'constant', '__call__')
    """
    names = [n for n in vars(protocol).get("__annotations__", {}) if n != "options"]
    names += [n for n, v in vars(protocol).items() if callable(v) and (n == "__call__" or not n.startswith("_"))]
    return tuple(names)


#: The protocol each component kind's factory must build (the encoder entry is the factory itself).
KIND_PROTOCOLS: dict[str, type] = {
    "encoder": EncoderFactory,
    "head": Head,
    "filter": Filter,
    "reconstructor": Reconstructor,
    "sampler": Sampler,
    "dataset": Dataset,
}
