"""Bad options reach the user as one message naming the value, from the library and the CLI, for every component.

The rule is structural: options are validated where components are built (their declared
``Option``s), and what a head or encoder refuses is caught where the head first meets
its encoder (``Scorer.check``). These tests walk the whole registry, so a new component
is covered by them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tomofield
from tomofield import Engine, InputError, plugins
from tomofield.cli import cli
from tomofield.engine import EngineConfig

FAST = ["-L", "3", "-M", "4", "--slice-size", "16", "--device", "cpu", "--random-weights"]
TINY = dict(directions=3, slices=4, slice_size=16, device="cpu")


def _heads_with_options():
    return [(c.name, o) for c in plugins.components("head") for o in c.options]


def _bad_values(opt):
    """Values the option must refuse: the wrong type, and beyond each bound."""
    bad = {int: ["abc", 2.5, True], float: ["abc", float("nan")], bool: ["maybe"], str: [3]}[opt.type][:]
    if opt.min is not None:
        bad.append(opt.type(opt.min) - 1)
    if opt.max is not None:
        bad.append(opt.type(opt.max) + 1)
    return bad


@pytest.fixture
def volume_file(write_nifti) -> Path:
    return write_nifti("v.nii.gz", np.random.default_rng(0).random((10, 11, 12)))


@pytest.mark.parametrize("head,opt", _heads_with_options(), ids=lambda x: getattr(x, "name", x))
def test_every_declared_head_option_refuses_bad_values_from_the_library(head, opt):
    for value in _bad_values(opt):
        with pytest.raises(InputError, match=rf"head '{re.escape(head)}'.*option {opt.name}="):
            Engine(head=head, head_options={opt.name: value}, **TINY)


@pytest.mark.parametrize("head,opt", _heads_with_options(), ids=lambda x: getattr(x, "name", x))
def test_every_declared_head_option_refuses_bad_values_from_the_cli(head, opt, volume_file, tmp_path):
    from tomofield.cli.toolkit import head_params

    flag = next(hp.flag for hp in head_params() if head in hp.heads and hp.option.name == opt.name)
    value = "abc" if opt.type is not str else None
    if value is None or opt.type is bool:
        pytest.skip("click itself refuses these types on the command line")
    out = tmp_path / "h.nii.gz"
    res = CliRunner().invoke(cli, ["run", str(volume_file), "-o", str(out), "--head", head, flag, value, *FAST])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not out.exists()


@pytest.mark.parametrize(
    "head", [c.name for c in plugins.components("head") if any(o.name == "target" for o in c.options)]
)
def test_a_target_beyond_the_encoder_outputs_is_a_message(head, volume_file, tmp_path):
    """The encoder has one output: target 3 fails where the head first meets the encoder, before any work."""
    vol = torch.rand(1, 10, 10, 10)
    with pytest.raises(InputError, match=r"target.*(out of range|3)"):
        Engine(head=head, head_options={"target": 3}, **TINY).reconstruct(vol)
    out = tmp_path / "h.nii.gz"
    res = CliRunner().invoke(cli, ["run", str(volume_file), "-o", str(out), "--head", head, "--target", "3", *FAST])
    assert res.exit_code == 2 and "Error:" in res.output and "3" in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()
    assert list(tmp_path.iterdir()) == [volume_file]  # nothing left behind


@pytest.mark.parametrize("head", ["gradcam", "gradcam++", "layercam", "scorecam"])
def test_a_cam_layer_the_encoder_lacks_is_a_message_listing_its_stages(head):
    with pytest.raises(InputError, match=r"layer=9 is not a stage of ResNet; valid layers are 0..4"):
        Engine(head=head, head_options={"layer": 9}, **TINY).reconstruct(torch.rand(1, 10, 10, 10))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seed", "99999999999999999999"], "seed must be an integer in 0..4294967295"),
        (["--seed", "-1"], "seed must be an integer in 0..4294967295"),
        (["--device", "mps"], "device 'mps' requested but the 'mps' device type is not available"),
        (["--device", "cuda:7"], "device 'cuda:7'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--pool", "0", "--head", "avgpool"], "option pool=0 is not valid; it takes an integer >= 1"),
        (["--layer", "2", "--head", "logit"], "--layer is not an option of head 'logit'; its options: --target"),
        (["-L", "0"], "directions must be an integer in 1..100000"),
        (["-M", "2"], "slices must be an integer in 3..10000"),
        (["--slice-size", "4"], "slice_size must be an integer in 8..4096"),
        (["--batch-size", "0"], "batch_size must be an integer in 1..65536"),
        (["--empty-tol", "-1"], "empty_tol must be a number >= 0.0"),
        (["--head", "nope"], "unknown head 'nope'; valid:"),
        (["--filter", "ramp"], "unknown filter 'ramp'; valid: none, tomo"),
        (["--sampler", "spiral"], "unknown sampler 'spiral'"),
        (["--post", "smooth"], "unknown postprocessor 'smooth'"),
    ],
)
def test_cli_settings_out_of_range_are_one_message(args, message, volume_file, tmp_path):
    out = tmp_path / "h.nii.gz"
    head = [] if "--head" in args else ["--head", "sum"]
    res = CliRunner().invoke(cli, ["run", str(volume_file), "-o", str(out), *FAST, *head, *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    "field,value",
    [
        (f.name, v)
        for f in __import__("dataclasses").fields(EngineConfig)
        if "help" in f.metadata
        for v in (["x"] if not isinstance(f.default, str) else [3])
    ],
)
def test_every_engine_setting_refuses_the_wrong_type_from_the_library(field, value):
    with pytest.raises(InputError, match=rf"{field} must be .*, got "):
        Engine(head="sum", **{field: value})


def test_a_plugin_heads_own_refusal_reaches_the_user_as_an_input_error():
    """A third-party head that raises ValueError when it meets the encoder: one InputError naming the head."""

    class Picky:
        needs_encoder, needs_grad, compilable, options = True, False, False, ()

        def __call__(self, encoder, slices):
            raise ValueError("this head wants 3-channel slices")

    class Heads:
        @tomofield.hookimpl
        def register_heads(self, register):
            register("picky", Picky, "refuses everything")

    plugins.register_plugin(Heads(), name="picky-test")
    with pytest.raises(InputError, match=r"head 'picky'.*cannot score 1-channel slices.*wants 3-channel"):
        Engine(head="picky", **TINY).reconstruct(torch.rand(1, 10, 10, 10))


def test_messages_keep_brackets_and_numbers_verbatim(write_nifti, tmp_path):
    """rich markup must not eat '[1]' in a file name or a list of numbers in a message."""
    src = write_nifti("scan[1].nii.gz", np.random.default_rng(0).random((10, 11, 12)))
    res = CliRunner().invoke(
        cli, ["run", str(src), "-o", str(tmp_path / "h[2].nii.gz"), "--head", "sum", *FAST, "--empty-tol", "-1"]
    )
    assert res.exit_code == 2 and "got -1.0" in res.output
    res = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "out[bold].nii.gz"), "--head", "sum", *FAST])
    assert res.exit_code == 0, res.output
    assert "out[bold].nii.gz" in res.output


def test_an_encoder_that_refuses_the_slice_size_is_a_message():
    """timm's ViTs assert their input size: that too reaches the user as an InputError naming the size."""

    class FixedSize(torch.nn.Module):
        def forward(self, x):
            assert x.shape[-1] == 224, f"Input height ({x.shape[-1]}) doesn't match model (224)."
            return x.mean(dim=(1, 2, 3))[:, None]

    with pytest.raises(InputError, match=r"1-channel slices of 16 x 16 px.*doesn't match model \(224\)"):
        Engine(encoder=FixedSize(), head="logit", **TINY).reconstruct(torch.rand(1, 10, 10, 10))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n", "6", "--size", "16", "--val-fraction", "1.5"], "val_fraction=1.5 (valid: a number strictly between 0"),
        (["--n", "6", "--size", "16", "--val-fraction", "0"], "val_fraction=0.0"),
        (["--n", "6", "--size", "100000"], "size=100000 (valid: an integer in 16..512 voxels)"),
        (["--n", "6", "--size", "16", "--seed", "-5"], "seed=-5 (valid: an integer in 0..4294967295)"),
        (["--n", "6", "--size", "16", "--seed", "99999999999999999999"], "seed=99999999999999999999"),
        (["--n", "100000000", "--size", "16"], "n=100000000 (valid: an integer in 4..100000"),
        (["--n", "2"], "n=2"),
    ],
)
def test_synthetic_data_options_out_of_range_are_one_message_and_write_nothing(args, message, tmp_path):
    out = tmp_path / "data"
    res = CliRunner().invoke(cli, ["synth", str(out), *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert not out.exists()


def test_the_library_refuses_synthetic_settings_as_input_errors(tmp_path):
    from tomofield.synth import write_dataset

    with pytest.raises(InputError, match=r"spacing=\(1.0, -1.0, 1.0\)"):
        write_dataset(tmp_path / "d", n=4, size=16, spacing=(1.0, -1.0, 1.0))
    assert not (tmp_path / "d").exists()


def test_evaluate_on_a_single_volume_is_a_message(tmp_path, dataset):
    heat_dir = tmp_path / "hm"
    one = tmp_path / "one.csv"
    one.write_text("\n".join(dataset.read_text().splitlines()[:2]) + "\n")
    res = CliRunner().invoke(cli, ["run", str(one), "-o", str(heat_dir), "--head", "sum", *FAST])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", str(heat_dir), str(one)])
    assert res.exit_code == 2 and "lists 1 volume(s)" in res.output and "needs at least 2" in res.output
    assert not list(heat_dir.glob("evaluation*"))


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_training_seeds_out_of_range_are_one_message(seed, dataset, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(
        cli,
        [
            "train",
            str(dataset),
            "-o",
            str(run),
            "--seed",
            seed,
            "--iterations",
            "1",
            "--slice-size",
            "16",
            "--slices-per-volume",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 2 and "seed must be an integer in 0..4294967295" in res.output, res.output
    assert not run.exists()


def test_fit_slices_zero_is_a_message(volume_file, tmp_path):
    out = tmp_path / "f.nii.gz"
    res = CliRunner().invoke(cli, ["features", str(volume_file), "-o", str(out), "--fit-slices", "0", *FAST])
    assert res.exit_code == 2 and "samples (--fit-slices) must be an integer >= 1, got 0" in res.output
    assert not out.exists()


def test_prepare_into_a_file_is_a_message(tmp_path):
    raw, target = tmp_path / "raw", tmp_path / "afile"
    raw.mkdir()
    target.write_text("keep me")
    res = CliRunner().invoke(cli, ["prepare", "mosmed", str(raw), "-o", str(target)])
    assert res.exit_code == 2 and "is a file" in res.output and target.read_text() == "keep me"


def test_run_refuses_its_input_as_output_before_any_work(volume_file):
    before = volume_file.read_bytes()
    res = CliRunner().invoke(
        cli, ["run", str(volume_file), "-o", str(volume_file), "--overwrite", "--head", "sum", *FAST]
    )
    assert res.exit_code == 2 and "is the input" in res.output
    assert "slices" not in res.output.split("Error")[0]  # refused before the reconstruction started
    assert volume_file.read_bytes() == before


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: Engine(head=123, **TINY), r"head 123 \(int\) is not a head: it lacks __call__"),
        (lambda: Engine(head="sum", filter=object(), **TINY), r"is not a filter: it lacks pad, integral, constant"),
        (lambda: Engine(head="sum", sampler=object(), **TINY), r"is not a sampler: it lacks plan"),
        (lambda: Engine(head="logit", weights=123, **TINY), r"weights must be a path.*got 123"),
        (lambda: Engine(head="logit", head_options=[1], **TINY), r"head_options=\[1\] must be a dict, got list"),
        (
            lambda: Engine(head="sum", **TINY).reconstruct(torch.rand(1, 8, 8, 8), spacing=(0, 1, 1)),
            r"spacing must be 3 positive finite voxel sizes in mm \(D, H, W\), got \(0, 1, 1\)",
        ),
        (lambda: Engine(head="sum", **TINY).reconstruct(torch.rand(1, 8, 8, 8), spacing=(1, 1)), r"got \(1, 1\)"),
        (
            lambda: Engine(head="sum", **TINY).reconstruct(torch.rand(1, 6, 6, 6, dtype=torch.complex64)),
            r"the volume is complex",
        ),
        (lambda: Engine(head="sum", **TINY).reconstruct("scan.nii.gz"), r"expected a volume array or tensor.*got str"),
        (lambda: tomofield.load_volume(3), r"expected a path or a list of paths to NIfTI files, got 3"),
    ],
)
def test_library_misuse_is_an_input_error_naming_the_value(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_one_post_processor_name_is_one_post_processor_not_its_letters():
    vol = torch.rand(1, 8, 8, 8) - 0.5
    one = Engine(head="sum", postprocess="clip-negative", **TINY).reconstruct(vol)
    assert torch.equal(one, Engine(head="sum", postprocess=["clip-negative"], **TINY).reconstruct(vol))
    assert float(one.min()) >= 0


@pytest.mark.parametrize("spelling", ["gpu", "GPU", "gpu:0", "cuda", "cuda:0"])
def test_gpu_is_cuda_and_a_machine_without_one_says_so(spelling):
    """``--device gpu`` / ``gpu:N`` (TotalSegmentator's, nnU-Net's) are CUDA; without a GPU, one message says why."""
    from tomofield.engine import resolve_device

    if torch.cuda.is_available():
        assert resolve_device(spelling).type == "cuda"
        return
    build = "built with CUDA" if torch.version.cuda else "a CPU-only build"
    why = "no NVIDIA GPU was found" if torch.version.cuda else "install a CUDA build of torch"
    with pytest.raises(InputError, match=rf"device '{spelling}' requested but .*{why}.*torch .*{build}.*--device cpu"):
        resolve_device(spelling)


def test_an_unknown_device_names_the_valid_spellings():
    from tomofield.engine import resolve_device

    with pytest.raises(InputError, match=r"unknown device 'gpux'; valid: auto, cpu, cuda, cuda:N, gpu, gpu:N"):
        resolve_device("gpux")


def test_train_given_a_folder_explains_the_dataset_csv(tmp_path):
    from click.testing import CliRunner

    from tomofield.cli import cli

    (tmp_path / "images").mkdir()
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "images"), "-o", str(tmp_path / "run")])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "is a folder of images without volume labels; give them with --labels FILE (a CSV case,label" in text
    assert "or give a dataset CSV instead of the folder, with a header image,label[,mask]" in text
    assert "scans/case01.nii.gz,1" in text and not (tmp_path / "run").exists()
    helped = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    assert "DATASET is a CSV with a header image,label[,mask]" in helped
