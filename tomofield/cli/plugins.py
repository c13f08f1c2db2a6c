"""``tomofield plugins``: every registered component and the package it comes from."""

from __future__ import annotations

import click
from rich.table import Table

from tomofield import plugins
from tomofield.cli.toolkit import head_params, out


@click.command("plugins")
def plugins_cmd() -> None:
    """List every registered component and the package it comes from."""
    table = Table(title="tomofield components")
    for col in ("kind", "name", "plugin", "source"):
        table.add_column(col, no_wrap=True)
    table.add_column("options")
    table.add_column("description")
    flags: dict[str, list[str]] = {}
    for hp in head_params():  # the spelling `tomofield run` gives each head's options
        for head in hp.heads:
            flags.setdefault(head, []).append(hp.flag)
    for comp in plugins.components():
        names = flags.get(comp.name, []) if comp.kind == "head" else [o.name for o in comp.options]
        table.add_row(comp.kind, comp.name, comp.plugin, comp.source, " ".join(sorted(names)), comp.description)
    out.print(table)  # plugins that failed or clashed: one warning line each, as they were loaded
