"""Training a density encoder with a teacher: the run it writes, resume, and bad teachers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tomofield import Engine
from tomofield.encoders import build_encoder
from tomofield.errors import InputError
from tomofield.train import TrainConfig, Trainer

CUBE_ML = 6 * 6 * 6 * 2.0 / 1000  # the positives' bright cube, 2 mm^3 voxels


@pytest.fixture
def datasets(cube_volumes, tmp_path: Path) -> tuple[Path, Path]:
    """The cube volumes with presence labels and with volume targets (mL)."""
    for csv, label in (("presence.csv", lambda pos: int(pos)), ("volume.csv", lambda pos: CUBE_ML * pos)):
        rows = "\n".join(f"{name},{label(pos)}" for name, pos in cube_volumes)
        (tmp_path / csv).write_text("image,label\n" + rows + "\n")
    return tmp_path / "presence.csv", tmp_path / "volume.csv"


def config(**kw) -> TrainConfig:
    base = dict(
        iterations=4,
        slices_per_volume=6,
        slice_size=16,
        lr=1e-3,
        checkpoint_every=2,
        val_every=4,
        val_directions=2,
        val_slices=4,
        norm="group-norm",
        seed=3,
        extent="tight",
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def teacher(datasets, tmp_path) -> Path:
    Trainer(datasets[0], tmp_path / "teacher", config(iterations=6), device="cpu").fit()
    return tmp_path / "teacher"


def student(teacher: Path, **kw) -> TrainConfig:
    return config(task="regression", loss="mse", teacher=str(teacher), teacher_quantile=0.5, **kw)


def test_student_run_starts_from_the_teacher_and_records_its_units(datasets, teacher, tmp_path):
    trainer = Trainer(
        datasets[1], tmp_path / "s", student(teacher, iterations=1, seed=5), val_csv=datasets[1], device="cpu"
    )
    result = trainer.fit()
    cfg = json.loads((tmp_path / "s/config.json").read_text())
    scale = cfg["head_defaults"]["regression"]["scale"]
    assert scale == pytest.approx(trainer.scale) and scale > 0 and cfg["head_defaults"]["regression"]["nonnegative"]
    assert cfg["teacher"] == str(teacher.resolve()) and cfg["task"] == "regression"
    assert np.isfinite(result["history"][-1]["val_mae"])
    # one step away from the teacher, not from its own (seed 5) initialisation
    t, s = load_file(teacher / "model.safetensors"), load_file(tmp_path / "s/model.safetensors")
    torch.manual_seed(5)
    fresh = build_encoder("resnet10t", in_chans=1, norm="group-norm").state_dict()
    gap = lambda a, b: max(float((a[k] - b[k]).abs().max()) for k in t if a[k].is_floating_point())  # noqa: E731
    assert gap(s, t) < 5e-3 < 0.05 < gap(s, fresh)
    # the regression head reads the run's units; explicit options win; other heads are untouched
    eng = Engine(head="regression", weights=str(tmp_path / "s"), device="cpu")
    assert (eng.head.scale, eng.head.nonnegative) == (scale, True)
    eng = Engine(head="regression", weights=str(tmp_path / "s"), device="cpu", head_options={"scale": 1.0})
    assert (eng.head.scale, eng.head.nonnegative) == (1.0, True)
    assert not hasattr(Engine(head="logit", weights=str(tmp_path / "s"), device="cpu").head, "scale")


def test_student_resumes_to_the_same_weights(datasets, teacher, tmp_path):
    Trainer(datasets[1], tmp_path / "full", student(teacher), device="cpu").fit()

    class Kill(Exception):
        pass

    def kill_at_3(rec):
        if rec["iteration"] == 3:
            raise Kill

    with pytest.raises(Kill):
        Trainer(datasets[1], tmp_path / "cut", student(teacher), device="cpu").fit(kill_at_3)
    Trainer(datasets[1], tmp_path / "cut", student(teacher), device="cpu", resume=True).fit()
    full, cut = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "cut/model.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_bad_teachers_are_refused(datasets, teacher, tmp_path):
    with pytest.raises(InputError, match="is not a run directory"):
        Trainer(datasets[1], tmp_path / "a", student(tmp_path / "nowhere"), device="cpu").fit()
    with pytest.raises(InputError, match="needs the teacher's encoder and norm"):
        Trainer(datasets[1], tmp_path / "b", student(teacher, norm="frozen-bn"), device="cpu").fit()
    Trainer(datasets[1], tmp_path / "reg", config(task="regression", loss="mse", iterations=1), device="cpu").fit()
    with pytest.raises(InputError, match="'regression' run; it must be a classification run"):
        Trainer(datasets[1], tmp_path / "c", student(tmp_path / "reg"), device="cpu").fit()
    with pytest.raises(InputError, match="--teacher is for --task regression"):
        Trainer(datasets[0], tmp_path / "d", config(teacher=str(teacher)), device="cpu")
    with pytest.raises(InputError, match=r"teacher_quantile must be a number in 0.01..0.99, got 1.5"):
        config(task="regression", loss="mse", teacher="t", teacher_quantile=1.5).validate()
    only_positive = tmp_path / "pos.csv"
    only_positive.write_text("image,label\nv0.nii.gz,0.4\nv2.nii.gz,0.4\n")
    with pytest.raises(InputError, match="needs volumes whose target is 0 and volumes whose target is not"):
        Trainer(only_positive, tmp_path / "e", student(teacher), device="cpu").fit()


def test_cli_student_takes_the_teachers_slicing_and_encoder(datasets, teacher, tmp_path):
    from click.testing import CliRunner

    from tomofield.cli import cli

    args = [
        "train",
        str(datasets[1]),
        "-o",
        str(tmp_path / "cli"),
        "--task",
        "regression",
        "--teacher",
        str(teacher),
        "--teacher-quantile",
        "0.5",
        "--iterations",
        "1",
        "--slices-per-volume",
        "4",
        "--device",
        "cpu",
        "--val",
        str(datasets[1]),
        "--val-every",
        "1",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "validation mean abs. error" in res.output and "Pearson r" in res.output
    cfg = json.loads((tmp_path / "cli/config.json").read_text())
    # the teacher's; the CLI defaults are frozen-bn, 224 px, unit extent
    assert (cfg["encoder"], cfg["norm"], cfg["slice_size"], cfg["extent"]) == ("resnet10t", "group-norm", 16, "tight")
    assert cfg["head_defaults"]["regression"]["nonnegative"] is True
    # tomofield run with the run as --weights reads the regression head's units from it
    from tomofield.io import load_volume

    heat_path = tmp_path / "heat.nii.gz"
    res = CliRunner().invoke(
        cli,
        [
            "run",
            str(tmp_path / "v0.nii.gz"),
            "-o",
            str(heat_path),
            "--head",
            "regression",
            "--filter",
            "tomo",
            "--weights",
            str(tmp_path / "cli"),
            "-L",
            "6",
            "-M",
            "6",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    got = load_volume([heat_path]).data[0]
    vol = load_volume([tmp_path / "v0.nii.gz"])
    opts = dict(directions=6, slices=6, device="cpu")
    want = Engine(head="regression", filter="tomo", weights=str(tmp_path / "cli"), **opts).reconstruct(
        vol.data, vol.spacing
    )[0]
    raw = Engine(
        head="regression",
        filter="tomo",
        weights=str(tmp_path / "cli"),
        head_options={"scale": 1.0, "nonnegative": False},
        **opts,
    ).reconstruct(vol.data, vol.spacing)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, raw, rtol=0.1)
