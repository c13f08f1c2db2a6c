"""Filled lesions (issue 18): the consensus reconstructor and the self-consistent link, on analytic phantoms.

A slice classifier's logit saturates once a slice cuts a lesion. Two phantoms stand for it:
a ball whose slice scores are the indicator of "this plane cuts the ball" (fully saturated),
and one whose scores are a saturating but strictly increasing function of the exact plane
integrals (a known link to recover).
"""

from __future__ import annotations

import math

import pytest
import torch

from tomofield import Engine, InputError
from tomofield.phantom import ball_phantom
from tomofield.reconstructors import (
    Calibrated,
    Filled,
    FilteredBackprojection,
    MonotoneLink,
    isotonic_link,
    noise_units,
    self_consistent_link,
)

R, N = 7.0, 24
KW = dict(directions=48, slices=24, slice_size=32, device="cpu")


def _ball() -> torch.Tensor:
    return ball_phantom((N, N, N), (1.0, 1.0, 1.0), [((0.0, 0.0, 0.0), R, 1.0)])


def _radius() -> torch.Tensor:
    c = (N - 1) / 2
    z, y, x = torch.meshgrid(*(torch.arange(N, dtype=torch.float64) - c for _ in range(3)), indexing="ij")
    return (z * z + y * y + x * x).sqrt()


class _Cuts:
    """A saturated classifier: +4 when the slice cuts the ball, -4 when it does not."""

    name = "cuts"
    needs_encoder, needs_grad, compilable, options = False, False, False, ()

    def __call__(self, encoder, slices):
        return torch.where(slices.amax(dim=(2, 3), keepdim=True) > 0.5, 4.0, -4.0).to(slices)


class _Saturating:
    """Scores ``1 - exp(-q / Q)`` of the slice mean ``q`` (the plane integral over the slice area)."""

    name = "saturating"
    needs_encoder, needs_grad, compilable, options = False, False, False, ()
    Q = 0.04

    def __call__(self, encoder, slices):
        return 1 - torch.exp(-slices.mean(dim=(2, 3), keepdim=True) / self.Q)


class _Capture:
    """FBP that keeps every chunk's scores and the stacks, for a test to look at."""

    name = "capture"

    def __call__(self, chunks, stacks):
        self.kept, self.stacks = [(s.float(), d) for s, d in chunks], stacks
        return FilteredBackprojection()(iter(self.kept), stacks)


def test_the_consensus_of_saturated_scores_is_the_solid_ball_where_fbp_is_a_hollow_rim():
    ball, r = _ball(), _radius()
    fbp = Engine(head=_Cuts(), reconstructor="fbp", **KW).reconstruct(ball)[0].double()
    # the consensus alone: no ToNNO part
    cons = Engine(head=_Cuts(), reconstructor=Filled(weight=1.0), **KW).reconstruct(ball)[0].double()
    cons = cons - noise_units(fbp[None])[0]
    inside, outside = r <= R - 1.5, r >= 1.4 * R
    # every plane through an inner voxel cuts the ball: sigmoid((4 - 0.5) / 0.2) ~ 1 in each
    assert float(cons[inside].min()) > 0.95
    # a voxel at distance d misses the ball in a share 1 - R / d of the directions: log-sigmoid ~ -22 there
    assert float(cons[outside].max()) < 0.05
    # plain ToNNO of a plateau is the hat-box shell: its centre is weaker than its rim
    rim, centre = (r > R - 2.5) & (r < R + 0.5), r <= 2
    assert float(fbp[centre].abs().max()) < 1e-3 * float(fbp[rim].mean())  # a plateau's second derivative is 0
    # the filled heatmap comes back filled: its centre is within 20 % of its rim (measured: 5.9 against 7.0)
    filled = Engine(head=_Cuts(), reconstructor="filled", **KW).reconstruct(ball)[0].double()
    assert float(filled[centre].mean()) > 0.8 * float(filled[rim].mean())


def test_noise_units_are_the_median_and_the_median_absolute_deviation():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 10.0]])
    # median 2, deviations (2, 1, 0, 1, 8): their median 1
    assert noise_units(x).tolist() == [[-2.0, -1.0, 0.0, 1.0, 8.0]]
    assert noise_units(torch.full((2, 3), 5.0)).abs().max() == 0  # a constant channel


def test_the_isotonic_link_is_the_least_squares_monotone_fit():
    x = torch.arange(6.0).numpy()
    link = isotonic_link(x, [1.0, 3.0, 2.0, 4.0, 6.0, 5.0], bins=6)
    # pool adjacent violators: (3, 2) -> 2.5, (6, 5) -> 5.5
    assert link.values == pytest.approx((1.0, 2.5, 2.5, 4.0, 5.5, 5.5))
    assert link(torch.tensor([-1.0, 1.5, 9.0])).tolist() == pytest.approx([1.0, 2.5, 5.5])  # flat beyond the knots


def test_the_self_consistent_link_recovers_a_known_saturating_link_and_fills_the_ball():
    ball, r = _ball(), _radius()
    cap = _Capture()
    fbp = Engine(head=_Saturating(), reconstructor=cap, **KW).reconstruct(ball)[0].double()
    truth = torch.cat([cap.stacks.project(ball[None], d).flatten() for _, d in cap.kept]).double()
    scores = torch.cat([s.flatten() for s, _ in cap.kept]).double()
    assert float(scores.max()) > 0.9  # saturated: the scores are 1 - exp(-q / Q) with q / Q up to ~4
    (link,) = self_consistent_link(cap.kept, cap.stacks, iterations=3)
    assert all(b >= a for a, b in zip(link.values, link.values[1:], strict=False))  # monotone
    err = float((link(scores) - truth).abs().mean() / truth.max())
    # the best affine map of the raw scores cannot follow the curve
    design = torch.stack([scores, torch.ones_like(scores)], dim=1)
    coef = torch.linalg.lstsq(design, truth[:, None]).solution
    affine = float((design @ coef)[:, 0].sub(truth).abs().mean() / truth.max())
    assert err < 0.05 and err < 0.3 * affine, (err, affine)  # measured: 0.027 against 0.116
    # FBP of the linked scores is the solid ball, FBP of the raw ones is not
    cal = Engine(head=_Saturating(), reconstructor=Calibrated(), **KW).reconstruct(ball)[0].double()
    centre, rim = r <= 2, (r > R - 2.5) & (r < R - 0.5)
    assert float(cal[centre].mean()) > 0.8 * float(cal[rim].mean())
    assert float(fbp[centre].mean()) < 0.6 * float(fbp[rim].mean())


def test_the_logit_head_defaults_to_filled_and_every_other_head_to_fbp():
    assert Engine(device="cpu").reconstructor_name == "filled"
    assert Engine(preset="fast", device="cpu").reconstructor_name == "filled"
    assert Engine(head="sum", device="cpu").reconstructor_name == "fbp"
    assert Engine(reconstructor="fbp", device="cpu").reconstructor_name == "fbp"  # plain ToNNO, one option away
    assert Engine(device="cpu").provenance()["reconstructor"] == "filled"


@pytest.mark.parametrize(
    "kwargs", [dict(weight=-1.0), dict(temperature=0.0), dict(threshold=math.inf)], ids=["weight", "temp", "thr"]
)
def test_filled_refuses_bad_settings_naming_them(kwargs):
    with pytest.raises(InputError, match=next(iter(kwargs))):
        Filled(**kwargs)


def test_a_link_of_one_knot_is_constant():
    assert MonotoneLink((1.0,), (0.25,))(torch.tensor([-3.0, 7.0])).tolist() == [0.25, 0.25]
