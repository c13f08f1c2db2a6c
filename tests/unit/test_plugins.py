"""Plugin discovery: built-ins, entry points, run-time registration, errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import tomofield
from tomofield import plugins
from tomofield.cli import cli
from tomofield.errors import PluginWarning, UnknownComponentError


def test_builtins_registered_through_hooks():
    comps = {(c.kind, c.name): c for c in plugins.components()}
    for key in [
        ("head", "sum"),
        ("head", "logit"),
        ("filter", "tomo"),
        ("filter", "none"),
        ("sampler", "fibonacci"),
        ("sampler", "axial"),
        ("encoder", "resnet10t"),
    ]:
        assert comps[key].plugin == plugins.BUILTIN
        assert comps[key].source == "tomofield (built-in)"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownComponentError) as info:
        plugins.get("head", "nope")
    msg = str(info.value)
    assert "unknown head 'nope'" in msg and "logit" in msg and "sum" in msg
    with pytest.raises(UnknownComponentError, match="unknown filter 'ramp'; valid: none, tomo"):
        tomofield.Engine(head="sum", filter="ramp", device="cpu")


def test_unknown_encoder_suggests_timm_names():
    eng = tomofield.Engine(encoder="resnet10", head="logit", device="cpu", directions=2, slices=3, slice_size=8)
    with pytest.raises(UnknownComponentError, match="unknown encoder 'resnet10'.*resnet10t"):
        eng.encoder_for(1)


class DoubleHead:
    name = "double"
    needs_encoder = False
    needs_grad = False

    def __call__(self, encoder, slices):
        return 2 * slices.mean(dim=(2, 3), keepdim=True)


class RuntimePlugin:
    @tomofield.hookimpl
    def register_heads(self, register):
        register("double", DoubleHead, "twice the sum head")


def test_runtime_registration_and_use():
    name = plugins.register_plugin(RuntimePlugin(), name="test-runtime")
    try:
        comp = plugins.get("head", "double")
        assert comp.plugin == "test-runtime" and comp.source.startswith("runtime")
        vol = torch.rand(1, 12, 12, 12)
        kw = dict(filter="tomo", directions=10, slices=6, slice_size=12, device="cpu")
        doubled = tomofield.Engine(head="double", **kw).reconstruct(vol)
        single = tomofield.Engine(head="sum", **kw).reconstruct(vol)
        torch.testing.assert_close(doubled, 2 * single)
    finally:
        plugins.unregister_plugin(name)
    with pytest.raises(UnknownComponentError):
        plugins.get("head", "double")


def test_duplicate_name_is_left_out_naming_both_plugins():
    """The first registration stays (a built-in is never replaced); the later one is one warning (issue 31)."""

    class Clash:
        @tomofield.hookimpl
        def register_heads(self, register):
            register("sum", DoubleHead)

    plugins.register_plugin(Clash(), name="clash")
    try:
        with pytest.warns(
            PluginWarning, match=r"plugin 'clash' .* registered head 'sum', which tomofield \(built-in\)"
        ):
            plugins.components()
        assert plugins.get("head", "sum").plugin == plugins.BUILTIN
    finally:
        plugins.unregister_plugin("clash")


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch):
    """A tiny distribution with a 'tomofield' entry point, importable from tmp_path."""
    pkg = tmp_path / "tomofield_tinyplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        import click
        import tomofield

        class Ones:
            needs_encoder = False
            needs_grad = False
            def __call__(self, encoder, slices):
                return slices.new_ones(slices.shape[0], 1, 1, 1)

        @tomofield.hookimpl
        def register_heads(register):
            register("ones", Ones, "constant one")

        @tomofield.hookimpl
        def register_commands(cli):
            @cli.command("tiny-hello")
            def hello():
                click.echo("hello from tiny")
    """)
    )
    dist = tmp_path / "tomofield_tinyplugin-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tomofield-tinyplugin\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[tomofield]\ntiny = tomofield_tinyplugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tiny"
    sys.modules.pop("tomofield_tinyplugin", None)


def test_entry_point_plugin_is_discovered(installed_plugin):
    comp = plugins.get("head", "ones")
    assert comp.plugin == installed_plugin
    assert comp.source.startswith("tomofield-tinyplugin 1.2.3")
    result = CliRunner().invoke(cli, ["plugins"], terminal_width=250)
    assert result.exit_code == 0
    assert "ones" in result.output and "tomofield-tinyplugin 1.2.3" in result.output


def test_entry_point_commands_are_added(installed_plugin):
    from tomofield.cli.group import CommandGroup

    group = CommandGroup()
    plugins.add_commands(group)
    assert "tiny-hello" in group.commands
    assert CliRunner().invoke(group, ["tiny-hello"]).output == "hello from tiny\n"


def test_allow_list_blocks_other_plugins(installed_plugin, monkeypatch):
    monkeypatch.setenv(plugins.ALLOW_ENV, "someone-else")
    plugins.reset()
    with pytest.raises(UnknownComponentError), pytest.warns(PluginWarning, match="names 'someone-else', not an"):
        plugins.get("head", "ones")
    assert plugins.get("head", "sum").name == "sum"  # built-ins always load
    monkeypatch.setenv(plugins.ALLOW_ENV, "tiny")  # an entry-point name is not a distribution name
    plugins.reset()
    with pytest.raises(UnknownComponentError), pytest.warns(PluginWarning, match="entry point of tomofield-tiny"):
        plugins.get("head", "ones")
    monkeypatch.setenv(plugins.ALLOW_ENV, "Tomofield_TinyPlugin")  # distribution names compare as pip does
    plugins.reset()
    assert plugins.get("head", "ones").plugin == "tiny"


def _fake_distribution(folder: Path, marker: Path) -> None:
    """A dist-info and a module in ``folder``; importing the module writes ``marker``."""
    (folder / "tomofield_cwdplugin.py").write_text(
        "import pathlib, tomofield\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "@tomofield.hookimpl\n"
        "def register_heads(register):\n"
        "    register('from-cwd', object, 'should never load')\n"
    )
    dist = folder / "tomofield_cwdplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tomofield-cwdplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tomofield]\nmedical = tomofield_cwdplugin\n")  # shadows a real name


def test_plugins_never_load_from_the_working_directory(tmp_path, monkeypatch):
    """`python -m tomofield` puts the working directory on sys.path: a dist-info there must not run code."""
    marker = tmp_path / "imported.txt"
    _fake_distribution(tmp_path, marker)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # what python -m does
    plugins.reset()
    names = {c.name for c in plugins.components("head")}
    assert "from-cwd" not in names and not marker.exists()
    assert "tomofield_cwdplugin" not in sys.modules


def test_plugins_never_load_from_the_working_directory_in_a_real_process(tmp_path):
    import subprocess

    marker = tmp_path / "imported.txt"
    _fake_distribution(tmp_path, marker)
    res = subprocess.run(
        [sys.executable, "-m", "tomofield", "plugins"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "from-cwd" not in res.stdout and not marker.exists()
    assert "tomofield-cwdplugin" not in res.stdout


def test_plugins_listing_says_where_each_was_loaded_from(installed_plugin):
    comp = plugins.get("head", "ones")
    assert "tomofield_tinyplugin" in comp.source and comp.source.endswith("__init__.py)")
    assert str(Path(sys.modules["tomofield_tinyplugin"].__file__)) in comp.source


def test_unregistering_an_unknown_plugin_names_the_loaded_ones():
    from tomofield.errors import TomofieldError

    with pytest.raises(TomofieldError, match=r"no plugin named 'nowhere'; loaded: .*tomofield"):
        plugins.unregister_plugin("nowhere")
