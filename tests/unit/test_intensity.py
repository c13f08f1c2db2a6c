"""Intensity normalisation: what a stored unit and offset do to a volume is undone exactly."""

from __future__ import annotations

import pytest
import torch

from tomofield.errors import InputError
from tomofield.intensity import MODES, SAMPLE, normalize, reference


def body(shape=(24, 24, 24), seed=0) -> torch.Tensor:
    """A (1, D, H, W) volume: background 0, a box of tissue at 1 with texture, a bright spot."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, *shape)
    x[:, 4:20, 5:19, 3:21] = 1 + 0.1 * torch.randn(1, 16, 14, 18, generator=g)
    return x


@pytest.mark.parametrize(("gain", "offset"), [(1000.0, -1024.0), (0.01, 3.0), (57.0, 0.0)])
def test_any_unit_and_offset_give_the_same_normalised_volume(gain, offset):
    x = body()
    # float32 holds gain * x + offset to about eps * |offset| / gain in normalised units
    tol = 1e-5 + 4 * torch.finfo(torch.float32).eps * abs(offset) / gain
    assert torch.allclose(normalize(gain * x + offset, "volume"), normalize(x, "volume"), atol=tol)


def test_background_goes_to_zero_and_the_tissue_median_to_one():
    x = 300 * body() + 40
    y = normalize(x, "volume")
    assert float(y[0, 0, 0, 0]) == 0.0  # the background (more than 1 % of the voxels)
    tissue = y[:, 4:20, 5:19, 3:21]
    assert float(tissue.median()) == pytest.approx(1.0, abs=1e-6)


def test_bright_lesions_do_not_move_the_scale():
    """A positive and its lesion-free twin are scaled alike: lesions are a few per cent of the body."""
    neg = body()
    pos = neg.clone()
    pos[:, 8:12, 8:12, 8:12] += 3.0  # 64 voxels, 1.6 % of the tissue, four times as bright
    (_, s_neg), (_, s_pos) = reference(neg), reference(pos)
    assert float(s_pos / s_neg) == pytest.approx(1.0, abs=0.01)


def test_channels_are_normalised_each_on_its_own():
    x = torch.cat([body(seed=1) * 5 - 2, body(seed=2) * 800])
    y = normalize(x, "volume")
    for c in range(2):
        assert torch.allclose(y[c : c + 1], normalize(x[c : c + 1], "volume"))


def test_a_constant_channel_keeps_its_scale_and_none_changes_nothing():
    x = torch.full((1, 8, 8, 8), 7.0)
    low, scale = reference(x)
    assert (float(low[0]), float(scale[0])) == (7.0, 1.0)
    v = body()
    assert normalize(v, "none") is v


def test_large_volumes_are_sampled_by_a_fixed_stride():
    """Beyond SAMPLE voxels the percentiles come from a stride: deterministic, and close to the full ones."""
    x = body((130, 130, 130))
    assert x.numel() > SAMPLE
    low, scale = reference(x)
    assert torch.equal(reference(x)[1], scale)
    assert float(scale[0]) == pytest.approx(1.0, abs=0.02)


def test_an_unknown_mode_names_the_valid_ones():
    with pytest.raises(InputError, match=f"unknown intensity normalisation 'minmax'; valid: {', '.join(MODES)}"):
        normalize(body(), "minmax")


def test_zscore_gives_each_channel_mean_0_and_standard_deviation_1_whatever_the_unit():
    x = torch.stack([body()[0], 3 * body()[0] ** 2])
    y = normalize(x, "zscore")
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(y.std(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)
    assert torch.allclose(normalize(250 * x - 1024, "zscore"), y, atol=1e-4)
    assert torch.equal(normalize(torch.full((1, 4, 4, 4), 7.0), "zscore"), torch.zeros(1, 4, 4, 4))  # constant
