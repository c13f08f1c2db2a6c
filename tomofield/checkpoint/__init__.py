"""Run directories: the trained encoder and everything needed to rebuild and resume it.

A run directory holds ``model.safetensors`` (the encoder's weights), ``config.json``
(encoder name, input channels, norm, slice size, geometry, training arguments, dataset
hash, metrics) and ``state.safetensors`` (weights, optimizer state and RNG state for
``--resume``). Each file is written atomically; ``state.safetensors`` alone suffices to
resume, so a kill between two writes loses nothing.

A run directory is untrusted input: someone else's download, a hand edit, a disk that
filled up. ``config.json`` is checked against one schema (:data:`CONFIG_SCHEMA`) when a
:class:`RunDir` is opened, ``state.safetensors`` against :data:`STATE_SCHEMA` by
:func:`read_state`, and the files are read only from inside the folder (:func:`run_file`):
a link that leads out of it is refused. The paths a run records (the dataset CSV, the
teacher) are provenance, type-checked and never opened.

The package: :mod:`~tomofield.checkpoint.schema` (what the files may hold),
:mod:`~tomofield.checkpoint.rundir` (:class:`RunDir`, :func:`write_run`) and
:mod:`~tomofield.checkpoint.state` (the checkpoint to resume from).
"""

from tomofield.checkpoint.rundir import (
    ENGINE_INHERITED,
    ENGINE_REQUIRED,
    TEACHER_REQUIRED,
    TRAINING_INHERITED,
    WEIGHTS_KEYS,
    WEIGHTS_META,
    RunDir,
    is_run_dir,
    save_tensors,
    weights_metadata,
    write_json,
    write_run,
)
from tomofield.checkpoint.schema import (
    CONFIG,
    CONFIG_SCHEMA,
    FORMAT,
    MODEL,
    NUM_CLASSES,
    SLICE_SIZES,
    STATE,
    STATE_SCHEMA,
    Key,
    check_config,
    run_file,
)
from tomofield.checkpoint.state import State, pack_optimizer, read_state, unpack_optimizer

__all__ = [
    "CONFIG",
    "CONFIG_SCHEMA",
    "ENGINE_INHERITED",
    "ENGINE_REQUIRED",
    "FORMAT",
    "MODEL",
    "NUM_CLASSES",
    "SLICE_SIZES",
    "STATE",
    "STATE_SCHEMA",
    "TEACHER_REQUIRED",
    "TRAINING_INHERITED",
    "WEIGHTS_KEYS",
    "WEIGHTS_META",
    "Key",
    "RunDir",
    "State",
    "check_config",
    "is_run_dir",
    "pack_optimizer",
    "read_state",
    "run_file",
    "save_tensors",
    "unpack_optimizer",
    "weights_metadata",
    "write_json",
    "write_run",
]
