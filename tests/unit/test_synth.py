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
from tomofield.synth import RECORD, equivalent_radius, lesion_limits, make_case, write_dataset


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
        _case(0, True, n_lesions=0)
    with pytest.raises(ValueError):
        _case(0, True, n_lesions=(0, 2))
    with pytest.raises(ValueError):
        _case(0, False, n_lesions=-1)


def test_a_negative_with_a_lesion_count_is_the_twin_of_the_positive_with_it():
    """A negative draws its positive twin's lesions unrendered, so the anatomy (the organ placed away from them) matches."""
    pos, mask = _case(21, True, size=40, n_lesions=2)
    neg, neg_mask = _case(21, False, size=40, n_lesions=2)
    assert ndi.label(mask)[1] == 2 and not neg_mask.any()
    away = ~ndi.binary_dilation(mask > 0, np.ones((3, 3, 3)), iterations=4)  # past the soft edge's box support
    np.testing.assert_array_equal(pos[away], neg[away])


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


# -- lesion sizes: the lesion_radius setting ------------------------------------------------------
#: SHA-256 of ``image.tobytes() + mask.tobytes()`` of ``make_case((24, 24, 24), positive=True,
#: rng=np.random.default_rng([5, 1]))`` (and its negative, and a realistic anisotropic case),
#: computed with the code before lesion_radius existed (numpy 2.4.6, scipy 1.17.1): the default
#: draws are today's datasets, bit for bit. Another numpy or scipy may change the values
#: (Generator streams are stable, filters may round differently); then recompute them at a
#: commit before lesion_radius to tell that apart from a change of the default path.
GOLDEN = {
    "positive": "fd27c123d3a25054d8f1004c037ce6579bab0033965a38cfc56003231b1df6ff",
    "negative": "5ba78abb72c4dd4f5565742c6c09ec9728919e1d7c8bd611d59a0c704507aaa2",
    "realistic": "96ba4539576f7f223e1217a4bf46c17feb6e7a2cfe8030f5a6bba6298f575b90",
}


def _sha(image: np.ndarray, mask: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(image.tobytes() + mask.tobytes()).hexdigest()


def test_default_cases_are_those_of_the_code_before_lesion_radius():
    for name, positive in (("positive", True), ("negative", False)):
        got = make_case((24, 24, 24), positive=positive, rng=np.random.default_rng([5, 1]), spacing=(1.0, 1.0, 1.0))
        assert _sha(*got) == GOLDEN[name], name
    scan = make_case(
        (20, 28, 24), positive=True, rng=np.random.default_rng([5, 2]), spacing=(2.0, 1.0, 1.5), scan=(800.0, -1024.0)
    )
    assert _sha(*scan) == GOLDEN["realistic"]


def _arrays(folder: Path) -> dict[str, bytes]:
    return {p.name + p.parent.name: np.asarray(nib.load(p).dataobj).tobytes() for p in sorted(folder.rglob("*.nii.gz"))}


def test_a_default_dataset_and_one_with_the_defaults_given_are_the_same(tmp_path):
    """The count's default range (1, 3) given explicitly takes the very draws of leaving it out."""
    a = write_dataset(tmp_path / "a", n=4, size=24, seed=3)
    b = write_dataset(tmp_path / "b", n=4, size=24, seed=3, lesion_radius=None, n_lesions=(1, 3))
    assert _arrays(tmp_path / "a") == _arrays(tmp_path / "b") and len(_arrays(tmp_path / "a")) == 8
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes()


def _lesion_radii(folder: Path, spacing=(1.0, 1.0, 1.0)) -> list[float]:
    """The equivalent radius, in voxels of the finest spacing, of every lesion of every mask of a dataset."""
    radii = []
    for row in _read_csv(folder / "dataset.csv")[1]:
        mask = np.asarray(nib.load(folder / row["mask"]).dataobj).transpose(2, 1, 0)
        lab, n = ndi.label(mask)
        assert (n > 0) == (row["label"] == "1")
        radii += [
            ((3 * np.count_nonzero(lab == k) * np.prod(spacing) / min(spacing) ** 3) / (4 * np.pi)) ** (1 / 3)
            for k in range(1, n + 1)
        ]
    return radii


def test_a_large_lesion_set_has_lesions_of_the_asked_equivalent_radius(tmp_path):
    """Tolerance 0: the generator sets each mask's voxel count, so its radius lies in the range exactly."""
    write_dataset(tmp_path / "ds", n=8, size=48, seed=1, lesion_radius=(8, 10))
    radii = _lesion_radii(tmp_path / "ds")
    assert len(radii) == 4  # 8,10 on a 48-voxel grid: one lesion per positive (the total-volume cap)
    assert all(8.0 <= r <= 10.0 for r in radii), radii
    assert max(radii) - min(radii) > 0.2  # drawn across the range, not pinned to an end


def test_the_default_set_keeps_the_usual_sizes(tmp_path):
    """3-8 reference voxels (here voxels), lobes and the boundary's noise aside: 2.5-9, rarely 8 or more."""
    write_dataset(tmp_path / "ds", n=16, size=48, seed=1)
    radii = _lesion_radii(tmp_path / "ds")
    assert len(radii) >= 8 and all(2.5 <= r <= 9.0 for r in radii), radii
    assert np.mean(np.asarray(radii) >= 8.0) < 0.2 and 4.0 < np.median(radii) < 6.5


def test_lesion_radius_counts_voxels_of_the_finest_spacing_on_anisotropic_grids():
    spacing = (2.5, 1.0, 1.0)
    for seed in range(3):
        _, mask = _case(seed, True, size=(24, 56, 56), spacing=spacing, lesion_radius=(6, 7))
        lab, n = ndi.label(mask)
        assert n >= 1
        for k in range(1, n + 1):
            assert 6.0 <= equivalent_radius(lab == k, spacing) <= 7.0
            idx = np.argwhere(lab == k) * np.asarray(spacing)
            std = idx.std(axis=0)
            assert 0.6 < std[0] / np.sqrt(std[1] * std[2]) < 1.6  # round in millimetres


def test_a_fixed_lesion_radius_gets_the_nearest_voxel_count():
    """LO == HI: no whole count has that radius exactly; the nearest one is within half a voxel's volume."""
    for seed in range(3):
        _, mask = _case(seed, True, size=40, lesion_radius=(6, 6), n_lesions=1)
        volume = 4 / 3 * np.pi * 6.0**3
        assert abs(np.count_nonzero(mask) - volume) <= 0.5
        assert abs(equivalent_radius(mask) - 6.0) < 1e-3


def test_lesion_counts_and_the_cap(tmp_path):
    _, mask = _case(4, True, size=48, lesion_radius=(3, 4), n_lesions=3)
    assert ndi.label(mask)[1] == 3
    assert lesion_limits((48,) * 3, (1, 1, 1), 10)[1] == 1  # the default count of 8,10 on 48 voxels is 1
    assert lesion_limits((48,) * 3, (1, 1, 1), 4)[1] >= 3
    neg, neg_mask = _case(4, False, size=48, lesion_radius=(3, 4), n_lesions=3)
    assert not neg_mask.any()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(lesion_radius=(10, 8)), r"lesion_radius=\(10, 8\) \(valid: \(LO, HI\) with 1 <= LO <= HI voxels"),
        (dict(lesion_radius=(0, 8)), r"lesion_radius=\(0, 8\) \(valid"),
        (dict(lesion_radius=(-2, 8)), r"lesion_radius=\(-2, 8\) \(valid"),
        (dict(lesion_radius=("a", 8)), r"lesion_radius=\('a', 8\) \(valid"),
        (dict(lesion_radius=(8, float("inf"))), r"lesion_radius=\(8, inf\) \(valid"),
        (
            dict(lesion_radius=(12, 14)),
            r"a lesion of 14 voxels does not fit in the body of 48x48x48 voxels of 1x1x1 mm; the largest that fits "
            r"is 12.3 voxels",
        ),
        (
            dict(lesion_radius=(8, 10), size=32),
            r"a lesion of 10 voxels does not fit in the body of 32x32x32 voxels of 1x1x1 mm; the largest that fits "
            r"is 7.6 voxels",
        ),
        (
            dict(lesion_radius=(8, 10), size=48, spacing=(2.0, 1.0, 1.0), background="realistic"),
            r"does not fit in the body of 20x41x41 voxels of 2x1x1 mm \(the smallest case grid of size=48\); the "
            r"largest that fits is 9.9 voxels",
        ),
        (dict(lesion_radius=(8, 10), n_lesions=2), r"n_lesions=2 with lesion_radius=\(8, 10\): at most 1 lesion"),
        (dict(n_lesions=0), r"n_lesions=0 \(valid: a count N or a range \(LO, HI\) of counts per positive, 1 <= LO"),
        (dict(n_lesions=(3, 1)), r"n_lesions=\(3, 1\) \(valid"),
        (dict(n_lesions=11), r"n_lesions=11 \(valid"),
    ],
)
def test_lesion_settings_out_of_range_are_one_input_error_and_write_nothing(tmp_path, kw, message):
    kw = {"size": 48, **kw}
    with pytest.raises(InputError, match=message):
        write_dataset(tmp_path / "ds", n=4, **kw)
    assert not (tmp_path / "ds").exists()


def test_make_case_refuses_a_lesion_that_does_not_fit_with_the_largest_that_does():
    with pytest.raises(InputError, match=r"lesion of 9 voxels does not fit .* the largest that fits is 7.6 voxels"):
        _case(0, True, size=32, lesion_radius=(8, 9))


def test_the_dataset_records_how_it_was_made(tmp_path):
    import json

    write_dataset(tmp_path / "a", n=4, size=16, seed=2)
    record = json.loads((tmp_path / "a" / RECORD).read_text(encoding="utf-8"))
    assert record["generator"] == "tomofield.synth.write_dataset"
    assert {k: record[k] for k in ("n", "size", "seed", "spacing", "background", "lesion_radius", "n_lesions")} == {
        "n": 4,
        "size": 16,
        "seed": 2,
        "spacing": [1.0, 1.0, 1.0],
        "background": "plain",
        "lesion_radius": None,
        "n_lesions": None,
    }
    write_dataset(tmp_path / "b", n=4, size=48, seed=2, lesion_radius=(8, 10), n_lesions=1)
    record = json.loads((tmp_path / "b" / RECORD).read_text(encoding="utf-8"))
    assert record["lesion_radius"] == [8, 10] and record["n_lesions"] == 1
    assert "finest spacing" in record["lesion_radius_unit"]


def test_synth_cli_takes_lesion_sizes_and_counts(tmp_path):
    import json

    from click.testing import CliRunner

    from tomofield.cli import cli

    out = tmp_path / "ds"
    res = CliRunner().invoke(cli, ["synth", str(out), "--n", "4", "--lesion-radius", "8,10", "--lesions", "1"])
    assert res.exit_code == 0, res.output
    assert "settings: " in res.output and json.loads((out / RECORD).read_text())["lesion_radius"] == [8.0, 10.0]
    assert all(8.0 <= r <= 10.0 for r in _lesion_radii(out))
    for args, message in [
        (["--lesion-radius", "8"], "--lesion-radius '8' is not two numbers LO,HI"),
        (["--lesion-radius", "8,x"], "--lesion-radius '8,x' is not two numbers LO,HI"),
        (["--lesions", "1,2,3"], "--lesions '1,2,3' is not a count N or a range LO,HI"),
        (["--lesion-radius", "12,14"], "the largest that fits is 12.3 voxels"),
        (["--lesion-radius", "8,10", "--lesions", "1,2"], "at most 1 lesion(s) of 10 voxels fit one case"),
    ]:
        res = CliRunner().invoke(cli, ["synth", str(tmp_path / "no"), "--n", "4", *args])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "no").exists()


def _contrast(image: np.ndarray, mask: np.ndarray, floor: float = 0.0) -> list[float]:
    """Each lesion's median over the median of the tissue around it (shell 2-3 voxels out), on ``image + floor``."""
    lab, n = ndi.label(mask)
    out = []
    for k in range(1, n + 1):
        m = lab == k
        shell = ndi.binary_dilation(m, iterations=3) & ~ndi.binary_dilation(m, iterations=1)
        out.append(float(np.median(image[m] + floor) / np.median(image[shell] + floor)))
    return out


@pytest.mark.parametrize(("lo", "hi"), [(0.35, 0.7), (1.5, 2.0)])
def test_lesion_contrast_makes_lesions_that_much_brighter_than_their_surroundings(lo, hi):
    ratios = []
    for seed in range(4):
        image, mask = _case(seed, True, size=40, lesion_radius=(3, 4), lesion_contrast=(lo, hi))
        ratios += _contrast(image, mask)  # plain background: the image is the signal
    # the lesion's texture and partial-volume edge spread the median about the drawn step
    assert 1 + 0.6 * lo < np.median(ratios) < 1 + 1.2 * hi, ratios
    twin, _ = _case(0, False, size=40, lesion_radius=(3, 4), lesion_contrast=(lo, hi))
    default_twin, _ = _case(0, False, size=40, lesion_radius=(3, 4))
    assert np.array_equal(twin, default_twin)  # the anatomy does not depend on the contrast


def test_lesion_contrast_out_of_range_is_refused_with_the_range(tmp_path):
    with pytest.raises(InputError, match=r"lesion_contrast=\(0.7, 0.35\) \(valid: \(LO, HI\) with 0.05 <= LO <= HI"):
        write_dataset(tmp_path / "ds", n=4, size=32, lesion_contrast=(0.7, 0.35))
    assert not (tmp_path / "ds").exists()
