"""Per-lesion statistics (``tomofield run --statistics``, ``outputs.lesion_table``): sizes, RAS centroids and
(i, j, k) boxes on an anisotropic, permuted and flipped grid, the table beside the mask, and its paths refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomofield.cli import cli
from tomofield.errors import InputError
from tomofield.io import Heatmap, Volume, affine_for_spacing, save_nifti
from tomofield.outputs import Extras, lesion_table, table_columns, write_table

FAST = ["--head", "sum", "--filter", "tomo", "-L", "6", "-M", "4", "--slice-size", "16", "--device", "cpu"]
MASK = ["--post", "normalize", "--threshold", "0.6,0.4"]  # heatmap in [0, 1]: a non-empty, non-full mask

#: (i, j, k) voxel sizes 1, 1.5 and 2 mm, every axis on another world axis and two of them flipped:
#: i -> -y (1 mm), j -> +z (1.5 mm), k -> -x (2 mm); a voxel is 3 mm^3.
AFFINE = np.array(
    [
        [0.0, 0.0, -2.0, 10.0],
        [-1.0, 0.0, 0.0, 20.0],
        [0.0, 1.5, 0.0, -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
GRID_IJK = (15, 12, 10)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def boxes_case():
    """A (C, i, j, k) scan, an (i, j, k) heatmap and mask built in the affine's own voxel order, and what to expect.

    Lesion 1: the box i 2..7, j 3..7, k 1..4 (6 x 5 x 4 = 120 voxels). Lesion 2: the box
    i 9..12, j 0..1, k 6..8 (4 x 2 x 3 = 24) and one voxel (13, 2, 9) touching its corner
    only diagonally: one component under 26-connectivity, 25 voxels.
    """
    mask = np.zeros(GRID_IJK, bool)
    mask[2:8, 3:8, 1:5] = True
    mask[9:13, 0:2, 6:9] = True
    mask[13, 2, 9] = True
    i, j, k = np.indices(GRID_IJK)
    heat = np.where(mask, 0.01 * (i + 10 * j + 100 * k), -1.0).astype(np.float32)
    scan = np.stack([np.where(mask, 3.0 + i, 0.5), 2.0 * k]).astype(np.float32)
    one = np.zeros(GRID_IJK, bool)
    one[2:8, 3:8, 1:5] = True
    two = mask & ~one
    return scan, heat, mask, [one, two]


def expected_row(part: np.ndarray, heat: np.ndarray, scan: np.ndarray) -> dict[str, float]:
    """The row of one component from its (i, j, k) voxels alone, independent of the tensor's order."""
    ijk = np.argwhere(part)
    centre = AFFINE @ np.append(ijk.mean(axis=0), 1.0)
    lo, hi = ijk.min(axis=0), ijk.max(axis=0)
    return {
        "voxels": len(ijk),
        "volume_ml": len(ijk) * 3.0 / 1000.0,
        "centroid_x_mm": centre[0],
        "centroid_y_mm": centre[1],
        "centroid_z_mm": centre[2],
        "i_min": lo[0],
        "i_max": hi[0],
        "j_min": lo[1],
        "j_max": hi[1],
        "k_min": lo[2],
        "k_max": hi[2],
        "peak": float(heat[part].max()),
        "mean": float(heat[part].astype(np.float64).mean()),
        "mean_intensity_c0": float(scan[0][part].astype(np.float64).mean()),
        "mean_intensity_c1": float(scan[1][part].astype(np.float64).mean()),
    }


def test_rows_are_exact_on_an_anisotropic_flipped_grid():
    scan, heat, mask, parts = boxes_case()
    volume = Volume.from_array(scan, AFFINE, layout="ijk")
    assert volume.spacing == (2.0, 1.5, 1.0)  # per (d, h, w) = (k, j, i)
    heatmap = Heatmap.on(torch.from_numpy(heat.transpose(2, 1, 0).copy())[None], volume)
    rows = lesion_table(mask.transpose(2, 1, 0), heatmap, volume)  # the mask on the heatmap's (D, H, W) grid
    assert [r["lesion"] for r in rows] == [1, 2]
    assert [r["voxels"] for r in rows] == [120, 25]
    assert list(rows[0]) == table_columns(2)
    for row, part in zip(rows, parts, strict=True):
        for key, value in expected_row(part, heat, scan).items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    # the known boxes, spelled out: an (i, j, k) / (d, h, w) mix-up fails here
    assert [rows[0][k] for k in ("i_min", "i_max", "j_min", "j_max", "k_min", "k_max")] == [2, 7, 3, 7, 1, 4]
    assert [rows[1][k] for k in ("i_min", "i_max", "j_min", "j_max", "k_min", "k_max")] == [9, 13, 0, 2, 6, 9]
    # the first box's centre (4.5, 5, 2.5): x = -2 k + 10, y = -i + 20, z = 1.5 j - 30
    assert (rows[0]["centroid_x_mm"], rows[0]["centroid_y_mm"], rows[0]["centroid_z_mm"]) == pytest.approx(
        (5.0, 15.5, -22.5)
    )
    assert rows[0]["volume_ml"] == pytest.approx(0.36) and rows[1]["volume_ml"] == pytest.approx(0.075)
    assert sum(r["volume_ml"] for r in rows) == pytest.approx(mask.sum() * 3.0 / 1000.0)
    assert rows[0]["peak"] == pytest.approx(0.01 * (7 + 70 + 400))
    # a tensor mask, with its channel axis, gives the same rows; an empty mask none
    assert lesion_table(torch.from_numpy(mask.transpose(2, 1, 0).copy())[None], heatmap, volume) == rows
    assert lesion_table(np.zeros(GRID_IJK[::-1], bool), heatmap, volume) == []


def test_a_mask_or_volume_on_another_grid_and_a_heatmap_of_several_channels_are_refused():
    scan, heat, mask, _ = boxes_case()
    volume = Volume.from_array(scan, AFFINE, layout="ijk")
    heatmap = Heatmap.on(torch.from_numpy(heat.transpose(2, 1, 0).copy())[None], volume)
    with pytest.raises(InputError, match=r"the mask's grid \(15, 12, 10\) differs from the heatmap's"):
        lesion_table(mask, heatmap, volume)  # (i, j, k) order: not the heatmap's grid
    two = Heatmap(heatmap.data.repeat(2, 1, 1, 1), heatmap.affine, heatmap.spacing)
    with pytest.raises(InputError, match="single-channel heatmap"):
        lesion_table(mask.transpose(2, 1, 0), two, volume)


def test_write_table_csv_json_and_refusals(tmp_path):
    scan, heat, mask, _ = boxes_case()
    volume = Volume.from_array(scan, AFFINE, layout="ijk")
    heatmap = Heatmap.on(torch.from_numpy(heat.transpose(2, 1, 0).copy())[None], volume)
    rows = lesion_table(mask.transpose(2, 1, 0), heatmap, volume)
    table = write_table(rows, tmp_path / "t.csv")
    read = list(csv.DictReader(table.open(encoding="utf-8")))
    assert list(read[0]) == table_columns(2) and [int(r["voxels"]) for r in read] == [120, 25]
    assert float(read[1]["centroid_y_mm"]) == rows[1]["centroid_y_mm"]  # full precision
    assert json.loads(write_table(rows, tmp_path / "t.json").read_text()) == rows
    empty = write_table([], tmp_path / "e.csv", columns=table_columns(1, case=True))
    assert empty.read_text().splitlines() == [",".join(table_columns(1, case=True))]
    assert write_table([], tmp_path / "e.json").read_text().strip() == "[]"
    with pytest.raises(InputError, match=r"output '.*t.txt' must end with one of: .csv, .json"):
        write_table(rows, tmp_path / "t.txt")
    with pytest.raises(InputError, match="t.csv' exists; pass --overwrite"):
        write_table(rows, tmp_path / "t.csv")
    source = tmp_path / "data.csv"
    source.write_text("image,label\n")
    with pytest.raises(InputError, match="is the input"):
        write_table(rows, source, overwrite=True, inputs=[source])
    assert source.read_text() == "image,label\n" and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_extras_writes_the_table_of_the_mask_it_would_write_without_writing_the_mask(tmp_path):
    scan, heat, mask, _ = boxes_case()
    volume = Volume.from_array(scan, AFFINE, layout="ijk")
    heatmap = Heatmap.on(torch.from_numpy(heat.transpose(2, 1, 0).copy())[None], volume)
    extras = Extras(cuts=(0.5, 0.0), statistics=str(tmp_path / "t.json"))
    labels = extras.write(None, None, heatmap, volume, "t", False, table=tmp_path / "t.json")
    assert labels is not None
    np.testing.assert_array_equal(labels, mask.transpose(2, 1, 0).astype(np.uint8))
    assert json.loads((tmp_path / "t.json").read_text()) == lesion_table(labels, heatmap, volume)
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]
    with pytest.raises(InputError, match="needs the mask's thresholds"):
        Extras(statistics="t.csv")


def _scan(tmp_path: Path, name: str = "scan.nii.gz") -> Path:
    """A 16^3 noisy volume (spacing 2 x 1 x 1.5 mm per (d, h, w)) with one bright ball off its centre."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:16, :16, :16]
    vol = rng.normal(0, 0.1, (16, 16, 16)) + ((zz - 6) ** 2 + (yy - 9) ** 2 + (xx - 7) ** 2 <= 9)
    return save_nifti(tmp_path / name, vol.astype(np.float32), affine_for_spacing((2, 1, 1.5)))


def test_a_run_writes_a_table_whose_volumes_add_up_to_the_masks(tmp_path):
    scan = _scan(tmp_path)
    out, mask, table = tmp_path / "h.nii.gz", tmp_path / "m.nii.gz", tmp_path / "t.csv"
    res = invoke("run", scan, "-o", out, "--mask", mask, "--statistics", table, *MASK, *FAST)
    assert res.exit_code == 0, res.output
    assert "t.csv" in res.output
    written = nib.load(str(mask))
    voxels = int(np.count_nonzero(np.asarray(written.dataobj)))
    ml = voxels * abs(np.linalg.det(written.affine[:3, :3])) / 1000.0
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert voxels > 0 and rows and list(rows[0]) == table_columns(1)
    assert sum(int(r["voxels"]) for r in rows) == voxels
    assert sum(float(r["volume_ml"]) for r in rows) == pytest.approx(ml)
    assert [int(r["lesion"]) for r in rows] == list(range(1, len(rows) + 1))
    # without --mask: the same table, and no mask file
    alone = tmp_path / "alone"
    res = invoke("run", scan, "-o", alone / "h.nii.gz", "--statistics", alone / "t.json", *MASK, *FAST)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in alone.iterdir()) == ["h.nii.gz", "t.json"]
    again = json.loads((alone / "t.json").read_text())
    assert [r["voxels"] for r in again] == [int(r["voxels"]) for r in rows]


def test_a_folder_run_writes_one_table_with_a_case_column(tmp_path):
    data = tmp_path / "scans"
    data.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        _scan(data, name)
    heat, table = tmp_path / "heat", tmp_path / "lesions.csv"
    res = invoke("run", data, "-o", heat, "--statistics", table, *MASK, *FAST)
    assert res.exit_code == 0, res.output
    assert "lesion table of 2 volume(s)" in res.output
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert list(rows[0]) == table_columns(1, case=True)
    assert {r["case"] for r in rows} == {"a", "b"}
    assert not (tmp_path / "masks").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "heat",
        "lesions.csv",
        "scans",
    ]
    again = invoke("run", data, "-o", heat, "--statistics", table, *MASK, *FAST)
    assert again.exit_code == 2 and "lesions.csv' exists; pass --overwrite" in again.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--statistics", "t.txt", *MASK], "output 't.txt' must end with one of: .csv, .json"),
        (["--statistics", "h.nii.gz", *MASK], "output 'h.nii.gz' must end with one of: .csv, .json"),
        (["--statistics", "t.csv"], "--statistics needs its thresholds"),
        (["--statistics", "scan.nii.gz", *MASK], "'scan.nii.gz' must end with one of: .csv, .json"),
        (["--statistics", "old.csv", *MASK], "output 'old.csv' exists; pass --overwrite"),
        (["--mask", "h.nii.gz", "--overwrite", *MASK], "--mask 'h.nii.gz' is also the -o output 'h.nii.gz'"),
    ],
)
def test_statistics_paths_are_checked_before_any_work(tmp_path, monkeypatch, extra, message):
    _scan(tmp_path)
    (tmp_path / "old.csv").write_text("mine")
    monkeypatch.chdir(tmp_path)
    res = invoke("run", "scan.nii.gz", "-o", "h.nii.gz", *extra, *FAST)
    assert res.exit_code == 2 and message in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv", "scan.nii.gz"]
    assert (tmp_path / "old.csv").read_text() == "mine"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "out.csv", "--statistics", "out.csv"], "--statistics 'out.csv' is also the -o output 'out.csv'"),
        (["-o", "heat", "--mask", "m.json", "--statistics", "m.json"], "is also the --mask output 'm.json'"),
        (["-o", "heat", "--statistics", "data.csv", "--overwrite"], "is the input"),
        (["-o", "heat", "--statistics", "t.csv", "--num-parts", "2", "--part-id", "0"], "writes no lesion table"),
    ],
)
def test_a_dataset_runs_table_is_checked_before_any_work(dataset, monkeypatch, extra, message):
    monkeypatch.chdir(dataset.parent)
    before = sorted(p.name for p in dataset.parent.iterdir())
    res = invoke("run", "data.csv", *extra, *MASK, *FAST)
    assert res.exit_code == 2 and message in res.output, res.output
    assert sorted(p.name for p in dataset.parent.iterdir()) == before
