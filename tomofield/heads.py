"""Per-slice score heads: slices (N, C, h, w) -> scores (N, K, h', w')."""

from __future__ import annotations

from torch import Tensor, nn


class SumHead:
    """Mean of each channel over the slice's pixels (paper Eq. 5); needs no network.

    With the ``tomo`` filter the reconstruction returns the input volume: the sanity
    check of the whole pipeline. K equals the volume's channel count.
    """

    name = "sum"
    needs_encoder = False
    needs_grad = False

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

    def __init__(self, target: int = 0) -> None:
        self.target = int(target)

    def __call__(self, encoder: nn.Module | None, slices: Tensor) -> Tensor:
        assert encoder is not None
        out = encoder(slices)
        if out.dim() != 2:
            raise ValueError(f"the logit head needs an encoder returning (N, classes), got {tuple(out.shape)}")
        if not 0 <= self.target < out.shape[1]:
            raise ValueError(f"logit target {self.target} out of range: the encoder has {out.shape[1]} outputs")
        return out[:, self.target, None, None, None]
