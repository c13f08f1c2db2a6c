"""The command group lists commands without importing them, and loads each one when it is used."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from tomofield.cli import BUILTIN_COMMANDS, cli
from tomofield.cli.group import CommandGroup

# A fresh interpreter: what listing the commands imports, and the listing itself.
_PROBE = """
import json, sys
from click.testing import CliRunner
from tomofield.cli import cli
helped = CliRunner().invoke(cli, ["--help"])
completed = CliRunner().invoke(cli, [], env={"_TOMOFIELD_COMPLETE": "bash_complete", "COMP_WORDS": "tomofield ",
                                              "COMP_CWORD": "1"}, prog_name="tomofield")
commands = [f"tomofield.cli.{m}" for m in ("run", "train", "evaluate", "synth", "datasets", "plugins", "demo")]
heavy = sorted(m for m in ("torch", "timm", "scipy", "nibabel", "tomofield.engine", *commands) if m in sys.modules)
print(json.dumps({"help": helped.output, "complete": completed.output, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_listing_the_commands_imports_neither_torch_nor_the_commands(probe):
    assert probe["heavy"] == []
    listed = {line.split()[0] for line in probe["help"].split("Commands:")[1].splitlines() if line.strip()}
    assert set(BUILTIN_COMMANDS) <= listed
    assert {"features", "pretrain", "dicom-to-nifti"} <= listed  # the in-repo plugins' commands too


def test_tab_completion_of_a_command_name_lists_every_command_without_importing_them(probe):
    completed = [line.split(",", 1)[1] for line in probe["complete"].splitlines() if line.startswith("plain,")]
    assert completed == sorted(cli.list_commands(click.Context(cli)))


def test_every_lazy_summary_is_how_its_commands_help_starts():
    ctx = click.Context(cli)
    assert cli.lazy_commands or cli.commands
    for name in cli.list_commands(ctx):
        listed = cli.lazy_commands.get(name)
        command = cli.get_command(ctx, name)
        assert name not in cli.lazy_commands and cli.commands[name] is command  # loaded once, then ordinary
        if listed is None:
            continue
        for limit in (45, 80, 10_000):
            assert click.Command(name, help=listed[1]).get_short_help_str(limit) == command.get_short_help_str(limit)


def _group() -> CommandGroup:
    @click.group(cls=CommandGroup)
    def group() -> None:
        """A group."""

    return group


hello = click.Command("hello", callback=lambda: click.echo("hello"), help="Say hello.\n\nAt length.")


def test_a_lazy_command_runs_shows_its_help_and_gets_quiet():
    group = _group()
    group.add_lazy_command("hi", f"{__name__}:hello", "Say hello.")
    runner = CliRunner()
    listing = runner.invoke(group, ["--help"]).output
    assert "  hi  Say hello.\n" in listing and "hi" in group.lazy_commands  # listed, not loaded
    assert runner.invoke(group, ["hi"]).output == "hello\n"
    assert group.commands["hi"] is hello and "--quiet" in runner.invoke(group, ["hi", "--help"]).output


def test_a_later_registration_of_a_name_wins_either_way():
    group = _group()
    other = click.Command("hi", callback=lambda: click.echo("other"))
    group.add_command(other, "hi")
    group.add_lazy_command("hi", f"{__name__}:hello", "Say hello.")
    assert CliRunner().invoke(group, ["hi"]).output == "hello\n"
    group.add_command(other, "hi")
    assert "hi" not in group.lazy_commands and CliRunner().invoke(group, ["hi"]).output == "other\n"


def test_a_broken_lazy_command_says_which_and_why():
    group = _group()
    group.add_lazy_command("gone", "no_such_module_here:cmd", "Missing.")
    group.add_lazy_command("notacommand", f"{__name__}:_group", "Not a command.")
    res = CliRunner().invoke(group, ["gone"])
    assert res.exit_code == 1 and "command 'gone' (no_such_module_here:cmd) failed to load" in res.output
    res = CliRunner().invoke(group, ["notacommand"])
    assert res.exit_code == 1 and "is a function, not a command" in res.output
    with pytest.raises(ValueError, match="'no-colon' is not 'package.module:attribute'"):
        group.add_lazy_command("x", "no-colon", "X.")
