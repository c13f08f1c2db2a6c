"""The ``tomofield`` command: a group that lists its commands at once and imports each when used.

The built-in commands live in :mod:`tomofield.cli_commands` and plugins add theirs through
the hook ``register_commands``; the group (:class:`tomofield.commands.CommandGroup`) knows
them by name and summary, so ``tomofield --help`` and Tab completion of a command name do
not import torch. Running a command, its ``--help`` or the completion of its options imports
what it needs.
"""

from __future__ import annotations

import click

from tomofield import plugins
from tomofield.commands import CommandGroup, add_quiet_option

#: The built-in commands: name -> (attribute of tomofield.cli_commands, summary as its help starts).
BUILTIN_COMMANDS = {
    "run": (
        "run",
        "Reconstruct the heatmap of a volume (several INPUTS are its channels) or of every volume of a dataset CSV, "
        "a folder or a glob pattern (one heatmap each in the --output folder, finished ones skipped).",
    ),
    "evaluate": (
        "evaluate",
        "Lesion-wise precision, recall, F1, Dice and balanced accuracy of a folder of heatmaps (paper A.7).",
    ),
    "compare": (
        "compare",
        "Run and evaluate the paper's methods on a dataset: Table 2 (Markdown, CSV) and Fig. 6 (PNG).",
    ),
    "synth": ("synth", "Write a synthetic weakly supervised dataset (NIfTI images, masks, CSVs)."),
    "train": ("train", "Train a slice encoder from volume-level labels (the paper's recipe)."),
    "prepare": (
        "prepare",
        "Turn a public dataset, as downloaded, into tomofield dataset CSVs (plugins register NAME).",
    ),
    "plugins": ("plugins_cmd", "List every registered component and the package it comes from."),
    "demo": (
        "demo",
        "Synthesise data, train from volume labels, reconstruct held-out lesions (a few CPU minutes).",
    ),
}


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tomofield")
def cli() -> None:
    """tomofield: turn any 2D image encoder into a dense 3D predictor (ToNNO)."""


for _name, (_attr, _summary) in BUILTIN_COMMANDS.items():
    cli.add_lazy_command(_name, f"tomofield.cli_commands:{_attr}", _summary)
plugins.add_commands(cli)
add_quiet_option(cli)


def main() -> None:
    cli()
