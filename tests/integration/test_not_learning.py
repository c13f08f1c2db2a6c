"""A run that does not learn says so, in the run and at every engine built on it; intensities follow the run."""

from __future__ import annotations

import json

import pytest
import torch

from tomofield import Engine
from tomofield.checkpoint import FORMAT
from tomofield.errors import InputError, NotLearningWarning
from tomofield.train import TrainConfig, Trainer


def small(**kw) -> TrainConfig:
    base = dict(iterations=12, slices_per_volume=4, slice_size=16, checkpoint_every=4, val_every=6, seed=0)
    base.update(val_directions=2, val_slices=3)
    return TrainConfig(**{**base, **kw})


def test_a_learning_rate_far_too_high_is_flagged_in_the_run_and_by_the_engine(tiny_dataset, tmp_path):
    run = tmp_path / "broken"
    with pytest.warns(NotLearningWarning, match="training may not be learning") as caught:
        try:
            Trainer(tiny_dataset, run, small(lr=30.0), val_csv=tiny_dataset, device="cpu").fit()
        except InputError as exc:  # a loss that went to nan stops the run
            assert "diverged" in str(exc) and "lower --lr (now 30)" in str(exc)
    diagnostics = json.loads((run / "config.json").read_text())["diagnostics"]
    assert diagnostics["learned"] is False
    assert diagnostics["unresolved"] and any("--lr" in str(w.message) for w in caught)
    with pytest.warns(NotLearningWarning, match="did not learn during training"):
        Engine(weights=str(run), head="logit", filter="tomo", directions=2, slices=3)


def test_labels_that_say_nothing_about_the_images_are_flagged(cube_volumes, tmp_path):
    """Every negative is a copy of a positive: nothing separates the classes, so nothing is learned."""
    import shutil

    rows = []
    for name, _ in cube_volumes:
        shutil.copy(tmp_path / name, tmp_path / f"copy_{name}")
        rows += [f"{name},1", f"copy_{name},0"]
    train, val = tmp_path / "same_train.csv", tmp_path / "same_val.csv"
    train.write_text("image,label\n" + "\n".join(rows[:8]) + "\n")
    val.write_text("image,label\n" + "\n".join(rows[8:]) + "\n")
    run = tmp_path / "same"
    with pytest.warns(NotLearningWarning, match=r"validation AUC is 0.500 \(balanced accuracy 0.500\)"):
        Trainer(train, run, small(lr=1e-3), val_csv=val, device="cpu").fit()
    diagnostics = json.loads((run / "config.json").read_text())["diagnostics"]
    assert diagnostics["learned"] is False and "val-at-chance" in diagnostics["unresolved"]


def test_the_engine_normalises_as_the_run_did(tiny_dataset, tmp_path, cube_volumes):
    run = tmp_path / "run"
    Trainer(tiny_dataset, run, small(iterations=2, checkpoint_every=2), device="cpu").fit()
    assert json.loads((run / "config.json").read_text())["intensity"] == "volume"
    engine = Engine(weights=str(run), head="logit", filter="tomo", directions=4, slices=5)
    assert engine.config.intensity == "volume"
    from tomofield.io import load_volume

    vol = load_volume(tmp_path / cube_volumes[0][0])
    heat = engine.reconstruct(vol.data, vol.spacing)
    stored = engine.reconstruct(1000 * vol.data - 1024, vol.spacing)  # the same scan in other units
    assert torch.allclose(stored, heat, rtol=1e-3, atol=1e-3 * float(heat.abs().max()))
    raw = engine.with_options(intensity="none").reconstruct(1000 * vol.data - 1024, vol.spacing)
    assert not torch.allclose(raw, heat, rtol=0.1, atol=0.1 * float(heat.abs().max()))


def test_a_run_from_before_the_setting_is_reconstructed_on_stored_values(tiny_dataset, tmp_path):
    run = tmp_path / "old"
    Trainer(tiny_dataset, run, small(iterations=2, checkpoint_every=2, intensity="none"), device="cpu").fit()
    cfg = json.loads((run / "config.json").read_text())
    del cfg["intensity"], cfg["diagnostics"]
    (run / "config.json").write_text(json.dumps(cfg))
    assert Engine(weights=str(run)).config.intensity == "none"


def test_a_bare_weights_file_reconstructs_what_its_run_directory_does(tiny_dataset, tmp_path, cube_volumes):
    """model.safetensors carries the run's settings: group norm, slice size, intensity; copied anywhere."""
    import shutil

    from tomofield.io import load_volume

    run = tmp_path / "run"
    cfg = small(iterations=2, checkpoint_every=2, slice_size=24, norm="group-norm")
    Trainer(tiny_dataset, run, cfg, device="cpu").fit()
    bare = tmp_path / "elsewhere" / "weights.safetensors"
    bare.parent.mkdir()
    shutil.copy(run / "model.safetensors", bare)
    vol = load_volume(tmp_path / cube_volumes[0][0])
    from_run = Engine(weights=str(run), head="logit", filter="tomo", directions=4, slices=5)
    from_file = Engine(weights=str(bare), head="logit", filter="tomo", directions=4, slices=5)
    assert (from_file.config.norm, from_file.config.slice_size, from_file.config.intensity) == (
        "group-norm",
        24,
        "volume",
    )
    assert from_file.config == from_run.config
    assert torch.equal(from_file.reconstruct(vol.data, vol.spacing), from_run.reconstruct(vol.data, vol.spacing))
    # explicit settings still win over what the file says
    assert Engine(weights=str(bare), slice_size=32).config.slice_size == 32


def test_weights_whose_metadata_is_broken_are_refused_naming_the_key(tiny_dataset, tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    Trainer(tiny_dataset, run, small(iterations=1, checkpoint_every=1), device="cpu").fit()
    tensors = load_file(run / "model.safetensors")
    bad = tmp_path / "bad.safetensors"
    meta = {"format": FORMAT, "encoder": "resnet10t", "norm": "x"}
    save_file(tensors, str(bad), metadata={"tomofield": json.dumps(meta)})
    with pytest.raises(InputError, match=r"bad.safetensors metadata tomofield' records an unknown norm 'x'; valid: "):
        Engine(weights=str(bad))
    save_file(tensors, str(bad), metadata={"tomofield": "{not json"})
    with pytest.raises(InputError, match=r"bad.safetensors metadata tomofield"):
        Engine(weights=str(bad))
    plain = tmp_path / "plain.safetensors"
    save_file(tensors, str(plain))  # any other safetensors: the engine's own defaults, as before
    assert Engine(weights=str(plain), norm="group-norm").config.intensity == "none"
