"""Reconstruction filters applied along the slice axis of each stack (docs/design.md, "Reconstruction constants").

A filter turns the scores ``p`` of ``M + 2 pad`` slices into ``M`` filtered values
``q`` and says how the backprojected sum is scaled: the reconstruction is
``G(x) = constant * 4 pi / L * sum_l w_l q~_l(x)`` with ``w_l`` the slice area of
direction ``l`` when ``integral`` is true (the head's per-slice mean then stands
for the plane integral of Eq. 1) and 1 otherwise.
"""

from __future__ import annotations

import math

from torch import Tensor


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
