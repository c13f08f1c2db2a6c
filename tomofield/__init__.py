"""tomofield: dense 3D predictions from any 2D image encoder (ToNNO)."""

from tomofield.engine import Engine, EngineConfig
from tomofield.errors import InputError, TomofieldError, UnknownComponentError
from tomofield.hookspecs import hookimpl
from tomofield.io import Heatmap, Volume, load_volume, save_heatmap

__version__ = "0.1.0"
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
