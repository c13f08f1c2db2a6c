"""The smoothing second-derivative filters (tomo-sg, tomo-gauss) against exact answers."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from tomofield import Engine, plugins
from tomofield.demo import correlation
from tomofield.filters import (
    GaussianDerivativeFilter,
    SavitzkyGolayFilter,
    SmoothedSecondDerivative,
    TomoFilter,
    second_derivative_weights,
)
from tomofield.protocols import Filter
from tomofield.synth import ball_phantom

FILTERS = [SavitzkyGolayFilter(w) for w in (3, 5, 7, 11)] + [GaussianDerivativeFilter(s) for s in (0.5, 1.0, 2.0)]
IDS = [f.name for f in FILTERS]


def _profiles(f, ds: torch.Tensor, M: int = 9, channels: tuple[int, ...] = (2, 1, 3), degree: int = 2, seed: int = 0):
    """Polynomial profiles along each stack at the offsets the plan cuts (pad slices beyond each end).

    Returns (p (L, M + 2 pad, *channels), the coefficients (degree + 1, L, 1, *channels), s (L, M + 2 pad)).
    """
    g = torch.Generator().manual_seed(seed)
    m = torch.arange(-f.pad, M + f.pad, dtype=torch.float64)
    s = ds[:, None] * (m - (M - 1) / 2)  # slice offsets: ds apart, centred
    coef = torch.randn(degree + 1, len(ds), 1, *channels, generator=g, dtype=torch.float64)
    s_ = s.reshape(*s.shape, *([1] * len(channels)))
    p = sum(coef[i] * s_**i for i in range(degree + 1))
    return p, coef, s


# stacks of different spacing, as extent="tight" makes them
DS = torch.tensor([0.05, 0.2, 0.7], dtype=torch.float64)


@pytest.mark.parametrize("f", FILTERS, ids=IDS)
def test_quadratic_profiles_give_exactly_their_second_derivative(f):
    p, coef, _ = _profiles(f, DS, degree=2)
    q = f(p, DS)
    assert q.shape == (3, 9, 2, 1, 3)
    torch.testing.assert_close(q, (2 * coef[2]).expand_as(q), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("f", FILTERS, ids=IDS)
def test_cubic_profiles_give_exactly_their_second_derivative(f):
    """The window is symmetric: a cubic's odd term cancels, its second derivative 2 c2 + 6 c3 s is exact."""
    p, coef, s = _profiles(f, DS, degree=3)
    q = f(p, DS)
    s_mid = s[:, f.pad : s.shape[1] - f.pad].reshape(3, 9, 1, 1, 1)
    torch.testing.assert_close(q, 2 * coef[2] + 6 * coef[3] * s_mid, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("f", FILTERS, ids=IDS)
def test_linear_and_constant_profiles_give_zero(f):
    p, _, _ = _profiles(f, DS, degree=1)
    q = f(p, DS)
    scale = float(p.abs().max()) / float(DS.min()) ** 2
    assert float(q.abs().max()) < 1e-12 * scale
    assert float(f(torch.full_like(p, 3.0), DS).abs().max()) < 1e-12 * 3.0 / float(DS.min()) ** 2


def test_window_3_is_the_plain_second_difference_and_tomo_sg_takes_the_ds_scaling_of_tomo():
    p = torch.randn(4, 12, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ds = torch.tensor([0.1, 0.3, 1.0, 2.5], dtype=torch.float64)
    assert torch.equal(SavitzkyGolayFilter(3)(p, ds), TomoFilter()(p, ds))
    wide = SavitzkyGolayFilter(7)
    torch.testing.assert_close(
        wide(p, ds) * ds.reshape(-1, 1, 1, 1, 1) ** 2, wide(p, torch.ones(4, dtype=torch.float64))
    )


def _sg_noise_gain(window: int) -> Fraction:
    """sum c^2 / 6 of the Savitzky-Golay second derivative, in exact arithmetic: 4 / sum (j^2 - mu)^2 / 6."""
    k = (window - 1) // 2
    j2 = [Fraction(j * j) for j in range(-k, k + 1)]
    mu = sum(j2) / window
    return Fraction(4) / sum((x - mu) ** 2 for x in j2) / 6


def _fit_coefficients(weights: np.ndarray) -> np.ndarray:
    """2 x the quadratic term's row of the weighted least-squares fit, by a pseudo-inverse (independent of the closed form)."""
    k = (len(weights) - 1) // 2
    j = np.arange(-k, k + 1, dtype=float)
    design = np.stack([np.ones_like(j), j, j**2, j**3], axis=1) * np.sqrt(weights)[:, None]  # a cubic fit
    return 2 * (np.linalg.pinv(design) * np.sqrt(weights)[None, :])[2]


@pytest.mark.parametrize(("window", "gain"), [(3, Fraction(1)), (5, Fraction(1, 21)), (7, Fraction(1, 126))])
def test_savitzky_golay_noise_gain_is_what_its_coefficients_predict(window, gain):
    f = SavitzkyGolayFilter(window)
    assert _sg_noise_gain(window) == gain
    assert f.noise_gain == pytest.approx(float(gain), rel=1e-6)
    np.testing.assert_allclose(f.coefficients.numpy(), _fit_coefficients(np.ones(window)), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_coefficients_are_the_gaussian_weighted_fit_and_a_second_derivative_of_a_gaussian(sigma):
    f = GaussianDerivativeFilter(sigma)
    assert f.pad == math.ceil(3 * sigma)
    j = np.arange(-f.pad, f.pad + 1, dtype=float)
    g = np.exp(-0.5 * (j / sigma) ** 2)
    c = f.coefficients.numpy()
    np.testing.assert_allclose(c, _fit_coefficients(g), rtol=1e-6, atol=1e-12)
    assert c.sum() == pytest.approx(0.0, abs=1e-12) and (c * j**2).sum() == pytest.approx(2.0, rel=1e-12)
    # the shape of g'' = g (j^2 - sigma^2) / sigma^4: its second moment replaced by the truncated samples'
    mu = (g * j**2).sum() / g.sum()
    np.testing.assert_allclose(c / (g * (j**2 - mu)), np.full_like(c, c[f.pad] / (g[f.pad] * -mu)), rtol=1e-9)
    if sigma >= 1.0:
        assert mu == pytest.approx(sigma**2, rel=0.05)


@pytest.mark.parametrize("f", FILTERS, ids=IDS)
def test_white_noise_variance_drops_by_the_factor_the_coefficients_predict(f):
    # the impulse response is the coefficients (so the prediction is about the operation applied) ...
    impulse = torch.zeros(1, 2 * f.pad + 1, dtype=torch.float64)
    impulse[0, f.pad] = 1.0
    response = torch.stack(
        [f(impulse.roll(i - f.pad, 1), torch.ones(1, dtype=torch.float64))[0, 0] for i in range(2 * f.pad + 1)]
    )
    torch.testing.assert_close(response, f.coefficients.flip(0), rtol=1e-12, atol=1e-15)
    # ... and on a large sample of white noise the variance ratio is sum c^2 / 6
    L, M = 4000, 100
    noise = torch.randn(L, M + 2 * f.pad, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ds = torch.full((L,), 0.3, dtype=torch.float64)
    tomo = TomoFilter()(noise[:, f.pad - 1 : noise.shape[1] - f.pad + 1], ds)  # the same M slices
    ratio = float(f(noise, ds).var() / tomo.var())
    assert ratio == pytest.approx(f.noise_gain, rel=0.03)  # 400k correlated samples: about 1 % standard error
    assert f.noise_gain <= 1.0  # never noisier than tomo (sigma 0.5 is nearly tomo: 0.93)


def test_the_filters_satisfy_the_protocol_with_the_constants_of_tomo():
    for f in FILTERS:
        assert isinstance(f, Filter) and isinstance(f, SmoothedSecondDerivative)
        assert f.integral is True and f.constant == TomoFilter.constant
    assert (SavitzkyGolayFilter().pad, SavitzkyGolayFilter(9).pad, GaussianDerivativeFilter(1.5).pad) == (2, 4, 5)


@pytest.mark.parametrize("bad", [4, 1, 2, 0, -3, 5.5, True])
def test_even_or_too_small_windows_are_refused(bad):
    with pytest.raises(ValueError, match="window"):
        SavitzkyGolayFilter(bad)


@pytest.mark.parametrize("bad", [0.0, 0.1, -1.0, float("nan"), 100.0])
def test_sigmas_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match="sigma"):
        GaussianDerivativeFilter(bad)


def test_weights_must_be_an_odd_symmetric_positive_set():
    for bad in ([1.0, 1.0], [1.0], [1.0, 2.0, 3.0], [1.0, -1.0, 1.0]):
        with pytest.raises(ValueError):
            second_derivative_weights(bad)


def test_too_few_slices_for_the_padding_is_refused():
    with pytest.raises(ValueError, match="hold no slice"):
        SavitzkyGolayFilter(7)(torch.zeros(2, 6), torch.ones(2))


# -- through the pipeline ---------------------------------------------------------------------
def test_the_plan_cuts_pad_slices_on_each_side():
    kw = dict(head="sum", directions=10, slices=12, slice_size=8, device="cpu")
    assert Engine(filter="tomo", **kw).count_slices((16, 16, 16)) == 10 * (12 + 2)
    assert Engine(filter="tomo-sg", **kw).count_slices((16, 16, 16)) == 10 * (12 + 4)
    assert Engine(filter=SavitzkyGolayFilter(window=9), **kw).count_slices((16, 16, 16)) == 10 * (12 + 8)
    assert Engine(filter="tomo-gauss", **kw).count_slices((16, 16, 16)) == 10 * (12 + 6)
    seen = []

    class Probe(SavitzkyGolayFilter):
        def __call__(self, p, ds):
            seen.append((tuple(p.shape[:2]), ds.clone()))
            return super().__call__(p, ds)

    eng = Engine(filter=Probe(7), **kw)
    eng.reconstruct(torch.rand(1, 16, 16, 16))
    assert {shape for shape, _ in seen} == {(10, 12 + 6)}
    plan = eng.plan((16, 16, 16), (1.0, 1.0, 1.0))
    torch.testing.assert_close(seen[0][1].double(), plan.groups[0].slice_spacing().double())


def _ball_reconstructions(filters, **kw):
    vol = ball_phantom((40, 40, 40), (1, 1, 1), [((0.0, 0.0, 0.0), 10.0, 1.0)])
    kw = dict(head="sum", directions=200, slices=40, slice_size=40, geometry="normalized", device="cpu", **kw)
    return vol, {f: Engine(filter=f, **kw).reconstruct(vol)[0] for f in filters}


def test_sum_head_with_tomo_sg_reconstructs_the_ball_as_tomo_does():
    """Eq. 3 holds with the smoothed derivatives: the ball's intensity (1 inside, 0 outside) and its integral.

    Tolerances: inside (r < 7 of 10) every voxel 1 +- 0.03 (measured 0.011; tomo's own worst voxel is off by
    0.054), outside (r > 14) the mean 0 +- 0.005 and the mean difference from tomo's below 0.04 (0.025: both
    carry the directions' sampling artefacts), the integral 1 +- 0.01 (tomo: 0.998), correlation with tomo's
    heatmap above 0.98 (0.988; smoothing along the normal blurs the ball's surface).
    """
    vol, heat = _ball_reconstructions(["tomo", "tomo-sg", "tomo-gauss"])
    inner = ball_phantom((40, 40, 40), (1, 1, 1), [((0.0, 0.0, 0.0), 7.0, 1.0)]) > 0
    outer = ball_phantom((40, 40, 40), (1, 1, 1), [((0.0, 0.0, 0.0), 14.0, 1.0)]) == 0
    for name in ("tomo-sg", "tomo-gauss"):
        h = heat[name]
        assert float((h[inner] - 1.0).abs().max()) < 0.03, name
        assert abs(float(h[outer].mean())) < 0.005, name
        assert float((h - heat["tomo"])[outer].abs().mean()) < 0.04, name
        assert float(h.sum() / vol.sum()) == pytest.approx(1.0, abs=0.01), name
        assert correlation(h, heat["tomo"]) > 0.98, name
        assert correlation(h, vol) > 0.9, name


def test_tight_stacks_of_different_spacing_integrate_to_the_ball():
    """extent="tight" gives each direction its own ds: a wrong ds scaling would miss the ball's volume."""
    spacing = (2.0, 1.0, 1.0)
    ball = ball_phantom((24, 40, 40), spacing, [((0.1, -0.1, 0.05), 9.0, 1.0)])
    kw = dict(head="sum", directions=200, slices=40, slice_size=20, device="cpu", extent="tight")
    eng = Engine(filter="tomo-sg", **kw)
    ds = eng.plan(ball.shape, spacing).groups[0].slice_spacing()
    assert float(ds.max() / ds.min()) > 1.3  # the stacks do differ
    sg = eng.reconstruct(ball[None], spacing)
    tomo = Engine(filter="tomo", **kw).reconstruct(ball[None], spacing)
    assert float(sg.sum()) / float(ball.sum()) == pytest.approx(1.0, abs=0.04)
    assert float(sg.sum()) / float(tomo.sum()) == pytest.approx(1.0, abs=0.01)
    assert correlation(sg, tomo) > 0.97


class _NoisySum:
    """The sum head plus seeded white noise on every score: an encoder's noisy slice scores, known truth."""

    name, needs_encoder, needs_grad, compilable, options = "noisy-sum", False, False, False, ()

    def __init__(self, sigma: float) -> None:
        self.sigma, self.gen = sigma, torch.Generator().manual_seed(0)

    def __call__(self, encoder, slices):
        mean = slices.mean(dim=(2, 3), keepdim=True)
        return mean + self.sigma * torch.randn(mean.shape, generator=self.gen)


def test_smoothing_lowers_the_heatmap_noise_of_noisy_scores():
    """The heatmap's error from noisy scores (against the same filter's noise-free heatmap) at least halves."""
    vol = ball_phantom((32, 32, 32), (1, 1, 1), [((0.0, 0.0, 0.0), 8.0, 1.0)])
    kw = dict(directions=150, slices=32, slice_size=32, geometry="normalized", device="cpu", skip_empty=False)
    error = {}
    for f in ("tomo", "tomo-sg", "tomo-gauss"):
        exact = Engine(head="sum", filter=f, **kw).reconstruct(vol)[0]
        noisy = Engine(head=_NoisySum(0.01), filter=f, **kw).reconstruct(vol)[0]
        error[f] = float((noisy - exact).std())
    assert error["tomo-sg"] < 0.5 * error["tomo"] and error["tomo-gauss"] < 0.5 * error["tomo"], error


# -- the registry, the engine and the CLI -------------------------------------------------------
def test_the_filters_are_registered_with_a_description_and_their_options():
    sg, gauss = plugins.get("filter", "tomo-sg"), plugins.get("filter", "tomo-gauss")
    assert "Savitzky-Golay" in sg.description and "Gaussian" in gauss.description
    assert [(o.name, o.type, o.default) for o in sg.options] == [("window", int, 5)]
    assert [(o.name, o.type, o.default) for o in gauss.options] == [("sigma", float, 1.0)]
    from click.testing import CliRunner

    from tomofield.cli import cli

    res = CliRunner().invoke(cli, ["plugins"], terminal_width=250)
    assert res.exit_code == 0 and "tomo-sg" in res.output and "tomo-gauss" in res.output


def test_engines_build_them_by_name_or_as_objects_and_record_a_non_default_width():
    kw = dict(head="sum", directions=4, slices=4, slice_size=8, device="cpu")
    assert Engine(filter="tomo-sg", **kw).filter.window == 5
    assert Engine(filter=SavitzkyGolayFilter(), **kw).provenance()["filter"] == "tomo-sg"
    assert Engine(filter=SavitzkyGolayFilter(window=7), **kw).provenance()["filter"] == "tomo-sg(window=7)"
    assert Engine(filter=GaussianDerivativeFilter(2.0), **kw).provenance()["filter"] == "tomo-gauss(sigma=2)"
    with pytest.raises(LookupError, match="unknown filter 'tomo-sgx'"):
        Engine(filter="tomo-sgx", **kw)
