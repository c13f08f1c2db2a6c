"""pytorch-grad-cam's CAM methods as tomofield heads that return *raw* maps.

pytorch-grad-cam (``pip install grad-cam``) turns every map into [0, 1] per image:
``BaseCAM.compute_cam_per_layer`` takes each layer's map, applies a ReLU and
``scale_cam_image`` (min-max, resize to the input), and ``aggregate_multi_layers``
min-max scales the mean again. Tomographic CAM takes the second derivative of the maps
across parallel slices, so it needs their scale from one slice to the next; a per-slice
rescaling keeps only each slice's shape, and a Tomographic reconstruction of such maps
means nothing.

A head here drives one of the library's method objects through the library's own steps
and stops before the scaling (no subclass, nothing patched):

1. ``cam.activations_and_grads(x)``: the forward pass, recorded by the library's hooks
   on the target layers;
2. the backward pass of the target logit, for the methods that use gradients
   (``cam.uses_gradients``), with ``create_graph`` for those built with ``detach=False``
   (ShapleyCAM differentiates the gradients again);
3. ``cam.get_cam_image(x, layer, targets, activations, gradients, eigen_smooth=False)``
   per layer: the method's map, ``sum_k w_k A_k`` or its per-position form.

What follows is tomofield's convention for raw CAMs (:mod:`tomofield.cam`): the ReLU the
library applies to each layer's map (``relu=False`` keeps the signed map), no
normalisation, and the map at the layer's own resolution, which the backprojector places
on the slice (map cell ``i`` of ``h`` covers slice pixels ``[i P / h, (i + 1) P / h)``), as
the core CAM heads return theirs. Several layers (``module="a,b"``) are upsampled to the
slice size, bilinearly on those cell centres, and averaged, as the library averages its
layers.

Two departures from the library's output, besides the scale, each one an option:

* ``orient``: EigenCAM, EigenGradCAM and KPCA-CAM project onto a principal component,
  whose sign the SVD picks arbitrarily per image; across slices that is a random sign,
  which a reconstruction cannot undo. Each slice's map is flipped where it disagrees with
  the map of uniform channel weights (``sum_k A_k``; ``sum_k G_k A_k`` for EigenGradCAM).
* progress bars: Score-CAM and Ablation-CAM print a tqdm bar per slice to stderr; the heads
  send what they print while computing their weights nowhere (tomofield has its own progress).

FullGrad cannot give a raw map: it min-max scales each term per image and channel inside
its ``compute_cam_per_layer`` (the paper's post-processing, part of the method) and has
no per-layer map to call. It is registered as ``pgc-fullgrad`` with the library's
normalised output and says so; only ``--filter none`` (Averaged) is meaningful with it.
:data:`LEFT_OUT` names what else the library exports and why it is not a head.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomofield.cam import stage_module
from tomofield.errors import InputError
from tomofield.heads import CamHead
from tomofield.protocols import Option

__all__ = ["LEFT_OUT", "METHODS", "PREFIX", "Method", "PgcHead", "library"]

#: Head names are ``PREFIX`` + the library's class name, lower case, without underscores.
PREFIX = "pgc-"
#: Masked or ablated inputs per forward pass (Score-CAM, Ablation-CAM); as tomofield's scorecam.
BATCH = 64


def _core_option(name: str) -> Option:
    """The core CAM heads' own declaration, so ``tomofield run`` shares one ``--layer``/``--target``."""
    return next(o for o in CamHead.options if o.name == name)


LAYER = _core_option("layer")
TARGET = _core_option("target")
MODULE = Option(
    "module",
    str,
    None,
    "pytorch-grad-cam heads: encoder module name(s) to explain, comma-separated (layer3,layer4.0.conv2); "
    "overrides --layer.",
)
RELU = Option(
    "relu",
    bool,
    True,
    "pytorch-grad-cam heads: ReLU of each layer's raw map, as the library and the core CAM heads; "
    "--no-relu keeps the signed map.",
)
ORIENT = Option(
    "orient",
    bool,
    True,
    "pytorch-grad-cam SVD heads: flip each slice's map to agree with its channel sum (the SVD's sign is arbitrary).",
)
KPCA_KERNEL = Option(
    "kpca_kernel",
    str,
    "sigmoid",
    "pgc-kpcacam: kernel of the kernel PCA.",
    choices=("linear", "poly", "rbf", "sigmoid", "cosine"),
)
KPCA_GAMMA = Option(
    "kpca_gamma", float, None, "pgc-kpcacam: kernel coefficient (default: scikit-learn's, 1 / channels).", min=0
)
FEM_K = Option("fem_k", float, 2.0, "pgc-fem: a channel counts where it exceeds its mean + k std.", min=0)
FINER_ALPHA = Option("finer_alpha", float, 1.0, "pgc-finercam: weight of the similar classes' logits.")


@dataclass(frozen=True)
class Method:
    """One pytorch-grad-cam method and how the adapter runs it.

    Attributes:
        cls: the class name in ``pytorch_grad_cam``.
        paper: who proposed it, for the description.
        how: the map, in a few words.
        gradients: the method backpropagates the target (the head then ``needs_grad``).
        target: the map depends on the target logit (the head declares ``--target``).
        raw: False where the library gives only its normalised map (FullGrad).
        orient: ``"activations"`` or ``"gradients"``: a principal-component map whose sign
            is fixed per slice against ``sum_k A_k`` or ``sum_k G_k A_k``.
        quiet: the library prints progress bars while it computes the weights.
        extra: the method's own options.
        kwargs: constructor keywords from the head's options (option name -> keyword).
    """

    cls: str
    paper: str
    how: str
    gradients: bool = True
    target: bool = True
    raw: bool = True
    orient: str | None = None
    quiet: bool = False
    extra: tuple[Option, ...] = ()
    kwargs: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return PREFIX + self.cls.lower().replace("_", "")

    @property
    def options(self) -> tuple[Option, ...]:
        if not self.raw:
            return (TARGET,) if self.target else ()
        opts = [LAYER, MODULE, *([TARGET] if self.target else []), RELU]
        if self.orient:
            opts.append(ORIENT)
        return (*opts, *self.extra)

    @property
    def description(self) -> str:
        if not self.raw:
            return (
                f"pytorch-grad-cam {self.cls}, {self.paper}: NOT RAW, the library's [0, 1]-normalised map "
                f"({self.how}); use --filter none, a Tomographic reconstruction of it means nothing"
            )
        return f"pytorch-grad-cam {self.cls}, {self.paper}: raw map at --layer/--module ({self.how})"


_ORIENTED = "sign fixed per slice (--orient)"
#: The adapted methods, by the key ``PgcHead`` takes (the head name without ``PREFIX``).
METHODS: dict[str, Method] = {
    m.name[len(PREFIX) :]: m
    for m in (
        Method("GradCAM", "Selvaraju et al. 2017", "sum_k mean(dY/dA_k) A_k"),
        Method("HiResCAM", "Draelos & Carin 2020", "sum_k dY/dA_k * A_k"),
        Method("XGradCAM", "Fu et al. 2020", "gradients weighted by the normalised activations"),
        Method("GradCAMPlusPlus", "Chattopadhay et al. 2018", "alpha-weighted positive gradients"),
        Method("LayerCAM", "Jiang et al. 2021", "sum_k ReLU(dY/dA_k) * A_k"),
        Method("GradCAMElementWise", "pytorch-grad-cam's variant", "sum_k ReLU(dY/dA_k * A_k)"),
        Method("ShapleyCAM", "arXiv:2501.06261 (2025)", "weights: gradient minus half the Hessian-vector product"),
        Method(
            "FinerCAM",
            "Zhang et al. 2025",
            "Grad-CAM of the target minus its most similar classes; needs 2+ logits",
            extra=(FINER_ALPHA,),
        ),
        Method(
            "EigenGradCAM",
            "pytorch-grad-cam's variant",
            f"first principal component of G*A, {_ORIENTED}",
            orient="gradients",
        ),
        Method("SegEigenCAM", "Chung & Ying 2025", "principal component of |G|*A, the library's sign correction"),
        Method(
            "RandomCAM", "a baseline", "random channel weights from numpy's global RNG: not reproducible", target=False
        ),
        Method(
            "EigenCAM",
            "Muhammad & Yeasin 2020",
            f"first principal component of the activations, {_ORIENTED}",
            gradients=False,
            target=False,
            orient="activations",
        ),
        Method(
            "KPCA_CAM",
            "Karmani et al. 2024",
            f"first kernel principal component, {_ORIENTED}; not linear in the activations' scale",
            gradients=False,
            target=False,
            orient="activations",
            extra=(KPCA_KERNEL, KPCA_GAMMA),
            kwargs=(("kpca_kernel", "kernel"), ("kpca_gamma", "gamma")),
        ),
        Method(
            "FEM",
            "Fuad et al. 2020",
            "channels weighted by their share above mean + k std",
            gradients=False,
            target=False,
            extra=(FEM_K,),
            kwargs=(("fem_k", "k"),),
        ),
        Method(
            "ScoreCAM",
            "Wang et al. 2020",
            "channel weights: softmax of the masked inputs' target logits",
            gradients=False,
            quiet=True,
        ),
        Method(
            "AblationCAM",
            "Desai & Ramaswamy 2020",
            "channel weights: relative drop of the target logit when a channel is ablated, unstable near a 0 logit",
            gradients=False,
            quiet=True,
        ),
        Method(
            "FullGrad",
            "Srinivas & Fleuret 2019",
            "each term scaled per slice inside; its bias terms come from Conv2d/BatchNorm2d only, so with "
            "group-norm or frozen-bn encoders it is |x * dY/dx| alone",
            raw=False,
        ),
    )
}

#: What ``pytorch_grad_cam`` 1.5.7 exports besides the adapted methods, and why no head.
LEFT_OUT: dict[str, str] = {
    "RefineCAM": "a meta-method: the product of a base method's per-layer maps, each normalised to [0, 1] first",
    "SESS": "a meta-method: a base method's maps of rescaled patches, fused and normalised; dozens of passes a slice",
    "DeepFeatureFactorization": "concept factorisation (NMF) of the activations: several concept maps, not a target's",
    "GuidedBackpropReLUModel": "guided backpropagation, an input-gradient image rather than a class activation map",
    "AblationLayer": "a helper of AblationCAM",
    "AblationLayerVit": "a helper of AblationCAM (vision transformers)",
    "AblationLayerFasterRCNN": "a helper of AblationCAM (detectors)",
    "ActivationsAndGradients": "the library's recorder of activations and gradients, which the heads use",
}


def library() -> Any:
    """``pytorch_grad_cam``, imported on first use (it takes seconds: OpenCV, scikit-learn)."""
    try:
        import pytorch_grad_cam
    except ImportError as exc:
        raise InputError(
            f"the pytorch-grad-cam heads need the grad-cam package ({exc}); pip install 'grad-cam>=1.5.7'"
        ) from exc
    return pytorch_grad_cam


class _Logit:
    """The target logit of one sample's output, as the library's ``ClassifierOutputTarget``, checked."""

    def __init__(self, target: int) -> None:
        self.target = target

    def __call__(self, output: Tensor) -> Tensor:
        return output[..., self.target]


def _check_outputs(outputs: Any, target: int) -> int:
    """The encoder's logit count; an InputError unless its outputs are (N, K) with ``target < K``."""
    if not isinstance(outputs, Tensor) or outputs.ndim != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise InputError(f"the pytorch-grad-cam heads need an encoder returning (N, logits), got {shape}")
    k = outputs.shape[1]
    if target >= k:
        raise InputError(
            f"target={target} is out of range: the encoder has {k} output logit(s), valid targets are 0..{k - 1}"
        )
    return k


@contextlib.contextmanager
def _encoder_kept(encoder: nn.Module) -> Iterator[None]:
    """Leave the encoder as found: its mode (the library calls ``eval()``) and its parameters' gradients."""
    training = encoder.training
    grads = [(p, p.grad) for p in encoder.parameters()]
    try:
        yield
    finally:
        encoder.train(training)
        for p, g in grads:
            p.grad = g


def _orient(maps: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``maps`` (N, h, w) flipped per sample where they anti-correlate with ``reference`` (N, h, w)."""
    m = maps.reshape(len(maps), -1).astype(np.float64)
    r = reference.reshape(len(reference), -1).astype(np.float64)
    agree = ((m - m.mean(1, keepdims=True)) * (r - r.mean(1, keepdims=True))).sum(1)
    return maps * np.where(agree < 0, -1.0, 1.0).astype(maps.dtype)[:, None, None]


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class PgcHead:
    """A pytorch-grad-cam method as a tomofield head: raw maps (N, 1, h, w) at the layer's resolution.

    Args:
        method: a key of :data:`METHODS` (``eigencam``, ``hirescam``, ...).
        layer: stage of the encoder, an index into timm's ``feature_info`` as for the core
            CAM heads (1..4 for a ResNet).
        module: module name(s) of the encoder, comma-separated; overrides ``layer`` and
            needs no ``feature_info``.
        target: output logit the map explains.
        relu: ReLU of each layer's map, as the library and the core CAM heads do.
        orient: fix the sign of the principal-component methods per slice.
        kpca_kernel, kpca_gamma: KPCA-CAM's kernel and its coefficient.
        fem_k: FEM's threshold, in standard deviations.
        finer_alpha: FinerCAM's weight of the similar classes.
    """

    needs_encoder = True
    compilable = False  # hooks and gradients do not survive torch.compile
    #: every option some method declares (each registration passes its own, :attr:`Method.options`)
    options = (LAYER, MODULE, TARGET, RELU, ORIENT, KPCA_KERNEL, KPCA_GAMMA, FEM_K, FINER_ALPHA)

    def __init__(
        self,
        method: str,
        layer: int = 4,
        module: str | None = None,
        target: int = 0,
        relu: bool = True,
        orient: bool = True,
        kpca_kernel: str = "sigmoid",
        kpca_gamma: float | None = None,
        fem_k: float = 2.0,
        finer_alpha: float = 1.0,
    ) -> None:
        spec = METHODS.get(method)
        if spec is None:
            raise InputError(f"unknown pytorch-grad-cam method {method!r}; valid: {', '.join(METHODS)}")
        cls = getattr(library(), spec.cls, None)
        if cls is None:
            raise InputError(f"this pytorch-grad-cam has no {spec.cls}; pip install -U 'grad-cam>=1.5.7'")
        self.spec, self.cls, self.name = spec, cls, spec.name
        self.needs_grad = spec.gradients or not spec.raw
        self.layer, self.target, self.relu, self.orient = int(layer), int(target), bool(relu), bool(orient)
        self.modules = tuple(n.strip() for n in module.split(",")) if module else ()
        if any(not n for n in self.modules):
            raise InputError(f"module={module!r}: give module names separated by commas, e.g. layer3,layer4")
        values = {"kpca_kernel": kpca_kernel, "kpca_gamma": kpca_gamma, "fem_k": fem_k, "finer_alpha": finer_alpha}
        self.kwargs = {keyword: values[option] for option, keyword in spec.kwargs}
        self.finer_alpha = float(finer_alpha)

    def __repr__(self) -> str:
        where = f"module={','.join(self.modules)!r}" if self.modules else f"layer={self.layer}"
        return f"PgcHead({self.spec.cls}, {where}, target={self.target})"

    # -- the encoder's layers ----------------------------------------------------------------
    def layers(self, encoder: nn.Module) -> list[nn.Module]:
        """The modules the maps are taken from: ``module`` by name, else stage ``layer``."""
        if not self.modules:
            return [stage_module(encoder, self.layer)]
        out = []
        for name in self.modules:
            try:
                out.append(encoder.get_submodule(name))
            except AttributeError:
                top = ", ".join(n for n, _ in encoder.named_children())
                raise InputError(
                    f"module {name!r} is not a module of {type(encoder).__name__}; its top-level modules: {top}"
                ) from None
        return out

    # -- scoring ---------------------------------------------------------------------------
    def __call__(self, encoder: nn.Module | None, slices: Tensor) -> Tensor:
        assert encoder is not None
        if not isinstance(slices, Tensor) or slices.ndim != 4:
            shape = tuple(slices.shape) if isinstance(slices, Tensor) else type(slices).__name__
            raise InputError(f"the pytorch-grad-cam heads take slices (N, C, H, W), got {shape}")
        if self.needs_grad and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{self.name} differentiates the target logit, which is impossible inside torch.inference_mode(); "
                "call it under torch.no_grad() or outside any such context"
            )
        x = slices.detach()
        if self.needs_grad and x.is_inference():
            x = x.clone()  # an inference tensor cannot be saved for backward
        grad_mode = torch.enable_grad() if self.needs_grad else torch.no_grad()
        with _encoder_kept(encoder), grad_mode:
            if not self.spec.raw:
                maps = self._normalised(encoder, x)
            else:
                maps = self._raw(encoder, x)
        return maps.to(slices.device)

    def _method(self, encoder: nn.Module, layers: list[nn.Module]) -> tuple[Any, Any]:
        """The library's method object, and the one whose steps are called (FinerCAM's base method).

        Keep the first alive while the second works: FinerCAM removes its base's hooks when deleted.
        """
        cam = self.cls(encoder, layers, **self.kwargs)
        base = getattr(cam, "base_cam", cam)
        if self.spec.quiet:
            base.batch_size = BATCH  # Score-CAM's and Ablation-CAM's batch of masked inputs (the library's knob)
        return cam, base

    def _targets(self, outputs: Any) -> list[Callable[[Tensor], Tensor]]:
        if not self.spec.target and not self.spec.gradients:
            return []  # EigenCAM, KPCA-CAM, FEM read the activations only: any encoder output will do
        k = _check_outputs(outputs, self.target if self.spec.target else 0)
        n = outputs.shape[0]
        if self.spec.cls != "FinerCAM":
            return [_Logit(self.target if self.spec.target else 0)] * n
        if k < 2:
            raise InputError(
                "pgc-finercam compares the target with its most similar classes: it needs an encoder with 2 or "
                f"more output logits, this one has {k}"
            )
        from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

        # the classes whose logits are closest to the target's, up to three (FinerCAM's default)
        gap = (outputs.detach() - outputs.detach()[:, self.target, None]).abs()
        gap[:, self.target] = float("inf")
        nearest = gap.argsort(dim=1)[:, : min(3, k - 1)].tolist()
        return [FinerWeightedTarget(self.target, near, self.finer_alpha) for near in nearest]

    def _raw(self, encoder: nn.Module, x: Tensor) -> Tensor:
        layers = self.layers(encoder)
        owner, cam = self._method(encoder, layers)
        recorder = cam.activations_and_grads
        current = layers[0]
        try:
            if self.needs_grad:
                x = x.requires_grad_(True)
            outputs = recorder(x)
            targets = self._targets(outputs)
            if cam.uses_gradients:
                loss = sum(t(o) for t, o in zip(targets, outputs, strict=True))
                # the hooks on the layers' outputs record dY/dA; no parameter gradient is made
                torch.autograd.grad(loss, x, create_graph=not cam.detach)
            acts, grads = list(recorder.activations), list(recorder.gradients)
            if cam.detach:
                acts, grads = [_numpy(a) for a in acts], [_numpy(g) for g in grads]
                recorder.release()  # Score-CAM's and Ablation-CAM's own passes are not recorded
            maps = []
            quiet = contextlib.redirect_stderr(io.StringIO()) if self.spec.quiet else contextlib.nullcontext()
            with quiet:
                for i, layer in enumerate(cam.target_layers):
                    current = layer
                    a = acts[i] if i < len(acts) else None
                    g = grads[i] if i < len(grads) else None
                    m = np.asarray(cam.get_cam_image(x, layer, targets, a, g, False), dtype=np.float32)
                    if self.spec.orient and self.orient:
                        ref = a if self.spec.orient == "activations" else g * a
                        m = _orient(m, ref.sum(axis=1))
                    maps.append(torch.from_numpy(np.ascontiguousarray(m))[:, None])
        finally:
            recorder.release()
            del owner
            ablation = getattr(cam, "ablation_layer", None)
            if ablation is not None:  # an interrupted Ablation-CAM leaves its layer in the encoder
                from pytorch_grad_cam.utils.find_layers import replace_layer_recursive

                replace_layer_recursive(encoder, ablation, current)
        return combine(maps, tuple(x.shape[-2:]), relu=self.relu)

    def _normalised(self, encoder: nn.Module, x: Tensor) -> Tensor:
        cam = self.cls(encoder, [])  # FullGrad takes every bias layer itself
        try:
            with torch.no_grad():  # the target's check, before the library's passes
                _check_outputs(encoder(x), self.target)
            maps = cam(x.clone(), [_Logit(self.target)] * x.shape[0])
        finally:
            cam.activations_and_grads.release()
        return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]


def combine(maps: Sequence[Tensor], size: tuple[int, int], relu: bool = True) -> Tensor:
    """One map (N, 1, h, w) from each layer's (N, 1, h_l, w_l): ReLU, then their mean.

    Maps of one resolution stay at it; maps of several are upsampled to ``size`` (the
    slice) first, bilinearly on cell centres, the backprojector's placement of map cells.
    """
    maps = [m.clamp_min(0) if relu else m for m in maps]
    if len({tuple(m.shape[-2:]) for m in maps}) > 1:
        maps = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
    return maps[0] if len(maps) == 1 else torch.stack(maps).mean(dim=0)


def factories() -> Iterator[tuple[str, Callable[..., PgcHead], str, tuple[Option, ...]]]:
    """``(name, factory, description, options)`` of every head, for ``register_heads``."""
    for key, spec in METHODS.items():
        yield spec.name, functools.partial(PgcHead, key), spec.description, spec.options
