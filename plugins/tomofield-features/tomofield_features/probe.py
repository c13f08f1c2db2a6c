"""Linear probes on feature volumes: a downstream check of dense 3D features.

A probe is an L2-regularised logistic regression on standardised voxel features,
fitted on a few labelled voxels (classes weighted equally) and applied to every voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tomofield.errors import InputError


def sample_labelled(
    mask: np.ndarray, positives: int, negatives: int, rng: np.random.Generator, region: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and labels of ``positives`` voxels inside ``mask`` and ``negatives`` outside.

    Negatives are drawn inside ``region`` when given (e.g. the body), else anywhere.
    """
    m = np.asarray(mask).reshape(-1) > 0
    bg = ~m if region is None else (~m & (np.asarray(region).reshape(-1) > 0))
    pos, neg = np.flatnonzero(m), np.flatnonzero(bg)
    if len(pos) < positives or len(neg) < negatives:
        raise InputError(f"cannot draw {positives}/{negatives} labelled voxels from {len(pos)}/{len(neg)} available")
    idx = np.concatenate([rng.choice(pos, positives, replace=False), rng.choice(neg, negatives, replace=False)])
    return idx, np.concatenate([np.ones(positives), np.zeros(negatives)]).astype(np.float32)


@dataclass
class LinearProbe:
    """Logistic regression ``sigmoid(((x - mean) / std) @ w + b)`` on K-channel voxels."""

    mean: Tensor
    std: Tensor
    w: Tensor
    b: Tensor

    @classmethod
    def fit(cls, x: Tensor | np.ndarray, y: Tensor | np.ndarray, l2: float = 1e-2, steps: int = 200) -> LinearProbe:
        """Fit on rows ``x`` (N, K) with 0/1 labels ``y`` (N,); classes weighted equally."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
        if x.dim() != 2 or y.shape != (x.shape[0],):
            raise InputError(f"probe needs x (N, K) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if not (y == 1).any() or not (y == 0).any():
            raise InputError("probe needs labelled voxels of both classes")
        mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
        z = (x - mean) / std
        wpos, wneg = 0.5 / (y == 1).double().mean(), 0.5 / (y == 0).double().mean()
        weight = torch.where(y == 1, wpos, wneg)
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, weight=weight) + l2 * (w * w).sum()
            )
            loss.backward()
            return loss

        opt.step(closure)
        return cls(mean.float(), std.float(), w.detach().float(), b.detach().float())

    def logits(self, x: Tensor | np.ndarray) -> Tensor:
        """Logits of rows (N, K)."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        return ((x - self.mean) / self.std) @ self.w + self.b

    def predict_volume(self, features: Tensor | np.ndarray) -> np.ndarray:
        """Probability map (D, H, W) of a feature volume (K, D, H, W)."""
        f = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        k = f.shape[0]
        return torch.sigmoid(self.logits(f.reshape(k, -1).T)).reshape(f.shape[1:]).numpy()


def voxel_rows(features: Tensor | np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows (len(idx), K) of a feature volume (K, D, H, W) at flat voxel indices."""
    f = np.asarray(features, dtype=np.float32)
    return f.reshape(f.shape[0], -1)[:, idx].T
