"""SimCLR pretraining: NT-Xent, the two views of a slice, loss decrease, run directory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tomofield import Engine, InputError
from tomofield.geometry import half_extents
from tomofield.synth import make_case
from tomofield_features.ssl import SimCLRConfig, nt_xent, pretrain_simclr, two_views


def test_nt_xent_exact_value():
    n, t = 3, 0.5
    z = torch.eye(n, 4)
    # partner similarity 1/t, the 2n - 2 other candidates 0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert float(nt_xent(z, z.clone(), t)) == pytest.approx(expected, rel=1e-6)
    # swapping partners (every view matched with another slice) is worse
    assert float(nt_xent(z, z.roll(1, 0), t)) > expected + 1
    with pytest.raises(InputError, match="equal shape"):
        nt_xent(z, z[:2], t)


@pytest.fixture(scope="module")
def volumes():
    return [
        torch.from_numpy(make_case((24, 24, 24), positive=p, rng=np.random.default_rng(s))[0])
        for s, p in ((0, True), (1, False))
    ]


def test_two_views_are_views_of_the_same_plane(volumes):
    cfg = SimCLRConfig(slice_size=16, scale_jitter=0.0, translation=0.0, intensity_jitter=0.0, noise=0.0)
    vol = volumes[0][None]
    e = half_extents(vol.shape[1:], (1, 1, 1), cfg.geometry)
    a, b = two_views(vol, e, 48, cfg, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (48, 1, 16, 16)
    assert not torch.allclose(a, b)  # independent in-plane rotations
    # same plane: the slices' contents agree far better than those of different planes
    ma, mb = a.mean(dim=(1, 2, 3)), b.mean(dim=(1, 2, 3))
    same = float(torch.corrcoef(torch.stack([ma, mb]))[0, 1])
    other = float(torch.corrcoef(torch.stack([ma, mb.roll(1)]))[0, 1])
    assert same > 0.9 and same > other + 0.3, (same, other)


def test_simclr_loss_decreases_and_run_loads(volumes, tmp_path):
    cfg = SimCLRConfig(iterations=30, batch_volumes=2, slices_per_volume=8, slice_size=24, lr=5e-4)
    encoder, history = pretrain_simclr(volumes, cfg, run_dir=tmp_path / "run")
    losses = [h["loss"] for h in history]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2, losses
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "simclr" and config["norm"] == "group-norm" and config["slice_size"] == 24
    # the run directory is a --weights for the engine: same weights, features head works
    eng = Engine(
        head="features",
        filter="none",
        weights=str(tmp_path / "run"),
        directions=4,
        slices=4,
        device="cpu",
        head_options={"stage": 1},
    )
    loaded = eng.encoder_for(1)
    for k, v in encoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k].cpu(), v.cpu())
    assert eng.reconstruct(volumes[0]).shape == (64, 24, 24, 24)
    with pytest.raises(InputError, match="not empty"):
        pretrain_simclr(volumes, cfg, run_dir=tmp_path / "run")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("iterations", 0, r"iterations must be an integer in 1..10000000, got 0"),
        ("slices_per_volume", 1, r"slices_per_volume must be an integer in 2..65536, got 1"),
        ("temperature", 0.0, r"temperature must be a number in 0.0001..100.0, got 0.0"),
        ("offset_range", 1.5, r"offset_range must be a number in 0.01..1.0, got 1.5"),
        ("norm", "layer", r"norm must be one of "),
        ("slice_size", "48", r"slice_size must be an integer in 8..4096, got '48'"),
    ],
)
def test_simclr_settings_are_checked_by_their_one_declaration(field, value, message):
    from click.testing import CliRunner

    from tomofield.cli import cli
    from tomofield.protocols import declared

    with pytest.raises(InputError, match=message):
        SimCLRConfig(**{field: value}).validate()
    # the command line reads the same declaration: help text and the default
    decl = {o.name: o for o in declared(SimCLRConfig)}[field]
    flag = "--" + field.replace("_", "-")
    help_text = " ".join(CliRunner().invoke(cli, ["pretrain", "--help"]).output.split())
    if field in ("iterations", "slices_per_volume", "temperature", "norm", "slice_size"):
        assert f"{flag} " in help_text and decl.help in help_text
