"""Training: determinism, checkpoints, resume, and use of a run directory."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tomofield import Engine
from tomofield.errors import InputError
from tomofield.train import TrainConfig, Trainer, cosine_lr


def config(**kw) -> TrainConfig:
    base = dict(
        iterations=6,
        slices_per_volume=4,
        slice_size=16,
        lr=1e-3,
        checkpoint_every=2,
        val_every=3,
        val_directions=2,
        val_slices=3,
        norm="group-norm",
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def test_cosine_schedule_endpoints():
    assert cosine_lr(0, 100, 5e-5, 1e-7) == pytest.approx(5e-5)
    assert cosine_lr(100, 100, 5e-5, 1e-7) == pytest.approx(1e-7)
    assert cosine_lr(50, 100, 5e-5, 1e-7) == pytest.approx((5e-5 + 1e-7) / 2)


def test_training_is_deterministic_and_writes_a_run(tiny_dataset, tmp_path):
    a = Trainer(tiny_dataset, tmp_path / "a", config(), val_csv=tiny_dataset, device="cpu").fit()
    Trainer(tiny_dataset, tmp_path / "b", config(), device="cpu").fit()
    wa, wb = load_file(tmp_path / "a/model.safetensors"), load_file(tmp_path / "b/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    cfg = json.loads((tmp_path / "a/config.json").read_text())
    assert cfg["encoder"] == "resnet10t" and cfg["in_chans"] == 1 and cfg["slice_size"] == 16
    assert cfg["norm"] == "group-norm" and cfg["iteration"] == 6 and len(cfg["dataset"]["sha256"]) == 64
    assert [h["iteration"] for h in a["history"]] == [3, 6]
    assert 0.0 <= a["history"][-1]["val_balanced_accuracy"] <= 1.0
    c = Trainer(tiny_dataset, tmp_path / "c", config(seed=4), device="cpu").fit()
    assert c["loss"] != a["loss"]


def test_interrupted_run_resumes_to_the_same_weights(tiny_dataset, tmp_path):
    Trainer(tiny_dataset, tmp_path / "full", config(), device="cpu").fit()

    class Kill(Exception):
        pass

    def kill_at_5(rec):
        if rec["iteration"] == 5:  # after the checkpoint of iteration 4
            raise Kill

    with pytest.raises(Kill):
        Trainer(tiny_dataset, tmp_path / "cut", config(), device="cpu").fit(kill_at_5)
    assert json.loads((tmp_path / "cut/config.json").read_text())["iteration"] == 4
    Trainer(tiny_dataset, tmp_path / "cut", config(), device="cpu", resume=True).fit()
    full, cut = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "cut/model.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_resume_refuses_changed_arguments_and_fresh_runs_refuse_non_empty_dirs(tiny_dataset, tmp_path):
    Trainer(tiny_dataset, tmp_path / "r", config(iterations=2), device="cpu").fit()
    with pytest.raises(InputError, match="not empty; pass --resume"):
        Trainer(tiny_dataset, tmp_path / "r", config(), device="cpu")
    with pytest.raises(InputError, match=r"different training arguments: lr \(was 0.001, now 0.01\)"):
        Trainer(tiny_dataset, tmp_path / "r", config(lr=1e-2), device="cpu", resume=True).fit()
    with pytest.raises(InputError, match="no checkpoint"):
        Trainer(tiny_dataset, tmp_path / "none", config(), device="cpu", resume=True)


def test_odd_batch_and_one_class_are_refused(tiny_dataset, tmp_path):
    with pytest.raises(InputError, match="batch_volumes must be even"):
        Trainer(tiny_dataset, tmp_path / "x", config(batch_volumes=3), device="cpu")
    one = tmp_path / "one.csv"
    one.write_text("image,label\nv0.nii.gz,1\nv2.nii.gz,1\n")
    with pytest.raises(InputError, match="both positive"):
        Trainer(one, tmp_path / "y", config(), device="cpu")


def test_engine_uses_a_run_directory(tiny_dataset, tmp_path):
    Trainer(tiny_dataset, tmp_path / "run", config(iterations=2), device="cpu").fit()
    eng = Engine(weights=tmp_path / "run", head="logit", directions=4, slices=4, device="cpu")
    assert eng.config.slice_size == 16 and eng.config.norm == "group-norm"
    vol = torch.rand(1, 20, 20, 20)
    heat = eng.reconstruct(vol, (2.0, 1.0, 1.0))
    assert heat.shape == (1, 20, 20, 20) and torch.isfinite(heat).all()
    model = eng.encoder_for(1)
    w = load_file(tmp_path / "run/model.safetensors")
    assert torch.equal(model.state_dict()["conv1.0.weight"], w["conv1.0.weight"])
    assert Engine(weights=tmp_path / "run", slice_size=32, device="cpu").config.slice_size == 32


def test_a_run_folder_has_its_training_curves_and_a_resumed_run_keeps_them_whole(tiny_dataset, tmp_path):
    """history.csv: one row per logged step (checkpoints every 2, validations every 3), the same after --resume."""
    import csv

    from tomofield.train.curves import HISTORY_CSV, HISTORY_PNG

    Trainer(tiny_dataset, tmp_path / "full", config(), val_csv=tiny_dataset, device="cpu").fit()
    rows = list(csv.DictReader((tmp_path / "full" / HISTORY_CSV).open()))
    assert [int(r["iteration"]) for r in rows] == [2, 3, 4, 6]  # checkpoints 2, 4, 6 and validations 3, 6
    header = list(rows[0])
    assert header[:3] == ["iteration", "train_loss", "lr"] and "val_auc" in header
    assert rows[1]["train_loss"] == "" and rows[1]["val_auc"] != ""  # a validation between checkpoints
    assert float(rows[0]["lr"]) == pytest.approx(cosine_lr(1, 6, 1e-3, 1e-7, 0), rel=1e-6)  # the step's lr
    png = (tmp_path / "full" / HISTORY_PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    class Kill(Exception):
        pass

    def kill_at_5(rec):
        if rec["iteration"] == 5:
            raise Kill

    with pytest.raises(Kill):
        Trainer(tiny_dataset, tmp_path / "cut", config(), val_csv=tiny_dataset, device="cpu").fit(kill_at_5)
    partial = list(csv.DictReader((tmp_path / "cut" / HISTORY_CSV).open()))
    assert [int(r["iteration"]) for r in partial] == [2, 3, 4]
    Trainer(tiny_dataset, tmp_path / "cut", config(), val_csv=tiny_dataset, device="cpu", resume=True).fit()
    resumed = list(csv.DictReader((tmp_path / "cut" / HISTORY_CSV).open()))

    # the whole run, the same numbers as the uninterrupted one; only the separation of the training draws
    # after the resume differs: the monitor's window of draws starts again (its draws are not checkpointed)
    def without_train_auc_after(table, it):
        return [{k: v for k, v in r.items() if not (k == "train_auc" and int(r["iteration"]) > it)} for r in table]

    assert without_train_auc_after(resumed, 4) == without_train_auc_after(rows, 4)
    assert resumed[:3] == rows[:3]
