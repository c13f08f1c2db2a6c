"""tomofield: dense 3D predictions from any 2D image encoder (ToNNO).

The names below are imported on first use (PEP 562): ``from tomofield import hookimpl``,
which every plugin module does, and the command line's listing of commands do not import
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tomofield.engine import Engine, EngineConfig
    from tomofield.errors import InputError, TomofieldError, UnknownComponentError
    from tomofield.hookspecs import hookimpl
    from tomofield.io import Heatmap, Volume, load_volume, save_heatmap

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_WHERE = {
    "Engine": "tomofield.engine",
    "EngineConfig": "tomofield.engine",
    "Heatmap": "tomofield.io",
    "InputError": "tomofield.errors",
    "TomofieldError": "tomofield.errors",
    "UnknownComponentError": "tomofield.errors",
    "Volume": "tomofield.io",
    "hookimpl": "tomofield.hookspecs",
    "load_volume": "tomofield.io",
    "save_heatmap": "tomofield.io",
}
__all__ = [
    "Engine",
    "EngineConfig",
    "Heatmap",
    "InputError",
    "TomofieldError",
    "UnknownComponentError",
    "Volume",
    "hookimpl",
    "load_volume",
    "save_heatmap",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # once imported, an ordinary attribute
        return value
    raise AttributeError(f"module 'tomofield' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
