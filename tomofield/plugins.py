"""Plugin manager and component registry.

Plugins come from three places, in this order: the default plugins (the modules named
in :data:`DEFAULT_PLUGINS`, tomofield's own components, imported by name as pytest does
with its own), the ``tomofield`` entry-point group of installed distributions, and
objects registered at run time with :func:`register_plugin`.
Third-party plugins come only from installed distributions (never from the working
directory: :func:`installed_path`). Setting ``TOMOFIELD_PLUGINS`` to a comma-separated list
of distribution names (``tomofield-medical``) loads only those (empty string: none);
built-ins always load.

A plugin cannot take the host down: a plugin that fails to load, a hook that raises, a
component or command name that is taken already (the first registration stays; a built-in
is never replaced) and a name in ``TOMOFIELD_PLUGINS`` that is not installed are each one
:class:`~tomofield.errors.PluginWarning` naming the plugin and its distribution, and the
faulty part is left out.

This module is a leaf of the package: it imports no component module, so components
(and the encoder lookup) may import it without a cycle.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import distributions
from typing import Any

import pluggy

from tomofield import hookspecs
from tomofield.errors import ComponentError, InputError, PluginWarning, TomofieldError, UnknownComponentError
from tomofield.protocols import Option, check_options, options_of

ENTRY_POINT_GROUP = "tomofield"
ALLOW_ENV = "TOMOFIELD_PLUGINS"
KINDS = ("encoder", "head", "filter", "reconstructor", "sampler", "postprocessor", "dataset")
BUILTIN = "tomofield.builtins"
#: tomofield's own plugins: plugin name -> module, registered through the public hooks.
DEFAULT_PLUGINS = {BUILTIN: "tomofield._builtins"}


@dataclass(frozen=True)
class Component:
    """One registered component: what it is, how to build it, where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    source: str
    #: what the factory takes (:class:`tomofield.protocols.Option`), declared by the component.
    options: tuple[Option, ...] = ()


@dataclass
class _State:
    pm: pluggy.PluginManager
    sources: dict[str, str] = field(default_factory=dict)  # plugin name -> source
    dists: dict[str, str] = field(default_factory=dict)  # plugin name -> "distribution version"
    failed: dict[str, str] = field(default_factory=dict)  # entry point -> error
    components: dict[str, dict[str, Component]] | None = None


_STATE: _State | None = None


def _normalise(name: str) -> str:
    """A distribution name as packaging compares them (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _allowed() -> dict[str, str] | None:
    """The distributions ``TOMOFIELD_PLUGINS`` names, normalised -> as written (None: not set)."""
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {_normalise(n.strip()): n.strip() for n in raw.split(",") if n.strip()}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fault(exc: BaseException) -> str:
    """An exception in one line: ``ValueError: boom``."""
    return f"{type(exc).__name__}: {_one_line(exc)}" if str(exc) else type(exc).__name__


def _warn(message: str) -> None:
    """One :class:`PluginWarning` line: a plugin, or a part of one, is left out."""
    warnings.warn(_one_line(message), PluginWarning, stacklevel=3)


def _who(st: _State, plugin: str) -> str:
    """A plugin in words: ``plugin 'x' (distribution 'x-dist 0.1')``, ``tomofield (built-in)``."""
    if plugin in DEFAULT_PLUGINS:
        return "tomofield (built-in)"
    if plugin in st.dists:
        return f"plugin {plugin!r} (distribution {st.dists[plugin]!r})"
    return f"plugin {plugin!r} (registered at run time)"


def _check_allow_list(allow: dict[str, str], found: list[tuple[Any, Any]]) -> None:
    """Say which distributions ``TOMOFIELD_PLUGINS`` names that are not installed tomofield plugins."""
    installed = {_normalise(d.metadata["Name"]): f"{d.metadata['Name']} {d.version}" for d, _ in found}
    missing = [given for name, given in allow.items() if name not in installed]
    if not missing:
        return
    entry_points = {_normalise(ep.name): d.metadata["Name"] for d, ep in found}
    hints = [
        f"{m!r} is an entry point of {entry_points[_normalise(m)]}" for m in missing if _normalise(m) in entry_points
    ]
    _warn(
        f"{ALLOW_ENV} names {', '.join(map(repr, missing))}, not an installed tomofield plugin distribution "
        f"(one with a 'tomofield' entry point); installed: {', '.join(sorted(installed.values())) or '(none)'}"
        + (f" ({'; '.join(hints)}: name its distribution)" if hints else "")
        + "; built-ins always load"
    )


def installed_path() -> list[str]:
    """``sys.path`` without the working directory.

    Python puts the working directory first on ``sys.path`` for ``python -m`` (and ``''``
    for ``-c`` and the REPL): a folder that holds a ``*.dist-info`` or a module of a
    plugin's name would otherwise inject code into every run started there. Plugins are
    discovered and imported from the other entries only: installed distributions.
    """
    cwd = os.path.realpath(os.getcwd())
    return [p for p in sys.path if p and os.path.realpath(p) != cwd]


def _entry_points() -> list[tuple[Any, Any]]:
    """``(distribution, entry point)`` of the group, one distribution per name (the first on the path)."""
    seen: set[str] = set()
    found = []
    for dist in distributions(path=installed_path()):
        name = _normalise(dist.metadata["Name"] or "")
        if not name or name in seen:
            continue
        seen.add(name)
        found += [(dist, ep) for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
    return sorted(found, key=lambda de: (_normalise(de[0].metadata["Name"]), de[1].name))


def _new_state() -> _State:
    pm = pluggy.PluginManager("tomofield")
    pm.add_hookspecs(hookspecs)
    state = _State(pm)
    for name, module in DEFAULT_PLUGINS.items():
        pm.register(importlib.import_module(module), name=name)
        state.sources[name] = "tomofield (built-in)"
    allow = _allowed()
    found = _entry_points()
    if allow:
        _check_allow_list(allow, found)
    for dist, ep in found:
        if allow is not None and _normalise(dist.metadata["Name"]) not in allow:
            continue
        label = f"{dist.metadata['Name']} {dist.version}"
        saved = sys.path[:]
        sys.path[:] = installed_path()  # the module too comes from an installed place, not the working directory
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not break the host
            state.failed[ep.name] = f"{label}: {_fault(exc)}"
            _warn(f"plugin {ep.name!r} (distribution {label!r}) failed to load: {_fault(exc)}; left out")
            continue
        finally:
            sys.path[:] = saved
        state.dists[ep.name] = label
        where = getattr(plugin, "__file__", None) or "?"
        state.sources[ep.name] = f"{label} (entry point {ep.name} = {ep.value}, from {where})"
    return state


def _state() -> _State:
    global _STATE
    if _STATE is None:
        _STATE = _new_state()
    return _STATE


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (created and loaded on first use)."""
    return _state().pm


def reset() -> None:
    """Forget every loaded plugin; the next use reloads built-ins and entry points."""
    global _STATE
    _STATE = None


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object or module at run time; returns its name."""
    st = _state()
    registered = st.pm.register(plugin, name=name)
    if registered is None:
        raise TomofieldError(f"plugin {name or plugin!r} is already registered or blocked")
    st.sources[registered] = f"runtime ({getattr(plugin, '__name__', type(plugin).__name__)})"
    st.components = None
    return registered


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered under ``name``."""
    st = _state()
    if st.pm.get_plugin(name) is None:
        loaded = ", ".join(n for n, _ in st.pm.list_name_plugin())
        raise TomofieldError(f"no plugin named {name!r}; loaded: {loaded}")
    st.pm.unregister(name=name)
    st.sources.pop(name, None)
    st.components = None


def _collect(st: _State) -> dict[str, dict[str, Component]]:
    """Every plugin's components, built-ins first, then in the order the plugins were registered.

    What a plugin gets wrong leaves that part out with one :class:`PluginWarning`: a name
    another plugin (or the same one) registered first (the first stays: a built-in is never
    replaced), a bad name, factory or options (that component), a hook that raises (every
    component that hook call registered).
    """
    table: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
    for kind in KINDS:
        hook = f"register_{kind}s"
        impls = sorted(getattr(st.pm.hook, hook).get_hookimpls(), key=lambda i: i.plugin_name != BUILTIN)
        for impl in impls:
            plugin = impl.plugin_name
            added: dict[str, Component] = {}  # this hook call's, kept only when the call succeeds

            def register(
                name: str,
                factory: Callable[..., Any],
                description: str = "",
                *,
                options: tuple[Option, ...] | None = None,
                _kind: str = kind,
                _plugin: str = plugin,
                _added: dict[str, Component] = added,
            ) -> None:
                who = _who(st, _plugin)
                if not isinstance(name, str) or not name:
                    _warn(f"{who} registered a {_kind} with a bad name {name!r} (a non-empty text); left out")
                    return
                if not callable(factory):
                    _warn(
                        f"{who} registered {_kind} {name!r} with a factory that is not callable "
                        f"({type(factory).__name__}); left out"
                    )
                    return
                prev = table[_kind].get(name) or _added.get(name)
                if prev is not None and prev.plugin == _plugin:
                    _warn(f"{who} registered {_kind} {name!r} twice; the second is left out")
                    return
                if prev is not None:
                    first = _who(st, prev.plugin)
                    _warn(
                        f"{who} registered {_kind} {name!r}, which {first} registered first; left out (the first stays)"
                    )
                    return
                try:
                    opts = options_of(factory) if options is None else check_options(options)
                except Exception as exc:
                    _warn(f"{who} registered {_kind} {name!r} with bad options: {_fault(exc)}; left out")
                    return
                source = st.sources.get(_plugin, _plugin)
                _added[name] = Component(_kind, name, factory, description, _plugin, source, opts)

            try:
                impl.function(register=register)
            except Exception as exc:  # a plugin's bug: the host carries on without this hook's components
                what = f" (and the {kind}s it registered: {', '.join(added)})" if added else ""
                _warn(f"{_who(st, plugin)} failed in {hook}: {_fault(exc)}; left out{what}")
                continue
            table[kind].update(added)
    return table


def components(kind: str | None = None) -> list[Component]:
    """Every registered component, or those of one kind, sorted by kind and name."""
    st = _state()
    if st.components is None:
        st.components = _collect(st)
    kinds = KINDS if kind is None else (kind,)
    return [c for k in kinds for c in sorted(st.components[k].values(), key=lambda c: c.name)]


def get(kind: str, name: str) -> Component:
    """The component ``name`` of ``kind``; unknown names fail listing the valid ones."""
    if kind not in KINDS:
        raise UnknownComponentError("component kind", kind, list(KINDS))
    components(kind)
    table = _state().components or {}
    if name not in table[kind]:
        raise UnknownComponentError(kind, name, sorted(table[kind]))
    return table[kind][name]


def failed_plugins() -> dict[str, str]:
    """Entry points that failed to load, with the error."""
    return dict(_state().failed)


def describe(kind: str, spec: Any) -> str:
    """A component in words for messages: ``head 'sum'``, ``head 'x' from plugin 'p' (distribution 'p 0.1')``.

    ``spec`` is a registered name (of a component that exists) or a component object.
    """
    if not isinstance(spec, str):
        name = next((n for n in (getattr(spec, a, None) for a in ("name", "__name__")) if isinstance(n, str)), None)
        return f"{kind} {name or type(spec).__name__!r} (given as an object)"
    comp = get(kind, spec)
    if comp.plugin in DEFAULT_PLUGINS:
        return f"{kind} {spec!r}"
    return f"{kind} {spec!r} from {_who(_state(), comp.plugin)}"


def add_commands(cli: Any) -> None:
    """Let every plugin add its commands to the click group ``cli``, one plugin at a time.

    A plugin whose hook raises is left out (one :class:`PluginWarning`); a group that offers
    ``commands_of(plugin)`` (:class:`tomofield.cli.group.CommandGroup`) also refuses a
    plugin's command whose name it has already and removes what a failing hook added.
    """
    st = _state()
    scope = getattr(cli, "commands_of", None)
    for impl in st.pm.hook.register_commands.get_hookimpls():
        who = _who(st, impl.plugin_name)
        try:
            with scope(who) if scope is not None else contextlib.nullcontext():
                impl.function(cli=cli)
        except Exception as exc:  # a plugin's bug: the host carries on without its commands
            _warn(f"{who} failed in register_commands: {_fault(exc)}; its commands are left out")


def build(kind: str, spec: Any, **options: Any) -> Any:
    """A component of ``kind`` from its registered name, or as given: the one builder of components.

    The boundary where components are validated, whoever builds them (the engine, the
    command line, an integration).

    Options are checked against the component's declaration (name, type, bounds); what the
    factory itself refuses (``ValueError``, ``TypeError``) reaches the caller as
    :class:`~tomofield.errors.InputError` naming the component and its options.
    """
    if not isinstance(spec, str):
        if options:
            raise InputError(
                f"{kind} options {sorted(options)} need the {kind}'s registered name; a {kind} given as an object "
                "(here a " + type(spec).__name__ + ") is built already"
            )
        return _check_object(kind, spec)
    comp = get(kind, spec)
    declared = {o.name: o for o in comp.options}
    unknown = sorted(set(options) - set(declared))
    if comp.options and unknown:
        valid = ", ".join(sorted(declared))
        raise InputError(f"{kind} {spec!r} has no option(s) {', '.join(unknown)}; its options: {valid}")
    owner = f"{kind} {spec!r}"
    options = {k: declared[k].check(v, owner) if k in declared else v for k, v in options.items()}
    try:
        built = comp.factory(**options)
    except TomofieldError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise InputError(f"{owner} refused its options {options}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # the factory's own failure (a missing dependency, a bug): name it
        raise ComponentError(f"{describe(kind, spec)} failed to build: {_fault(exc)}") from exc
    missing = _missing(kind, built)
    if missing:
        raise ComponentError(
            f"{describe(kind, spec)}: its factory returned {ComponentError.got(built)}, which lacks {missing}; "
            "a fault of the component, not of the options (tomofield.protocols describes each kind)"
        )
    return built


#: What a component object given to the Engine (not a name) must have; the rest defaults.
_REQUIRED = {
    "head": ("__call__",),
    "filter": ("pad", "integral", "constant", "__call__"),
    "reconstructor": ("__call__",),
    "sampler": ("plan",),
    "postprocessor": ("__call__",),
}


def _missing(kind: str, obj: Any) -> str:
    """What ``obj`` lacks of what its kind needs (tomofield.protocols), in words ('' when nothing)."""
    missing = [a for a in _REQUIRED.get(kind, ()) if not (callable(obj) if a == "__call__" else hasattr(obj, a))]
    return ", ".join(a if a != "__call__" else "__call__ (callable)" for a in missing)


def _check_object(kind: str, obj: Any) -> Any:
    """A component given as an object: refuse one that lacks what its kind needs (tomofield.protocols)."""
    names = _missing(kind, obj)
    if names:
        raise InputError(
            f"{kind} {obj!r} ({type(obj).__name__}) is not a {kind}: it lacks {names}; give a registered name "
            f"(tomofield plugins lists them) or an object as described in tomofield.protocols"
        )
    return obj
