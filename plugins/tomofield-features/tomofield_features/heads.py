"""The ``regression`` and ``features`` heads: slices (N, C, h, w) -> scores (N, K, h', w').

Convention:
    ``stage`` indexes timm's ``model.feature_info`` as the core CAM heads do (for a ResNet
    0 is the stem ``act1``, 1..4 are ``layer1``..``layer4``); ``stage=None`` is the pooled
    pre-logits vector (``forward_head(forward_features(x), pre_logits=True)``). A projection
    maps the C raw channels to K: ``(f - mean) @ matrix`` with ``matrix`` (C, K).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tomofield.errors import InputError
from tomofield.io import atomic_write, check_output_path
from tomofield.protocols import Option


class RegressionHead:
    """One scalar per slice from a regression-trained encoder (``tomofield train --task regression``).

    Same computation as the core ``logit`` head, plus an optional ``scale`` (e.g. to turn
    the target's units into voxels) and ``nonnegative`` (clamp at 0: a density's plane
    integral cannot be negative). A density encoder (``tomofield train --task regression
    --teacher RUN``) gives the tomo filter a heatmap in target units per mL whose integral
    estimates the target; its run directory sets both options (docs/features.md).

    Args:
        target: output index of the encoder.
        scale: multiplies every slice score.
        nonnegative: clamp the (scaled) scores at 0.
    """

    name = "regression"
    needs_encoder = True
    needs_grad = False
    compilable = True  # it only calls the encoder
    options = (
        Option("target", int, 0, "Output index the head reads.", min=0),
        Option("scale", float, 1.0, "Regression head: multiplies every slice score (a density run sets it)."),
        Option("nonnegative", bool, False, "Regression head: clamp the scores at 0 (a density run sets it)."),
    )

    def __init__(self, target: int = 0, scale: float = 1.0, nonnegative: bool = False) -> None:
        self.target, self.scale, self.nonnegative = int(target), float(scale), bool(nonnegative)

    def __call__(self, encoder: nn.Module | None, slices: Tensor) -> Tensor:
        assert encoder is not None
        out = encoder(slices)
        if out.dim() != 2:
            raise InputError(f"the regression head needs an encoder returning (N, outputs), got {tuple(out.shape)}")
        if not 0 <= self.target < out.shape[1]:
            raise InputError(f"regression target {self.target} out of range: the encoder has {out.shape[1]} outputs")
        score = self.scale * out[:, self.target, None, None, None]
        return score.clamp_min(0) if self.nonnegative else score


def _stage_count(encoder: nn.Module) -> int | None:
    info = getattr(encoder, "feature_info", None)
    if info is None:
        return None
    return len(info) if isinstance(info, list) else len(info.info)


def encoder_features(encoder: nn.Module, slices: Tensor, stage: int | None = None) -> Tensor:
    """Raw features (N, C, h, w) of a timm-like encoder; (N, C, 1, 1) when ``stage`` is None.

    ``stage=None``: the pooled pre-logits vector. ``stage=i``: the output of
    ``feature_info[i]`` (``forward_intermediates`` when the model has it, else a hook).
    """
    if stage is None:
        if hasattr(encoder, "forward_features") and hasattr(encoder, "forward_head"):
            vec = encoder.forward_head(encoder.forward_features(slices), pre_logits=True)
        else:
            vec = encoder(slices)
        if vec.dim() == 4:
            vec = vec.mean(dim=(2, 3))
        return vec.reshape(vec.shape[0], -1, 1, 1)
    n = _stage_count(encoder)
    if n is None:
        raise InputError(f"--stage needs an encoder with timm's feature_info; {type(encoder).__name__} has none")
    if not 0 <= stage < n:
        raise InputError(f"stage {stage} out of range: the encoder has stages 0..{n - 1}")
    if hasattr(encoder, "forward_intermediates"):
        try:
            return encoder.forward_intermediates(slices, indices=[stage], intermediates_only=True, stop_early=True)[0]
        except TypeError:  # older timm signatures
            pass
    from tomofield.cam import stage_module

    got: list[Tensor] = []
    handle = stage_module(encoder, stage).register_forward_hook(lambda m, a, out: got.append(out))
    try:
        encoder(slices)
    finally:
        handle.remove()
    return got[0]


@dataclass
class Projection:
    """A linear map of C feature channels to K: ``(f - mean) @ matrix``.

    Attributes:
        mean: (C,) subtracted first.
        matrix: (C, K).
        explained: (K,) share of the variance of each component (PCA), if known.
    """

    mean: Tensor
    matrix: Tensor
    explained: Tensor | None = None

    def __post_init__(self) -> None:
        self.matrix = (
            torch.as_tensor(np.asarray(self.matrix), dtype=torch.float32)
            if not isinstance(self.matrix, Tensor)
            else self.matrix.float()
        )
        if self.matrix.dim() != 2:
            raise InputError(
                f"a projection matrix must be 2D (channels, components), got shape {tuple(self.matrix.shape)}"
            )
        self.mean = (
            torch.as_tensor(self.mean, dtype=torch.float32).reshape(-1)
            if self.mean is not None
            else (torch.zeros(self.matrix.shape[0]))
        )
        if self.mean.shape[0] != self.matrix.shape[0]:
            raise InputError(f"projection mean has {self.mean.shape[0]} channels, matrix {self.matrix.shape[0]}")

    @property
    def channels(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def components(self) -> int:
        return int(self.matrix.shape[1])

    def __call__(self, f: Tensor) -> Tensor:
        """(N, C, h, w) -> (N, K, h, w)."""
        if f.shape[1] != self.channels:
            raise InputError(f"the projection expects {self.channels} feature channels, the encoder gives {f.shape[1]}")
        m, w = self.mean.to(f), self.matrix.to(f)
        return torch.einsum("nchw,ck->nkhw", f - m[None, :, None, None], w)

    def save(self, path: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
        """Write ``mean``, ``matrix`` (and ``explained``) as a ``.npz`` file, atomically, at exactly ``path``.

        The path must end with ``.npz`` (numpy would otherwise append it); an existing file is
        kept unless ``overwrite``, and one of ``inputs`` always. Write failures (full disk,
        permissions) are InputErrors naming the path.
        """
        path = check_output_path(path, overwrite, suffixes=(".npz",), inputs=inputs)
        arrays = {"mean": self.mean.numpy(), "matrix": self.matrix.numpy()}
        if self.explained is not None:
            arrays["explained"] = self.explained.numpy()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: numpy adds no suffix
                np.savez(fh, **arrays)

        return atomic_write(path, write, overwrite=overwrite, inputs=inputs)

    @classmethod
    def load(cls, path: str | Path) -> Projection:
        """From a .npz (``matrix``, optional ``mean``) or a .npy holding the (C, K) matrix."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"projection file {str(p)!r} does not exist")
        try:
            data = np.load(p, allow_pickle=False)  # never a pickle: it could run code
        except (OSError, ValueError, EOFError) as exc:
            # numpy's own text suggests allow_pickle for anything that is not .npy/.npz: not ours to offer
            raise InputError(
                f"cannot read projection {str(p)!r}: it is not a numpy .npy or .npz file (tomofield never loads "
                "pickles); expected .npy holding the (C, K) matrix or .npz with 'matrix' (and 'mean'), as written "
                "by tomofield features --save-projection"
            ) from exc
        if isinstance(data, np.ndarray):
            return cls(None, torch.from_numpy(data.astype(np.float32)))
        if "matrix" not in data:
            raise InputError(f"{str(p)!r} has no 'matrix' array; found {', '.join(data.files)}")
        mean = torch.from_numpy(data["mean"].astype(np.float32)) if "mean" in data else None
        expl = torch.from_numpy(data["explained"].astype(np.float32)) if "explained" in data else None
        return cls(mean, torch.from_numpy(data["matrix"].astype(np.float32)), expl)


class FeaturesHead:
    """The encoder's features per slice, optionally projected to ``components`` channels.

    Args:
        stage: ``None`` for the pooled pre-logits vector (K = C, h = w = 1), or a
            ``feature_info`` index for that stage's map (K = C_stage, its resolution).
        pool: average a stage's map to one vector per slice (default: keep the map).
        components: project to this many channels; the projection must be fitted
            (:func:`tomofield_features.fit_projection`) or given before reconstruction.
        projection: a :class:`Projection`, a (C, K) matrix, or a .npy/.npz path.
    """

    name = "features"
    needs_encoder = True
    needs_grad = False
    compilable = False
    options = (
        Option("stage", int, None, "Features head: encoder stage (feature_info index) whose map to use.", min=0),
        Option("pool", bool, False, "Features head: average the stage's map to one vector per slice."),
        Option("components", int, None, "Features head: project to this many channels (needs a projection).", min=1),
        Option("projection", str, None, "Features head: a projection file (.npy (C, K) or .npz).", objects=True),
    )

    def __init__(
        self,
        stage: int | None = None,
        pool: bool = False,
        components: int | None = None,
        projection: Projection | Tensor | np.ndarray | Sequence | str | Path | None = None,
    ) -> None:
        if components is not None and int(components) < 1:
            raise InputError(f"components must be >= 1, got {components}")
        self.stage = None if stage is None else int(stage)
        self.pool = bool(pool)
        self.components = None if components is None else int(components)
        self.projection: Projection | None = None
        if projection is not None:
            self.set_projection(projection)

    def set_projection(self, projection: Projection | Tensor | np.ndarray | Sequence | str | Path) -> None:
        if isinstance(projection, (str, Path)):
            projection = Projection.load(projection)
        elif not isinstance(projection, Projection):
            projection = Projection(None, torch.as_tensor(np.asarray(projection), dtype=torch.float32))
        if self.components is not None and projection.components != self.components:
            raise InputError(f"the projection has {projection.components} components but components={self.components}")
        self.projection = projection

    def raw(self, encoder: nn.Module, slices: Tensor) -> Tensor:
        """Unprojected features (N, C, h, w)."""
        f = encoder_features(encoder, slices, self.stage)
        if self.pool and f.shape[-2:] != (1, 1):
            f = f.mean(dim=(2, 3), keepdim=True)
        return f.float()

    def __call__(self, encoder: nn.Module | None, slices: Tensor) -> Tensor:
        assert encoder is not None
        f = self.raw(encoder, slices)
        if self.projection is not None:
            return self.projection(f)
        if self.components is not None:
            raise InputError(
                f"the features head has components={self.components} but no fitted projection; call "
                "tomofield_features.fit_projection(engine, volumes) first or give projection=..."
            )
        return f
