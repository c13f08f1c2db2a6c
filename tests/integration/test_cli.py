"""The CLI end to end: the phantom check, outputs, weights, bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from tomofield.cli import cli
from tomofield.demo import correlation
from tomofield.synth import ball_phantom

FAST = ["-L", "6", "-M", "4", "--slice-size", "16", "--device", "cpu", "--random-weights"]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_phantom_reconstructs_through_cli(write_nifti, tmp_path: Path):
    """The design's sanity check: sum head + tomo, 64^3 at 1 x 1 x 2.5 mm, L=500, M=48, 64x64."""
    spacing = (2.5, 1.0, 1.0)
    phantom = ball_phantom((64, 64, 64), spacing)
    src = write_nifti("phantom.nii.gz", phantom, spacing)
    out, png = tmp_path / "heat.nii.gz", tmp_path / "heat.png"
    res = invoke(
        "run",
        src,
        "-o",
        out,
        "--head",
        "sum",
        "--filter",
        "tomo",
        "-L",
        "500",
        "-M",
        "48",
        "--slice-size",
        "64",
        "--geometry",
        "physical",
        "--device",
        "cpu",
        "--preview",
        png,
    )
    assert res.exit_code == 0, res.output
    heat = np.asarray(nib.load(out).dataobj).transpose(2, 1, 0)
    assert correlation(torch.from_numpy(heat), phantom) >= 0.9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_keeps_affine_and_header_geometry(tmp_path: Path):
    rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]) @ np.diag([0.8, 1.1, 2.5])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rot, [-40.0, 12.5, 7.0]
    data = np.random.default_rng(0).random((10, 12, 8), dtype=np.float32)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=4)
    nib.save(img, tmp_path / "in.nii.gz")
    res = invoke("run", tmp_path / "in.nii.gz", "-o", tmp_path / "out.nii.gz", "--head", "sum", *FAST)
    assert res.exit_code == 0, res.output
    got = nib.load(tmp_path / "out.nii.gz")
    np.testing.assert_allclose(got.affine, affine, atol=1e-5)
    assert got.shape == data.shape and got.get_data_dtype() == np.float32
    assert int(got.header["sform_code"]) == 4 and int(got.header["qform_code"]) == 1
    np.testing.assert_allclose(got.header.get_zooms(), (0.8, 1.1, 2.5), atol=1e-5)


def test_two_files_are_channels_and_four_d_output(write_nifti, tmp_path: Path):
    a = write_nifti("a.nii.gz", np.random.rand(8, 9, 10))
    b = write_nifti("b.nii.gz", np.random.rand(8, 9, 10))
    res = invoke("run", a, b, "-o", tmp_path / "o.nii.gz", "--head", "sum", *FAST)
    assert res.exit_code == 0, res.output
    assert nib.load(tmp_path / "o.nii.gz").shape == (10, 9, 8, 2)


def test_weights_are_used_and_channel_mismatch_is_refused(write_nifti, tmp_path: Path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=1, in_chans=2)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    one = write_nifti("one.nii.gz", np.random.rand(12, 12, 12))
    res = invoke("run", one, "-o", tmp_path / "o.nii.gz", "--weights", tmp_path / "w.safetensors", *FAST)
    assert res.exit_code == 2
    assert "expect 2 input channel(s) but the volume has 1" in res.output
    assert not (tmp_path / "o.nii.gz").exists()
    two = write_nifti("two.nii.gz", np.random.rand(2, 12, 12, 12))
    out = tmp_path / "ok.nii.gz"
    res = invoke("run", two, "-o", out, "--weights", tmp_path / "w.safetensors", *FAST)
    assert res.exit_code == 0, res.output
    heat = np.asarray(nib.load(out).dataobj)
    assert heat.shape == (12, 12, 12) and np.isfinite(heat).all() and heat.std() > 0


@pytest.mark.parametrize("head", ["logit", "layercam"])
def test_an_encoder_head_without_weights_is_refused_unless_random_weights_are_asked_for(write_nifti, tmp_path, head):
    vol = write_nifti("v.nii.gz", np.random.default_rng(0).random((12, 12, 12)))
    quick = [a for a in FAST if a != "--random-weights"]
    res = invoke("run", vol, "-o", tmp_path / "o.nii.gz", "--head", head, *quick)
    assert res.exit_code == 2
    assert f"head {head!r} runs the encoder 'resnet10t', but no --weights were given" in res.output
    assert "--random-weights to run it anyway" in res.output and not (tmp_path / "o.nii.gz").exists()
    res = invoke("run", vol, "-o", tmp_path / "o.nii.gz", "--head", head, "--random-weights", *quick)
    assert res.exit_code == 0, res.output
    # heads that run no encoder need no weights
    res = invoke("run", vol, "-o", tmp_path / "s.nii.gz", "--head", "sum", *quick)
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("where", ["command", "group"])
def test_quiet_keeps_results_and_errors_and_drops_progress(write_nifti, tmp_path, where):
    vol = write_nifti("v.nii.gz", np.random.default_rng(0).random((12, 12, 12)))
    quiet = ["-q"] if where == "group" else []
    tail = ["--quiet"] if where == "command" else []
    loud = CliRunner().invoke(cli, ["run", str(vol), "-o", str(tmp_path / "a.nii.gz"), "--head", "sum", *FAST])
    res = CliRunner().invoke(
        cli, [*quiet, "run", str(vol), "-o", str(tmp_path / "b.nii.gz"), "--head", "sum", *FAST, *tail]
    )
    assert loud.exit_code == res.exit_code == 0
    assert "channel(s), grid" in loud.output and "channel(s), grid" not in res.output
    assert res.output.startswith("wrote ") and res.output.count("\n") == 1  # the result line only
    res = CliRunner().invoke(cli, [*quiet, "run", str(vol), "-o", str(tmp_path / "c.txt"), "--head", "sum", *tail])
    assert res.exit_code == 2 and "Error:" in res.output
    again = CliRunner().invoke(cli, ["run", str(vol), "-o", str(tmp_path / "d.nii.gz"), "--head", "sum", *FAST])
    assert "channel(s), grid" in again.output  # -q does not outlive its invocation


def test_dash_h_is_help_everywhere():
    for args in ([], ["run"], ["train"], ["synth"]):
        res = CliRunner().invoke(cli, [*args, "-h"])
        assert res.exit_code == 0 and res.output.startswith("Usage: ") and "Options:" in res.output, args


def _corrupt(tmp_path: Path) -> Path:
    p = tmp_path / "corrupt.nii.gz"
    p.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    return p


def _truncated(write_nifti, tmp_path: Path) -> Path:
    p = write_nifti("full.nii.gz", np.random.rand(20, 20, 20))
    raw = p.read_bytes()
    q = tmp_path / "truncated.nii.gz"
    q.write_bytes(raw[: len(raw) // 2])
    return q


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda w, t: t / "missing.nii.gz", [], "does not exist"),
        (lambda w, t: _corrupt(t), [], "cannot read"),
        (lambda w, t: _truncated(w, t), [], "cannot read"),
        (lambda w, t: w("flat.nii.gz", np.random.rand(1, 16, 16)), [], "a 2D image"),
        (lambda w, t: w("nan.nii.gz", np.where(np.eye(8)[None].repeat(8, 0) > 0, np.nan, 1.0)), [], "non-finite"),
        (lambda w, t: w("ok.nii.gz", np.random.rand(8, 8, 8)), ["--head", "bogus"], "unknown head 'bogus'"),
        (lambda w, t: w("ok.nii.gz", np.random.rand(8, 8, 8)), ["--weights", "x.pt"], "does not exist"),
        (
            lambda w, t: w("ok.nii.gz", np.random.rand(8, 8, 8)),
            ["--slices", "1"],
            "slices must be an integer in 3..10000",
        ),
    ],
)
def test_bad_input_fails_clearly_without_output(write_nifti, tmp_path: Path, make, extra, message):
    src = make(write_nifti, tmp_path)
    out = tmp_path / "out.nii.gz"
    res = invoke("run", src, "-o", out, "--head", "sum", *FAST, *extra)
    assert res.exit_code == 2
    assert message in res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_pickle_weights_refused_with_conversion_hint(write_nifti, tmp_path: Path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04pickle")
    src = write_nifti("ok.nii.gz", np.random.rand(8, 8, 8))
    res = invoke("run", src, "-o", tmp_path / "o.nii.gz", "--weights", tmp_path / "model.pt", *FAST)
    assert res.exit_code == 2 and "pickle" in res.output and "safetensors" in res.output


def test_existing_output_is_not_overwritten(write_nifti, tmp_path: Path):
    src = write_nifti("ok.nii.gz", np.random.rand(8, 8, 8))
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"precious")
    res = invoke("run", src, "-o", out, "--head", "sum", *FAST)
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert out.read_bytes() == b"precious"
    res = invoke("run", src, "-o", out, "--head", "sum", "--overwrite", *FAST)
    assert res.exit_code == 0 and nib.load(out).shape == (8, 8, 8)


def test_every_option_of_every_command_has_a_help_line():
    import click

    ctx = click.Context(cli)
    missing = []
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        sub = click.Context(cmd, parent=ctx, info_name=name)
        missing += [f"{name} {p.opts[0]}" for p in cmd.get_params(sub) if isinstance(p, click.Option) and not p.help]
    assert missing == []


def test_warnings_print_as_one_line_and_numpy_arithmetic_warnings_not_at_all():
    import warnings

    import click

    from tomofield.cli.toolkit import friendly

    @click.command()
    @friendly
    def noisy() -> None:
        np.mean(np.array([]))  # numpy: "Mean of empty slice"
        warnings.warn("a run did not learn", UserWarning, stacklevel=1)

    res = CliRunner().invoke(noisy, [])
    assert res.exit_code == 0
    assert res.output == "Warning: a run did not learn\n"
