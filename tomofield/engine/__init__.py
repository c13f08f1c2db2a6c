"""The library entry point: :class:`Engine` turns a volume into a heatmap.

The engine plans a volume once, then streams chunks of directions through the stages of
:mod:`tomofield.pipeline`: the slicer cuts their slices in batches, the scorer runs
encoder + head, the filter works along each stack's normal and the backprojector adds
the result into the output grid. Memory is bounded by the chunk, whatever the number of
directions. docs/design.md has the map.

The package: :mod:`~tomofield.engine.config` (:class:`EngineConfig`, the device, the
input's checks) and :mod:`~tomofield.engine.core` (:class:`Engine`).
"""

from tomofield.engine.config import (
    DEFAULT_ENCODER,
    DEFAULT_RECONSTRUCTORS,
    PRESETS,
    SPEED_ONLY,
    EngineConfig,
    PlanReport,
    Progress,
    resolve_device,
    validate_spacing,
    validate_volume,
)
from tomofield.engine.core import Engine

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_RECONSTRUCTORS",
    "PRESETS",
    "SPEED_ONLY",
    "Engine",
    "EngineConfig",
    "PlanReport",
    "Progress",
    "resolve_device",
    "validate_spacing",
    "validate_volume",
]
