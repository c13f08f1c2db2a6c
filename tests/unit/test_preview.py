"""Previews: the patient's frame whatever the storage order, the window of a CT, planes inside the body."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from tomofield.outputs.preview import CT_WINDOW, body_mask, default_window, focus, write_preview


def pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def scan_and_heat(seed=0):
    """An asymmetric (D, H, W) scan and a heatmap peaking in one corner of the body."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(np.arange(20), np.arange(26), np.arange(30), indexing="ij")
    scan = (((d - 10) / 9) ** 2 + ((h - 13) / 11) ** 2 + ((w - 15) / 13) ** 2 < 1) * 100.0
    scan += 10 * rng.random(scan.shape) + 40 * (w > 20) * (scan > 0)  # brighter towards +W
    heat = np.exp(-(((d - 7) ** 2 + (h - 9) ** 2 + (w - 20) ** 2) / 8.0))
    return scan.astype(np.float32), heat.astype(np.float32)


def test_an_lps_and_an_ras_copy_of_one_volume_are_the_same_picture(tmp_path):
    scan, heat = scan_and_heat()
    ras = np.diag([1.0, 1.2, 2.0, 1.0])  # i, j, k = W, H, D
    lps = ras.copy()
    lps[0, 0], lps[1, 1] = -1.0, -1.2
    # the same voxels stored the other way round along W and H (i and j)
    flip = (slice(None), slice(None, None, -1), slice(None, None, -1))
    a = write_preview(tmp_path / "ras.png", heat, scan, affine=ras, title="case")
    b = write_preview(tmp_path / "lps.png", heat[flip], scan[flip], affine=lps, title="case")
    np.testing.assert_array_equal(pixels(a), pixels(b))
    # a storage order that the affine does not state is drawn differently: the test can fail
    c = write_preview(tmp_path / "wrong.png", heat[flip], scan[flip], affine=ras, title="case")
    assert not np.array_equal(pixels(a), pixels(c))


def test_a_ct_in_hounsfield_units_gets_the_soft_tissue_window():
    scan, _ = scan_and_heat()
    ct = np.where(scan > 50, scan - 60, -1000.0)  # air at -1000 HU, tissue at 40-90
    assert default_window(ct, body_mask(ct)) == CT_WINDOW
    lo, hi = default_window(scan, body_mask(scan))
    inside = scan[body_mask(scan)]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(inside, [1, 99])))


def test_the_planes_pass_through_the_strongest_component_inside_the_body_not_an_artefact():
    scan, heat = scan_and_heat()
    heat[0, 0, 0] = 50.0  # an artefact in a corner of the grid, outside the body
    body = body_mask(scan)
    assert not body[0, 0, 0]
    assert focus(heat, body, threshold=0.5) == (7, 9, 20)
    # of two components the one with the larger sum wins, not the higher peak
    heat2 = np.zeros_like(heat)
    heat2[5, 8:11, 8:11] = 1.0  # small and high
    heat2[10:15, 12:17, 17:22] = 0.8  # lower, much larger
    assert ndi.label(heat2 >= 0.5)[1] == 2
    assert focus(heat2, body, threshold=0.5)[0] in range(10, 15)


def test_a_bad_window_is_refused(tmp_path):
    from tomofield.errors import InputError

    scan, heat = scan_and_heat()
    with pytest.raises(InputError, match=r"window \(400, -1000\) must be two numbers LO,HI with LO < HI"):
        write_preview(tmp_path / "p.png", heat, scan, window=(400, -1000))
