"""The ``tomofield`` command group: commands imported only when used, plugins' commands never replacing another's."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from tomofield.cli.toolkit import add_quiet_option, plugin_warnings_as_lines
from tomofield.errors import PluginWarning


class CommandGroup(click.Group):
    """A click group that imports each of its commands only when it is used.

    :meth:`add_lazy_command` registers a command by reference (``"module:attribute"``) with
    its one-line summary: listing the commands (``tomofield --help``, Tab completion of a
    command name) shows the summary and imports nothing; running the command, showing its
    own help or completing its options imports it. Commands added the usual way
    (``add_command``) work as in any click group. Every command gets ``-q/--quiet``.

    A plugin's commands are added inside :meth:`commands_of` (``plugins.add_commands`` does
    this): a name the group has already, a built-in's or another plugin's, is never replaced
    but left out with one :class:`~tomofield.errors.PluginWarning`; outside it, a later
    registration of a name wins, as in click.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: name -> (``"module:attribute"``, summary) of the commands not imported yet.
        self.lazy_commands: dict[str, tuple[str, str]] = {}
        #: name -> the plugin (in words) that added the command; absent: tomofield's own
        self.owners: dict[str, str] = {}
        self._adding: tuple[str, list[str]] | None = None

    @contextmanager
    def commands_of(self, plugin: str) -> Iterator[None]:
        """Commands added in this block are ``plugin``'s (``plugin``: the plugin in words, for messages).

        A name the group has already (tomofield's own command, another plugin's) is left out
        with a :class:`~tomofield.errors.PluginWarning` naming the plugin; when the block raises,
        the commands it added are removed again.
        """
        added: list[str] = []
        was, self._adding = self._adding, (plugin, added)
        try:
            yield
        except BaseException:
            for name in added:
                self.commands.pop(name, None)
                self.lazy_commands.pop(name, None)
                self.owners.pop(name, None)
            raise
        finally:
            self._adding = was

    def _taken(self, name: str) -> bool:
        """Inside :meth:`commands_of`: whether ``name`` belongs to someone else (then it says so); else records it."""
        if self._adding is None:
            return False
        plugin, added = self._adding
        if name in self.commands or name in self.lazy_commands:
            owner = self.owners.get(name)
            if owner == plugin:
                return False  # the plugin's own command, registered again: the later wins
            whose = f"which {owner} added first" if owner else "which is tomofield's own"
            warnings.warn(
                f"{plugin} adds a command {name!r}, {whose}; left out (the first stays)", PluginWarning, stacklevel=4
            )
            return True
        self.owners[name] = plugin
        added.append(name)
        return False

    def add_lazy_command(self, name: str, target: str, summary: str) -> None:
        """Register command ``name``, the click command at ``target`` (``"package.module:attribute"``).

        ``summary`` is what ``tomofield --help`` lists: the command's help up to its first
        blank line (click shortens it to the line's width as it shortens any command's).
        """
        module, sep, attr = target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"lazy command {name!r}: target {target!r} is not 'package.module:attribute'")
        if self._taken(name):
            return
        self.commands.pop(name, None)  # the later registration wins, as with add_command
        self.lazy_commands[name] = (target, summary)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if self._taken(name or cmd.name or ""):
            return
        super().add_command(cmd, name)
        self.lazy_commands.pop(name or cmd.name or "", None)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():  # a plugin's fault, found while this runs: one line
            warnings.showwarning = plugin_warnings_as_lines(warnings.showwarning)
            return super().main(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            target, _ = self.lazy_commands[cmd_name]
            module, _, attr = target.partition(":")
            try:
                command = getattr(importlib.import_module(module), attr)
            except Exception as exc:  # a broken plugin's command: say which, do not crash the host
                raise click.ClickException(f"command {cmd_name!r} ({target}) failed to load: {exc}") from exc
            if not isinstance(command, click.Command):
                raise click.ClickException(
                    f"command {cmd_name!r}: {target} is a {type(command).__name__}, not a command"
                )
            click.Group.add_command(self, command, cmd_name)  # loaded: an ordinary command now
            self.lazy_commands.pop(cmd_name, None)
        command = self.commands.get(cmd_name)
        if command is not None:
            add_quiet_option(command)
        return command

    def _summaries(self, ctx: click.Context, limit: int) -> list[tuple[str, str]]:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands:
                # shortened as click shortens a command's own help
                rows.append((name, click.Command(name, help=self.lazy_commands[name][1]).get_short_help_str(limit)))
            elif not self.commands[name].hidden:
                rows.append((name, self.commands[name].get_short_help_str(limit)))
        return rows

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        rows = self._summaries(ctx, formatter.width - 6 - max(map(len, names)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        items = [
            CompletionItem(name, help=summary)
            for name, summary in self._summaries(ctx, 45)
            if name.startswith(incomplete)
        ]
        return items + click.Command.shell_complete(self, ctx, incomplete)
