"""The command-line toolkit shared by tomofield's commands and plugins' commands.

A plugin that adds a command (hook ``register_commands``) builds it from this module,
never from tomofield's own commands (the other modules of :mod:`tomofield.cli`): error reporting (:func:`friendly`), the consoles
(:data:`err`, :data:`out`), progress bars (:func:`slice_progress`) and the options of an
engine (:func:`engine_options`, :class:`EngineCommand`, :func:`build_engine`).

The library owns every default. Options that stand for an engine or trainer setting
default to ``None`` ("not given") and only what the user gave is passed on, so a run
directory's settings and the library's defaults apply exactly as from Python; help texts
show the library's default, read from it. Only :mod:`tomofield.cli` imports click and rich.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from tomofield import plugins
from tomofield.errors import InputError, PluginWarning, TomofieldError
from tomofield.protocols import Option

if TYPE_CHECKING:
    from tomofield.engine import Engine

# torch, the engine and the file readers are imported by the functions that use them, when
# a command is built or runs: listing the commands (``tomofield --help``, Tab completion)
# must not wait for them.

_WIDTH = None if sys.stdout.isatty() else 200  # no wrapping when piped or captured
# Both consoles print text verbatim: no markup, no highlighting, so a file name such as
# "scan[1].nii.gz" or a list of numbers in a message reaches the user as it is. Style goes
# through rich.text.Text.
#: Messages, progress and warnings.
err = Console(stderr=True, markup=False, highlight=False)
#: Results.
out = Console(width=_WIDTH, markup=False, highlight=False)

__all__ = [
    "EngineCommand",
    "add_quiet_option",
    "HeadParam",
    "build_engine",
    "default_of",
    "engine_options",
    "err",
    "friendly",
    "given",
    "head_params",
    "out",
    "plugin_warnings_as_lines",
    "setting_option",
    "slice_progress",
    "with_default",
]


# -- reporting ------------------------------------------------------------------------------
class _Rate(ProgressColumn):
    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} slices/s" if speed else "- slices/s", style="cyan")


@contextmanager
def slice_progress(description: str, total: int | None = None) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar; yields ``callback(n, total)`` for :meth:`Engine.reconstruct`.

    ``total`` (e.g. :meth:`Engine.count_slices`) shows the bar's length from the start.
    """
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)

        def tick(n: int, total: int) -> None:
            bar.update(task, total=total, advance=n)

        yield tick


@contextmanager
def _heard() -> Iterator[None]:
    """Messages that ``--quiet`` does not silence (errors, warnings)."""
    was, err.quiet = err.quiet, False
    try:
        yield
    finally:
        err.quiet = was


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    with _heard():
        err.print(Text.assemble(("Warning: ", "bold yellow"), str(message)), soft_wrap=True)


def plugin_warnings_as_lines(previous: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints each :class:`~tomofield.errors.PluginWarning` as one line.

    Other warnings go to ``previous``. The group installs it while it runs (and while it loads
    the plugins' commands), so a broken plugin is one ``Warning: plugin ...`` line, not a traceback.
    """

    def show(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        if issubclass(category, PluginWarning):
            _show_warning(message, category)
        else:
            previous(message, category, filename, lineno, file, line)

    return show


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``-q`` of the group (``tomofield -q run``) or of the command; every invocation sets it afresh."""
    root = ctx.find_root()
    if ctx is root:
        root.meta["tomofield.quiet"] = bool(value)
    err.quiet = bool(value) or root.meta.get("tomofield.quiet", False)


def add_quiet_option(command: click.Command) -> None:
    """Give ``command`` ``-q/--quiet``: no progress bars or messages on stderr; results, warnings and errors stay."""
    if not any(p.name == "quiet" for p in command.params):
        command.params.append(
            click.Option(
                ["-q", "--quiet"],
                is_flag=True,
                expose_value=False,
                callback=_set_quiet,
                help="No progress bars or messages; results, warnings and errors still print.",
            )
        )


def friendly(fn: Callable) -> Callable:
    """Turn tomofield's own errors into a one-paragraph message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():  # the library's warnings as one line each, not Python's format
                warnings.showwarning = _show_warning
                # numpy's arithmetic warnings (an empty mean, 0/0 in a metric) say nothing a user can act on;
                # the results carry NaN where they arise
                warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"numpy(\.|$)")
                return fn(*args, **kwargs)
        except TomofieldError as exc:
            with _heard():
                err.print(Text.assemble(("Error: ", "bold red"), str(exc)), soft_wrap=True)
            sys.exit(2)

    return wrapper


# -- defaults -------------------------------------------------------------------------------
def default_of(owner: Any, name: str) -> Any:
    """The library's default of ``name``: a dataclass field's, or a callable's parameter's."""
    if dataclasses.is_dataclass(owner):
        f = {f.name: f for f in dataclasses.fields(owner)}[name]
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    return inspect.signature(owner).parameters[name].default


def with_default(help: str, default: Any) -> str:
    """``help`` with the library's default appended, as ``show_default`` would."""
    if default is None or default == ():
        return help
    shown = default if not isinstance(default, bool) else str(default).lower()
    return f"{help}  [default: {shown}]"


def setting_option(
    owner: Any,
    flag: str,
    help: str | None = None,
    *,
    name: str | None = None,
    resolved: dict[str, Any] | None = None,
    **kw: Any,
) -> Callable:
    """A click option standing for setting ``name`` of the library's ``owner`` (a dataclass or callable).

    Not given by default; the help shows ``owner``'s default, read from it (no copy).
    ``name`` defaults to the flag's first spelling with dashes as underscores. Without
    ``help``, the setting's declaration (:func:`tomofield.protocols.setting`) gives the
    help, the type or choices and the default as help texts say it (``resolved``: the
    defaults of settings declared ``None``, filled later by the library).
    """
    name = name or flag.lstrip("-").split("/")[0].replace("-", "_")
    if help is not None:
        return click.option(flag, name, default=None, help=with_default(help, default_of(owner, name)), **kw)
    decl = {f.name: f for f in dataclasses.fields(owner)}[name]
    meta = decl.metadata
    default = meta["shown"] or (decl.default if decl.default is not None else (resolved or {}).get(name))
    text = with_default(meta["help"], default)
    if "/" in flag:  # a switch: click reads it as one
        return click.option(flag, name, default=None, help=text, **kw)
    kind = (
        click.Choice(list(meta["choices"])) if meta["choices"] else kw.pop("type", meta["type"] or type(decl.default))
    )
    return click.option(flag, name, default=None, type=kind, help=text, **kw)


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave: those whose value is not None (an empty ``multiple``: not given)."""
    return {k: v for k, v in options.items() if v is not None and v != ()}


# -- engine options -------------------------------------------------------------------------
#: Engine arguments that name components or places, with their help; defaults are Engine's.
_COMPONENT_OPTIONS = {
    "encoder": ("--encoder", "Registered or timm encoder name (a run directory's, with --weights RUN)."),
    "weights": ("--weights", "Encoder weights: a .safetensors file or a run directory of tomofield train."),
    "head": ("--head", "Per-slice score head (tomofield plugins lists them)."),
    "filter": ("--filter", "Reconstruction filter along each stack's normal (tomofield plugins lists them)."),
    "reconstructor": (
        "--reconstructor",
        "How the stacks' scores become the heatmap: filled (ToNNO plus the planes' consensus, large lesions come "
        "back filled; the default with --head logit and a tomo filter), fbp (filtered backprojection: plain ToNNO, "
        "every other head's default), regularized (fitted under a non-negativity prior) or calibrated (a monotone "
        "link fitted for solid lesions); none runs the encoder again.",
    ),
    "sampler": ("--sampler", "Slice sampler (tomofield plugins lists them)."),
    "device": ("--device", "auto | cpu | cuda | cuda:N (gpu, gpu:N: the same)."),
}


def _setting_option(f: dataclasses.Field, default: Any) -> Callable:
    meta = f.metadata
    decls = [f"--{f.name.replace('_', '-')}"]
    if isinstance(default, bool):
        decls = [f"{decls[0]}/{meta.get('off') or '--no-' + f.name.replace('_', '-')}"]
    if meta.get("short"):
        decls.append(meta["short"])
    kind = click.Choice(list(meta["choices"])) if meta.get("choices") else type(default)
    if isinstance(default, bool):
        return click.option(*decls, f.name, default=None, help=with_default(meta["help"], default))
    return click.option(*decls, f.name, type=kind, default=None, help=with_default(meta["help"], default))


def engine_options(exclude: Sequence[str] = (), defaults: dict[str, Any] | None = None) -> Callable:
    """Click options for every setting of :class:`~tomofield.EngineConfig` and the components.

    Settings come from the fields that :func:`tomofield.protocols.setting` declares (those it
    leaves on the command line); each option defaults to ``None`` (not given).

    Args:
        exclude: option names to leave out (e.g. ``head`` for a command with a fixed head).
        defaults: this command's own defaults, shown in help and passed on like given values
            (by :func:`build_engine`) when the user gives nothing.
    """
    from tomofield.engine import Engine, EngineConfig
    from tomofield.io import NAN_POLICIES, load_volume

    defaults = dict(defaults or {})

    def decorate(fn: Callable) -> Callable:
        opts: list[Callable] = []
        for name, (flag, help) in _COMPONENT_OPTIONS.items():
            if name in exclude:
                continue
            default = defaults.get(name, default_of(Engine, name))
            opts.append(
                click.option(
                    flag,
                    name,
                    default=None,
                    type=click.Path() if name == "weights" else str,
                    help=with_default(help, default),
                )
            )
        if "preset" not in exclude:
            from tomofield.engine import PRESETS

            opts.append(
                click.option(
                    "--preset",
                    "preset",
                    type=click.Choice(list(PRESETS)),
                    default=None,
                    help="Directions, slices and slice size chosen together from the quality-cost curve: "
                    + "; ".join(f"{name}: {p.describe()}" for name, p in PRESETS.items())
                    + ". Options given explicitly win; a trained run's slice size stays.",
                )
            )
        if "post" not in exclude:
            opts.append(
                click.option(
                    "--post", "post", multiple=True, help="Post-processor(s), applied in order (e.g. clip-negative)."
                )
            )
        for f in dataclasses.fields(EngineConfig):
            if f.metadata.get("cli") and f.name not in exclude:
                opts.append(_setting_option(f, defaults.get(f.name, f.default)))
        if "weights" not in exclude:
            opts.append(
                click.option(
                    "--random-weights",
                    "random_weights",
                    is_flag=True,
                    default=None,
                    help="Run an encoder-based head on a randomly initialised network (seeded by --seed): for "
                    "testing the pipeline, not for results. Without it, a head that runs the encoder needs "
                    "--weights or --pretrained.",
                )
            )
        if "nan_policy" not in exclude:
            opts.append(
                click.option(
                    "--nan-policy",
                    "nan_policy",
                    type=click.Choice(NAN_POLICIES),
                    default=None,
                    help=with_default(
                        "NaN/Inf voxels: refuse the volume, or replace them by 0.",
                        default_of(load_volume, "nan_policy"),
                    ),
                )
            )
        for opt in reversed(opts):
            fn = opt(fn)
        fn.__tomofield_defaults__ = defaults  # type: ignore[attr-defined]  # read by build_engine
        return fn

    return decorate


@dataclass(frozen=True)
class HeadParam:
    """One command-line option standing for an option of one or more heads."""

    param: str
    option: Option
    heads: tuple[str, ...]

    @property
    def flag(self) -> str:
        return self.option.flag if self.param == f"head_{self.option.name}" else "--" + self.param[5:].replace("_", "-")


def head_params() -> list[HeadParam]:
    """The options the registered heads declare, one command-line option per name.

    Heads that declare the same name with the same type share one option (``--target``);
    a later head declaring the name with another type gets ``--HEAD-NAME``.
    """
    owners: dict[str, tuple[Option, list[str]]] = {}
    extra: list[HeadParam] = []
    for comp in plugins.components("head"):
        for opt in comp.options:
            if opt.name not in owners:
                owners[opt.name] = (opt, [comp.name])
            elif owners[opt.name][0].type is opt.type:
                owners[opt.name][1].append(comp.name)
            else:
                safe = re.sub(r"\W+", "_", comp.name).strip("_")
                extra.append(HeadParam(f"head_{safe}_{opt.name}", opt, (comp.name,)))
    return [HeadParam(f"head_{n}", opt, tuple(heads)) for n, (opt, heads) in owners.items()] + extra


def _head_click_option(hp: HeadParam) -> click.Option:
    opt = hp.option
    heads = ", ".join(hp.heads)
    help = with_default(f"{opt.help} (heads: {heads})", opt.default)
    if opt.type is bool:
        name = hp.flag[2:]
        return click.Option([f"--{name}/--no-{name}", hp.param], default=None, help=help)
    kind = click.Choice([str(c) for c in opt.choices]) if opt.choices else opt.type
    return click.Option([hp.flag, hp.param], type=kind, default=None, help=help)


class EngineCommand(click.Command):
    """A command whose heads' declared options become options of its own, read from the registry.

    The options are looked up at each invocation, so a plugin's head gets its options
    (``tomofield run --head NAME --its-option``) however it was registered.
    """

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        help_option = self.get_help_option(ctx)
        own = [p for p in params if p is not help_option]
        taken = {p.name for p in own}
        heads = [_head_click_option(hp) for hp in head_params() if hp.param not in taken]
        return own + heads + ([help_option] if help_option is not None else [])


def head_options(head: str, options: dict[str, Any]) -> dict[str, Any]:
    """The head options among a command's given ``options``, checked against head ``head``'s declaration."""
    out_: dict[str, Any] = {}
    for hp in head_params():
        value = options.get(hp.param)
        if value is None:
            continue
        if head not in hp.heads:
            comp = plugins.get("head", head)
            mine = [p.flag for p in head_params() if head in p.heads]
            raise InputError(
                f"{hp.flag} is not an option of head {comp.name!r}; its options: "
                f"{', '.join(mine) if mine else '(none)'}"
            )
        out_[hp.option.name] = value
    return out_


def build_engine(options: dict[str, Any], **fixed: Any) -> Engine:
    """An :class:`~tomofield.Engine` from a command's options: only what was given, then ``fixed``.

    Args:
        options: the command's keyword arguments (click's ``**options``); ``None`` is "not given".
        **fixed: arguments the command sets itself (e.g. ``head="features"``, ``head_options``).
    """
    from tomofield.engine import Engine, EngineConfig

    ctx = click.get_current_context(silent=True)
    command_defaults = getattr(ctx.command.callback, "__tomofield_defaults__", {}) if ctx else {}
    o = {**command_defaults, **given(options)}
    settings = {f.name for f in dataclasses.fields(EngineConfig)}
    kwargs: dict[str, Any] = {
        k: o[k]
        for k in ("encoder", "head", "filter", "reconstructor", "preset", "sampler", "weights", "device")
        if k in o
    }
    if "post" in o:
        kwargs["postprocess"] = list(o["post"])
    config = {k: v for k, v in o.items() if k in settings}
    head = fixed.get("head", kwargs.get("head", default_of(Engine, "head")))
    if isinstance(head, str):
        plugins.get("head", head)  # an unknown head fails here, listing the valid ones
        hopts = head_options(head, o)
        if hopts:
            config["head_options"] = {**hopts, **fixed.pop("head_options", {})}
    engine = Engine(**{**kwargs, **config, **fixed})
    if engine.random_encoder and not o.get("random_weights") and "weights" in _weights_options(ctx):
        raise InputError(
            f"head {engine.head_name!r} runs the encoder {engine.encoder_name!r}, but no --weights were given: the "
            "network would be random and its heatmap meaningless. Give --weights (a run directory of tomofield "
            "train or a .safetensors file) or --pretrained (timm weights from the local cache), or --random-weights "
            "to run it anyway"
        )
    return engine


def _weights_options(ctx: click.Context | None) -> set[str]:
    """The weight options the current command offers (a command without --weights fixes its own encoder)."""
    return {p.name for p in ctx.command.params} & {"weights"} if ctx else set()
