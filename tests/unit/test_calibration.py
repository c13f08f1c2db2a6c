"""The encoder's operating point: quantiles of negatives' slice logits, recorded and read back."""

from __future__ import annotations

import math

import pytest
import torch

from tomofield.calibration import MIN_SLICES, OperatingPoint, operating_point, valid_record
from tomofield.errors import InputError
from tomofield.reconstructors import FILLED_SPREADS_BELOW, FILLED_TEMPERATURE_SHARE, Filled


def test_a_known_threshold_is_recovered_from_normal_logits():
    """Negatives' logits N(mu, sigma^2): the 95 % quantile is mu + 1.6449 sigma, the spread sigma."""
    g = torch.Generator().manual_seed(5)
    for mu, sigma in [(-4.0, 1.5), (2.0, 0.3)]:
        z = mu + sigma * torch.randn(400_000, generator=g, dtype=torch.float64)
        p = operating_point(z, 0.05, volumes=40, source="synthetic")
        assert p.threshold == pytest.approx(mu + 1.644854 * sigma, abs=0.01 * sigma)
        assert p.scale == pytest.approx(sigma, rel=0.01)
        assert (p.false_positive_rate, p.slices, p.volumes, p.source) == (0.05, 400_000, 40, "synthetic")
        # the recorded rate is what it lets through
        assert float((z > p.threshold).double().mean()) == pytest.approx(0.05, abs=0.002)


def test_the_quantiles_are_exact_on_evenly_spaced_logits():
    """0..999: linear interpolation puts the q-quantile at q * 999."""
    p = operating_point(torch.arange(1000.0), 0.1, volumes=1, source="ramp")
    assert p.threshold == pytest.approx(0.9 * 999, abs=1e-6)
    assert p.scale == pytest.approx((0.84134 - 0.15866) * 999 / 2, abs=1e-6)


def test_shape_does_not_matter_and_a_constant_encoder_gets_a_tiny_spread():
    z = torch.arange(60.0).reshape(3, 4, 5)
    assert operating_point(z, volumes=3, source="s") == operating_point(z.reshape(-1), volumes=3, source="s")
    assert operating_point(torch.full((50,), 2.0), volumes=1, source="s").scale == pytest.approx(1e-3)


@pytest.mark.parametrize("rate", [0.0, 0.5, -0.1, 1.0])
def test_a_rate_outside_zero_to_a_half_is_refused_naming_it(rate):
    with pytest.raises(InputError, match=rf"false-positive rate must be in \(0, 0.5\), got {rate}"):
        operating_point(torch.zeros(100), rate, volumes=1, source="s")


def test_too_few_slices_or_broken_logits_are_refused():
    with pytest.raises(InputError, match=f"at least {MIN_SLICES} slices of negative volumes, got 5 \\(from 2 volume"):
        operating_point(torch.zeros(5), volumes=2, source="s")
    bad = torch.zeros(100)
    bad[3] = math.nan
    with pytest.raises(InputError, match="not all finite"):
        operating_point(bad, volumes=1, source="s")


def test_the_record_round_trips_and_the_schema_refuses_what_is_not_one():
    p = operating_point(torch.linspace(-3, 1, 500), volumes=5, source="val.csv")
    assert valid_record(p.to_json()) and OperatingPoint.from_json(p.to_json()) == p
    for broken in [
        {**p.to_json(), "scale": 0.0},
        {**p.to_json(), "false_positive_rate": 0.7},
        {**p.to_json(), "threshold": math.inf},
        {**p.to_json(), "slices": 0},
        {k: v for k, v in p.to_json().items() if k != "source"},
        {**p.to_json(), "extra": 1},
        [1, 2],
    ]:
        assert not valid_record(broken)


def test_filled_takes_its_threshold_and_temperature_from_the_operating_point():
    p = OperatingPoint(threshold=-1.5, scale=2.0, false_positive_rate=0.05, slices=100, volumes=4, source="s")
    opts = Filled.operating_point_options(p)
    assert opts == {
        "threshold": -1.5 - FILLED_SPREADS_BELOW * 2.0,
        "temperature": FILLED_TEMPERATURE_SHARE * 2.0,
    }
    built = Filled(**opts)  # within the options' declared bounds
    assert built.threshold == opts["threshold"]
