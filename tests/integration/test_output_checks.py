"""Checks before any work (issue 31): every command's outputs get the same checks, one training at a
time in a run folder, every option and the job's size checked first, and no read waits forever."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomofield import Engine
from tomofield.batch.claims import owner_tag
from tomofield.cli import cli
from tomofield.engine import budget
from tomofield.errors import InputError
from tomofield.io import atomic_write, atomic_write_all, save_nifti
from tomofield.train import TrainConfig, Trainer
from tomofield.train.trainer import RUN_LOCK

#: A training of a few seconds (tests/integration/test_training.py's config).
TINY = dict(
    iterations=2,
    slices_per_volume=4,
    slice_size=16,
    lr=1e-3,
    checkpoint_every=1,
    val_every=2,
    val_directions=2,
    val_slices=3,
    norm="group-norm",
    seed=3,
)
TRAIN = ["--iterations", "2", "--slices-per-volume", "4", "--slice-size", "16", "--norm", "group-norm"]
TRAIN += ["--checkpoint-every", "1", "--device", "cpu"]
FAST = ["-L", "4", "-M", "4", "--slice-size", "16", "--device", "cpu", "--head", "sum"]


def config(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to show that nothing appeared, vanished or changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(args: list[str], *needles: str) -> str:
    """Run the CLI, expect one message (exit 2, no traceback) holding each of ``needles``; returns the output."""
    res = CliRunner().invoke(cli, args, terminal_width=400)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    text = " ".join(res.output.split())  # rich wraps long messages
    for needle in needles:
        assert needle in text, text
    return text


@pytest.fixture
def run_dir(tiny_dataset, tmp_path) -> Path:
    """A trained run (2 iterations)."""
    Trainer(tiny_dataset, tmp_path / "run", config(), device="cpu").fit()
    return tmp_path / "run"


@pytest.fixture
def live_pid():
    """The pid of a live process of this host other than this one (a ``sleep``, killed afterwards)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(folder: Path, pid: int, started: str = "2024-05-01T08:00:00+0000") -> Path:
    """A run folder's lock as another training on this host writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    host = owner_tag().split("@", 1)[1]
    lock = folder / RUN_LOCK
    lock.write_text(f"tomofield-{pid}@{host}\nstarted {started}\n")
    return lock


# -- 1. every command's outputs: the same checks, before any work --------------------------------
def test_train_into_a_file_is_refused_before_any_work(tiny_dataset, tmp_path):
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    refused(["train", str(tiny_dataset), "-o", str(tmp_path / "afile"), *TRAIN], "afile' is a file; give a folder")
    assert snapshot(tmp_path) == before


def test_train_under_a_file_is_refused_before_any_work(tiny_dataset, tmp_path):
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    out = tmp_path / "afile" / "run"
    refused(["train", str(tiny_dataset), "-o", str(out), *TRAIN], "a part of the path is a file, not a folder")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_train_into_an_unwritable_folder_is_refused(tiny_dataset, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        refused(["train", str(tiny_dataset), "-o", str(ro / "run"), *TRAIN], f"the folder {str(ro)!r} is not writable")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_train_into_an_unwritable_folder_is_refused_simulated(tiny_dataset, tmp_path, monkeypatch):
    """The same as root, who ignores permissions: the folder's as os.access reports them."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **kw: not (Path(p) == ro and m & os.W_OK) and real(p, m, **kw))
    refused(["train", str(tiny_dataset), "-o", str(ro / "run"), *TRAIN], f"the folder {str(ro)!r} is not writable")
    refused(["train", str(tiny_dataset), "-o", str(ro), *TRAIN], f"cannot write {str(ro)!r}: it is not writable")
    assert list(ro.iterdir()) == []


def test_train_on_a_full_disk_is_a_message_and_leaves_nothing(tiny_dataset, tmp_path, monkeypatch):
    import safetensors.torch

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "new" / "run"
    refused(["train", str(tiny_dataset), "-o", str(out), *TRAIN], "state.safetensors': no space left on the device")
    assert not (tmp_path / "new").exists()  # the folders made for the run (and its lock) are gone


def test_train_with_a_name_too_long_is_refused_naming_the_limit(tiny_dataset, tmp_path):
    out = tmp_path / ("r" * 256)
    refused(
        ["train", str(tiny_dataset), "-o", str(out), *TRAIN], "is 256 bytes", "at most 255 bytes per name (NAME_MAX)"
    )


def test_a_temporary_name_too_long_is_refused_before_any_work(tmp_path):
    """A 250-character heatmap name is valid, but its temporary file beside it (.NAME.tomofield-PID@HOST.tmp.nii.gz)
    would pass NAME_MAX: a dataset run refuses it before any volume, naming the path and the limit."""
    name = "h" * 243 + ".nii.gz"  # 250 characters
    save_nifti(tmp_path / name, np.random.default_rng(0).random((8, 8, 8), dtype=np.float32), np.eye(4))
    (tmp_path / "d.csv").write_text(f"image,label\n{name},1\n")
    out = tmp_path / "heat"
    text = refused(["run", str(tmp_path / "d.csv"), "-o", str(out), *FAST], str(out / name), "(NAME_MAX)")
    assert "its temporary file" in text and "at most 255 bytes per name" in text
    assert not out.exists()


def test_a_250_character_output_is_written_its_temporary_name_kept_short(tmp_path):
    """One file's temporary name keeps only the name's start: a 250-character output is written."""
    name = "h" * 243 + ".nii.gz"
    atomic_write(tmp_path / name, lambda t: t.write_bytes(b"x"))
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_evaluate_refuses_a_report_name_too_long_before_evaluating(tmp_path, dataset):
    prefix = tmp_path / ("e" * 250)  # PREFIX_cases.csv is 260 characters
    text = refused(["evaluate", str(tmp_path), str(dataset), "--report", str(prefix)], "_cases.csv", "(NAME_MAX)")
    assert "is 260 bytes" in text


def test_run_mask_equal_to_the_output_is_refused(tmp_path, write_nifti):
    scan = write_nifti("scan.nii.gz", np.random.default_rng(0).random((8, 8, 8)))
    out = str(tmp_path / "h.nii.gz")
    refused(["run", str(scan), "-o", out, "--mask", out, "--threshold", "0.5", *FAST], "is also the -o output")
    assert not Path(out).exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "compare", "synth", "pretrain"])
def test_every_command_checks_its_output_the_same_way(command, tmp_path, dataset):
    """Under a file: each command refuses before any work, with the one check's message."""
    (tmp_path / "afile").write_text("x")
    out = str(tmp_path / "afile" / "out")
    args = {
        "train": ["train", str(dataset), "-o", out, *TRAIN],
        "evaluate": ["evaluate", str(tmp_path), str(dataset), "--report", out],
        "compare": ["compare", str(dataset), "--weights", str(tmp_path / "nowhere"), "-o", out],
        "synth": ["synth", out, "--n", "4", "--size", "16"],
        "pretrain": ["pretrain", str(dataset), "-o", out, "--iterations", "1"],
    }[command]
    if command == "pretrain":
        pytest.importorskip("tomofield_features")
    before = snapshot(tmp_path)
    refused(args, "a file, not a folder")
    assert snapshot(tmp_path) == before


def test_any_writer_failure_is_a_message_and_nothing_is_half_written(tmp_path):
    def bad(tmp: Path) -> None:
        tmp.write_text("half")
        raise ValueError("no such colour map")

    with pytest.raises(InputError, match=r"cannot write .*b.txt'.*ValueError: no such colour map.*nothing was written"):
        atomic_write_all(
            [(tmp_path / "a.txt", lambda t: t.write_text("whole")), (tmp_path / "sub" / "b.txt", bad)],
        )
    assert list(tmp_path.iterdir()) == []  # neither file, no temporary, not the folder made for b


# -- 2. one training at a time in a run folder --------------------------------------------------------
def test_a_second_training_into_a_folder_being_trained_is_refused_naming_the_owner(tiny_dataset, tmp_path, live_pid):
    lock = write_lock(tmp_path / "busy", live_pid)
    with pytest.raises(InputError) as info:
        Trainer(tiny_dataset, tmp_path / "busy", config(), device="cpu")
    message = str(info.value)
    host = owner_tag().split("@", 1)[1]
    assert f"is being trained by tomofield-{live_pid}@{host} (pid {live_pid} on {host})" in message
    assert "started 2024-05-01T08:00:00+0000" in message and str(lock) in message
    refused(["train", str(tiny_dataset), "-o", str(tmp_path / "busy"), *TRAIN], f"pid {live_pid} on {host}")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == [RUN_LOCK]  # the other's lock, untouched


def test_resume_of_a_run_being_trained_is_refused(tiny_dataset, run_dir, live_pid):
    before = snapshot(run_dir)
    write_lock(run_dir, live_pid)
    with pytest.raises(InputError, match=f"is being trained by .*pid {live_pid}"):
        Trainer(tiny_dataset, run_dir, config(), device="cpu", resume=True)
    refused(["train", str(tiny_dataset), "-o", str(run_dir), "--resume", *TRAIN], f"pid {live_pid}", "started")
    assert {k: v for k, v in snapshot(run_dir).items() if k != RUN_LOCK} == before


def test_the_lock_is_held_while_training_and_released_at_the_end_and_on_errors(tiny_dataset, tmp_path):
    seen = []

    def watch(rec):
        lock = tmp_path / "run" / RUN_LOCK
        seen.append(lock.read_text().splitlines()[0])
        with pytest.raises(InputError, match="is being trained by"):  # another training, even in this process
            Trainer(tiny_dataset, tmp_path / "run", config(), device="cpu", resume=True)

    Trainer(tiny_dataset, tmp_path / "run", config(), device="cpu").fit(watch)
    assert seen == [owner_tag()] * 2 and not (tmp_path / "run" / RUN_LOCK).exists()

    class Kill(Exception):
        pass

    def kill(rec):
        raise Kill

    with pytest.raises(Kill):
        Trainer(tiny_dataset, tmp_path / "cut", config(), device="cpu").fit(kill)
    assert (tmp_path / "cut" / "state.safetensors").exists() and not (tmp_path / "cut" / RUN_LOCK).exists()
    Trainer(tiny_dataset, tmp_path / "cut", config(), device="cpu", resume=True).fit()  # free to continue


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tiny_dataset, tmp_path):
    pid = dead_pid()
    write_lock(tmp_path / "run", pid)
    with pytest.warns(UserWarning, match=f"took over the lock .*pid {pid} on .* no longer runs"):
        Trainer(tiny_dataset, tmp_path / "run", config(), device="cpu").fit()
    assert (tmp_path / "run" / "model.safetensors").exists() and not (tmp_path / "run" / RUN_LOCK).exists()


# -- 3. every option and the job's size, before any work ------------------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--directions", "0"], "directions must be an integer in 1..100000, got 0"),
        (["--cam-slices", "100000"], "cam_slices must be an integer in 3..10000, got 100000"),
        (["--folds", "0"], "folds must be an integer in 1..100000, got 0"),
        (["--layers", "9"], "layer=9 is not a stage of ResNet"),
    ],
    ids=["directions 0", "cam slices", "folds 0", "layer 9"],
)
def test_compare_refuses_its_options_before_any_method_runs(run_dir, dataset, tmp_path, extra, message):
    args = ["compare", str(dataset), "--weights", str(run_dir), "-o", str(tmp_path / "report")]
    args += ["--methods", "GradCAM,ToNNO", "--layers", "3", "-L", "4", "-M", "4", "--cam-directions", "2"]
    text = refused([*args, "--cam-slices", "4", "--device", "cpu", *extra], message)
    assert "heatmaps and evaluation" not in text  # no method started
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    "flag, value, bound",
    [
        ("--slice-size", "100000", "slice_size must be an integer in 8..4096"),
        ("--slices-per-volume", "10000000", "1..4096"),
    ],
)
def test_train_sizes_have_upper_bounds(tiny_dataset, tmp_path, flag, value, bound):
    refused(["train", str(tiny_dataset), "-o", str(tmp_path / "run"), flag, value], bound, f"got {value}")
    assert not (tmp_path / "run").exists()


def test_a_reconstruction_far_beyond_the_machine_is_refused_with_its_estimate(tmp_path, write_nifti):
    scan = write_nifti("scan.nii.gz", np.random.default_rng(0).random((8, 8, 8)))
    out = tmp_path / "h.nii.gz"
    args = ["run", str(scan), "-o", str(out), "-L", "100000", "-M", "10000", "--slice-size", "4096"]
    text = refused([*args, "--device", "cpu", "--head", "sum"], "this job is far beyond this machine")
    assert "1,000,200,000 slices (L 100000 x M 10002) of 4096 x 4096 px" in text and "1.68e+16 pixels" in text
    assert "lower directions (L), slices (M) or slice_size" in text and not out.exists()
    with pytest.raises(InputError, match="far beyond this machine"):  # the library refuses too
        Engine(head="sum", directions=100_000, slices=10_000, slice_size=4096, device="cpu").reconstruct(
            torch.rand(1, 8, 8, 8)
        )


def test_a_reconstruction_beyond_the_machines_memory_is_refused(tmp_path, write_nifti, monkeypatch):
    monkeypatch.setattr(budget, "machine_memory", lambda device: 2 * 10**9)  # a machine of 2 GB
    scan = write_nifti("scan.nii.gz", np.random.default_rng(0).random((8, 8, 8)))
    args = ["run", str(scan), "-o", str(tmp_path / "h.nii.gz"), "-L", "64", "-M", "64", "--slice-size", "2048"]
    refused(
        [*args, "--batch-size", "1024", "--device", "cpu", "--head", "sum"],
        "needs more memory than this machine has",
        "a batch of 1,024 slice(s) of 2048 x 2048 px: 17.2 GB",
        "this machine has 2.0 GB; lower batch_size or slice_size",
    )


def test_a_training_far_beyond_the_machine_is_refused_before_it_starts(tiny_dataset, tmp_path):
    with pytest.raises(InputError, match=r"far beyond this machine: 10,000,000 steps of 2 x 64 slices of 256 x 256"):
        Trainer(tiny_dataset, tmp_path / "run", config(iterations=10**7, slices_per_volume=64, slice_size=256))
    with pytest.raises(InputError, match=r"needs more memory than this machine has: .* need at least 281.5 TB"):
        Trainer(tiny_dataset, tmp_path / "run", config(batch_volumes=1024, slices_per_volume=4096, slice_size=4096))
    assert not (tmp_path / "run").exists()


def test_ordinary_and_paper_sized_jobs_pass_the_estimate(tiny_dataset, tmp_path, monkeypatch):
    """The paper's reconstruction (L 2000, M 100, 224 px) of a 512 x 512 x 300 CT, and the default training,
    on a one-core machine: far within the bounds."""
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    engine = Engine(directions=2000, slices=100, slice_size=224, device="cpu")
    job = engine.estimate(engine.plan((300, 512, 512), (1.0, 0.8, 0.8)))
    job.check("", "")
    assert job.seconds < budget.LONGEST_S / 100
    trainer = Trainer(tiny_dataset, tmp_path / "run", TrainConfig(slice_size=224), device="cpu")
    trainer.estimate().check("", "")
    assert not (tmp_path / "run").exists()


# -- 4. no read waits forever ------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    """The command line in a fresh process, killed after 60 s (a regression must not hang the suite)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tomofield", *args], capture_output=True, text=True, timeout=60, env=env
    )


#: case -> (the special file: a FIFO made at NAME, a link NAME -> DEVICE, or a device; the message, {p} its path)
SPECIAL = {
    "weights FIFO": ("fifo:w.safetensors", "weights file '{p}' is not a regular file but a FIFO (named pipe)"),
    "weights /dev/zero": ("/dev/zero", "weights file '{p}' is not a regular file but a character device"),
    "input FIFO": ("fifo:pipe.nii.gz", "input file '{p}' is not a regular file but a FIFO (named pipe)"),
    "input /dev/urandom": ("/dev/urandom", "input file '{p}' is not a regular file but a character device"),
    "input a link to /dev/zero": ("link:z.nii.gz", "input file '{p}' is not a regular file but a character device"),
    "dataset CSV FIFO": ("fifo:pipe.csv", "dataset CSV '{p}' is not a regular file but a FIFO (named pipe)"),
    "validation CSV /dev/zero": ("/dev/zero", "dataset CSV '{p}' is not a regular file but a character device"),
    "labels FIFO": ("fifo:labels.csv", "labels CSV '{p}' is not a regular file but a FIFO (named pipe)"),
    "thresholds FIFO": ("fifo:report.json", "the report '{p}' is not a regular file but a FIFO (named pipe)"),
    "dataset image FIFO": ("fifo:pipe.nii.gz", "input file '{p}' is not a regular file but a FIFO (named pipe)"),
}


@pytest.mark.parametrize("case", list(SPECIAL))
def test_a_fifo_or_a_device_is_refused_at_once(case, tmp_path, tiny_dataset, write_nifti):
    spec, message = SPECIAL[case]
    if spec.startswith("fifo:"):
        special = tmp_path / spec[5:]
        os.mkfifo(special)
    elif spec.startswith("link:"):
        special = tmp_path / spec[5:]
        special.symlink_to("/dev/zero")
    else:
        special = Path(spec)
    scan = str(write_nifti("scan.nii.gz", np.random.default_rng(0).random((8, 8, 8))))
    write_nifti("images/a.nii.gz", np.random.default_rng(1).random((8, 8, 8)))
    (tmp_path / "d.csv").write_text(f"image,label\n{special.name},1\n")
    run = ["run", "-o", str(tmp_path / "h.nii.gz"), *FAST]
    train = ["-o", str(tmp_path / "r"), *TRAIN]
    args = {
        "weights FIFO": [*run, scan, "--head", "logit", "--weights", str(special)],
        "weights /dev/zero": [*run, scan, "--head", "logit", "--weights", str(special)],
        "input FIFO": [*run, str(special)],
        "input /dev/urandom": [*run, str(special)],
        "input a link to /dev/zero": [*run, str(special)],
        "dataset CSV FIFO": ["train", str(special), *train],
        "validation CSV /dev/zero": ["train", str(tiny_dataset), "--val", str(special), *train],
        "labels FIFO": ["train", str(tmp_path / "images"), "--labels", str(special), *train],
        "thresholds FIFO": [*run, scan, "--mask", str(tmp_path / "m.nii.gz"), "--thresholds", str(special)],
        "dataset image FIFO": ["run", str(tmp_path / "d.csv"), "-o", str(tmp_path / "heat"), *FAST],
    }[case]
    t0 = time.perf_counter()
    res = _cli(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert message.format(p=special) in text and "Traceback" not in text
    assert time.perf_counter() - t0 < 50  # at once: the start of a fresh interpreter, not a wait
    assert not (tmp_path / "h.nii.gz").exists() and not (tmp_path / "r").exists()


def test_the_readers_refuse_a_fifo_from_the_library(tmp_path):
    from tomofield.dataset import read_dataset
    from tomofield.encoders import read_safetensors
    from tomofield.io import load_volume

    os.mkfifo(tmp_path / "p.nii.gz")
    os.mkfifo(tmp_path / "p.safetensors")
    os.mkfifo(tmp_path / "p.csv")
    for read, path in ((load_volume, "p.nii.gz"), (read_safetensors, "p.safetensors"), (read_dataset, "p.csv")):
        with pytest.raises(InputError, match="is not a regular file but a FIFO"):
            read(tmp_path / path)
    with pytest.raises(InputError, match="not a regular file but a character device"):
        Engine(weights="/dev/zero", device="cpu")
