"""The heatmap's noise under white-noise slice scores: ``std ~ (M - 1)^2 / sqrt(L)``.

The ``tomo`` filter's second difference divides by the slice spacing squared (``M`` slices
span the stack, ``h = 2 s / (M - 1)``) and the backprojection averages the L directions,
each of which meets a voxel at one filtered value interpolated linearly between two
neighbours, independent across directions. For filter coefficients ``c`` and an
interpolation weight ``f`` uniform in [0, 1] that value's variance is
``E[(1 - f)^2 + f^2] sum c^2 + E[2 f (1 - f)] sum c_j c_(j+1)``, which does not depend on
M. So the heatmap's variance is ``(2 sum c^2 + sum c_j c_(j+1)) / (3 h^4 L)`` times the
backprojection's weights. The quality benchmark's noise figure (docs/benchmarks.md
section 10) compares real encoder scores with this law.
"""

from __future__ import annotations

import pytest
import torch

from tomofield import Engine


class WhiteNoise:
    """A head whose score is N(0, 1) per slice, independent of the slice (seeded)."""

    name = "white-noise"
    needs_encoder = False
    needs_grad = False
    compilable = False
    options = ()

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, encoder, slices):
        return torch.randn(slices.shape[0], 1, 1, 1, generator=self.gen)


def noise(L: int, M: int, filt: str = "tomo", seeds: int = 4) -> float:
    """The heatmap's standard deviation at the grid's centre, pooled over ``seeds`` noise draws."""
    var = 0.0
    for seed in range(seeds):
        engine = Engine(
            head=WhiteNoise(seed),
            filter=filt,
            directions=L,
            slices=M,
            slice_size=8,
            device="cpu",
            skip_empty=False,
            reconstructor="fbp",
        )
        heat = engine.reconstruct(torch.zeros(1, 16, 16, 16))[0]
        var += float(heat[4:12, 4:12, 4:12].var()) / seeds  # the centre: every direction's stack covers it
    return var**0.5


def law(L: int, M: int) -> float:
    return (M - 1) ** 2 / L**0.5


def interpolated_variance(c: torch.Tensor) -> float:
    c = c.double()
    return float(2 * (c**2).sum() + (c[:-1] * c[1:]).sum()) / 3


def test_noise_falls_as_one_over_root_L_and_grows_as_the_inverse_spacing_squared():
    base = noise(64, 12)
    for L, M in ((256, 12), (64, 24), (128, 12), (64, 16)):
        assert noise(L, M) / base == pytest.approx(law(L, M) / law(64, 12), rel=0.08), (L, M)
    # at equal encoder slices L x M, the coarser stacks are the quieter: 128 x 12 against 64 x 24
    assert noise(128, 12) < 0.2 * noise(64, 24)


def test_a_smoothed_filter_lowers_that_noise_as_its_coefficients_say():
    from tomofield import plugins

    tomo = interpolated_variance(torch.tensor([1.0, -2.0, 1.0]))
    for name in ("tomo-sg", "tomo-gauss"):
        f = plugins.get("filter", name).factory()
        want = interpolated_variance(f.coefficients) / tomo
        got = (noise(128, 12, name) / noise(128, 12)) ** 2
        assert got == pytest.approx(want, rel=0.15), name
        assert want < 0.2  # five to seven times quieter than tomo
