"""The library's entry points: Volume in, Heatmap out; weights into a given module; one owner of defaults."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

import tomofield
from tomofield import Engine, EngineConfig, Heatmap, InputError
from tomofield.checkpoint import CONFIG, ENGINE_INHERITED, FORMAT, MODEL
from tomofield.io import Reorientation


class TinyNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).mean(dim=(2, 3)) * 3)


KW = dict(head="logit", directions=6, slices=5, slice_size=12, device="cpu")


def test_run_takes_a_volume_and_returns_a_heatmap_on_its_grid(write_nifti, tmp_path):
    affine = np.array([[0.0, -1.2, 0, 10], [0.9, 0, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    src = write_nifti("v.nii.gz", np.random.default_rng(0).random((9, 10, 11)), affine=affine)
    volume = tomofield.load_volume([src])
    engine = Engine(head="sum", directions=5, slices=4, slice_size=12, device="cpu")
    heat = engine.run(volume)
    assert isinstance(heat, Heatmap)
    turn = Reorientation.of(affine)  # a swap of i and j with a flip: the engine works in the RAS frame
    assert not turn.identity
    canonical = engine.reconstruct(turn.forward(volume.data), turn.spacing(volume.spacing))
    assert torch.equal(heat.data, turn.backward(canonical))
    stored = engine.with_options(orientation="stored")
    assert torch.equal(stored.run(volume).data, stored.reconstruct(volume.data, volume.spacing))
    np.testing.assert_array_equal(heat.affine, volume.affine)
    out = heat.save(tmp_path / "h.nii.gz")
    np.testing.assert_allclose(nib.load(out).affine, affine, atol=1e-6)
    with pytest.raises(InputError, match="exists"):
        heat.save(out)  # nothing overwritten without asking


def test_weights_given_with_a_module_are_loaded_into_it(tmp_path):
    vol = torch.rand(1, 10, 10, 10, generator=torch.Generator().manual_seed(1))
    trained = TinyNet(seed=5)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "w.safetensors"))
    got = Engine(encoder=TinyNet(seed=0), weights=str(tmp_path / "w.safetensors"), **KW).reconstruct(vol)
    want = Engine(encoder=TinyNet(seed=5), **KW).reconstruct(vol)
    assert torch.equal(got, want)
    assert not torch.equal(Engine(encoder=TinyNet(seed=0), **KW).reconstruct(vol), want)
    save_file({"conv.weight": torch.zeros(4, 1, 3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match="do not fit the encoder"):
        Engine(encoder=TinyNet(), weights=str(tmp_path / "bad.safetensors"), **KW).reconstruct(vol)


def test_unknown_settings_and_head_options_are_refused_naming_the_valid_ones():
    with pytest.raises(InputError, match="unknown engine setting.*directon.*valid: directions"):
        Engine(head="sum", directon=5)
    with pytest.raises(InputError, match="head 'logit' has no option.*pool.*its options: target"):
        Engine(head="logit", head_options={"pool": 3})


def test_config_is_frozen_and_the_oom_batch_lives_in_the_scorer():
    engine = Engine(head="sum", batch_size=32, device="cpu")
    with pytest.raises(AttributeError):
        engine.config.batch_size = 4  # type: ignore[misc]
    assert engine.scorer_for(1).batch_size == 32


def _fake_run(tmp_path: Path, **settings) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    net = TinyNet(seed=3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / MODEL))
    cfg = {"format": FORMAT, "encoder": "tinynet", "in_chans": 1, "num_classes": 1, "norm": "frozen-bn", **settings}
    (run / CONFIG).write_text(json.dumps(cfg))
    return run


@pytest.fixture
def tinynet_encoder():
    class Encoders:
        @tomofield.hookimpl
        def register_encoders(self, register):
            register("tinynet", lambda name, **kw: TinyNet(), "test net")

    tomofield.plugins.register_plugin(Encoders(), name="tinynet-test")


def test_cli_and_library_inherit_the_same_from_a_run(tmp_path, write_nifti, tinynet_encoder):
    """`tomofield run --weights RUN` and `Engine(weights=RUN)` get the run's settings from one resolver."""
    run = _fake_run(tmp_path, slice_size=20, geometry="normalized", extent="tight")
    engine = Engine(weights=str(run), head="logit", directions=5, slices=4, device="cpu")
    for key in ("slice_size", "geometry", "extent"):
        assert getattr(engine.config, key) == json.loads((run / CONFIG).read_text())[key]
    assert set(ENGINE_INHERITED) >= {"encoder", "slice_size", "geometry", "extent", "norm"}
    vol = np.random.default_rng(2).random((9, 10, 11)).astype(np.float32)
    src = write_nifti("v.nii.gz", vol, spacing=(2.0, 1.0, 1.0))
    from tomofield.cli import cli

    out = tmp_path / "h.nii.gz"
    res = CliRunner().invoke(
        cli, ["run", str(src), "-o", str(out), "--weights", str(run), "-L", "5", "-M", "4", "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    volume = tomofield.load_volume([src])
    want = engine.reconstruct(volume.data, volume.spacing)
    assert torch.equal(tomofield.load_volume([out]).data, want)
    # an explicit setting wins over the run's, from both
    res = CliRunner().invoke(
        cli,
        [
            "run",
            str(src),
            "-o",
            str(tmp_path / "h2.nii.gz"),
            "--weights",
            str(run),
            "-L",
            "5",
            "-M",
            "4",
            "--slice-size",
            "16",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    explicit = Engine(weights=str(run), head="logit", directions=5, slices=4, slice_size=16, device="cpu")
    assert torch.equal(
        tomofield.load_volume([tmp_path / "h2.nii.gz"]).data, explicit.reconstruct(volume.data, volume.spacing)
    )


def test_cli_defaults_are_the_librarys(tmp_path, write_nifti):
    """With no options the CLI builds the engine the library builds with no arguments."""
    from tomofield.cli.toolkit import build_engine

    engine = build_engine({k: None for k in ("directions", "slices", "head", "filter", "seed")})
    assert engine.config == EngineConfig()
    assert (engine.head_name, engine.filter_name) == ("logit", "tomo")


def test_provenance_names_what_changes_the_heatmap_and_only_that(tmp_path):
    base = Engine(encoder=TinyNet(seed=0), **KW).provenance()
    assert Engine(encoder=TinyNet(seed=0), batch_size=3, **KW).provenance() == base  # speed only
    assert Engine(encoder=TinyNet(seed=1), **KW).provenance()["weights_sha256"] != base["weights_sha256"]
    assert Engine(encoder=TinyNet(seed=0), **{**KW, "directions": 7}).provenance()["settings"]["directions"] == 7
    trained = TinyNet(seed=5)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "w.safetensors"))
    from_file = Engine(encoder=TinyNet(seed=0), weights=str(tmp_path / "w.safetensors"), **KW).provenance()
    assert from_file["weights_sha256"] == Engine(encoder=TinyNet(seed=5), **KW).provenance()["weights_sha256"]
    assert json.loads(json.dumps(base)) == base  # JSON as it is


def test_run_reports_its_plan_before_any_work_so_no_caller_plans_again():
    """``on_plan`` gets L, M, slice size, preset, device and the slice count, before the first tick."""
    volume = tomofield.Volume.from_array(np.zeros((14, 12, 10), np.float32), np.diag([1.0, 1.5, 2.0, 1.0]))
    events: list[object] = []
    engine = Engine(head="sum", directions=7, slices=5, slice_size=12, filter="tomo", device="cpu")
    engine.run(volume, progress=lambda n, total: events.append(("tick", n, total)), on_plan=events.append)
    report = events[0]
    assert isinstance(report, tomofield.engine.PlanReport)
    assert (report.directions, report.slices, report.slice_size, report.preset, report.device) == (
        7,
        (5,),
        12,
        None,
        "cpu",
    )
    ticks = [e for e in events[1:] if isinstance(e, tuple)]
    assert len(ticks) == len(events) - 1  # the report comes once, first
    # the slices the progress counted are the ones reported: M + the filter's padding, per direction
    assert sum(t[1] for t in ticks) == report.total == engine.count_slices((10, 12, 14)) == 7 * (5 + 2)
    assert "L 7 x M 5" in str(report) and "of 12px on cpu" in str(report)
    fast = Engine(head="sum", preset="fast", device="cpu")
    reports: list[tomofield.engine.PlanReport] = []
    fast.run(volume, on_plan=reports.append)
    assert reports[0].preset == "fast" and reports[0].total == fast.count_slices((10, 12, 14))


def test_every_component_kind_takes_its_declared_options_by_name():
    """``filter_options``, ``reconstructor_options``, ``sampler_options``: checked against the declarations."""
    from tomofield import plugins

    engine = Engine(
        head="sum",
        filter="tomo-sg",
        filter_options={"window": 7},
        reconstructor="filled",
        reconstructor_options={"level": 0.7},
        device="cpu",
    )
    assert engine.filter.window == 7 and engine.filter.pad == 3
    assert engine.reconstructor.level == 0.7
    record = engine.provenance()
    assert record["filter_options"] == {"window": 7} and record["reconstructor_options"]["level"] == 0.7
    assert "filter_options" not in Engine(head="sum", device="cpu").provenance()  # old records stay valid
    # a reconstructor's options are its declared fields: one declaration, its bounds the only ones
    declared = {o.name: o for o in plugins.get("reconstructor", "filled").options}
    assert (declared["level"].min, declared["level"].max, declared["level"].default) == (1e-3, 1.0, 0.5)
    with pytest.raises(InputError, match=r"reconstructor 'filled': option level=0 is not valid; it takes a number"):
        Engine(head="sum", reconstructor="filled", reconstructor_options={"level": 0}, device="cpu")
    with pytest.raises(InputError, match=r"filled: level must be a number in 0.001..1.0, got 1.5"):
        type(engine.reconstructor)(level=1.5)  # built directly: the same declaration checks it
    with pytest.raises(InputError, match=r"filter 'tomo-sg': option window='x' is not valid"):
        Engine(head="sum", filter="tomo-sg", filter_options={"window": "x"}, device="cpu")
    with pytest.raises(InputError, match=r"sampler_options=\[1\] must be a dict, got list"):
        Engine(head="sum", sampler_options=[1], device="cpu")
    with pytest.raises(InputError, match="need the filter's registered name"):
        Engine(head="sum", filter=engine.filter, filter_options={"window": 5}, device="cpu")
