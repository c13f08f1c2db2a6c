"""Batched class activation maps (CAMs) for timm encoders.

`cam_maps` returns *raw* maps at the resolution of the chosen stage: the ReLU of each
method's paper is applied, nothing is normalised or upsampled (that is left to the caller,
as in MONAI). `normalize_maps` is the per-map min-max used for comparisons.

Convention:
    Inputs are ``(N, C, H, W)``, maps ``(N, 1, h, w)`` with ``(h, w)`` the stage's output
    size. ``layer`` indexes timm's ``model.feature_info`` (for a ResNet 0 is the stem
    ``act1`` and 1..4 are ``layer1``..``layer4``). ``target`` indexes the output logits.
    The whole batch is processed at once on the input's device without host round trips;
    the model must be in eval mode so that samples stay independent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomofield.errors import InputError

__all__ = ["CAM_METHODS", "CamInputs", "CamMethod", "cam_maps", "normalize_maps", "stage_module"]

# Stabiliser of the Grad-CAM++ alpha denominator (the value pytorch-grad-cam uses).
_GRADCAM_PP_EPS = 1e-6
# Stabiliser of the Score-CAM per-channel min-max of the masks (pytorch-grad-cam's value).
_SCORECAM_EPS = 1e-8


@dataclass(frozen=True)
class CamInputs:
    """What a CAM method sees: stage activations, their gradients and a scorer.

    Attributes:
        activations: Stage output ``(N, K, h, w)``.
        gradients: d(target logit)/d(activations), same shape; None for gradient-free methods.
        inputs: The network input ``(N, C, H, W)``.
        score: Maps a batch of inputs ``(B, C, H, W)`` to target logits ``(B,)``.
        scorecam_batch: Number of masked inputs per forward pass (Score-CAM).
    """

    activations: Tensor
    gradients: Tensor | None
    inputs: Tensor
    score: Callable[[Tensor], Tensor]
    scorecam_batch: int


@dataclass(frozen=True)
class CamMethod:
    """A registered CAM method: ``raw(CamInputs) -> (N, 1, h, w)`` raw maps."""

    raw: Callable[[CamInputs], Tensor]
    uses_gradients: bool


def _gradcam(c: CamInputs) -> Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1-2).

    ``w_k = mean_ij dY/dA_k^ij``, ``L = ReLU(sum_k w_k A_k)``.
    """
    assert c.gradients is not None  # a gradient method: cam() computes them
    weights = c.gradients.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * c.activations).sum(dim=1, keepdim=True))


def _gradcam_pp(c: CamInputs) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, Eq. 19 with the exponential output).

    ``alpha_k^ij = g^2 / (2 g^2 + sum_ab A_k^ab g^3)`` with ``g = dY/dA_k^ij`` (0 where g = 0),
    ``w_k = sum_ij alpha_k^ij ReLU(g)``, ``L = ReLU(sum_k w_k A_k)``.
    """
    g, a = c.gradients, c.activations
    assert g is not None  # a gradient method: cam() computes them
    g2 = g * g
    denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + _GRADCAM_PP_EPS
    alpha = g2 / denom
    weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(dim=1, keepdim=True))


def _layercam(c: CamInputs) -> Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 2021, Eq. 6-8).

    ``L = ReLU(sum_k ReLU(dY/dA_k^ij) A_k^ij)``: a spatial weight per position.
    """
    assert c.gradients is not None  # a gradient method: cam() computes them
    return F.relu((F.relu(c.gradients) * c.activations).sum(dim=1, keepdim=True))


def _scorecam(c: CamInputs) -> Tensor:
    """Score-CAM (Wang et al., CVPR Workshops 2020, Eq. 3-6 and Alg. 1).

    Each channel is upsampled to the input size (bilinear, ``align_corners=True``),
    min-max normalised into a mask ``H_k``, and scored as ``s_k = f_target(X * H_k)``;
    ``L = ReLU(sum_k softmax_k(s)_k A_k)``. As in pytorch-grad-cam the score is the raw
    target logit (a softmax over classes would be constant for a one-logit model) and the
    softmax runs over channels, so the paper's baseline ``f(X_b)`` cancels out.
    Masked inputs are built and scored ``scorecam_batch`` at a time.
    """
    a, x = c.activations, c.inputs
    n, k, h, w = a.shape
    flat = a.detach().reshape(n * k, 1, h, w)
    scores = []
    for start in range(0, n * k, c.scorecam_batch):
        chunk = flat[start : start + c.scorecam_batch]
        up = F.interpolate(chunk, size=x.shape[-2:], mode="bilinear", align_corners=True)
        lo = up.amin(dim=(2, 3), keepdim=True)
        hi = up.amax(dim=(2, 3), keepdim=True)
        masks = (up - lo) / (hi - lo + _SCORECAM_EPS)
        sample = torch.arange(start, start + chunk.shape[0], device=x.device) // k
        scores.append(c.score(x[sample] * masks))
    weights = torch.softmax(torch.cat(scores).view(n, k), dim=1)
    return F.relu((weights[:, :, None, None] * a).sum(dim=1, keepdim=True))


CAM_METHODS: dict[str, CamMethod] = {
    "gradcam": CamMethod(_gradcam, uses_gradients=True),
    "gradcam++": CamMethod(_gradcam_pp, uses_gradients=True),
    "layercam": CamMethod(_layercam, uses_gradients=True),
    "scorecam": CamMethod(_scorecam, uses_gradients=False),
}


def _feature_infos(model: nn.Module) -> list[dict]:
    info = getattr(model, "feature_info", None)
    if info is None:
        raise InputError(
            f"{type(model).__name__} has no timm `feature_info`; CAMs need a timm model "
            "(timm.create_model) to locate its stages"
        )
    return list(info.get_dicts() if hasattr(info, "get_dicts") else info)


def stage_module(model: nn.Module, layer: int) -> nn.Module:
    """Return the module of stage ``layer``, found through timm's ``model.feature_info``.

    Args:
        model: A timm model.
        layer: Index into ``model.feature_info`` (ResNet: 0 stem, 1..4 layer1..layer4).

    Raises:
        InputError: ``layer`` is not a valid index; the message lists the stages.
    """
    infos = _feature_infos(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(infos):
        stages = ", ".join(f"{i}={d['module']}" for i, d in enumerate(infos))
        raise InputError(
            f"layer={layer!r} is not a stage of {type(model).__name__}; valid layers are 0..{len(infos) - 1} ({stages})"
        )
    name = infos[layer]["module"]
    try:
        return model.get_submodule(name)
    except AttributeError:  # timm features_only wrappers flatten "a.b" into "a_b"
        return model.get_submodule(name.replace(".", "_"))


def _target_logits(logits: Tensor, target: int) -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InputError(f"CAMs need model outputs of shape (N, num_logits), got {shape}")
    if target >= logits.shape[1]:
        raise InputError(
            f"target={target} is out of range: the model has {logits.shape[1]} output "
            f"logit(s), valid targets are 0..{logits.shape[1] - 1}"
        )
    return logits[:, target]


def cam_maps(
    model: nn.Module,
    x: Tensor,
    *,
    method: str,
    layer: int = 4,
    target: int = 0,
    scorecam_batch: int = 64,
) -> Tensor:
    """Raw CAMs of a batch of images at the resolution of stage ``layer``.

    Args:
        model: A timm model in eval mode.
        x: Images ``(N, C, H, W)`` on the model's device.
        method: A name in ``CAM_METHODS``: gradcam, gradcam++, layercam, scorecam.
        layer: Index into ``model.feature_info`` (see `stage_module`).
        target: Index of the output logit explained.
        scorecam_batch: Masked inputs per forward pass (Score-CAM only).

    Returns:
        Raw maps ``(N, 1, h, w)``, ReLU applied, not normalised, not upsampled, detached.

    Raises:
        ValueError: Unknown method, bad layer/target/shape, or a model in training mode.
        RuntimeError: A gradient method called inside ``torch.inference_mode()``.
    """
    spec = CAM_METHODS.get(method)
    if spec is None:
        raise InputError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"cam_maps expects images of shape (N, C, H, W), got {shape}")
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise InputError(f"target={target!r} must be a non-negative int logit index")
    if isinstance(scorecam_batch, bool) or not isinstance(scorecam_batch, int) or scorecam_batch < 1:
        raise InputError(f"scorecam_batch={scorecam_batch!r} must be a positive int")
    if model.training:
        raise InputError(
            "cam_maps needs the model in eval mode (batch norm in training mode mixes the "
            "samples of a batch); call model.eval() first"
        )
    if spec.uses_gradients and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"CAM method {method!r} differentiates the target logit, which is impossible "
            "inside torch.inference_mode() (inference tensors cannot be recorded by "
            "autograd); call it outside inference_mode (torch.no_grad() is fine) or use "
            "'scorecam', which needs no gradients"
        )
    module = stage_module(model, layer)
    if spec.uses_gradients and x.is_inference():
        x = x.clone()  # an inference tensor cannot be saved for backward
    captured: list[Tensor] = []

    def capture(mod: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"stage {layer} returned {type(output).__name__}, not a Tensor")
        act = output.detach().requires_grad_(spec.uses_gradients)
        captured.append(act)
        return act  # downstream layers use the leaf, so d(logit)/d(act) is well defined

    handle = module.register_forward_hook(capture)
    try:
        with torch.enable_grad() if spec.uses_gradients else torch.no_grad():
            score = _target_logits(model(x), target)
            if len(captured) != 1:
                raise RuntimeError(f"stage {layer} ran {len(captured)} times in one forward")
            acts = captured[0]
            grads = torch.autograd.grad(score.sum(), acts)[0] if spec.uses_gradients else None
    finally:
        handle.remove()
        captured.clear()

    def scorer(batch: Tensor) -> Tensor:
        return _target_logits(model(batch), target)

    with torch.no_grad():
        inputs = CamInputs(acts.detach(), grads, x, scorer, scorecam_batch)
        return spec.raw(inputs)


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map ``(N, ...)`` to [0, 1]; constant maps become 0."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    shape = (-1,) + (1,) * (maps.ndim - 1)
    return (maps - lo.view(shape)) / span.view(shape)
