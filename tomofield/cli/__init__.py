"""The ``tomofield`` command: a group that lists its commands at once and imports each when used.

The package is the command line, a thin layer of click and rich over the library: this
group, the toolkit shared with plugins' commands (:mod:`tomofield.cli.toolkit`), and one
module per built-in command (``run``, ``train``, ``evaluate`` and ``compare``, ``synth``,
``demo``, ``prepare`` in :mod:`~tomofield.cli.datasets`, ``plugins``). Plugins add their
commands through the hook ``register_commands``; the group
(:class:`tomofield.cli.group.CommandGroup`) knows them by name and summary, so
``tomofield --help`` and Tab completion of a command name do not import torch. Running a
command, its ``--help`` or the completion of its options imports only its module.

Every option that stands for a library setting defaults to "not given": only what the user
set is passed on, so the library's defaults (and a run directory's) apply exactly as they do
from Python.
"""

from __future__ import annotations

import warnings

import click

from tomofield import plugins
from tomofield.cli.group import CommandGroup
from tomofield.cli.toolkit import add_quiet_option, plugin_warnings_as_lines

#: The built-in commands: name -> (``module:attribute`` under tomofield.cli, summary as its help starts).
BUILTIN_COMMANDS = {
    "run": (
        "run:run",
        "Reconstruct the heatmap of a volume (several INPUTS are its channels) or of every volume of a dataset CSV, "
        "a folder or a glob pattern (one heatmap each in the --output folder, finished ones skipped).",
    ),
    "evaluate": (
        "evaluate:evaluate",
        "Lesion-wise precision, recall, F1, Dice and balanced accuracy of a folder of heatmaps (paper A.7).",
    ),
    "compare": (
        "evaluate:compare",
        "Run and evaluate the paper's methods on a dataset: Table 2 (Markdown, CSV) and Fig. 6 (PNG).",
    ),
    "synth": ("synth:synth", "Write a synthetic weakly supervised dataset (NIfTI images, masks, CSVs)."),
    "train": ("train:train", "Train a slice encoder from volume-level labels."),
    "calibrate": (
        "train:calibrate",
        "Record a run's operating point (the slice logit that means 'cuts a lesion') from a dataset's negatives.",
    ),
    "prepare": (
        "datasets:prepare",
        "Turn a public dataset, as downloaded, into tomofield dataset CSVs (plugins register NAME).",
    ),
    "plugins": ("plugins:plugins_cmd", "List every registered component and the package it comes from."),
    "demo": (
        "demo:demo",
        "Synthesise data, train from volume labels, reconstruct held-out lesions (a few CPU minutes).",
    ),
}


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tomofield")
def cli() -> None:
    """tomofield: turn any 2D image encoder into a dense 3D predictor (ToNNO)."""


for _name, (_attr, _summary) in BUILTIN_COMMANDS.items():
    cli.add_lazy_command(_name, f"tomofield.cli.{_attr}", _summary)
with warnings.catch_warnings():  # a broken plugin, found while loading the plugins: one line each
    warnings.showwarning = plugin_warnings_as_lines(warnings.showwarning)
    plugins.add_commands(cli)  # a plugin's command never replaces a built-in (CommandGroup.commands_of)
add_quiet_option(cli)


def main() -> None:
    cli()
