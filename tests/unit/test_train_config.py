"""TrainConfig: the library's defaults, a teacher run's inherited settings, validation, and balanced accuracy."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tomofield.checkpoint import FORMAT, TRAINING_INHERITED
from tomofield.errors import InputError
from tomofield.evaluation import metrics
from tomofield.train import (
    DEFAULTS,
    TrainConfig,
    Trainer,
    balanced_accuracy,
    config_from_options,
    load_cases,
    volume_scores,
)

#: Every default of a from-scratch TrainConfig resolved without the data's shapes (the
#: slice size of the data is tested below).
TODAY = dict(
    encoder="resnet10t",
    norm="batch-norm",
    pretrained=False,
    iterations=1200,
    slices_per_volume=32,
    slice_size=224,
    batch_volumes=2,
    lr=3e-4,
    lr_end=1e-7,
    warmup=60,
    intensity="volume",
    seed=0,
    geometry="physical",
    extent="unit",
    task="classification",
    loss="bce",
    objective="mil",
    pool="lse",
    pool_temperature=1.0,
    pool_k=4,
    slice_weight=0.0,
    negative_share=0.0,
    stack_range="box",
    scale_jitter=0.0,
    translation=0.0,
    intensity_jitter=0.0,
    noise=0.0,
    val_every=150,
    val_directions=8,
    val_slices=None,
    checkpoint_every=100,
    teacher=None,
    teacher_quantile=0.95,
)
TEACHER = dict(norm="group-norm", slice_size=16, geometry="normalized", extent="tight")


@pytest.fixture
def datasets(cube_volumes, tmp_path: Path) -> tuple[Path, Path]:
    """The cube volumes with presence labels and with volume targets."""
    for csv, label in (("presence.csv", lambda pos: int(pos)), ("volume.csv", lambda pos: 0.432 * pos)):
        rows = "\n".join(f"{name},{label(pos)}" for name, pos in cube_volumes)
        (tmp_path / csv).write_text("image,label\n" + rows + "\n")
    return tmp_path / "presence.csv", tmp_path / "volume.csv"


@pytest.fixture
def teacher(datasets, tmp_path: Path) -> Path:
    """A one-step classification run whose slicing and norm differ from the library's defaults."""
    cfg = TrainConfig(iterations=1, slices_per_volume=2, lr=1e-3, seed=3, **TEACHER)
    Trainer(datasets[0], tmp_path / "teacher", cfg, device="cpu").fit()
    return tmp_path / "teacher"


def fake_run(path: Path, **settings) -> Path:
    """A run directory with only a config.json (enough to resolve from)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"format": FORMAT, "task": "classification", **settings}))
    return path


def test_without_a_teacher_the_library_defaults_are_todays():
    assert set(DEFAULTS) == set(TRAINING_INHERITED)
    cfg = TrainConfig()
    assert all(getattr(cfg, k) is None for k in (*TRAINING_INHERITED, "loss", "lr", "warmup"))
    assert asdict(cfg.resolved()) == TODAY
    assert cfg.loss is None  # resolved() returns a new config
    assert TrainConfig(task="regression").resolved().loss == "mse"
    explicit = TrainConfig(slice_size=32, extent="tight", loss="bce").resolved()
    assert (explicit.slice_size, explicit.extent, explicit.encoder) == (32, "tight", "resnet10t")


def test_pretrained_encoders_keep_their_batch_norm_and_the_slice_size_follows_the_data():
    paper = TrainConfig(pretrained=True).resolved([(66, 78, 63)])
    assert (paper.norm, paper.lr, paper.slice_size, paper.intensity) == ("frozen-bn", 3e-4, 80, "volume")
    scratch = TrainConfig(iterations=400).resolved([(66, 78, 63), (40, 40, 40)])
    assert (scratch.norm, scratch.lr, scratch.slice_size, scratch.warmup) == ("batch-norm", 3e-4, 80, 20)
    given = TrainConfig(lr=3e-4, norm="batch-norm", slice_size=64, warmup=0).resolved([(66, 78, 63)])
    assert (given.lr, given.norm, given.slice_size, given.warmup) == (3e-4, "batch-norm", 64, 0)


def test_a_teacher_from_before_intensity_was_recorded_hands_on_none(tmp_path):
    """Its encoder saw the stored values: the student must too, or the teacher's densities are wrong."""
    old = fake_run(tmp_path / "old", encoder="resnet18", in_chans=1)
    assert TrainConfig(task="regression", teacher=str(old)).resolved().intensity == "none"
    new = fake_run(tmp_path / "new", encoder="resnet18", in_chans=1, intensity="volume")
    assert TrainConfig(task="regression", teacher=str(new)).resolved().intensity == "volume"


def test_resolution_reads_the_teachers_run_and_explicit_values_win(tmp_path):
    run = fake_run(
        tmp_path / "t",
        encoder="resnet18",
        norm="batch-norm",
        slice_size=48,
        geometry="normalized",
        extent="tight",
        in_chans=1,
    )
    got = TrainConfig(task="regression", teacher=str(run)).resolved()
    assert {k: getattr(got, k) for k in TRAINING_INHERITED} == dict(
        encoder="resnet18", norm="batch-norm", slice_size=48, geometry="normalized", extent="tight", intensity="none"
    )
    assert got.loss == "mse"
    got = TrainConfig(task="regression", teacher=str(run), slice_size=24, loss="huber").resolved()
    assert (got.slice_size, got.encoder, got.loss) == (24, "resnet18", "huber")
    # what the run does not record falls back to the library's default
    partial = fake_run(tmp_path / "p", slice_size=48)
    got = TrainConfig(task="regression", teacher=str(partial)).resolved()
    assert (got.slice_size, got.encoder, got.extent) == (48, "resnet10t", "unit")


def test_a_teacher_that_is_not_a_run_is_refused_as_the_trainer_always_did(tmp_path):
    where = str(tmp_path / "nowhere")
    with pytest.raises(InputError, match=f"^--teacher {where!r} is not a run directory of tomofield train$"):
        TrainConfig(task="regression", teacher=where).resolved()


def test_trainer_inherits_the_teachers_settings(datasets, teacher, tmp_path):
    run = json.loads((teacher / "config.json").read_text())
    trainer = Trainer(datasets[1], tmp_path / "s", TrainConfig(task="regression", teacher=str(teacher)), device="cpu")
    assert {k: getattr(trainer.cfg, k) for k in TRAINING_INHERITED} == {k: run[k] for k in TRAINING_INHERITED}
    assert (trainer.cfg.norm, trainer.cfg.slice_size, trainer.cfg.loss) == ("group-norm", 16, "mse")
    wins = Trainer(
        datasets[1], tmp_path / "w", TrainConfig(task="regression", teacher=str(teacher), slice_size=24), device="cpu"
    )
    assert (wins.cfg.slice_size, wins.cfg.extent) == (24, "tight")
    plain = Trainer(datasets[1], tmp_path / "p", TrainConfig(task="regression"), device="cpu")
    # from scratch on 20^3 volumes: group norm and the smallest slice size chosen from data
    assert {k: getattr(plain.cfg, k) for k in TRAINING_INHERITED} == DEFAULTS | {"norm": "batch-norm", "slice_size": 32}


def test_student_run_records_concrete_settings_and_resumes(datasets, teacher, tmp_path):
    student = TrainConfig(
        task="regression",
        teacher=str(teacher),
        teacher_quantile=0.5,
        iterations=1,
        slices_per_volume=4,
        lr=1e-3,
        checkpoint_every=1,
    )
    Trainer(datasets[1], tmp_path / "s", student, device="cpu").fit()
    cfg = json.loads((tmp_path / "s/config.json").read_text())
    assert {k: cfg[k] for k in TEACHER} == TEACHER
    assert {k: cfg["training"][k] for k in (*TEACHER, "encoder", "loss")} == {
        **TEACHER,
        "encoder": "resnet10t",
        "loss": "mse",
    }
    # the same (unresolved) arguments resume: the saved and current resolved arguments agree
    result = Trainer(datasets[1], tmp_path / "s", replace(student, iterations=2), device="cpu", resume=True).fit()
    assert result["iteration"] == 2
    with pytest.raises(InputError, match=r"different training arguments: slice_size \(was 16, now 24\)"):
        Trainer(datasets[1], tmp_path / "s", replace(student, slice_size=24), device="cpu", resume=True).fit()


@pytest.mark.parametrize(
    ("name", "value", "valid"),
    [
        ("geometry", "spherical", "one of physical, normalized"),
        ("extent", "loose", "one of unit, tight"),
        ("norm", "layer-norm", "one of frozen-bn, batch-norm, group-norm"),
        ("objective", "volume", "one of mil, slice"),
        ("pool", "mean", "one of lse, max, top-k, contrast"),
        ("stack_range", "body", "one of box, support"),
        ("task", "segmentation", "one of classification, regression"),
        ("scale_jitter", 1.0, r"a number in 0.0..0.9"),
        ("translation", -0.1, r"a number in 0.0..1.0"),
        ("negative_share", 1.5, r"a number in 0.0..0.99"),
        ("slice_weight", -1.0, r"a number in 0.0..100.0"),
        ("pool_temperature", 0.0, r"a number in 0.001..1000.0"),
        ("pool_k", 0, r"an integer in 1..4096"),
        ("iterations", 0, r"an integer in 1..10000000"),
        ("slice_size", 4096 * 2, r"an integer in 8..4096"),
        ("slices_per_volume", 10**6, r"an integer in 1..4096"),
        ("lr", 0.0, r"a number in 1e-12..1000.0"),
        ("seed", -1, r"an integer in 0..4294967295"),
        ("teacher_quantile", 1.0, r"a number in 0.01..0.99"),
        ("iterations", 12.0, r"an integer in 1..10000000"),  # not an integer, whatever its value
        ("pretrained", "yes", "true or false"),
    ],
)
def test_every_setting_is_checked_against_its_declaration(name, value, valid):
    """One loop over the declarations refuses every kind of bad value with what is valid."""
    with pytest.raises(InputError, match=f"{name} must be {valid}, got {value!r}".replace("(", r"\(")):
        TrainConfig(**{name: value}).validate()


def test_what_ties_settings_together_is_checked_too():
    with pytest.raises(InputError, match="batch_volumes must be even"):
        TrainConfig(batch_volumes=3).validate()
    with pytest.raises(InputError, match="loss 'bce' does not fit task 'regression'; valid: mse, huber"):
        TrainConfig(task="regression", loss="bce").validate()
    with pytest.raises(InputError, match="--teacher is for --task regression"):
        TrainConfig(teacher="run").validate()


def test_the_augmentation_follows_the_task_unless_given():
    assert TrainConfig().resolved().scale_jitter == 0.0
    regression = TrainConfig(task="regression").resolved()
    assert (regression.scale_jitter, regression.translation, regression.intensity_jitter) == (0.3, 0.3, 0.3)
    assert TrainConfig(translation=0.2).resolved().translation == 0.2


def test_an_invalid_setting_from_the_teacher_is_refused(datasets, tmp_path):
    run = fake_run(tmp_path / "t", geometry="spherical")
    with pytest.raises(InputError, match="unknown geometry 'spherical'; valid: physical, normalized"):
        Trainer(datasets[1], tmp_path / "s", TrainConfig(task="regression", teacher=str(run)), device="cpu")


def test_unresolved_configs_validate_and_options_skip_unknown_and_none():
    TrainConfig().validate()  # what is not given is not checked
    cfg = config_from_options(slice_size=None, extent="tight", output="x", resume=True, loss=None)
    assert (cfg.slice_size, cfg.extent, cfg.loss) == (None, "tight", None)


class SliceMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))[:, None]


@pytest.mark.parametrize(
    ("labels", "predicted"), [([1, 1, 1], [1, 0, 1]), ([0, 0], [1, 0]), ([1, 0, 1, 0, 1], [1, 1, 0, 0, 1])]
)
def test_balanced_accuracy_is_the_evaluations(labels, predicted):
    t, p = torch.tensor(labels, dtype=torch.float32), torch.tensor(predicted, dtype=torch.float32)
    assert balanced_accuracy(t, p) == metrics.balanced_accuracy(np.array(labels), np.array(predicted))


def test_validation_balanced_accuracy_is_the_evaluations(datasets, tmp_path):
    """The trainer's validation metric, with both classes and with the negatives missing from the labels."""
    cfg = TrainConfig(slice_size=16, val_directions=2, val_slices=4, norm="group-norm")
    trainer = Trainer(datasets[0], tmp_path / "run", cfg, device="cpu")
    train = load_cases(trainer.cases, trainer.cfg.geometry, trainer.device)  # the slice means separate them
    mixed = [replace(v, label=1 - v.label) if i < 3 else v for i, v in enumerate(train)]
    positive = [replace(v, label=1.0) for v in train]
    got = {}
    for name, val in (("mixed", mixed), ("positive", positive)):
        out = trainer.validate(SliceMean(), val, train)
        scores = volume_scores(SliceMean(), val, trainer.cfg).numpy()
        labels = np.array([v.label for v in val])
        assert out["val_balanced_accuracy"] == metrics.balanced_accuracy(labels, scores >= out["threshold"])
        got[name] = out["val_balanced_accuracy"]
    # a missing class's term is dropped (the sensitivity alone), not counted as 1
    assert got == {"mixed": pytest.approx((2 / 3 + 3 / 5) / 2), "positive": 0.5}


def test_a_non_finite_setting_is_said_to_be_not_finite():
    with pytest.raises(InputError, match=r"intensity_jitter=nan is not finite; it must be a number in 0.0..0.9"):
        TrainConfig(intensity_jitter=float("nan")).validate()
