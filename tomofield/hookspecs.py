"""Hook specifications: every extension point of tomofield, in one place.

A plugin is a module or object with functions decorated by :data:`tomofield.hookimpl`
and named like the specs below. Each ``register_*`` hook receives a ``register``
callback, ``register(name, factory, description="", *, options=None)``: the host owns
naming and duplicate checks (the first registration of a name stays, a later one is left out
with a :class:`~tomofield.errors.PluginWarning`; a hook that raises is left out the same way),
and unknown names fail with the list of valid ones. A
component's options (:class:`tomofield.protocols.Option`) are read from the factory's
``options`` attribute unless given to ``register``. What each factory builds is typed in
:mod:`tomofield.protocols`. Every implementation is called once, when the registry is
first used; results are ignored.

Built-in components are registered by ``tomofield._builtins`` through these same hooks;
third-party packages expose a plugin through the ``tomofield`` entry-point group
(docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pluggy

from tomofield.protocols import Option

hookspec = pluggy.HookspecMarker("tomofield")
hookimpl = pluggy.HookimplMarker("tomofield")


class Register(Protocol):
    """The callback every ``register_*`` hook receives."""

    def __call__(
        self, name: str, factory: Callable[..., Any], description: str = "", *, options: Sequence[Option] | None = None
    ) -> None: ...


@hookspec
def register_encoders(register: Register) -> None:
    """Register 2D encoders.

    ``factory(name, *, in_chans, num_classes, pretrained, norm) -> torch.nn.Module``
    (:class:`tomofield.protocols.EncoderFactory`). Any timm model name also works without
    registration.
    """


@hookspec
def register_heads(register: Register) -> None:
    """Register per-slice score heads.

    ``factory(**options) -> head`` (:class:`tomofield.protocols.Head`); a head is called
    ``head(encoder, slices)`` with slices (N, C, h, w) and returns scores (N, K, h', w')
    (h' = w' = 1 for scalars). Attributes: ``needs_encoder``, ``needs_grad``,
    ``compilable`` (bool) and ``options`` (the keywords the factory takes; each becomes a
    ``tomofield run`` option).
    """


@hookspec
def register_filters(register: Register) -> None:
    """Register reconstruction filters along the slice axis.

    ``factory() -> filter`` (:class:`tomofield.protocols.Filter`) with attributes ``pad``
    (extra slices each side), ``integral`` (bool), ``constant`` (float) and
    ``__call__(p, ds) -> q``; see :mod:`tomofield.filters`.
    """


@hookspec
def register_reconstructors(register: Register) -> None:
    """Register reconstructors: how the stacks' scores become the heatmap.

    ``factory() -> reconstructor`` (:class:`tomofield.protocols.Reconstructor`), called as
    ``reconstructor(chunks, stacks) -> (K, D, H, W)``; see :mod:`tomofield.reconstructors`
    (``fbp``, the default, and ``regularized``).
    """


@hookspec
def register_samplers(register: Register) -> None:
    """Register slice samplers.

    ``factory() -> sampler`` (:class:`tomofield.protocols.Sampler`) with
    ``plan(shape, e, config) -> list[Directions]``; see :mod:`tomofield.samplers`.
    """


@hookspec
def register_postprocessors(register: Register) -> None:
    """Register heatmap post-processors: ``factory() -> fn(heatmap, volume) -> heatmap``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets for ``tomofield prepare NAME`` and ``tomofield train --recipe NAME``.

    ``factory()`` returns a :class:`tomofield.protocols.Dataset`: an object with ``prepare(raw_dir, out_dir, *, seed, val_fraction)
    -> dict[str, Path]`` (writes volumes and dataset CSVs, returns their paths) and
    ``recipe``, a dict of training options (fields of ``tomofield.train.TrainConfig``).
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``tomofield`` click group ``cli``.

    ``cli.add_lazy_command(NAME, "package.module:attribute", SUMMARY)`` registers a command
    that is imported only when it runs, shows its help or completes its options, so that
    ``tomofield --help`` stays instant (:class:`tomofield.cli.group.CommandGroup`); keep
    this hook's module free of heavy imports. ``cli.add_command(command)`` works too, at the
    price of importing the command whenever ``tomofield`` starts. Commands build on
    :mod:`tomofield.cli.toolkit` (error reporting, progress bars, the engine's options), never
    on ``tomofield.cli`` itself.
    """
