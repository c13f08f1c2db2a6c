"""The operating point end to end: recorded by training, by tomofield calibrate, read by filled when asked."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from tomofield import Engine
from tomofield.checkpoint import RunDir
from tomofield.cli import cli
from tomofield.engine import core
from tomofield.errors import InputError, UncalibratedWarning
from tomofield.reconstructors import Filled
from tomofield.train import TrainConfig, Trainer
from tomofield.train.calibrate import calibrate_run
from tomofield.train.validation import stack_logits

SETTINGS = dict(
    iterations=4,
    slices_per_volume=4,
    slice_size=16,
    checkpoint_every=2,
    val_every=2,
    val_directions=4,
    val_slices=6,
    norm="group-norm",
    seed=3,
)


@pytest.fixture
def run(tiny_dataset, tmp_path):
    Trainer(tiny_dataset, tmp_path / "run", TrainConfig(**SETTINGS), val_csv=tiny_dataset, device="cpu").fit()
    return tmp_path / "run"


def negatives_logits(run_dir, csv):
    """The validation stacks' logits of the negatives, computed here as the trainer's validation computes them."""
    from tomofield.dataset import read_dataset
    from tomofield.train import load_cases

    r = RunDir(run_dir)
    cfg = TrainConfig(**SETTINGS).resolved()
    vols = load_cases([c for c in read_dataset(csv) if c.label == 0], cfg.geometry, torch.device("cpu"), cfg.intensity)
    model = r.build_encoder().eval()
    return torch.cat([stack_logits(model, v, cfg)[0].reshape(-1) for v in vols])


def test_training_records_the_negatives_quantile_in_the_config_and_the_weights(run, tiny_dataset):
    point = RunDir(run).operating_point()
    assert point is not None and point.source == "validation" and point.volumes == 4
    z = negatives_logits(run, tiny_dataset)
    assert point.slices == z.numel() == 4 * 4 * 6
    assert point.threshold == pytest.approx(float(torch.quantile(z.double(), 0.95)), abs=1e-5)
    bare = RunDir.from_weights(run / "model.safetensors")  # a copy of the weights alone carries it too
    assert bare is not None and bare.operating_point() == point


def test_calibrate_replaces_the_record_and_keeps_the_weights(run, tiny_dataset, tmp_path):
    before = (run / "model.safetensors").read_bytes()
    weights = RunDir(run).weights()
    point = calibrate_run(run, tiny_dataset, false_positive_rate=0.2, device="cpu")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["operating_point"] == point.to_json() and point.false_positive_rate == 0.2
    assert point.source == str(tiny_dataset.resolve())
    z = negatives_logits(run, tiny_dataset)
    assert point.threshold == pytest.approx(float(torch.quantile(z.double(), 0.8)), abs=1e-5)
    assert RunDir.from_weights(run / "model.safetensors").operating_point() == point
    after = RunDir(run).weights()
    assert (
        all(torch.equal(weights[k], after[k]) for k in weights) and before != (run / "model.safetensors").read_bytes()
    )
    assert cfg["iteration"] == 4 and "diagnostics" in cfg  # nothing else lost


def test_calibrate_refuses_what_has_no_negatives_or_is_no_run(run, tiny_dataset, tmp_path):
    positives = tmp_path / "pos.csv"
    positives.write_text("\n".join(line for line in tiny_dataset.read_text().splitlines() if not line.endswith(",0")))
    with pytest.raises(InputError, match="has no negative volumes"):
        calibrate_run(run, positives, device="cpu")
    with pytest.raises(InputError, match="is not a run directory"):
        calibrate_run(tmp_path / "nothing", tiny_dataset, device="cpu")


def test_the_cli_says_what_it_recorded(run, tiny_dataset):
    res = CliRunner().invoke(cli, ["calibrate", str(run), str(tiny_dataset), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    point = RunDir(run).operating_point()
    assert f"threshold {point.threshold:.3f}" in res.output and "of 4 negative volume(s)" in res.output
    bad = CliRunner().invoke(cli, ["calibrate", str(run), str(tiny_dataset), "--false-positive-rate", "0.7"])
    assert bad.exit_code == 2 and "0.7" in bad.output


def test_filled_reads_the_operating_point_only_when_asked_and_given_options_win(run):
    point = RunDir(run).operating_point()
    on = Engine(weights=run, head="logit", reconstructor="filled", operating_point=True, device="cpu")
    assert (on.reconstructor.threshold, on.reconstructor.temperature) == pytest.approx(
        tuple(Filled.operating_point_options(point).values())
    )
    off = Engine(weights=run, head="logit", reconstructor="filled", device="cpu")
    assert (off.reconstructor.threshold, off.reconstructor.temperature) == (0.5, 0.2)
    given = Engine(
        weights=run,
        head="logit",
        reconstructor="filled",
        reconstructor_options={"threshold": 1.25},
        operating_point=True,
        device="cpu",
    )
    assert given.reconstructor.threshold == 1.25
    assert given.reconstructor.temperature == pytest.approx(Filled.operating_point_options(point)["temperature"])


def test_a_run_without_one_says_so_once_and_keeps_the_constants(run, monkeypatch):
    cfg = json.loads((run / "config.json").read_text())
    del cfg["operating_point"]
    (run / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(core, "_UNCALIBRATED", set())
    with pytest.warns(UncalibratedWarning, match="records no operating point: reconstructor 'filled'"):
        eng = Engine(weights=run, head="logit", reconstructor="filled", operating_point=True, device="cpu")
    assert (eng.reconstructor.threshold, eng.reconstructor.temperature) == (0.5, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedWarning)
        Engine(weights=run, head="logit", reconstructor="filled", operating_point=True, device="cpu")  # once
        opts = {"threshold": 0.0, "temperature": 1.0}  # all given: nothing to say
        monkeypatch.setattr(core, "_UNCALIBRATED", set())
        Engine(weights=run, head="logit", reconstructor_options=opts, operating_point=True, device="cpu")
