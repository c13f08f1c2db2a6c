"""tomofield-features: regression and dense-feature heads, PCA projection, SimCLR pretraining.

A plugin like any third party's, found through the ``tomofield`` entry point ``features``:
it registers the ``regression`` and ``features`` heads and the ``tomofield features`` and
``tomofield pretrain`` commands through tomofield's public hooks.
"""

from __future__ import annotations

from tomofield import hookimpl
from tomofield_features.heads import FeaturesHead, Projection, RegressionHead, encoder_features
from tomofield_features.projection import fit_projection, pca

__version__ = "0.1.0"
__all__ = ["FeaturesHead", "Projection", "RegressionHead", "encoder_features", "fit_projection", "pca"]


@hookimpl
def register_heads(register):
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
    from tomofield_features._commands import features, pretrain

    cli.add_command(features)
    cli.add_command(pretrain)
