"""One test per hook of tomofield.hookspecs (as datasette has), each through a run-time plugin.

``test_every_hook_has_a_test`` fails when a hook is added without a ``test_hook_<name>``
here, and ``test_every_hook_is_documented`` when docs/plugins.md does not describe it.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

import tomofield
from tomofield import hookspecs, plugins
from tomofield.protocols import KIND_PROTOCOLS, Option, required_attributes

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HOOKS = sorted(n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("register_"))


def _with_plugin(obj, name: str):
    plugins.register_plugin(obj, name=name)
    return name


def test_every_hook_has_a_test():
    here = {n for n in globals() if n.startswith("test_hook_")}
    assert {f"test_hook_{h}" for h in HOOKS} <= here, "a hook without a test"


def test_every_hook_is_documented():
    text = DOCS.read_text()
    missing = [h for h in HOOKS if f"`{h}" not in text]
    assert not missing, f"docs/plugins.md does not describe {missing}"


def test_every_registered_component_satisfies_its_protocol():
    """The built-ins (and the installed plugins) are checked against tomofield.protocols."""
    for comp in plugins.components():
        proto = KIND_PROTOCOLS.get(comp.kind)
        if proto is None or comp.kind in ("encoder", "dataset"):
            continue
        obj = comp.factory()
        for attr in required_attributes(proto):
            assert hasattr(obj, attr), f"{comp.kind} {comp.name!r} lacks {attr!r} of {proto.__name__}"
        assert all(isinstance(o, Option) for o in comp.options)


def test_hook_register_encoders():
    class Encoders:
        @tomofield.hookimpl
        def register_encoders(self, register):
            def tiny(name, *, in_chans, num_classes, pretrained, norm):
                torch.manual_seed(0)
                return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * in_chans, num_classes))

            register("tiny-linear", tiny, "a linear map of the slice")

    _with_plugin(Encoders(), "encoders-test")
    eng = tomofield.Engine("tiny-linear", "logit", directions=3, slices=4, slice_size=8, device="cpu")
    enc = eng.encoder_for(1)
    assert isinstance(enc, torch.nn.Sequential)
    assert eng.reconstruct(torch.rand(1, 8, 8, 8)).shape == (1, 8, 8, 8)


class ScaledSum:
    """A plugin head with a declared option: the sum head times ``gain``."""

    needs_encoder, needs_grad, compilable = False, False, False
    options = (Option("gain", float, 1.0, "Multiplies the slice mean."),)

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = gain

    def __call__(self, encoder, slices):
        return self.gain * slices.mean(dim=(2, 3), keepdim=True)


def test_hook_register_heads(tmp_path, write_nifti):
    """A plugin head's declared option becomes a `tomofield run` option, like the CAM heads' --layer."""

    class Heads:
        @tomofield.hookimpl
        def register_heads(self, register):
            register("scaled-sum", ScaledSum, "gain x mean of the slice")

    _with_plugin(Heads(), "heads-test")
    assert plugins.get("head", "scaled-sum").options == ScaledSum.options
    vol = torch.rand(10, 10, 10)
    src = write_nifti("v.nii.gz", vol)
    from tomofield.cli import cli

    fast = ["-L", "5", "-M", "4", "--slice-size", "12", "--device", "cpu"]
    runs = {}
    for gain in ("1", "3"):
        out = tmp_path / f"h{gain}.nii.gz"
        res = CliRunner().invoke(cli, ["run", str(src), "-o", str(out), "--head", "scaled-sum", "--gain", gain, *fast])
        assert res.exit_code == 0, res.output
        runs[gain] = tomofield.load_volume([out]).data
    torch.testing.assert_close(runs["3"], 3 * runs["1"], rtol=1e-5, atol=1e-6)
    # an option the chosen head does not declare is refused, naming the head's own
    res = CliRunner().invoke(
        cli, ["run", str(src), "-o", str(tmp_path / "x.nii.gz"), "--head", "sum", "--gain", "2", *fast]
    )
    assert res.exit_code == 2 and "--gain is not an option of head 'sum'" in res.output


def test_hook_register_filters():
    class Double:
        pad, integral, constant = 0, False, 2.0 / (4.0 * torch.pi)

        def __call__(self, p, ds):
            return p

    class Filters:
        @tomofield.hookimpl
        def register_filters(self, register):
            register("double", Double, "twice the plain average")

    _with_plugin(Filters(), "filters-test")
    vol = torch.rand(1, 8, 8, 8)
    kw = dict(head="sum", directions=6, slices=4, slice_size=8, device="cpu")
    got = tomofield.Engine(filter="double", **kw).reconstruct(vol)
    torch.testing.assert_close(got, 2 * tomofield.Engine(filter="none", **kw).reconstruct(vol))


def test_hook_register_reconstructors():
    """A plugin's reconstructor gets the chunks as the encoder scores them and the plan's operators."""
    seen = []

    class Halved:
        def __call__(self, chunks, stacks):
            bp = stacks.backprojector()
            for scores, dirs in chunks:
                seen.append(tuple(scores.shape[:2]))
                bp.add(stacks.filter(scores, dirs), dirs)
            return bp.result() / 2

    class Reconstructors:
        @tomofield.hookimpl
        def register_reconstructors(self, register):
            register("halved", Halved, "half of FBP")

    _with_plugin(Reconstructors(), "reconstructors-test")
    vol = torch.rand(1, 8, 8, 8)
    kw = dict(head="sum", directions=6, slices=4, slice_size=8, device="cpu")
    got = tomofield.Engine(reconstructor="halved", **kw).reconstruct(vol)
    torch.testing.assert_close(got, tomofield.Engine(**kw).reconstruct(vol) / 2)
    assert sum(n for n, _ in seen) == 6 and {m for _, m in seen} == {4 + 2}  # every stack, padded


def test_hook_register_samplers():
    from tomofield.samplers import AxialSampler

    calls = []

    class Recording(AxialSampler):
        def plan(self, shape, e, config):
            calls.append(tuple(shape))
            return super().plan(shape, e, config)

    class Samplers:
        @tomofield.hookimpl
        def register_samplers(self, register):
            register("recording-axial", Recording, "the axial sampler, recording its calls")

    _with_plugin(Samplers(), "samplers-test")
    vol = torch.rand(1, 6, 7, 8)
    kw = dict(head="sum", filter="none", slice_size=8, device="cpu")
    got = tomofield.Engine(sampler="recording-axial", **kw).reconstruct(vol)
    assert calls and calls[0] == (6, 7, 8)
    torch.testing.assert_close(got, tomofield.Engine(sampler="axial", **kw).reconstruct(vol))


def test_hook_register_postprocessors():
    class Posts:
        @tomofield.hookimpl
        def register_postprocessors(self, register):
            register("negate", lambda: lambda heat, vol: -heat, "minus the heatmap")

    _with_plugin(Posts(), "posts-test")
    vol = torch.rand(1, 8, 8, 8)
    kw = dict(head="sum", directions=4, slices=4, slice_size=8, device="cpu")
    torch.testing.assert_close(
        tomofield.Engine(postprocess=["negate"], **kw).reconstruct(vol), -tomofield.Engine(**kw).reconstruct(vol)
    )


def test_hook_register_datasets(tmp_path):
    class Toy:
        recipe = {"slice_size": 16}

        def prepare(self, raw_dir, out_dir, *, seed, val_fraction):
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "train.csv").write_text(f"image,label\n# seed {seed}\n")
            return {"train": out_dir / "train.csv"}

    class Datasets:
        @tomofield.hookimpl
        def register_datasets(self, register):
            register("toy", Toy, "a dataset that writes one CSV")

    _with_plugin(Datasets(), "datasets-test")
    from tomofield.cli import cli

    raw = tmp_path / "raw"
    raw.mkdir()
    res = CliRunner().invoke(cli, ["prepare", "toy", str(raw), "-o", str(tmp_path / "out"), "--seed", "7"])
    assert res.exit_code == 0, res.output
    assert "# seed 7" in (tmp_path / "out" / "train.csv").read_text()


def test_hook_register_commands(monkeypatch):
    """A plugin's command lands in the `tomofield` group and may use the public toolkit."""
    from tomofield.cli.group import CommandGroup
    from tomofield.cli.toolkit import friendly, out

    @click.command("hello-plugin")
    @friendly
    def hello() -> None:
        out.print("hello from a plugin")

    class Commands:
        @tomofield.hookimpl
        def register_commands(self, cli):
            cli.add_command(hello)

    _with_plugin(Commands(), "commands-test")
    group = CommandGroup("tomofield-test")  # what tomofield passes the hook
    plugins.add_commands(group)
    res = CliRunner().invoke(group, ["hello-plugin"])
    assert res.exit_code == 0 and "hello from a plugin" in res.output


@pytest.fixture(autouse=True)
def _no_leaks():
    before = set(sys.modules)
    yield
    assert "tomofield_test_plugin" not in set(sys.modules) - before
