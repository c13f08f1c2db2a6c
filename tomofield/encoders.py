"""2D encoders: timm models by name, normalisation variants, safe weight loading."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from tomofield.errors import InputError, UnknownComponentError

NORMS = ("frozen-bn", "batch-norm", "group-norm")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar")


@contextmanager
def _offline() -> Iterator[None]:
    """Forbid hub downloads unless TOMOFIELD_ALLOW_DOWNLOAD=1 is set."""
    if os.environ.get("TOMOFIELD_ALLOW_DOWNLOAD") == "1":
        yield
        return
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _group_norm(bn: nn.BatchNorm2d) -> nn.GroupNorm:
    c = bn.num_features
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0)
    return nn.GroupNorm(groups, c, eps=bn.eps, affine=True)


def convert_norm(model: nn.Module, norm: str) -> nn.Module:
    """Apply a normalisation variant: ``frozen-bn`` (paper default), ``batch-norm``, ``group-norm``."""
    if norm not in NORMS:
        raise InputError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    if norm == "batch-norm":
        return model
    if norm == "frozen-bn":
        from timm.layers import freeze_batch_norm_2d

        return freeze_batch_norm_2d(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, _group_norm(child))
        else:
            convert_norm(child, norm)
    return model


def timm_encoder(
    name: str, *, in_chans: int = 1, num_classes: int = 1, pretrained: bool = False,
    norm: str = "frozen-bn",
) -> nn.Module:
    """A timm model by name, with ``in_chans`` inputs and ``num_classes`` logits.

    Pretrained weights come only from a local timm / Hugging Face cache: no download
    happens unless ``TOMOFIELD_ALLOW_DOWNLOAD=1``.
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"not a timm model either (close: {', '.join(close)})" if close else "not a timm model either"
        from tomofield import plugins

        registered = [c.name for c in plugins.components("encoder")]
        raise UnknownComponentError("encoder", name, registered + ["<any timm model>"], hint)
    try:
        with _offline():
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    except Exception as exc:
        if not pretrained:
            raise
        raise InputError(
            f"pretrained weights for {name!r} are not available offline ({type(exc).__name__}: {exc}). "
            "Put them in the timm/Hugging Face cache on a machine with network, pass a "
            "--weights FILE.safetensors, or run without --pretrained."
        ) from exc
    return convert_norm(model, norm)


def first_conv_in_chans(state: dict[str, torch.Tensor]) -> int | None:
    """Input channels of the first 4D (conv) weight of a state dict, if any."""
    for value in state.values():
        if value.dim() == 4:
            return int(value.shape[1])
    return None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; pickles are refused with a conversion hint."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"weights file {str(path)!r} does not exist")
    if path.is_dir():
        raise InputError(f"weights {str(path)!r} is a folder but not a run directory (no config.json); "
                         "give a .safetensors file or the output folder of tomofield train")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(
            f"refusing to load {str(path)!r}: pickle-based checkpoints can run arbitrary code. "
            "Convert it once, in a trusted environment: python -c \"import torch; "
            "from safetensors.torch import save_file; "
            f"save_file(torch.load('{path.name}', weights_only=True), '{path.stem}.safetensors')\""
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read weights {str(path)!r} as safetensors: {exc}") from exc


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` strictly into ``model``; mismatches name the file and the keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"weights {source!r} do not fit the encoder: {' '.join(first[:4])}") from exc
    return model


def build_encoder(name: str, *, in_chans: int, num_classes: int = 1, pretrained: bool = False,
                  norm: str = "frozen-bn") -> nn.Module:
    """A registered encoder by name, else the timm model of that name."""
    from tomofield import plugins

    try:
        factory = plugins.get("encoder", name).factory
    except LookupError:
        factory = timm_encoder
    return factory(name, in_chans=in_chans, num_classes=num_classes, pretrained=pretrained, norm=norm)
