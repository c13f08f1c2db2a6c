"""tomofield-features: regression and dense-feature heads, PCA projection, SimCLR pretraining.

A plugin like any third party's, found through the ``tomofield`` entry point ``features``:
it registers the ``regression`` and ``features`` heads and the ``tomofield features`` and
``tomofield pretrain`` commands through tomofield's public hooks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tomofield import hookimpl

if TYPE_CHECKING:
    from tomofield_features.heads import FeaturesHead, Projection, RegressionHead, encoder_features
    from tomofield_features.projection import fit_projection, pca

__version__ = "0.1.0"
# imported on first use (PEP 562): tomofield loads this module to list the commands, without torch
_WHERE = {
    "FeaturesHead": "tomofield_features.heads",
    "Projection": "tomofield_features.heads",
    "RegressionHead": "tomofield_features.heads",
    "encoder_features": "tomofield_features.heads",
    "fit_projection": "tomofield_features.projection",
    "pca": "tomofield_features.projection",
}
__all__ = [
    "FeaturesHead",
    "Projection",
    "RegressionHead",
    "encoder_features",
    "fit_projection",
    "pca",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tomofield_features' has no attribute {name!r}")


@hookimpl
def register_heads(register):
    from tomofield_features.heads import FeaturesHead, RegressionHead

    register(
        "regression", RegressionHead, "a regression encoder's scalar per slice (tomofield train --task regression)"
    )
    register(
        "features",
        FeaturesHead,
        "the encoder's pooled features or a stage's map per slice (C x D x H x W), optional PCA",
    )


@hookimpl
def register_commands(cli):
    here = "tomofield_features.commands"
    cli.add_lazy_command(
        "features",
        f"{here}:features",
        "Dense 3D features of a volume from a 2D encoder: a C x D x H x W (or K after PCA) NIfTI.",
    )
    cli.add_lazy_command(
        "pretrain",
        f"{here}:pretrain",
        "Self-supervised slice encoder (SimCLR) from the volumes of a dataset CSV; labels are ignored.",
    )
