"""Plugins cannot take the host down (issue 31).

A plugin whose hook raises, that takes a component or command name another one has, or that
``TOMOFIELD_PLUGINS`` names without it being installed, is one ``PluginWarning`` line naming
the plugin and its distribution, and its faulty part is left out; a component that raises or
returns the wrong type, the wrong shape or NaN when the engine calls it is one
``ComponentError`` naming the component and its plugin. Every test also checks that the host
still works: ``tomofield plugins`` lists the built-ins, a built-in head still runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

import tomofield
from tomofield import plugins
from tomofield.cli import BUILTIN_COMMANDS, cli
from tomofield.cli.group import CommandGroup
from tomofield.errors import ComponentError, InputError, PluginWarning
from tomofield.filters import TomoFilter
from tomofield.samplers import FibonacciSampler

TINY = dict(head="sum", directions=4, slices=4, slice_size=8, device="cpu")
VOLUME = torch.rand(1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
HOOKS = ("encoders", "heads", "filters", "reconstructors", "samplers", "postprocessors", "datasets")


# -- helpers -------------------------------------------------------------------------------------
def assert_host_works() -> None:
    """The built-ins are registered and listed, and a built-in head still runs on a tiny volume."""
    for kind, name in (("head", "sum"), ("filter", "tomo"), ("sampler", "fibonacci"), ("reconstructor", "fbp")):
        assert plugins.get(kind, name).plugin == plugins.BUILTIN
    heat = tomofield.Engine(**TINY).reconstruct(VOLUME)
    assert heat.shape == (1, 8, 8, 8) and bool(torch.isfinite(heat).all())
    res = CliRunner().invoke(cli, ["plugins"], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert {("head", "sum"), ("head", "logit"), ("filter", "tomo")} <= builtin_rows(res.stdout)


def builtin_rows(listing: str) -> set[tuple[str, str]]:
    """(kind, name) of the built-in rows of the table ``tomofield plugins`` prints."""
    cells = [[c.strip() for c in line.split("│")[1:]] for line in listing.splitlines() if line.startswith("│")]
    return {(row[0], row[1]) for row in cells if len(row) > 3 and row[3] == "tomofield (built-in)"}


def plugin_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, PluginWarning)]


def warning_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Warning:")]


def with_hook(kind: str, fn) -> object:
    """A run-time plugin object whose hook ``register_<kind>`` is ``fn(register)``."""
    plugin = type(f"{kind.title()}Plugin", (), {})()
    setattr(plugin, f"register_{kind}", tomofield.hookimpl(fn))
    return plugin


def registering(kind: str, name: str, factory, **kw) -> object:
    return with_hook(f"{kind}s", lambda register: register(name, factory, "", **kw))


class SumLike:
    """A head that is the ``sum`` head under another name."""

    needs_encoder = needs_grad = compilable = False

    def __call__(self, encoder, slices):
        return slices.mean(dim=(2, 3), keepdim=True)


@pytest.fixture
def install(tmp_path: Path, monkeypatch):
    """``install(dist, version, source, entry=...)``: a distribution with a ``tomofield`` entry point.

    Its module (``source``, dedented) is importable from ``tmp_path``, as an installed one is.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def make(dist: str, version: str, source: str, entry: str | None = None) -> str:
        module = dist.replace("-", "_")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        name = entry or dist.removeprefix("tomofield-")
        (info / "entry_points.txt").write_text(f"[tomofield]\n{name} = {module}\n")
        modules.append(module)
        return name

    make.site = site  # type: ignore[attr-defined]
    yield make
    for module in modules:
        sys.modules.pop(module, None)


RAISING_HEADS = """
    import tomofield

    class Ones:
        needs_encoder = needs_grad = compilable = False
        def __call__(self, encoder, slices):
            return slices.new_ones(slices.shape[0], 1, 1, 1)

    @tomofield.hookimpl
    def register_heads(register):
        register("ones", Ones, "registered before the error")
        raise ValueError("boom")

    @tomofield.hookimpl
    def register_filters(register):
        from tomofield.filters import TomoFilter
        register("faulty-tomo", TomoFilter, "the tomo filter, from a plugin whose heads fail")
"""


# -- 1. a hook that raises -----------------------------------------------------------------------
@pytest.mark.parametrize("hook", HOOKS)
def test_a_hook_that_raises_is_left_out_and_the_host_carries_on(hook):
    def boom(register):
        register("half-done", SumLike)  # registered before the error: left out with the rest
        raise ValueError("boom")

    plugins.register_plugin(with_hook(hook, boom), name="faulty")
    with pytest.warns(PluginWarning) as record:
        names = {(c.kind, c.name) for c in plugins.components()}
    assert plugin_warnings(record) == [
        f"plugin 'faulty' (registered at run time) failed in register_{hook}: ValueError: boom; left out "
        f"(and the {hook[:-1]}s it registered: half-done)"
    ]
    assert not any(name == "half-done" for _, name in names)
    assert_host_works()


def test_a_hook_that_raises_names_its_distribution_and_the_rest_of_the_plugin_loads(install):
    install("tomofield-faulty", "0.1", RAISING_HEADS)
    with pytest.warns(PluginWarning) as record:
        heads = {c.name for c in plugins.components("head")}
    assert plugin_warnings(record) == [
        "plugin 'faulty' (distribution 'tomofield-faulty 0.1') failed in register_heads: ValueError: boom; left "
        "out (and the heads it registered: ones)"
    ]
    assert "ones" not in heads and "sum" in heads
    assert plugins.get("filter", "faulty-tomo").plugin == "faulty"  # its other hooks still count
    torch.testing.assert_close(
        tomofield.Engine(filter="faulty-tomo", **TINY).reconstruct(VOLUME), tomofield.Engine(**TINY).reconstruct(VOLUME)
    )
    assert_host_works()


def test_the_command_line_says_so_in_one_line_and_lists_the_builtins(install):
    install("tomofield-faulty", "0.1", RAISING_HEADS)
    res = CliRunner().invoke(cli, ["plugins"], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert warning_lines(res.stderr) == [
        "Warning: plugin 'faulty' (distribution 'tomofield-faulty 0.1') failed in register_heads: ValueError: boom; "
        "left out (and the heads it registered: ones)"
    ]
    assert "Traceback" not in res.output and "faulty-tomo" in res.stdout and builtin_rows(res.stdout)


def test_a_plugin_that_fails_to_import_is_one_line(install):
    install("tomofield-unimportable", "0.3", "import tomofield\nraise ImportError('needs libfancy')\n")
    res = CliRunner().invoke(cli, ["plugins"], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert warning_lines(res.stderr) == [
        "Warning: plugin 'unimportable' (distribution 'tomofield-unimportable 0.3') failed to load: ImportError: "
        "needs libfancy; left out"
    ]
    assert plugins.failed_plugins() == {"unimportable": "tomofield-unimportable 0.3: ImportError: needs libfancy"}
    assert_host_works()


def test_a_register_commands_hook_that_raises_leaves_its_commands_out():
    def half_then_boom(cli):
        cli.add_lazy_command("half-done", "tomofield.cli.plugins:plugins_cmd", "Added before the error.")
        raise RuntimeError("no commands today")

    def fine(cli):
        cli.add_command(click.Command("fine-hello", callback=lambda: click.echo("fine")))

    plugins.register_plugin(with_hook("commands", half_then_boom), name="faulty")
    plugins.register_plugin(with_hook("commands", fine), name="fine")
    group = tomofield_group()
    with pytest.warns(PluginWarning) as record:
        plugins.add_commands(group)
    assert plugin_warnings(record) == [
        "plugin 'faulty' (registered at run time) failed in register_commands: RuntimeError: no commands today; "
        "its commands are left out"
    ]
    assert "half-done" not in group.list_commands(click.Context(group))
    assert CliRunner().invoke(group, ["fine-hello"]).output == "fine\n"  # the other plugin's command works
    assert set(BUILTIN_COMMANDS) <= set(group.list_commands(click.Context(group)))
    assert_host_works()


# -- 2. a component name that is taken ---------------------------------------------------------
def test_a_builtin_component_is_never_replaced():
    expected = tomofield.Engine(**TINY).reconstruct(VOLUME)

    class Twice(SumLike):
        def __call__(self, encoder, slices):
            return 2 * super().__call__(encoder, slices)

    plugins.register_plugin(registering("head", "sum", Twice), name="clash")
    with pytest.warns(PluginWarning) as record:
        comp = plugins.get("head", "sum")
    assert plugin_warnings(record) == [
        "plugin 'clash' (registered at run time) registered head 'sum', which tomofield (built-in) registered "
        "first; left out (the first stays)"
    ]
    assert comp.plugin == plugins.BUILTIN
    torch.testing.assert_close(tomofield.Engine(**TINY).reconstruct(VOLUME), expected, rtol=0, atol=0)
    assert_host_works()


TWIN = """
    import tomofield

    class Scaled:
        needs_encoder = needs_grad = compilable = False
        def __call__(self, encoder, slices):
            return {gain} * slices.mean(dim=(2, 3), keepdim=True)

    @tomofield.hookimpl
    def register_heads(register):
        register("twin", Scaled, "the mean times {gain}")
"""


def test_two_plugins_with_one_name_the_first_stays_naming_both_distributions(install):
    install("tomofield-alpha", "0.1", TWIN.format(gain=1))
    install("tomofield-beta", "0.2", TWIN.format(gain=3))
    with pytest.warns(PluginWarning) as record:
        comp = plugins.get("head", "twin")
    assert plugin_warnings(record) == [
        "plugin 'beta' (distribution 'tomofield-beta 0.2') registered head 'twin', which plugin 'alpha' "
        "(distribution 'tomofield-alpha 0.1') registered first; left out (the first stays)"
    ]
    assert comp.plugin == "alpha" and comp.source.startswith("tomofield-alpha 0.1")
    kw = {**TINY, "head": "twin"}
    torch.testing.assert_close(tomofield.Engine(**kw).reconstruct(VOLUME), tomofield.Engine(**TINY).reconstruct(VOLUME))
    plugins.reset()  # as a new process loads them: the command line says it in one line
    res = CliRunner().invoke(cli, ["plugins"], terminal_width=250)
    assert res.exit_code == 0 and warning_lines(res.stderr) == [f"Warning: {plugin_warnings(record)[0]}"]
    assert_host_works()


def test_bad_registrations_are_left_out_one_by_one():
    from tomofield.protocols import Option

    class BadOptions(SumLike):
        options = ("gain",)  # not Option objects

    def hook(register):
        register("", SumLike)
        register("not-callable", 42)
        register("bad-options", BadOptions)
        register("mine", SumLike)
        register("mine", SumLike)  # again, by the same plugin
        register("good", SumLike, options=(Option("gain", float, 1.0),))

    plugins.register_plugin(with_hook("heads", hook), name="sloppy")
    with pytest.warns(PluginWarning) as record:
        heads = {c.name: c for c in plugins.components("head")}
    who = "plugin 'sloppy' (registered at run time)"
    assert plugin_warnings(record) == [
        f"{who} registered a head with a bad name '' (a non-empty text); left out",
        f"{who} registered head 'not-callable' with a factory that is not callable (int); left out",
        f"{who} registered head 'bad-options' with bad options: TypeError: options must be "
        "tomofield.protocols.Option objects, got 'gain'; left out",
        f"{who} registered head 'mine' twice; the second is left out",
    ]
    assert {"mine", "good"} <= set(heads) and not {"", "not-callable", "bad-options"} & set(heads)
    assert_host_works()


# -- 3. a command name that is taken -----------------------------------------------------------
def tomofield_group() -> CommandGroup:
    """A group with tomofield's built-in commands, as ``tomofield.cli.cli`` is before the plugins add theirs."""

    @click.group(cls=CommandGroup)
    def group() -> None:
        """tomofield, for a test."""

    for name, (attr, summary) in BUILTIN_COMMANDS.items():
        group.add_lazy_command(name, f"tomofield.cli.{attr}", summary)
    return group


def test_a_plugin_command_never_replaces_a_builtin_or_another_plugins():
    fake = click.Command("run", callback=lambda: click.echo("not the real run"))

    def first(cli):
        cli.add_lazy_command("run", "tomofield.cli.plugins:plugins_cmd", "Not the real run.")
        cli.add_command(fake, "plugins")
        cli.add_command(click.Command("hello", callback=lambda: click.echo("first hello")))

    def second(cli):
        @cli.command("hello")
        def hello() -> None:
            click.echo("second hello")

    plugins.register_plugin(with_hook("commands", first), name="first")
    plugins.register_plugin(with_hook("commands", second), name="second")
    group = tomofield_group()
    with pytest.warns(PluginWarning) as record:
        plugins.add_commands(group)
    assert plugin_warnings(record) == [
        "plugin 'first' (registered at run time) adds a command 'run', which is tomofield's own; left out "
        "(the first stays)",
        "plugin 'first' (registered at run time) adds a command 'plugins', which is tomofield's own; left out "
        "(the first stays)",
        "plugin 'second' (registered at run time) adds a command 'hello', which plugin 'first' (registered at "
        "run time) added first; left out (the first stays)",
    ]
    assert group.lazy_commands["run"][0] == "tomofield.cli.run:run"
    assert group.lazy_commands["plugins"][0] == "tomofield.cli.plugins:plugins_cmd"
    runner = CliRunner()
    assert runner.invoke(group, ["hello"]).output == "first hello\n"
    assert "Reconstruct the heatmap" in runner.invoke(group, ["run", "--help"]).output
    listing = runner.invoke(group, ["plugins"], terminal_width=250)
    assert listing.exit_code == 0 and builtin_rows(listing.output)
    assert_host_works()


def test_outside_a_plugin_a_later_registration_still_wins():
    """What CommandGroup did before: only a plugin's hook is refused a taken name."""
    group = tomofield_group()
    group.add_command(click.Command("run", callback=lambda: click.echo("mine")), "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        assert CliRunner().invoke(group, ["run"]).output == "mine\n"


# -- 4. a component that breaks its contract at run time ---------------------------------------
class ListHead(SumLike):
    def __call__(self, encoder, slices):
        return slices.mean(dim=(1, 2, 3)).tolist()


class FlatHead(SumLike):
    def __call__(self, encoder, slices):
        return slices.mean(dim=(1, 2, 3))  # (N,) instead of (N, K, 1, 1)


class OneRowHead(SumLike):
    def __call__(self, encoder, slices):
        return super().__call__(encoder, slices)[:1]  # right for one slice, wrong for a batch


class NanHead(SumLike):
    def __call__(self, encoder, slices):
        return super().__call__(encoder, slices) * float("nan")


class LateFailingHead(SumLike):
    def __call__(self, encoder, slices):
        if slices.shape[0] > 1:  # fine on the zero slice the engine probes with, not on a batch
            raise AttributeError("'NoneType' object has no attribute 'features'")
        return super().__call__(encoder, slices)


class ShortFilter(TomoFilter):
    def __call__(self, p, ds):
        return super().__call__(p, ds)[:, 1:]


class ListFilter(TomoFilter):
    def __call__(self, p, ds):
        return super().__call__(p, ds).tolist()


class NanFilter(TomoFilter):
    def __call__(self, p, ds):
        return super().__call__(p, ds) / 0.0


class RaisingFilter(TomoFilter):
    def __call__(self, p, ds):
        raise IndexError("tuple index out of range")


class SmallGrid:
    def __call__(self, chunks, stacks):
        bp = stacks.backprojector()
        for scores, dirs in chunks:
            bp.add(stacks.filter(scores, dirs), dirs)
        return bp.result()[:, ::2, ::2, ::2]


class NoneReconstructor:
    def __call__(self, chunks, stacks):
        return None


class NanReconstructor:
    def __call__(self, chunks, stacks):
        for _ in chunks:
            pass
        return torch.full((1, 8, 8, 8), float("nan"))


class RaisingReconstructor:
    def __call__(self, chunks, stacks):
        raise KeyError("stack")


class NoneSampler:
    def plan(self, shape, e, config):
        return None


class EmptySampler:
    def plan(self, shape, e, config):
        return []


class TensorSampler:
    def plan(self, shape, e, config):
        return [torch.randn(4, 3)]


class NanSampler(FibonacciSampler):
    def plan(self, shape, e, config):
        (dirs,) = super().plan(shape, e, config)
        dirs.s_half[0] = float("nan")
        return [dirs]


class RaisingSampler:
    def plan(self, shape, e, config):
        raise ZeroDivisionError("division by zero")


BROKEN = {
    "a head returning a list": (
        "head",
        ListHead,
        r"returned a list for 1 slice\(s\) \(1, 1, 8, 8\); a head returns scores",
    ),
    "a head returning (N,)": ("head", FlatHead, r"returned a tensor of shape \(1,\) for 1 slice\(s\)"),
    "a head returning one row for a batch": ("head", OneRowHead, r"returned a tensor of shape \(1, 1, 1, 1\) for \d+"),
    "a head returning NaN": ("head", NanHead, r"gave non-finite scores \(NaN or Inf\) for slices of a finite volume"),
    "a head raising on a batch": (
        "head",
        LateFailingHead,
        r"failed on a batch of \d+ slices .*, after scoring a zero slice of that shape: AttributeError",
    ),
    "a filter returning the wrong length": (
        "filter",
        ShortFilter,
        r"returned a tensor of shape \(4, 3, 1, 1, 1\) for scores of shape \(4, 6, 1, 1, 1\); a filter returns "
        r"the profiles \(L, M, K, h, w\) = \(4, 4, 1, 1, 1\)",
    ),
    "a filter returning a list": ("filter", ListFilter, "returned a list for scores of shape"),
    "a filter returning Inf": ("filter", NanFilter, r"returned non-finite profiles \(NaN or Inf\) from finite scores"),
    "a filter raising": ("filter", RaisingFilter, "failed on scores of shape .*: IndexError: tuple index out of range"),
    "a reconstructor on the wrong grid": (
        "reconstructor",
        SmallGrid,
        r"returned a tensor of shape \(1, 4, 4, 4\); a reconstructor returns the heatmap \(K, D, H, W\) on the "
        r"volume's grid, here \(K, 8, 8, 8\)",
    ),
    "a reconstructor returning None": ("reconstructor", NoneReconstructor, "returned a NoneType; a reconstructor"),
    "a reconstructor returning NaN": (
        "reconstructor",
        NanReconstructor,
        r"returned a heatmap with 512 non-finite value\(s\) \(NaN or Inf\) from finite scores",
    ),
    "a reconstructor raising": ("reconstructor", RaisingReconstructor, "failed: KeyError: 'stack'"),
    "a sampler returning None": ("sampler", NoneSampler, "planned a NoneType; a sampler's plan"),
    "a sampler returning no directions": ("sampler", EmptySampler, r"planned no directions \(an empty list\)"),
    "a sampler returning a tensor": ("sampler", TensorSampler, r"planned a tensor of shape \(4, 3\) as group 0"),
    "a sampler returning NaN extents": ("sampler", NanSampler, "planned non-finite directions or extents"),
    "a sampler raising": ("sampler", RaisingSampler, r"failed to plan the grid \(8, 8, 8\): ZeroDivisionError"),
    "a post-processor returning None": ("postprocessor", lambda: lambda heat, vol: None, "returned a NoneType for a"),
    "a post-processor dropping the channels": (
        "postprocessor",
        lambda: lambda heat, vol: heat[0],
        r"returned a tensor of shape \(8, 8, 8\) for a heatmap of shape \(1, 8, 8, 8\)",
    ),
    "a post-processor returning NaN": (
        "postprocessor",
        lambda: lambda heat, vol: heat / 0.0 * 0.0,
        r"returned 512 non-finite value\(s\) \(NaN or Inf\) from a finite heatmap",
    ),
    "a post-processor raising": ("postprocessor", lambda: lambda heat, vol: 1 / 0, "failed: ZeroDivisionError"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_component_is_named_with_its_plugin_not_blamed_on_the_input(case):
    kind, factory, broke = BROKEN[case]
    plugins.register_plugin(registering(kind, "broken", factory), name="shaky")
    arg = {"postprocessor": "postprocess"}.get(kind, kind)
    engine = tomofield.Engine(**{**TINY, arg: ["broken"] if kind == "postprocessor" else "broken"})
    with pytest.raises(ComponentError) as info:
        engine.reconstruct(VOLUME)
    msg = str(info.value)
    assert msg.startswith(f"{kind} 'broken' from plugin 'shaky' (registered at run time)"), msg
    assert re.search(broke, msg), msg
    assert "volume has" not in msg and "fix or mask" not in msg  # never the input's messages
    assert isinstance(info.value, InputError)  # one message on every front end
    assert_host_works()


def test_a_broken_component_names_its_distribution(install):
    install(
        "tomofield-flat",
        "2.0",
        """
        import tomofield

        class Flat:
            needs_encoder = needs_grad = compilable = False
            def __call__(self, encoder, slices):
                return slices.mean(dim=(1, 2, 3))

        @tomofield.hookimpl
        def register_heads(register):
            register("flat", Flat, "scores of the wrong shape")
        """,
    )
    with pytest.raises(ComponentError, match=r"^head 'flat' from plugin 'flat' \(distribution 'tomofield-flat 2.0'\)"):
        tomofield.Engine(**{**TINY, "head": "flat"}).reconstruct(VOLUME)
    assert_host_works()


def test_tomofield_run_prints_a_broken_component_as_one_error(write_nifti, tmp_path):
    plugins.register_plugin(registering("head", "flat", FlatHead), name="shaky")
    src = write_nifti("v.nii.gz", VOLUME[0])
    fast = ["-L", "4", "-M", "4", "--slice-size", "8", "--device", "cpu"]
    res = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "h.nii.gz"), "--head", "flat", *fast])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: head 'flat' from plugin 'shaky' (registered at run time)")
    assert "Traceback" not in res.output and not (tmp_path / "h.nii.gz").exists()
    assert_host_works()


def test_a_head_that_raises_on_its_first_slice_is_named_with_its_plugin():
    """The check that was there (Scorer.check), now naming the plugin, for any exception."""

    class Raising(SumLike):
        def __call__(self, encoder, slices):
            raise NotImplementedError("not today")

    plugins.register_plugin(registering("head", "raising", Raising), name="shaky")
    with pytest.raises(InputError) as info:
        tomofield.Engine(**{**TINY, "head": "raising"}).reconstruct(VOLUME)
    assert str(info.value) == (
        "head 'raising' from plugin 'shaky' (registered at run time) with options {} cannot score 1-channel slices "
        "of 8 x 8 px: NotImplementedError: not today"
    )
    assert_host_works()


def test_a_factory_that_fails_or_builds_nothing_is_named():
    def missing_dependency():
        raise ImportError("No module named 'fancy'")

    plugins.register_plugin(registering("head", "needs-fancy", missing_dependency), name="shaky")
    plugins.register_plugin(registering("filter", "nothing", lambda: None), name="empty")
    with pytest.raises(
        ComponentError, match=r"^head 'needs-fancy' from plugin 'shaky' .* failed to build: ImportError"
    ):
        tomofield.Engine(**{**TINY, "head": "needs-fancy"})
    with pytest.raises(
        ComponentError,
        match=r"^filter 'nothing' from plugin 'empty' .*: its factory returned a NoneType, which lacks pad, integral",
    ):
        tomofield.Engine(**{**TINY, "filter": "nothing"})
    assert_host_works()


def test_a_filter_is_not_blamed_for_what_a_reconstructor_feeds_it():
    """Non-finite profiles from non-finite input are the reconstructor's, not the filter's."""

    class Diverging:
        def __call__(self, chunks, stacks):
            bp = stacks.backprojector()
            for scores, dirs in chunks:
                bp.add(stacks.filter(scores / 0.0, dirs), dirs)
            return bp.result()

    plugins.register_plugin(registering("reconstructor", "diverging", Diverging), name="shaky")
    with pytest.raises(ComponentError, match=r"^reconstructor 'diverging' from plugin 'shaky' .* from finite scores"):
        tomofield.Engine(**{**TINY, "reconstructor": "diverging"}).reconstruct(VOLUME)
    assert_host_works()


def test_a_component_given_as_an_object_is_named_by_its_type():
    with pytest.raises(ComponentError, match=r"^head 'FlatHead' \(given as an object\) .*returned a tensor of shape"):
        tomofield.Engine(**{**TINY, "head": FlatHead()}).reconstruct(VOLUME)
    assert_host_works()


# -- 5. TOMOFIELD_PLUGINS naming what is not installed ----------------------------------------
def installed_distributions() -> list[str]:
    return sorted({f"{d.metadata['Name']} {d.version}" for d, _ in plugins._entry_points()})


def test_an_allow_list_naming_a_missing_distribution_says_so(install, monkeypatch):
    install("tomofield-there", "1.0", TWIN.format(gain=1), entry="there-ep")
    monkeypatch.setenv(plugins.ALLOW_ENV, "tomofield-there, tomofield-nowhere")
    with pytest.warns(PluginWarning) as record:
        heads = {c.name for c in plugins.components("head")}
    installed = installed_distributions()
    assert "tomofield-there 1.0" in installed
    assert plugin_warnings(record) == [
        f"TOMOFIELD_PLUGINS names 'tomofield-nowhere', not an installed tomofield plugin distribution (one with a "
        f"'tomofield' entry point); installed: {', '.join(installed)}; built-ins always load"
    ]
    assert "twin" in heads  # what it names and is there loads
    assert_host_works()


def test_an_allow_list_naming_an_entry_point_says_which_distribution_it_is(install, monkeypatch):
    install("tomofield-there", "1.0", TWIN.format(gain=1), entry="there-ep")
    monkeypatch.setenv(plugins.ALLOW_ENV, "there-ep")
    with pytest.warns(PluginWarning, match="'there-ep' is an entry point of tomofield-there: name its distribution"):
        assert "twin" not in {c.name for c in plugins.components("head")}
    assert_host_works()


def test_an_allow_list_of_installed_distributions_or_of_none_is_quiet(install, monkeypatch):
    install("tomofield-there", "1.0", TWIN.format(gain=1), entry="there-ep")
    for allow in ("Tomofield_There", ""):
        monkeypatch.setenv(plugins.ALLOW_ENV, allow)
        plugins.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("error", PluginWarning)
            assert ("twin" in {c.name for c in plugins.components("head")}) == bool(allow)


def test_the_command_line_says_which_allowed_distribution_is_missing(monkeypatch):
    monkeypatch.setenv(plugins.ALLOW_ENV, "tomofield-nowhere")
    res = CliRunner().invoke(cli, ["plugins"], terminal_width=250)
    assert res.exit_code == 0, res.output
    (line,) = warning_lines(res.stderr)
    assert line.startswith("Warning: TOMOFIELD_PLUGINS names 'tomofield-nowhere', not an installed tomofield plugin")
    assert builtin_rows(res.stdout)
    monkeypatch.delenv(plugins.ALLOW_ENV)
    assert_host_works()


# -- the real command, in a process of its own --------------------------------------------------
def test_a_real_tomofield_process_prints_one_line_per_fault(install, tmp_path):
    """Import time (the group loads the plugins' commands) and run time, as a user sees them."""
    install(
        "tomofield-faulty",
        "0.1",
        RAISING_HEADS
        + """
    @tomofield.hookimpl
    def register_commands(cli):
        cli.add_lazy_command("run", "tomofield_faulty:nothing", "Not the real run.")
    """,
    )
    env = {**os.environ, "PYTHONPATH": str(install.site)}
    env.pop(plugins.ALLOW_ENV, None)
    work = tmp_path / "elsewhere"
    work.mkdir()
    clash = (
        "Warning: plugin 'faulty' (distribution 'tomofield-faulty 0.1') adds a command 'run', which is tomofield's "
        "own; left out (the first stays)"
    )
    helped = subprocess.run(
        [sys.executable, "-m", "tomofield", "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0, helped.stderr
    assert warning_lines(helped.stderr) == [clash] and "Traceback" not in helped.stderr
    assert re.search(r"\n\s+run\s+Reconstruct the heatmap", helped.stdout)
    listed = subprocess.run(
        [sys.executable, "-m", "tomofield", "plugins"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    assert warning_lines(listed.stderr) == [
        clash,
        "Warning: plugin 'faulty' (distribution 'tomofield-faulty 0.1') failed in register_heads: ValueError: boom; "
        "left out (and the heads it registered: ones)",
    ]
    assert "Traceback" not in listed.stderr and "faulty-tomo" in listed.stdout and builtin_rows(listed.stdout)
