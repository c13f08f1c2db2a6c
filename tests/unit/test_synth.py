"""Tests of the synthetic weakly supervised lesion dataset."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from tomofield.errors import InputError
from tomofield.synth import make_case, write_dataset


def _case(seed: int, positive: bool, size: int = 32, spacing=(1.0, 1.0, 1.0), **kw):
    shape = (size,) * 3 if isinstance(size, int) else size
    return make_case(shape, positive=positive, rng=np.random.default_rng(seed), spacing=spacing, **kw)


def _body(image: np.ndarray) -> np.ndarray:
    """Body mask estimated from the image alone: everything that differs from background."""
    smooth = ndi.gaussian_filter(image, 1.0)
    background = np.median(np.concatenate([smooth[0].ravel(), smooth[-1].ravel()]))
    tissue = ndi.binary_closing(np.abs(smooth - background) > 0.03, iterations=2)
    lab, _ = ndi.label(tissue)
    return ndi.binary_fill_holes(lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1)


def _best_threshold_balanced_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(x):
        ba = 0.5 * ((x[y] >= t).mean() + (x[~y] < t).mean())
        best = max(best, ba, 1.0 - ba)
    return best


def test_deterministic_for_a_seed():
    a_img, a_mask = _case(3, True)
    b_img, b_mask = _case(3, True)
    c_img, _ = _case(4, True)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)


def test_shapes_dtypes_and_range():
    img, mask = make_case((20, 36, 28), positive=True, rng=np.random.default_rng(0))
    assert img.shape == mask.shape == (20, 36, 28)
    assert img.dtype == np.float32 and mask.dtype == np.uint8
    assert np.isfinite(img).all() and -1.5 < img.min() and img.max() < 2.6
    assert set(np.unique(mask)) == {0, 1}
    corner = img[:3, :3, :3]
    assert abs(float(corner.mean())) < 0.06  # background is ~0 outside the body


@pytest.mark.parametrize("seed", range(6))
def test_masks_empty_for_negatives_and_one_to_three_lesions_for_positives(seed):
    _, neg = _case(seed, False)
    assert not neg.any()
    _, pos = _case(seed, True)
    assert 1 <= ndi.label(pos)[1] <= 3


@pytest.mark.parametrize("n", [1, 2, 3])
def test_n_lesions_gives_that_many_components(n):
    _, mask = _case(10 + n, True, size=40, n_lesions=n)
    assert ndi.label(mask)[1] == n


def test_invalid_lesion_counts_are_refused():
    with pytest.raises(ValueError):
        _case(0, False, n_lesions=2)
    with pytest.raises(ValueError):
        _case(0, True, n_lesions=0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 1.0, 1.0)])
def test_lesions_lie_inside_the_body_and_stand_out(spacing):
    for seed in range(4):
        img, mask = _case(seed, True, size=40, spacing=spacing)
        body = ndi.binary_erosion(_body(img), iterations=1)
        assert mask.any() and not (mask.astype(bool) & ~body).any()
        lab, n = ndi.label(mask)
        for k in range(1, n + 1):
            lesion = lab == k
            ring = ndi.binary_dilation(lesion, iterations=2) & ~lesion
            assert np.median(img[lesion]) - np.median(img[ring]) > 0.15


def test_lesions_are_round_in_millimetres_with_anisotropic_spacing():
    spacing = (3.0, 1.0, 1.0)
    ratios = []
    for seed in range(6):
        _, mask = _case(seed, True, size=(20, 60, 60), spacing=spacing)
        lab, n = ndi.label(mask)
        for k in range(1, n + 1):
            idx = np.argwhere(lab == k) * np.asarray(spacing)
            std = idx.std(axis=0)
            ratios.append(std[0] / np.sqrt(std[1] * std[2]))
    assert 0.75 < float(np.median(ratios)) < 1.3  # in voxels it would be ~1/3


def test_negative_twin_shares_the_anatomy():
    pos, mask = _case(7, True)
    neg, _ = _case(7, False)
    differ = np.abs(pos - neg) > 1e-6
    assert differ.mean() < 0.1  # only lesions vs decoys differ
    assert differ[mask.astype(bool)].mean() > 0.5


def test_global_statistics_do_not_separate_the_classes():
    # 80 cases: with 40 the best threshold on pure noise already reaches ~0.7 now and then.
    features = {
        "mean": np.mean,
        "std": np.std,
        "max": np.max,
        "p5": lambda a: np.percentile(a, 5),
        "p50": np.median,
        "p95": lambda a: np.percentile(a, 95),
        "p99": lambda a: np.percentile(a, 99),
    }
    rows, labels = [], []
    for i in range(80):
        img, _ = _case(1000 + i, i % 2 == 0)
        rows.append([f(img) for f in features.values()])
        labels.append(i % 2 == 0)
    x, y = np.asarray(rows), np.asarray(labels)
    for j, name in enumerate(features):
        ba = _best_threshold_balanced_accuracy(x[:, j], y)
        assert ba < 0.75, f"{name} separates the classes (balanced accuracy {ba:.2f})"


def test_fast_enough():
    make_case(positive=True, rng=np.random.default_rng(0))  # warm-up
    t = time.perf_counter()
    for seed in range(3):
        make_case(positive=bool(seed % 2), rng=np.random.default_rng(seed))
    assert (time.perf_counter() - t) / 3 < 1.5  # ~0.1 s on an idle core; loose for CI


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_write_dataset_round_trip_and_csvs(tmp_path):
    spacing = (2.0, 1.0, 1.5)
    out = tmp_path / "ds"
    paths = write_dataset(out, n=8, size=24, seed=5, spacing=spacing, val_fraction=0.25)
    assert set(paths) == {"dataset", "train", "val"}
    header, rows = _read_csv(paths["dataset"])
    assert header == ["image", "label", "mask"] and len(rows) == 8
    assert sorted(int(r["label"]) for r in rows) == [0] * 4 + [1] * 4
    _, train = _read_csv(paths["train"])
    _, val = _read_csv(paths["val"])
    assert {r["image"] for r in train} | {r["image"] for r in val} == {r["image"] for r in rows}
    assert not {r["image"] for r in train} & {r["image"] for r in val}
    assert {r["label"] for r in val} == {"0", "1"} == {r["label"] for r in train}
    for i, row in enumerate(rows):
        assert not Path(row["image"]).is_absolute() and not Path(row["mask"]).is_absolute()
        img_nii = nib.load(paths["dataset"].parent / row["image"])
        mask_nii = nib.load(paths["dataset"].parent / row["mask"])
        np.testing.assert_allclose(img_nii.affine, np.diag([1.5, 1.0, 2.0, 1.0]))
        np.testing.assert_allclose(mask_nii.affine, np.diag([1.5, 1.0, 2.0, 1.0]))
        assert img_nii.get_data_dtype() == np.float32 and mask_nii.get_data_dtype() == np.uint8
        img = np.asarray(img_nii.dataobj).transpose(2, 1, 0)
        mask = np.asarray(mask_nii.dataobj).transpose(2, 1, 0)
        want_img, want_mask = make_case(
            (24,) * 3, positive=row["label"] == "1", rng=np.random.default_rng([5, i]), spacing=spacing
        )
        np.testing.assert_array_equal(img, want_img)
        np.testing.assert_array_equal(mask, want_mask)
        assert mask.any() == (row["label"] == "1")
    assert not list(out.rglob(".tmp*"))  # atomic writes leave no temporaries


def test_write_dataset_is_deterministic(tmp_path):
    a = write_dataset(tmp_path / "a", n=4, size=16, seed=1)
    b = write_dataset(tmp_path / "b", n=4, size=16, seed=1)
    for key in a:
        assert a[key].read_text() == b[key].read_text()


def test_write_dataset_refuses_a_non_empty_directory(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(InputError, match="output directory .*ds.* is not empty; choose another"):
        write_dataset(out, n=4, size=16)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_dataset(empty, n=4, size=16)["dataset"].exists()


# -- the realistic background: scans as a scanner stores them -------------------------------------
def test_a_realistic_case_is_its_plain_twin_in_a_scanners_unit_and_offset():
    """Same anatomy and lesions; int16, air at the offset, tissue `gain` units above it."""
    gain, offset = 800.0, -1024.0
    plain, mask = _case(5, True, size=28)
    scan, scan_mask = _case(5, True, size=28, scan=(gain, offset))
    assert scan.dtype == np.int16 and plain.dtype == np.float32
    np.testing.assert_array_equal(mask, scan_mask)
    # air (the corners, outside the body) sits at the offset plus the noise floor
    corners = np.concatenate([scan[:3, :3, :3].ravel(), scan[-3:, -3:, -3:].ravel()]).astype(float)
    assert offset <= corners.min() and np.median(corners) - offset < 0.1 * gain
    # the lesions stand out by what they did in the plain case, times the gain (bias field aside)
    body = ndi.binary_erosion(_body(plain), iterations=2) & ~ndi.binary_dilation(mask > 0, iterations=3)
    contrast_plain = np.median(plain[mask > 0]) - np.median(plain[body])
    contrast_scan = (np.median(scan[mask > 0]) - np.median(scan[body])) / gain
    assert 0.5 < contrast_scan / contrast_plain < 2.0


def test_realistic_negatives_are_their_positives_anatomy():
    pos, mask = _case(9, True, size=28, scan=(300.0, 100.0))
    neg, neg_mask = _case(9, False, size=28, scan=(300.0, 100.0))
    away = ~ndi.binary_dilation(mask > 0, iterations=4)
    assert not neg_mask.any()
    np.testing.assert_array_equal(pos[away], neg[away])
    assert (pos[mask > 0].astype(float) - neg[mask > 0]).mean() > 50  # brighter where the lesions are


def test_a_realistic_dataset_varies_its_units_and_keeps_a_cubic_field_of_view(tmp_path: Path):
    from tomofield.intensity import normalize
    from tomofield.io import load_volume

    paths = write_dataset(tmp_path / "ds", n=6, size=24, seed=2, spacing=(2.0, 1.0, 1.0), background="realistic")
    rows = list(csv.DictReader(open(paths["dataset"], encoding="utf-8")))
    medians, normalised = [], []
    for row in rows:
        img = nib.load(str(tmp_path / "ds" / row["image"]))
        assert img.get_data_dtype() == np.int16
        assert img.header.get_zooms() == (1.0, 1.0, 2.0)  # stored (W, H, D)
        w, h, d = img.shape
        assert max(w, h) <= 24 and 0.35 < d / max(w, h) < 0.65  # half as many slices at twice the spacing
        vol = load_volume(tmp_path / "ds" / row["image"])
        x = vol.data
        medians.append(float(x[x > x.min() + 0.1 * (x.max() - x.min())].median() - x.min()))  # tissue above air
        normalised.append(float(normalize(x, "volume")[x > x.min() + 0.1 * (x.max() - x.min())].median()))
    assert max(medians) / min(medians) > 1.3  # every scan in its own scale
    assert max(normalised) / min(normalised) < 1.3  # which the normalisation takes out


def test_an_unknown_background_is_refused_with_the_valid_ones(tmp_path: Path):
    with pytest.raises(InputError, match=r"background='ct' \(valid: plain, realistic\)"):
        write_dataset(tmp_path / "ds", n=4, size=16, background="ct")
