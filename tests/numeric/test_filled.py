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
from tomofield.reconstructors import (
    Calibrated,
    Filled,
    FilteredBackprojection,
    MonotoneLink,
    fill_by_consensus,
    isotonic_link,
    self_consistent_link,
)
from tomofield.synth import ball_phantom

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
    cap = _Capture()
    fbp = Engine(head=_Cuts(), reconstructor=cap, **KW).reconstruct(ball)[0].double()
    heat, cons = Filled().parts(iter(cap.kept), cap.stacks)
    cons = cons[0].double()
    torch.testing.assert_close(heat[0].double(), fbp)  # the ToNNO part is plain FBP
    inside, outside = r <= R - 1.5, r >= 1.4 * R
    # every plane through an inner voxel cuts the ball: sigmoid((4 - 0.5) / 0.2) ~ 1 in each
    assert float(cons[inside].min()) > 0.95
    # a voxel at distance d misses the ball in a share 1 - R / d of the directions: log-sigmoid ~ -22 there
    assert float(cons[outside].max()) < 0.05
    # plain ToNNO of a plateau is the hat-box shell: its centre is 0, its rim bright
    rim, centre = (r > R - 2.5) & (r < R + 0.5), r <= 2
    assert float(fbp[centre].abs().max()) < 1e-3 * float(fbp[rim].mean())  # a plateau's second derivative is 0
    # filled: the centre takes the rim's level; nothing is lowered, and far outside nothing changes
    filled = Engine(head=_Cuts(), reconstructor="filled", **KW).reconstruct(ball)[0].double()
    assert float(filled[centre].mean()) > 0.9 * float(fbp[rim].max())
    assert bool((filled >= fbp - 1e-5).all())
    torch.testing.assert_close(filled[outside], fbp[outside])


def test_fill_by_consensus_raises_each_region_to_its_own_maximum():
    heat = torch.zeros(1, 3, 3, 9)
    heat[0, 1, 1, 1], heat[0, 1, 1, 3] = 4.0, 4.0  # a "rim" around x = 2
    heat[0, 1, 1, 7] = 1.0  # a second, weaker region
    heat[0, 0, 0, 5] = 9.0  # bright, but outside every region
    cons = torch.zeros(1, 3, 3, 9)
    cons[0, :, :, 1:4] = 1.0
    cons[0, 1, 1, 2] = 0.5  # the centre: half the planes agree
    cons[0, :, :, 7] = 0.8
    out = fill_by_consensus(heat, cons, level=0.5, power=2.0)
    assert float(out[0, 1, 1, 2]) == pytest.approx(0.25 * 4.0)  # 0.5^2 x its region's maximum
    assert float(out[0, 0, 0, 1]) == pytest.approx(4.0)  # full consensus: the region's maximum
    assert float(out[0, 1, 1, 7]) == pytest.approx(1.0)  # max(1, 0.64 x 1)
    assert float(out[0, 0, 0, 7]) == pytest.approx(0.64)  # its own region's maximum, not the other's
    assert float(out[0, 0, 0, 5]) == 9.0 and float(out[0, 0, 0, 0]) == 0.0  # outside: unchanged
    negative = fill_by_consensus(-torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2))
    assert negative.eq(-1).all()  # a region whose maximum is not positive keeps its values


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
    "kwargs",
    [dict(level=0.0), dict(temperature=0.0), dict(threshold=math.inf), dict(power=-1.0)],
    ids=["level", "temp", "thr", "power"],
)
def test_filled_refuses_bad_settings_naming_them(kwargs):
    with pytest.raises(InputError, match=next(iter(kwargs))):
        Filled(**kwargs)


def test_a_link_of_one_knot_is_constant():
    assert MonotoneLink((1.0,), (0.25,))(torch.tensor([-3.0, 7.0])).tolist() == [0.25, 0.25]
