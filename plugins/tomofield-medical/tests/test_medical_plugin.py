"""The plugin as installed: entry point, registered datasets and recipes, its command, train --recipe."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from tomofield import plugins
from tomofield.cli import cli
from tomofield.train import TrainConfig, config_from_options

from medical_fakes import read_nifti, world, write_dicom_series
from test_medical_mosmed import make_mosmed

PAPER_ITERATIONS = {"multisequence": 250_000, "autopet": 187_500, "mosmed": 125_000, "duke": 62_500}


def test_datasets_come_from_the_installed_entry_point():
    comps = {c.name: c for c in plugins.components("dataset")}
    for name in PAPER_ITERATIONS:
        assert comps[name].plugin == "medical", (
            f"{name}: is tomofield-medical installed (pip install -e plugins/tomofield-medical)?"
        )
        assert comps[name].source.startswith("tomofield-medical ")
    assert plugins.failed_plugins() == {}


def test_plugins_command_lists_the_package():
    res = CliRunner().invoke(cli, ["plugins"], catch_exceptions=False)
    line = next(ln for ln in res.output.splitlines() if " duke " in ln)
    assert "medical" in line and "tomofield-medical" in line


@pytest.mark.parametrize("name", sorted(PAPER_ITERATIONS))
def test_recipes_are_the_papers_and_fit_train(name):
    preparer = plugins.get("dataset", name).factory()
    r = preparer.recipe
    assert r["iterations"] == PAPER_ITERATIONS[name]
    assert (r["lr"], r["batch_volumes"], r["slices_per_volume"], r["slice_size"]) == (5e-5, 2, 120, 224)
    assert (r["encoder"], r["norm"], r["pretrained"]) == ("resnet10t", "frozen-bn", True)
    assert set(r) <= {f.name for f in fields(TrainConfig)}
    train_options = {p.name for p in cli.get_command(click.Context(cli), "train").params if isinstance(p, click.Option)}
    assert set(r) <= train_options  # the CLI only applies recipe keys it has options for
    config_from_options(**r).validate()
    assert callable(preparer.prepare)


def test_dicom_to_nifti_command(tmp_path: Path):
    vol = (np.arange(3 * 4 * 5) * 10).astype(np.uint16).reshape(3, 4, 5)
    write_dicom_series(
        tmp_path / "series",
        vol,
        ipp0=[5.0, 6.0, 7.0],
        iop=[0, 1, 0, 0, 0, -1],
        pixel_spacing=(2.0, 0.5),
        slice_step=3.0,
        description="sag t1",
        patient="p",
        series_number=1,
    )
    out = tmp_path / "v.nii.gz"
    res = CliRunner().invoke(cli, ["dicom-to-nifti", str(tmp_path / "series"), "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data, affine = read_nifti(out)
    np.testing.assert_array_equal(data, vol)
    # sagittal: columns run along LPS +y, rows along -z, slices along the normal (-1, 0, 0)
    lps = (
        np.array([5.0, 6.0, 7.0])
        + 4 * 0.5 * np.array([0, 1, 0])
        + 3 * 2.0 * np.array([0, 0, -1])
        + 2 * 3.0 * np.array([-1, 0, 0])
    )
    np.testing.assert_allclose(world(affine, 2, 3, 4), lps * [-1, -1, 1], atol=1e-5)
    res = CliRunner().invoke(cli, ["dicom-to-nifti", str(tmp_path / "series"), "-o", str(out)])
    assert res.exit_code == 2 and "exists" in res.output
    res = CliRunner().invoke(cli, ["dicom-to-nifti", str(tmp_path / "nope"), "-o", str(tmp_path / "w.nii.gz")])
    assert res.exit_code == 2 and "nope" in res.output


@pytest.mark.slow
def test_train_with_the_mosmed_recipe(tmp_path: Path):
    """``train --recipe mosmed``: the recipe's settings apply, options on the command line win."""
    raw = make_mosmed(tmp_path / "raw")
    runner = CliRunner()
    res = runner.invoke(
        cli,
        ["prepare", "mosmed", str(raw), "-o", str(tmp_path / "data"), "--val-fraction", "0.25"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli,
        [
            "train",
            str(tmp_path / "data/train.csv"),
            "--val",
            str(tmp_path / "data/val.csv"),
            "-o",
            str(tmp_path / "run"),
            "--recipe",
            "mosmed",
            "--iterations",
            "1",
            "--slice-size",
            "16",
            "--slices-per-volume",
            "2",
            "--no-pretrained",
            "--device",
            "cpu",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "recipe mosmed" in res.output and "iterations=125000" in res.output
    training = json.loads((tmp_path / "run/config.json").read_text())["training"]
    assert (training["iterations"], training["slice_size"], training["slices_per_volume"]) == (1, 16, 2)
    assert (training["lr"], training["norm"], training["batch_volumes"]) == (5e-5, "frozen-bn", 2)
    assert (training["val_every"], training["checkpoint_every"]) == (2500, 2500)
    assert training["pretrained"] is False
