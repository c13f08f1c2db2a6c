"""Golden outputs: heatmaps of fixed small runs, pinned before the redesign of issue 14.

Bit-identical unless a case is listed in ``ROUND_OFF`` with the reason its order of
operations changed. ``golden_cases.py`` holds the cases and writes the pinned arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from golden_cases import CASES, golden_path, run_case

#: case -> (rtol, atol, why): cases whose floating-point order of operations changed.
ROUND_OFF: dict[str, tuple[float, float, str]] = {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_heatmap(name: str, tmp_path: Path):
    pinned = np.load(golden_path(name))
    got = run_case(name, tmp_path)
    assert sorted(got) == sorted(pinned.files)
    for key in pinned.files:
        want = pinned[key]
        assert got[key].shape == want.shape, key
        assert np.abs(want).max() > 0, f"{name}/{key}: the pinned heatmap is all zero, it pins nothing"
        if name in ROUND_OFF:
            rtol, atol, _ = ROUND_OFF[name]
            np.testing.assert_allclose(got[key], want, rtol=rtol, atol=atol, err_msg=f"{name}/{key}")
        else:
            assert np.array_equal(got[key], want), (
                f"{name}/{key}: max abs diff {np.abs(got[key] - want).max():.3g} (bit-identical expected)"
            )
