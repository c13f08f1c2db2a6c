"""Reconstruction filters applied along the slice axis of each stack (docs/design.md, "Reconstruction constants").

A filter turns the scores ``p`` of ``M + 2 pad`` slices into ``M`` filtered values
``q`` and says how the backprojected sum is scaled: the reconstruction is
``G(x) = constant * 4 pi / L * sum_l w_l q~_l(x)`` with ``w_l`` the slice area of
direction ``l`` when ``integral`` is true (the head's per-slice mean then stands
for the plane integral of Eq. 1) and 1 otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from tomofield.protocols import Option


class NoFilter:
    """``q_m = p_m``: the mean of the scores over all planes through a point.

    With a CAM head this is Averaged CAM (paper Eq. 12).
    """

    name = "none"
    pad = 0
    integral = False
    constant = 1.0 / (4.0 * math.pi)

    def __call__(self, p: Tensor, ds: Tensor) -> Tensor:
        """Args: p (L, M, ...) scores; ds (L,) slice spacing. Returns p."""
        return p


class TomoFilter:
    """Second derivative along the normal, ``(p_{m+1} + p_{m-1} - 2 p_m) / ds^2``.

    Inverse 3D Radon transform (paper Eq. 3, 9-11) with ``c = -1 / (8 pi^2)``, so the
    ``sum`` head returns the input's intensities. With the logit head this is ToNNO,
    with a CAM head Tomographic CAM (Eq. 13). The paper divides by ``1 / (M - 1)``
    instead of ``ds^2``; the two differ by a positive constant when every stack spans
    the same range and we keep the exact derivative so that stacks of different
    spacing (``extent="tight"``) are weighted correctly.
    """

    name = "tomo"
    pad = 1
    integral = True
    constant = -1.0 / (8.0 * math.pi**2)

    def __call__(self, p: Tensor, ds: Tensor) -> Tensor:
        """Args: p (L, M + 2, ...) scores; ds (L,) slice spacing. Returns (L, M, ...)."""
        d2 = p[:, 2:] + p[:, :-2] - 2 * p[:, 1:-1]
        scale = ds.reshape(-1, *([1] * (p.dim() - 1))).to(p)
        return d2 / scale**2


def second_derivative_weights(weights: Sequence[float]) -> Tensor:
    """Coefficients ``c_j``, ``j = -k..k``, of the second derivative of a weighted quadratic fit over ``2k + 1`` slices.

    The least-squares fit of ``a0 + a1 j + a2 j^2`` to ``p_{m+j}`` with weights ``w_j``
    (symmetric) has ``2 a2 = sum_j c_j p_{m+j}`` with ``c_j = 2 w_j (j^2 - mu) / sum_i w_i
    (i^2 - mu)^2`` and ``mu = sum_j w_j j^2 / sum_j w_j``. So ``sum c_j = 0``, ``sum c_j j =
    0`` and ``sum c_j j^2 = 2``: constant and linear profiles give exactly 0, quadratic and
    (by symmetry) cubic ones exactly their second derivative. A cubic fit gives the same
    coefficients (its odd term does not reach the even derivative at the centre). Float64,
    for a slice spacing of 1.

    >>> second_derivative_weights([1.0, 1.0, 1.0]).tolist()
    [1.0, -2.0, 1.0]
    >>> [round(c * 7, 12) for c in second_derivative_weights([1.0] * 5).tolist()]
    [2.0, -1.0, -2.0, -1.0, 2.0]
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.dim() != 1 or w.numel() < 3 or w.numel() % 2 == 0 or not bool((w > 0).all()) or not w.equal(w.flip(0)):
        raise ValueError(f"weights must be an odd number (>= 3) of positive values, symmetric; got {list(weights)}")
    k = (w.numel() - 1) // 2
    j2 = torch.arange(-k, k + 1, dtype=torch.float64) ** 2
    total = w.sum()
    d = total * j2 - (w * j2).sum()  # total (j^2 - mu): whole numbers for whole weights, so [1, -2, 1] is exact
    return 2 * total * w * d / (w * d**2).sum()


class SmoothedSecondDerivative:
    """A smoothing second derivative along the normal: ``q_m = sum_j c_j p_{m+j} / ds^2``, ``j = -pad..pad``.

    The coefficients (:attr:`coefficients`, :func:`second_derivative_weights`) are exact on
    quadratic and cubic profiles and zero on linear ones, so the reconstruction constant,
    the slice-area weights and the ``ds^2`` scaling are :class:`TomoFilter`'s: with the
    ``sum`` head the heatmap is still the input's intensities (Eq. 3). White noise of
    variance ``s^2`` in the scores comes out with variance ``s^2 sum c_j^2 / ds^4``, against
    ``6 s^2 / ds^4`` for ``tomo`` (:attr:`noise_gain`).
    """

    name = "smoothed-second-derivative"
    integral = True
    constant = TomoFilter.constant

    def __init__(self, weights: Sequence[float]) -> None:
        #: (2 pad + 1,) float64 coefficients for a slice spacing of 1
        self.coefficients = second_derivative_weights(weights)
        self.pad = (self.coefficients.numel() - 1) // 2

    @property
    def noise_gain(self) -> float:
        """Output variance over ``tomo``'s for white-noise scores: ``sum c_j^2 / 6``."""
        return float((self.coefficients**2).sum()) / 6.0

    def __call__(self, p: Tensor, ds: Tensor) -> Tensor:
        """Args: p (L, M + 2 pad, ...) scores; ds (L,) slice spacing. Returns (L, M, ...)."""
        k, c = self.pad, self.coefficients.to(p.device, p.dtype)
        M = p.shape[1] - 2 * k
        if M < 1:
            raise ValueError(f"{self.name}: {p.shape[1]} slices hold no slice between the {k} of padding each side")
        q = c[k] * p[:, k : k + M]
        for j in range(1, k + 1):  # c is symmetric: pairs first, each to the same rounding on both sides
            q = q + c[k + j] * (p[:, k + j : k + j + M] + p[:, k - j : k - j + M])
        scale = ds.reshape(-1, *([1] * (p.dim() - 1))).to(p)
        return q / scale**2

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, pad={self.pad})"


class SavitzkyGolayFilter(SmoothedSecondDerivative):
    """Savitzky-Golay second derivative: a quadratic (equally, cubic) fit over ``window`` slices.

    ``pad = (window - 1) / 2`` extra slices on each side keep ``M`` outputs; ``window=3``
    is ``tomo``. The white-noise variance is ``sum c^2 / 6`` of ``tomo``'s (1/21 for 5
    slices, 1/126 for 7), paid for by smoothing the profile over the window (a structure
    narrower than the window along the normal is blurred).
    """

    options = (Option("window", int, 5, "slices of the Savitzky-Golay fit (odd)", min=3),)

    def __init__(self, window: int = 5) -> None:
        if isinstance(window, bool) or int(window) != window or window < 3 or window % 2 == 0:
            raise ValueError(f"window={window!r} must be an odd number of slices >= 3")
        super().__init__([1.0] * int(window))
        self.window = int(window)
        # a non-default window is part of the name, which an engine's provenance records
        self.name = "tomo-sg" if self.window == 5 else f"tomo-sg(window={self.window})"


class GaussianDerivativeFilter(SmoothedSecondDerivative):
    """Second derivative of a Gaussian of ``sigma`` slices, truncated at ``pad = ceil(3 sigma)``.

    The sampled ``g''(j) = g(j) (j^2 - sigma^2) / sigma^4`` with ``sigma^2`` replaced by the
    truncated samples' own second moment and scaled so that a profile ``a t^2`` gives
    exactly ``2 a`` (the Gaussian-weighted quadratic fit, :func:`second_derivative_weights`):
    constants and linear profiles give exactly 0.
    """

    options = (Option("sigma", float, 1.0, "standard deviation of the Gaussian in slices", min=0.25, max=32.0),)

    def __init__(self, sigma: float = 1.0) -> None:
        if isinstance(sigma, bool) or not math.isfinite(float(sigma)) or not 0.25 <= float(sigma) <= 32.0:
            raise ValueError(f"sigma={sigma!r} must be a number of slices in 0.25..32")
        self.sigma = float(sigma)
        k = math.ceil(3 * self.sigma)
        j = torch.arange(-k, k + 1, dtype=torch.float64)
        super().__init__(torch.exp(-0.5 * (j / self.sigma) ** 2).tolist())
        self.name = "tomo-gauss" if self.sigma == 1.0 else f"tomo-gauss(sigma={self.sigma:g})"
