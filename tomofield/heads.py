"""Per-slice score heads: slices (N, C, h, w) -> scores (N, K, h', w').

Each head satisfies :class:`tomofield.protocols.Head` and declares its options; the CLI
builds ``--target``, ``--layer``, ``--pool`` from these declarations.
"""

from __future__ import annotations

from torch import Tensor, nn

from tomofield.cam import CAM_METHODS, cam_maps
from tomofield.errors import InputError
from tomofield.protocols import Option

TARGET = Option("target", int, 0, "Output logit the head reads.", min=0)


class SumHead:
    """Mean of each channel over the slice's pixels (paper Eq. 5); needs no network.

    With the ``tomo`` filter the reconstruction returns the input volume: the sanity
    check of the whole pipeline. K equals the volume's channel count.
    """

    name = "sum"
    needs_encoder = False
    needs_grad = False
    compilable = False
    options = ()

    def __call__(self, encoder: nn.Module | None, slices: Tensor) -> Tensor:
        return slices.mean(dim=(2, 3), keepdim=True)


class LogitHead:
    """The encoder's output logit ``target`` for each slice (ToNNO, paper Eq. 6).

    Args:
        target: index of the output logit (0 for the single-logit classifiers that
            ``tomofield train`` makes).
    """

    name = "logit"
    needs_encoder = True
    needs_grad = False
    compilable = True  # it only calls the encoder
    options = (TARGET,)

    def __init__(self, target: int = 0) -> None:
        self.target = int(target)

    def __call__(self, encoder: nn.Module | None, slices: Tensor) -> Tensor:
        assert encoder is not None
        out = encoder(slices)
        if out.dim() != 2:
            raise InputError(f"the logit head needs an encoder returning (N, classes), got {tuple(out.shape)}")
        if not 0 <= self.target < out.shape[1]:
            raise InputError(f"logit target {self.target} out of range: the encoder has {out.shape[1]} outputs")
        return out[:, self.target, None, None, None]


class CamHead:
    """A class activation map per slice, at the resolution of encoder stage ``layer``.

    Args:
        method: ``gradcam``, ``gradcam++``, ``layercam`` or ``scorecam`` (see
            :mod:`tomofield.cam` for the papers).
        layer: index into the encoder's ``feature_info`` (1..4 for a ResNet).
        target: output logit the map explains.
    """

    needs_encoder = True
    needs_grad = True
    compilable = False  # hooks and gradients do not survive torch.compile
    options = (
        Option("layer", int, 4, "Encoder stage of CAM heads (feature_info index: 1..4 for a ResNet).", min=0),
        TARGET,
    )

    def __init__(self, method: str, layer: int = 4, target: int = 0) -> None:
        if method not in CAM_METHODS:
            raise InputError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")
        self.name, self.method, self.layer, self.target = method, method, int(layer), int(target)

    def __call__(self, encoder: nn.Module | None, slices: Tensor) -> Tensor:
        assert encoder is not None
        return cam_maps(encoder, slices, method=self.method, layer=self.layer, target=self.target)


class PooledSumHead:
    """Average-pooled slice (kernel = stride = ``pool``): a CAM-like map with no network.

    The paper's Fig. 4 check: Averaged CAM recovers the input from fine maps, Tomographic
    CAM does better from coarse ones.
    """

    name = "avgpool"
    needs_encoder = False
    needs_grad = False
    compilable = False
    options = (Option("pool", int, 16, "Kernel and stride of the avgpool head, in slice pixels.", min=1),)

    def __init__(self, pool: int = 16) -> None:
        if pool < 1:
            raise InputError(f"pool must be >= 1, got {pool}")
        self.pool = int(pool)

    def __call__(self, encoder: nn.Module | None, slices: Tensor) -> Tensor:
        import torch.nn.functional as F

        return F.avg_pool2d(slices, self.pool)
