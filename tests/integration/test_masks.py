"""``tomofield run --mask``: the evaluation protocol's binarization, with thresholds given or stored by evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomofield.cli import cli
from tomofield.evaluation import binarize
from tomofield.io import load_volume

FAST = ["--head", "sum", "--filter", "tomo", "-L", "8", "-M", "6", "--slice-size", "16", "--device", "cpu"]


def invoke(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res


@pytest.fixture
def evaluated(dataset: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The dataset's heatmaps and the report evaluate wrote from them."""
    heat = tmp_path / "heat"
    assert invoke("run", dataset, "-o", heat, *FAST).exit_code == 0
    report = tmp_path / "report"
    res = invoke("evaluate", heat, dataset, "--report", report, "--folds", 2)
    assert res.exit_code == 0, res.output
    return dataset, heat, tmp_path / "report.json"


def test_evaluate_stores_thresholds_tuned_on_every_volume(evaluated):
    from tomofield.evaluation import tune_thresholds

    dataset, heat, report = evaluated
    stored = json.loads(report.read_text())["heat"]["thresholds"]
    from tomofield.dataset import read_dataset

    cases = read_dataset(dataset)
    heats = [load_volume(heat / f"{c.name}.nii.gz").data[0].numpy() for c in cases]
    masks = [load_volume(c.mask).data[0].numpy() > 0 for c in cases]
    assert stored == tune_thresholds(heats, [int(c.label) for c in cases], masks=masks)
    assert stored["tau_prime"] <= stored["tau"] and stored["volumes"] == len(cases)


def test_the_report_knows_what_made_its_heatmaps_and_run_refuses_thresholds_of_another_scale(evaluated, tmp_path):
    """--thresholds: the report's heatmaps' settings against this run's; the directions carry over, M does not."""
    dataset, heat, report = evaluated
    made = json.loads(report.read_text())["heat"]["heatmaps"]
    assert made["settings"]["slices"] == 6 and made["settings"]["directions"] == 8 and made["head"] == "sum"
    image = dataset.parent / "img0.nii.gz"

    out = tmp_path / "out"
    out.mkdir()

    def run(*flags):
        n = len(list(out.glob("h*.nii.gz")))
        return invoke("run", image, "-o", out / f"h{n}.nii.gz", "--mask", out / f"m{n}.nii.gz",
                      "--thresholds", report, *FAST, *flags)  # fmt: skip

    ok = run("-L", "12")
    assert ok.exit_code == 0, ok.output  # the directions change only the noise: the thresholds carry over
    other_m = run("-M", "10")
    assert other_m.exit_code != 0
    assert "was tuned on heatmaps made otherwise than this run's (slices 6 -> 10" in " ".join(other_m.output.split())
    assert sorted(p.name for p in out.iterdir()) == ["h0.nii.gz", "m0.nii.gz"]  # refused before anything is written
    other_filter = run("--filter", "none")
    assert other_filter.exit_code != 0 and "filter tomo -> none" in " ".join(other_filter.output.split())
    no_m = [a for i, a in enumerate(FAST) if a != "-M" and FAST[i - 1] != "-M"]
    preset = invoke("run", image, "-o", out / "p.nii.gz", "--mask", out / "p-m.nii.gz", "--thresholds", report,
                    *no_m, "--preset", "fast")  # fmt: skip
    assert preset.exit_code != 0
    assert "choose slices per volume (preset fast)" in " ".join(preset.output.split())
    assert (
        invoke(
            "run", image, "-o", out / "t.nii.gz", "--mask", out / "t-m.nii.gz", "--threshold", "0.5", *FAST, "-M", "10"
        ).exit_code
        == 0
    )  # fmt: skip  (thresholds given by hand: the user's call)


def test_a_mask_from_stored_thresholds_is_the_protocols_binarization(evaluated, tmp_path):
    dataset, _, report = evaluated
    stored = json.loads(report.read_text())["heat"]["thresholds"]
    image = dataset.parent / "img0.nii.gz"
    out, mask = tmp_path / "h.nii.gz", tmp_path / "m.nii.gz"
    res = invoke("run", image, "-o", out, "--mask", mask, "--thresholds", report, *FAST)
    assert res.exit_code == 0, res.output
    written = nib.load(str(mask))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.affine, nib.load(str(image)).affine)
    heat = load_volume(out).data[0].numpy()
    expected = binarize(heat, stored["tau_prime"], stored["tau"])
    got = load_volume(mask).data[0].numpy()
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_a_dataset_run_writes_one_mask_per_volume_and_given_thresholds_work(evaluated, tmp_path):
    dataset, heat_dir, _ = evaluated
    heat, masks = tmp_path / "heat2", tmp_path / "masks"
    res = invoke("run", dataset, "-o", heat, "--mask", masks, "--threshold", "0.9,0.4", *FAST)
    assert res.exit_code == 0, res.output
    assert "6 mask(s) written" in res.output
    for name in [f"img{i}" for i in range(6)]:
        h = load_volume(heat / f"{name}.nii.gz").data[0].numpy()
        m = load_volume(masks / f"{name}.nii.gz").data[0].numpy()
        np.testing.assert_array_equal(m, binarize(h, 0.4, 0.9).astype(np.float32))
    again = invoke("run", dataset, "-o", heat, "--mask", masks, "--threshold", "0.9,0.4", *FAST)
    assert again.exit_code == 0 and "0 mask(s) written, 6 up to date" in again.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask", "m.nii.gz"], "--mask needs its thresholds"),
        (["--mask", "m.nii.gz", "--threshold", "1", "--thresholds", "r.json"], "not both"),
        (["--threshold", "1"], "give --mask PATH too"),
        (["--fill-holes"], "give --mask PATH too"),
        (["--mask", "m.nii.gz", "--threshold", "0.2,0.5"], "TAU_PRIME (0.5) must not exceed TAU (0.2)"),
        (["--mask", "m.nii.gz", "--threshold", "high"], "--threshold 'high' is not TAU or TAU,TAU_PRIME"),
        (["--mask", "m.nii.gz", "--thresholds", "nowhere.json"], "no report 'nowhere.json'"),
    ],
)
def test_mask_options_are_checked_before_any_work(dataset, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    res = invoke("run", dataset.parent / "img0.nii.gz", "-o", "h.nii.gz", *extra, *FAST)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "h.nii.gz").exists()


def test_a_report_without_thresholds_or_of_several_methods_says_what_to_do(tmp_path):
    from tomofield.errors import InputError
    from tomofield.outputs import read_thresholds

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"heat": {"f1": 0.5}}))
    with pytest.raises(InputError, match="stores no finite tau and tau_prime"):
        read_thresholds(old)
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"a": {"thresholds": {"tau": 1, "tau_prime": 0.5}}, "b": {}}))
    with pytest.raises(InputError, match=r"reports 2 methods; name one: .*many.json#a, .*many.json#b"):
        read_thresholds(many)
    assert read_thresholds(f"{many}#a") == (1.0, 0.5)


def test_a_masks_fill_holes_is_the_options_else_the_reports_else_off(tmp_path):
    from tomofield.cli.run import mask_fill_holes
    from tomofield.errors import InputError

    report = tmp_path / "r.json"
    report.write_text(json.dumps({"a": {"thresholds": {"tau": 1, "tau_prime": 0.5}, "fill_holes": True}}))
    old = tmp_path / "old.json"  # from before the option: it binarized without filling
    old.write_text(json.dumps({"a": {"thresholds": {"tau": 1, "tau_prime": 0.5}}}))
    assert mask_fill_holes(None, str(report)) is True and mask_fill_holes(False, str(report)) is False
    assert mask_fill_holes(None, str(old)) is False and mask_fill_holes(True, str(old)) is True
    assert mask_fill_holes(None, None) is False and mask_fill_holes(True, None) is True
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": {"thresholds": {"tau": 1, "tau_prime": 0.5}, "fill_holes": "yes"}}))
    with pytest.raises(InputError, match="fill_holes is 'yes', not true or false"):
        mask_fill_holes(None, str(bad))


def test_evaluate_reports_every_case_beside_the_aggregates(evaluated, tmp_path):
    """JSON and CSV: each volume's score and decision at the stored thresholds, its lesion metrics."""
    import csv

    from tomofield.evaluation import lesion_scores

    dataset, heat, report = evaluated
    res = json.loads(report.read_text())["heat"]
    tau, tau_prime = res["thresholds"]["tau"], res["thresholds"]["tau_prime"]
    rows = list(csv.DictReader(open(tmp_path / "report_cases.csv", encoding="utf-8")))
    assert len(res["cases"]) == len(rows) == 6
    for case, row in zip(res["cases"], rows, strict=True):
        name = Path(case["image"]).name
        h = load_volume(heat / name).data[0].numpy()
        assert case["score"] == pytest.approx(float(h.max())) and case["predicted"] == int(h.max() >= tau)
        assert row["method"] == "heat" and float(row["score"]) == pytest.approx(case["score"])
        if case["label"] == 1:
            truth = load_volume(dataset.parent / name.replace("img", "m")).data[0].numpy() > 0
            expected = lesion_scores(binarize(h, tau_prime, tau), truth)
            assert case["dice"] == pytest.approx(expected["dice"]) and case["f1"] == pytest.approx(expected["f1"])
        else:
            assert case["dice"] is None and row["dice"] == ""


def test_the_mask_file_holds_the_binarization_whatever_the_thresholds_scale(write_nifti, tmp_path):
    """Thresholds in the heatmap's own units (here above 1): the file is the binarization, not a re-threshold."""
    from tomofield.io import Heatmap
    from tomofield.outputs import Extras

    zz, yy, xx = np.mgrid[:12, :12, :12]
    heat = (40.0 * np.exp(-((zz - 6) ** 2 + (yy - 5) ** 2 + (xx - 7) ** 2) / 6.0)).astype(np.float32)
    scan = load_volume(write_nifti("scan.nii.gz", heat + 1.0))
    heatmap = Heatmap.on(torch.from_numpy(heat)[None], scan)
    labels = Extras(cuts=(30.0, 10.0)).write(tmp_path / "m.nii.gz", None, heatmap, scan, "t", False)
    expected = binarize(heat, 10.0, 30.0)
    assert expected.sum() > 1
    np.testing.assert_array_equal(labels, expected.astype(np.uint8))
    np.testing.assert_array_equal(load_volume(tmp_path / "m.nii.gz").data[0].numpy(), expected.astype(np.float32))


@pytest.mark.parametrize(
    ("cuts", "warns", "empty"),
    [
        ((50.0, 10.0), True, True),  # peak 40 between tau' and tau: looks positive, masked empty
        ((30.0, 10.0), False, False),  # a component reaches tau: a mask
        ((80.0, 45.0), False, True),  # peak below tau': a negative-looking volume, empty and silent
    ],
)
def test_an_empty_mask_of_a_heatmap_above_tau_prime_warns_with_the_peak(write_nifti, tmp_path, cuts, warns, empty):
    import warnings

    from tomofield.errors import EmptyMaskWarning
    from tomofield.io import Heatmap
    from tomofield.outputs import Extras

    zz, yy, xx = np.mgrid[:12, :12, :12]
    heat = (40.0 * np.exp(-((zz - 6) ** 2 + (yy - 5) ** 2 + (xx - 7) ** 2) / 6.0)).astype(np.float32)
    scan = load_volume(write_nifti("scan.nii.gz", heat + 1.0))
    heatmap = Heatmap.on(torch.from_numpy(heat)[None], scan)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        labels = Extras(cuts=cuts).write(None, None, heatmap, scan, "case7", False)
    said = [str(w.message) for w in seen if issubclass(w.category, EmptyMaskWarning)]
    assert (not labels.any()) == empty
    assert bool(said) == warns
    if warns:
        assert said[0].startswith("case7: the mask is empty although the heatmap peaks at 40, above tau' 10")
        assert "no component reaches tau 50" in said[0]


def rim_heatmap(shape, centre, rng) -> tuple[np.ndarray, np.ndarray]:
    """A large lesion's rim-bright heatmap (rim 4 <= r <= 7, dim core, noise outside) and its mask, the ball r <= 7."""
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(np.indices(shape), centre, strict=True)))
    heat = np.where((r >= 4) & (r <= 7), 1.0, np.where(r < 4, 0.05, 0.3 * rng.random(shape)))
    return heat.astype(np.float32), r <= 7


def test_evaluate_fill_holes_scores_hollow_heatmaps_as_their_lesions_and_records_it(write_nifti, tmp_path):
    from tomofield.cli.run import mask_fill_holes
    from tomofield.evaluation import kept_components, lesion_scores, tune_thresholds
    from tomofield.report import evaluate_heatmaps

    rng = np.random.default_rng(0)
    (tmp_path / "heat").mkdir()
    rows, heats, masks = [], [], []
    for i in range(8):
        heat, mask = rim_heatmap((20, 20, 20), rng.integers(8, 12, 3), rng)
        if i % 2 == 0:
            heat, mask = 0.3 * rng.random(heat.shape).astype(np.float32), np.zeros_like(mask)
        write_nifti(f"img{i}.nii.gz", heat)
        write_nifti(f"m{i}.nii.gz", mask)
        write_nifti(f"heat/img{i}.nii.gz", heat)
        rows.append(f"img{i}.nii.gz,{i % 2},m{i}.nii.gz")
        heats.append(heat)
        masks.append(mask)
    (tmp_path / "data.csv").write_text("image,label,mask\n" + "\n".join(rows) + "\n")
    plain = evaluate_heatmaps(tmp_path / "heat", tmp_path / "data.csv", folds=2)
    filled = evaluate_heatmaps(tmp_path / "heat", tmp_path / "data.csv", folds=2, fill_holes=True)
    assert plain["fill_holes"] is False and filled["fill_holes"] is True
    assert filled["dice"] == pytest.approx(1.0) and plain["dice"] < 0.95
    labels = [i % 2 for i in range(8)]
    assert filled["thresholds"] == tune_thresholds(heats, labels, masks=masks, fill_holes=True)
    tau, tau_prime = filled["thresholds"]["tau"], filled["thresholds"]["tau_prime"]
    for row, heat, mask in zip(filled["cases"], heats, masks, strict=True):
        if row["label"]:
            kept = kept_components(heat, tau_prime, tau, fill_holes=True)
            assert row["dice"] == 1.0 == lesion_scores(None, mask, pred_components=kept)["dice"]
    res = invoke(
        "evaluate", tmp_path / "heat", tmp_path / "data.csv", "-o", tmp_path / "r", "--folds", 2, "--fill-holes"
    )
    assert res.exit_code == 0, res.output
    stored = json.loads((tmp_path / "r.json").read_text())["heat"]
    assert stored["fill_holes"] is True and stored["thresholds"] == filled["thresholds"]
    assert mask_fill_holes(None, str(tmp_path / "r.json")) is True


def test_a_mask_follows_the_reports_fill_holes_unless_told_otherwise(evaluated, tmp_path):
    dataset, _, report = evaluated
    data = json.loads(report.read_text())
    assert data["heat"]["fill_holes"] is False
    tau, tau_prime = data["heat"]["thresholds"]["tau"], data["heat"]["thresholds"]["tau_prime"]
    data["heat"]["fill_holes"] = True
    filled_report = tmp_path / "filled.json"
    filled_report.write_text(json.dumps(data))
    image = dataset.parent / "img0.nii.gz"
    for i, (source, flags, filled) in enumerate(
        [(filled_report, [], True), (filled_report, ["--no-fill-holes"], False), (report, ["--fill-holes"], True)]
    ):
        out, mask = tmp_path / f"run{i}.nii.gz", tmp_path / f"run{i}_mask.nii.gz"
        res = invoke("run", image, "-o", out, "--mask", mask, "--thresholds", source, *flags, *FAST)
        assert res.exit_code == 0, res.output
        heat = load_volume(out).data[0].numpy()
        expected = binarize(heat, tau_prime, tau, fill_holes=filled)
        np.testing.assert_array_equal(load_volume(mask).data[0].numpy(), expected.astype(np.float32))
        assert nib.load(str(mask)).header["descrip"].item().decode().endswith(" filled") == filled


def test_extras_write_fills_the_masks_holes_when_asked(write_nifti, tmp_path):
    from tomofield.io import Heatmap
    from tomofield.outputs import Extras

    heat, ball = rim_heatmap((18, 18, 18), (9, 9, 9), np.random.default_rng(1))
    scan = load_volume(write_nifti("scan.nii.gz", heat))
    heatmap = Heatmap.on(torch.from_numpy(heat)[None], scan)
    plain = Extras(cuts=(0.9, 0.5)).write(None, None, heatmap, scan, "t", False)
    labels = Extras(cuts=(0.9, 0.5), fill_holes=True).write(tmp_path / "m.nii.gz", None, heatmap, scan, "t", False)
    np.testing.assert_array_equal(labels, ball.astype(np.uint8))
    assert plain.sum() < labels.sum()
    np.testing.assert_array_equal(load_volume(tmp_path / "m.nii.gz").data[0].numpy(), ball.astype(np.float32))


def test_with_one_class_the_report_names_sensitivity_not_balanced_accuracy(evaluated, tmp_path):
    """No negatives: the protocol's "balanced accuracy" is the sensitivity, and the report says so."""
    dataset, heat, report = evaluated
    both = json.loads(report.read_text())["heat"]
    assert "balanced_accuracy" in both and "sensitivity" not in both
    assert both["case_thresholds"].startswith("tuned on these same volumes (in-sample)")
    rows = dataset.read_text().splitlines()
    positives = tmp_path / "positives.csv"
    positives.write_text("\n".join([rows[0], *[r for r in rows[1:] if r.split(",")[1] == "1"]]) + "\n")
    res = invoke("evaluate", heat, positives, "--report", tmp_path / "pos", "--folds", 2)
    assert res.exit_code == 0, res.output
    only = json.loads((tmp_path / "pos.json").read_text())["heat"]
    assert "balanced_accuracy" not in only and "balanced_accuracy" not in only["std"]
    assert 0.0 <= only["sensitivity"] <= 1.0 and all("sensitivity" in f for f in only["folds"])
    assert "sensitivity" in res.output
