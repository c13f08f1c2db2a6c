"""The engine's checks of what its components return: a heatmap on the grid, finite, and who broke it when not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tomofield.encoders import describe_nonfinite, nonfinite_tensors
from tomofield.errors import ComponentError, InputError, TomofieldError
from tomofield.pipeline import Scorer, Stacks


def post_process(post: Callable[[Tensor, Tensor], Tensor], label: str, heat: Tensor, volume: Tensor) -> Tensor:
    """``post(heat, volume)``, refusing what raises or is not a finite heatmap (K', D, H, W) on the same grid."""
    try:
        out = post(heat, volume)
    except (TomofieldError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        raise ComponentError(f"{label} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[1:] != heat.shape[1:]:
        raise ComponentError(
            f"{label} returned {ComponentError.got(out)} for a heatmap of shape {tuple(heat.shape)}; a post-processor "
            "returns a heatmap (K, D, H, W) on the same grid (tomofield.protocols.PostProcessor): a fault of the "
            "post-processor, not of the input"
        )
    if not bool(torch.isfinite(out).all()):
        raise ComponentError(
            f"{label} returned {int((~torch.isfinite(out)).sum())} non-finite value(s) (NaN or Inf) from a finite "
            "heatmap: a fault of the post-processor, not of the input"
        )
    return out


def check_heatmap(
    heat: Any,
    grid: tuple[int, int, int],
    scorer: Scorer,
    finite: list[Tensor],
    stacks: Stacks,
    network: str,
    labels: dict[str, str],
    amp: str,
) -> None:
    """Refuse a reconstructor's heatmap that is not (K, D, H, W) on ``grid`` or not finite, naming who broke it.

    One pass over the heatmap; the scores' and the filter's finiteness, recorded per chunk
    without synchronising, are read only when the heatmap is not finite.
    """
    label = labels["reconstructor"]
    if not isinstance(heat, Tensor) or heat.dim() != 4 or tuple(heat.shape[1:]) != tuple(grid):
        raise ComponentError(
            f"{label} returned {ComponentError.got(heat)}; a reconstructor returns the heatmap (K, D, H, W) on the "
            f"volume's grid, here (K, {', '.join(map(str, grid))}) (tomofield.protocols.Reconstructor): a fault "
            "of the reconstructor, not of the input"
        )
    if bool(torch.isfinite(heat).all()):
        return
    if not all(bool(f) for f in finite):
        net = getattr(scorer.encoder, "eager", scorer.encoder)  # a compiled encoder runs its module's weights
        bad = nonfinite_tensors(dict(net.state_dict())) if isinstance(net, nn.Module) else []
        if bad:  # weights from a file were checked when read: an encoder given, or changed since
            raise InputError(f"the encoder {network!r} holds non-finite weights: {describe_nonfinite(bad)}")
        if scorer.dtype is not None:
            raise InputError(
                f"the heatmap has non-finite values: the encoder overflowed under amp={amp!r} "
                f"({scorer.dtype}); rerun with amp='bf16' (wider range) or amp='off'"
            )
        encoder = f", or its encoder {network!r}," if scorer.encoder is not None else ""
        raise ComponentError(
            f"{scorer.label} gave non-finite scores (NaN or Inf) for slices of a finite volume: the head{encoder} "
            "is at fault, not the input"
        )
    if not all(bool(f) for f in stacks.finite):
        raise ComponentError(
            f"{labels['filter']} returned non-finite profiles (NaN or Inf) from finite scores: a fault of "
            "the filter, not of the input"
        )
    raise ComponentError(
        f"{label} returned a heatmap with {int((~torch.isfinite(heat)).sum())} non-finite value(s) (NaN or Inf) "
        "from finite scores: a fault of the reconstructor, not of the input"
    )
