"""The multiple-instance objective against its definition, on logits worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tomofield.train.objective import chance_loss, mil_loss, pool


def softplus(t: float) -> float:
    return math.log(1 + math.exp(t))


def bce(logit: float, label: float) -> float:
    """Binary cross-entropy of one logit, written out: -y log s(z) - (1 - y) log(1 - s(z))."""
    return label * softplus(-logit) + (1 - label) * softplus(logit)


Z = [[0.0, 2.0, -1.0, 0.5], [1.0, -1.0, 0.0, -2.0]]
Y = [1.0, 0.0]


def by_hand(pooled: list[float], slice_weight: float = 0.0, lowest: int = 0) -> float:
    """The module's definition term by term: pooled BCE, negatives' slices, a positive's lowest, the per-slice loss."""
    total = 0.0
    for zs, y, p in zip(Z, Y, pooled, strict=True):
        term = bce(p, y)
        if y == 0:
            term += sum(bce(z, 0.0) for z in zs) / len(zs)
        elif lowest:
            term += sum(bce(z, 0.0) for z in sorted(zs)[:lowest]) / lowest
        term += slice_weight * sum(bce(z, y) for z in zs) / len(zs)
        total += term
    return total / len(Z)


@pytest.mark.parametrize(
    ("how", "kw", "pooled"),
    [
        ("max", {}, [2.0, 1.0]),
        ("top-k", {"k": 2}, [1.25, 0.5]),
        ("top-k", {"k": 9}, [0.375, -0.5]),  # k above M: the mean
        ("lse", {}, [math.log(sum(math.exp(z) for z in zs) / 4) for zs in Z]),
        ("lse", {"temperature": 0.5}, [0.5 * math.log(sum(math.exp(z / 0.5) for z in zs) / 4) for zs in Z]),
        # lse minus the (lower) median, minus the margin 1: medians 0 and -1
        (
            "contrast",
            {},
            [math.log(sum(math.exp(z) for z in zs) / 4) - med - 1 for zs, med in zip(Z, [0.0, -1.0], strict=True)],
        ),
    ],
)
@pytest.mark.parametrize("slice_weight", [0.0, 0.3])
@pytest.mark.parametrize(("share", "lowest"), [(0.0, 0), (0.2, 0), (0.5, 2), (0.8, 3)])  # floor(share * 4) slices
def test_the_loss_is_its_definition(how, kw, pooled, slice_weight, share, lowest):
    z, y = torch.tensor(Z, dtype=torch.float64), torch.tensor(Y, dtype=torch.float64)
    assert pool(z, how, **kw).tolist() == pytest.approx(pooled, abs=1e-12)
    got = mil_loss(z, y, how, slice_weight=slice_weight, negative_share=share, **kw).item()
    assert got == pytest.approx(by_hand(pooled, slice_weight, lowest), abs=1e-12)


def test_lse_lies_between_the_mean_and_the_maximum_and_tends_to_the_maximum():
    z = torch.tensor(Z, dtype=torch.float64)
    for t in (4.0, 1.0, 0.25):
        p = pool(z, "lse", temperature=t)
        assert torch.all(p >= z.mean(1)) and torch.all(p <= z.max(1).values)
    assert pool(z, "lse", temperature=1e-3).tolist() == pytest.approx(z.max(1).values.tolist(), abs=2e-3)
    assert pool(torch.full((1, 5), 0.7), "lse").item() == pytest.approx(0.7)  # slices that agree


def test_only_the_slices_that_carry_a_positive_are_pushed_up():
    """A positive's gradient goes to its highest slices; every slice of a negative is pushed down."""
    z = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    mil_loss(z, torch.tensor(Y), "max").backward()
    g = z.grad
    assert g[0].tolist()[1] < 0 and g[0].tolist()[:1] + g[0].tolist()[2:] == [0.0, 0.0, 0.0]
    assert torch.all(g[1] > 0)


def test_the_chance_loss_is_the_best_constant_logit():
    for w in (0.0, 0.5):
        grid = torch.linspace(-5, 5, 20001, dtype=torch.float64)
        losses = [
            mil_loss(torch.full((2, 3), float(c), dtype=torch.float64), torch.tensor(Y), slice_weight=w) for c in grid
        ]
        assert chance_loss("mil", w) == pytest.approx(min(float(v) for v in losses), abs=1e-6)


def test_contrast_ignores_what_every_slice_shares_and_falls_with_dips():
    """A shift of the whole stack leaves ``contrast`` where it was; a peak raises it, a dip lowers it."""
    flat = torch.zeros(1, 10, dtype=torch.float64)
    assert pool(flat, "contrast").item() == pytest.approx(-1.0)
    assert pool(flat + 5.0, "contrast").item() == pytest.approx(-1.0)
    peak, dip = flat.clone(), flat.clone()
    peak[0, 3], dip[0, 3] = 4.0, -4.0
    assert pool(peak + 2.0, "contrast").item() == pytest.approx(math.log((9 + math.exp(4)) / 10) - 1)
    low = pool(dip, "contrast").item()
    assert low == pytest.approx(math.log((9 + math.exp(-4)) / 10) - 1)
    assert low < -1.0


@pytest.mark.parametrize(("w", "share"), [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5)])
def test_the_contrast_chance_loss_is_the_best_constant_logit(w, share):
    grid = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    y = torch.tensor(Y)
    losses = [
        mil_loss(torch.full((2, 4), float(c), dtype=torch.float64), y, "contrast", slice_weight=w, negative_share=share)
        for c in grid
    ]
    assert chance_loss("mil", w, share, "contrast") == pytest.approx(min(float(v) for v in losses), abs=1e-6)


def test_the_per_slice_chance_loss_is_ln_2():
    assert chance_loss("slice") == pytest.approx(math.log(2))


def test_unknown_pool_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown pool 'mean'; valid: lse, max, top-k"):
        pool(torch.zeros(1, 2), "mean")
