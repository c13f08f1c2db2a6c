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


class WidthSecondDerivative:
    """A second derivative over a fixed *width* along the normal, whatever the slice spacing.

    ``tomo``'s three-slice derivative of a step (what a slice classifier's saturated logit
    draws across a lesion) is the step's height over ``ds^2``, backprojected over a band one
    spacing wide: the heatmap near a lesion grows like ``1 / ds``, about in proportion to M,
    so thresholds tuned at one M do not carry to another (docs/results.md, "A heatmap's scale
    against the sampling"). Here each direction ``l`` takes the least-squares quadratic fit
    over ``2 k_l + 1`` slices, ``k_l = round(width / (2 ds_l))`` (at least 1, at most
    :attr:`pad`): a step's response is spread over about ``width`` and its scale no longer
    follows M. Quadratic and cubic profiles still give exactly their second derivative, so the
    ``sum`` head still returns the input's intensities (:func:`second_derivative_weights`).

    ``width`` is in the units of the slicing geometry (the box's largest half-extent is 1).
    The padding depends on the volume's spacings: the plan asks :meth:`pad_for` and the
    filter keeps the answer in :attr:`pad` for the volume's stacks.
    """

    name = "tomo-width"
    integral = True
    constant = TomoFilter.constant
    options = (
        Option("width", float, 0.25, "width of the derivative, a share of the box's largest half-extent", min=0.01),
        Option("max_pad", int, 8, "the most extra slices on each side of a stack", min=1, max=64),
    )

    def __init__(self, width: float = 0.25, max_pad: int = 8) -> None:
        if isinstance(width, bool) or not math.isfinite(float(width)) or not float(width) > 0:
            raise ValueError(f"width={width!r} must be a positive number")
        if isinstance(max_pad, bool) or int(max_pad) != max_pad or not 1 <= int(max_pad) <= 64:
            raise ValueError(f"max_pad={max_pad!r} must be a whole number of slices in 1..64")
        self.width, self.max_pad = float(width), int(max_pad)
        #: extra slices on each side of the current volume's stacks (:meth:`pad_for`)
        self.pad = 1
        self._coefficients: dict[int, Tensor] = {}
        if self.width != 0.25 or self.max_pad != 8:
            self.name = f"tomo-width(width={self.width:g}, max_pad={self.max_pad})"

    def half_windows(self, ds: Tensor) -> Tensor:
        """``k_l``: the half-window in slices of each direction of spacing ``ds`` (L,), in 1..max_pad."""
        k = torch.round(self.width / (2 * ds.double().clamp_min(1e-12)))
        return k.clamp(1, self.max_pad).long()

    def pad_for(self, ds: Tensor) -> int:
        """The padding a volume whose stacks have spacings ``ds`` needs; kept as :attr:`pad`."""
        self.pad = int(self.half_windows(ds).max()) if ds.numel() else 1
        return self.pad

    def coefficients(self, k: int) -> Tensor:
        """The ``2 k + 1`` float64 coefficients of the fit's second derivative for a spacing of 1."""
        if k not in self._coefficients:
            self._coefficients[k] = second_derivative_weights([1.0] * (2 * k + 1))
        return self._coefficients[k]

    def __call__(self, p: Tensor, ds: Tensor) -> Tensor:
        """Args: p (L, M + 2 pad, ...) scores; ds (L,) slice spacing. Returns (L, M, ...)."""
        P = self.pad
        M = p.shape[1] - 2 * P
        if M < 1:
            raise ValueError(f"{self.name}: {p.shape[1]} slices hold no slice between the {P} of padding each side")
        ks = self.half_windows(ds).clamp_max(P)
        rows = torch.zeros(len(ks), 2 * P + 1, dtype=torch.float64)
        for i, k in enumerate(ks.tolist()):
            rows[i, P - k : P + k + 1] = self.coefficients(k)
        rows = rows.to(p.device, p.dtype)

        def c(j: int) -> Tensor:  # each direction's coefficient at offset j - P, shaped to multiply its stack
            return rows[:, j].reshape(-1, *([1] * (p.dim() - 1)))

        q = c(P) * p[:, P : P + M]
        for j in range(1, P + 1):
            q = q + c(P + j) * p[:, P + j : P + j + M] + c(P - j) * p[:, P - j : P - j + M]
        scale = ds.reshape(-1, *([1] * (p.dim() - 1))).to(p)
        return q / scale**2

    def __repr__(self) -> str:
        return f"{type(self).__name__}(width={self.width:g}, max_pad={self.max_pad}, pad={self.pad})"
