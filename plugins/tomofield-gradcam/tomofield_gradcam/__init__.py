"""tomofield-gradcam: every CAM method of pytorch-grad-cam as a tomofield head, with raw maps.

A plugin like any third party's, found through the ``tomofield`` entry point ``pgc``:
it registers one head per method, ``pgc-<method>`` (``pgc-eigencam``, ``pgc-hirescam``,
...), whose maps keep their scale from slice to slice (the library's [0, 1] rescaling
is skipped), so ``--filter tomo`` gives Tomographic X for each method X.
:mod:`tomofield_gradcam.heads` has the how and which methods are raw.

tomofield imports this module whenever it starts: it imports neither torch nor
pytorch_grad_cam (the hook imports the heads, a head imports the library when built).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tomofield import hookimpl

if TYPE_CHECKING:
    from tomofield_gradcam.heads import LEFT_OUT, METHODS, PREFIX, Method, PgcHead

__version__ = "0.1.0"
# imported on first use (PEP 562)
_WHERE = {name: "tomofield_gradcam.heads" for name in ("LEFT_OUT", "METHODS", "PREFIX", "Method", "PgcHead")}
__all__ = ["LEFT_OUT", "METHODS", "PREFIX", "Method", "PgcHead"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tomofield_gradcam' has no attribute {name!r}")


@hookimpl
def register_heads(register):
    from tomofield_gradcam.heads import factories

    for name, factory, description, options in factories():
        register(name, factory, description, options=options)
