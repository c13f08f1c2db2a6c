"""The small-lesion benchmark's scans (benchmarks/brain.py) on a stand-in template: lesions as specified."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from benchmarks import brain


@pytest.fixture
def fake_template(monkeypatch):
    """A 1 mm 'brain': a ball of tissue 100 with a white-matter core of 200 (probability 1), air 0."""
    n = 90
    g = np.linalg.norm(np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij"), -1), axis=-1)
    wm = (g < 28).astype(np.float32)
    t1 = np.where(g < 38, 100.0, 0.0).astype(np.float32) + 100.0 * wm
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -(n - 1) / 2
    monkeypatch.setattr(brain, "template", lambda blur_mm: (ndi.gaussian_filter(t1, blur_mm), wm, affine))
    return t1


def test_a_positive_holds_its_lesions_where_the_mask_says_as_bright_as_asked(fake_template):
    settings = dict(spacing=3.0, rotation=0.0, lesions=(2, 2), semi_axes=(4.5, 6.0), contrast=(0.5, 0.5))
    pos, mask, affine = brain.make_case(np.random.default_rng(3), True, **settings)
    neg, empty, _ = brain.make_case(np.random.default_rng(3), False, **settings)
    assert pos.dtype == np.int16 and pos.shape == (30, 30, 30) and np.allclose(np.diag(affine)[:3], 3.0)
    assert not empty.any()
    labels, count = ndi.label(mask)
    assert count == 2
    for k in (1, 2):
        voxels = np.count_nonzero(labels == k)
        # semi-axes of 1.5-2 voxels: an ellipsoid of 14-34 voxels (voxel centres inside)
        assert 8 <= voxels <= 45, voxels
    # 50 % brighter than the white matter around, before noise and bias: the median ratio shows it
    ring = ndi.binary_dilation(mask, iterations=2) & ~mask.astype(bool)
    ratio = np.median(pos[mask > 0]) / np.median(pos[ring])
    assert 1.25 < ratio < 1.6, ratio


def test_a_dataset_is_split_by_class_and_reproducible(fake_template, tmp_path):
    a = brain.write_dataset(tmp_path / "a", n=8, seed=5, spacing=4.0)
    brain.write_dataset(tmp_path / "b", n=8, seed=5, spacing=4.0)
    rows = a["dataset"].read_text().splitlines()
    assert rows[0] == "image,label,mask" and len(rows) == 9
    assert sorted(r.split(",")[1] for r in rows[1:]) == ["0"] * 4 + ["1"] * 4
    assert len(a["val"].read_text().splitlines()) == 3  # one of each class
    import nibabel as nib

    first = rows[1].split(",")[0]
    assert np.array_equal(nib.load(tmp_path / "a" / first).get_fdata(), nib.load(tmp_path / "b" / first).get_fdata())
    with pytest.raises(SystemExit, match="not empty"):
        brain.write_dataset(tmp_path / "a", n=8, seed=5)
