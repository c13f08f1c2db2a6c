"""No silent stale results: dataset runs record what made each heatmap and refuse or redo what differs."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from tomofield.batch import owner_tag, read_heatmap_record, run_dataset
from tomofield.cli import cli
from tomofield.dataset import read_dataset
from tomofield.encoders import build_encoder
from tomofield.engine import Engine
from tomofield.errors import InputError
from tomofield.io import affine_for_spacing, save_nifti

FAST = ["--head", "sum", "-L", "4", "-M", "4", "--slice-size", "16", "--device", "cpu"]
KW = {"head": "sum", "directions": 4, "slices": 4, "slice_size": 16, "device": "cpu"}
NAMES = [f"img{i}.nii.gz" for i in range(6)]


def run(*args: object):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def state(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file of ``folder`` (hidden ones too) with its mtime and content hash."""
    return {
        p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture
def done(dataset: Path) -> Path:
    """The heatmaps of ``dataset`` under FAST in ``heat/``."""
    out = dataset.parent / "heat"
    res = run(dataset, "-o", out, *FAST)
    assert res.exit_code == 0 and "6 heatmap(s) written" in res.output, res.output
    return out


def test_each_heatmap_records_what_made_it(dataset, done):
    record = read_heatmap_record(done / "img0.nii.gz")
    assert record["engine"] == {**Engine(**KW).provenance(), "autocast": "float32"}
    assert record["engine"]["settings"]["directions"] == 4 and record["engine"]["head"] == "sum"
    src = dataset.parent / "img0.nii.gz"
    assert record["inputs"] == [
        {
            "name": "img0.nii.gz",
            "size": src.stat().st_size,
            "mtime_ns": src.stat().st_mtime_ns,
            "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        }
    ]
    assert (record["nan_policy"], record["nonfinite_replaced"]) == ("refuse", 0)
    assert sorted(p.name for p in done.iterdir()) == NAMES  # the record is inside the heatmap: nothing beside it
    assert not nib.load(src).header.extensions  # the input's header is untouched


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-L", "8"], "directions 4 -> 8"),
        (["-M", "6"], "slices 4 -> 6"),
        (["--seed", "3"], "seed 0 -> 3"),
        (["--slice-size", "24"], "slice_size 16 -> 24"),
        (["--sphere"], "hemisphere True -> False"),
        (["--geometry", "normalized"], "geometry physical -> normalized"),
        (["--extent", "tight"], "extent unit -> tight"),
        (["--filter", "none"], "filter tomo -> none"),
        (["--sampler", "orthogonal"], "sampler fibonacci -> orthogonal"),
        (["--post", "clip-negative"], 'postprocess [] -> ["clip-negative"]'),
        (["--empty-tol", "0.5"], "empty_tol 0.0 -> 0.5"),
        (["--amp", "bf16"], "amp auto -> bf16"),
        (["--head", "avgpool"], "head sum -> avgpool"),
        (["--head", "logit", "--random-weights"], "head sum -> logit"),
    ],
)
def test_heatmaps_made_with_other_settings_are_refused_and_kept(dataset, done, extra, message):
    before, inputs = state(done), state(dataset.parent)
    res = run(dataset, "-o", done, *FAST, *extra)
    assert res.exit_code == 2, res.output
    assert "6 finished heatmap(s) were not made as this run would make them" in res.output
    assert message in res.output and "img0.nii.gz" in res.output and "--overwrite" in res.output
    assert state(done) == before and state(dataset.parent) == inputs


def test_other_head_options_are_refused(dataset, tmp_path):
    out = tmp_path / "pooled"
    assert run(dataset, "-o", out, *FAST, "--head", "avgpool", "--pool", "4").exit_code == 0
    before = state(out)
    res = run(dataset, "-o", out, *FAST, "--head", "avgpool", "--pool", "8")
    assert res.exit_code == 2 and "head_options.pool 4 -> 8" in res.output
    assert state(out) == before


@pytest.mark.parametrize("extra", [["--batch-size", "3"], ["--no-skip-empty"], ["--no-channels-last"]])
def test_speed_only_settings_do_not_make_heatmaps_stale(dataset, done, extra):
    before = state(done)
    res = run(dataset, "-o", done, *FAST, *extra)
    assert res.exit_code == 0 and "0 heatmap(s) written, 6 already done" in res.output, res.output
    assert state(done) == before


def test_overwrite_redoes_stale_heatmaps_and_records_the_new_settings(dataset, done):
    res = run(dataset, "-o", done, *FAST, "-L", "8", "--overwrite")
    assert res.exit_code == 0 and "6 heatmap(s) written, 0 already done" in res.output, res.output
    assert read_heatmap_record(done / "img3.nii.gz")["engine"]["settings"]["directions"] == 8
    assert sorted(p.name for p in done.iterdir()) == NAMES
    res = run(dataset, "-o", done, *FAST, "-L", "8")
    assert res.exit_code == 0 and "0 heatmap(s) written, 6 already done" in res.output


def _resnet_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    net = build_encoder("resnet10t", in_chans=1, num_classes=1, pretrained=False, norm="frozen-bn")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_heatmaps_of_other_weights_are_refused(dataset, tmp_path):
    w1, w2 = _resnet_weights(tmp_path / "w1.safetensors", 1), _resnet_weights(tmp_path / "w2.safetensors", 2)
    out = tmp_path / "logits"
    opts = [*FAST, "--head", "logit"]
    assert run(dataset, "-o", out, *opts, "--weights", w1).exit_code == 0
    before = state(out)
    res = run(dataset, "-o", out, *opts, "--weights", w2)
    assert res.exit_code == 2 and "weights_sha256 " in res.output and "--overwrite" in res.output
    assert state(out) == before
    res = run(dataset, "-o", out, *opts, "--weights", w1)  # the same weights again: done
    assert res.exit_code == 0 and "0 heatmap(s) written, 6 already done" in res.output


def test_heatmaps_of_another_tomofield_version_are_refused(dataset, done, monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "9.9.9" if n == "tomofield" else real(n))
    before = state(done)
    res = run(dataset, "-o", done, *FAST)
    assert res.exit_code == 2 and f"tomofield version {real('tomofield')} -> 9.9.9" in res.output
    assert state(done) == before


def test_a_changed_input_is_refused_and_a_touched_one_is_not(dataset, done):
    src = dataset.parent / "img2.nii.gz"
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))  # same bytes, other mtime
    res = run(dataset, "-o", done, *FAST)
    assert res.exit_code == 0 and "0 heatmap(s) written, 6 already done" in res.output, res.output
    before = state(done)
    raw = src.read_bytes()
    src.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # same size, other content
    res = run(dataset, "-o", done, *FAST)
    assert res.exit_code == 2 and "img2.nii.gz (input img2.nii.gz changed (same size, other content))" in res.output
    assert "1 finished heatmap(s)" in res.output and state(done) == before
    noise = np.random.default_rng(5).normal(size=(16, 16, 16)).astype(np.float32)
    save_nifti(src, noise, affine_for_spacing((2, 1, 1)), overwrite=True)
    res = run(dataset, "-o", done, *FAST)
    assert (
        res.exit_code == 2
        and f"input img2.nii.gz changed (size {len(raw)} -> {src.stat().st_size} bytes)" in res.output
    )
    assert state(done) == before


def test_another_channel_list_is_refused(dataset, done):
    csv = dataset.read_text().replace("img0.nii.gz,", "img0.nii.gz;img1.nii.gz,", 1)
    dataset.write_text(csv)
    before = state(done)
    res = run(dataset, "-o", done, *FAST)
    assert res.exit_code == 2 and "made from 1 input file(s), the CSV now gives 2" in res.output
    assert state(done) == before


def test_heatmaps_made_by_zeroing_nans_are_refused_when_nans_are_refused(dataset, tmp_path):
    vol = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    vol[0, 0, 0] = np.nan
    save_nifti(tmp_path / "img1.nii.gz", vol, affine_for_spacing((2, 1, 1)), overwrite=True)
    out = tmp_path / "heat"
    assert run(dataset, "-o", out, *FAST, "--nan-policy", "zero").exit_code == 0
    before = state(out)
    res = run(dataset, "-o", out, *FAST)
    assert res.exit_code == 2 and "made with --nan-policy zero (1 voxel(s) replaced), now refuse" in res.output
    assert state(out) == before
    assert run(dataset, "-o", out, *FAST, "--nan-policy", "zero").exit_code == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: save_nifti(p, np.zeros((16, 16, 16), np.float32), affine_for_spacing((2, 1, 1))),
            "img4.nii.gz (no provenance record (made by an older tomofield or another tool))",
        ),
        (lambda p: p.write_bytes(b"not a heatmap"), "img4.nii.gz (unreadable as NIfTI: "),
    ],
    ids=["older-version", "unreadable"],
)
def test_heatmaps_without_a_readable_record_are_refused_unless_overwrite(dataset, done, make, message):
    (done / "img4.nii.gz").unlink()
    make(done / "img4.nii.gz")
    before = state(done)
    res = run(dataset, "-o", done, *FAST)
    assert res.exit_code == 2 and message in res.output and "1 finished heatmap(s)" in res.output, res.output
    assert state(done) == before
    res = run(dataset, "-o", done, *FAST, "--overwrite")
    assert res.exit_code == 0 and "6 heatmap(s) written" in res.output
    assert read_heatmap_record(done / "img4.nii.gz") is not None


def test_many_stale_heatmaps_are_summarised_in_one_paragraph(dataset, done):
    res = run(dataset, "-o", done, *FAST, "-L", "6")
    assert res.exit_code == 2
    assert "img0.nii.gz, img1.nii.gz, img2.nii.gz and 3 more (directions 4 -> 6)" in res.output


# -- the output folder ---------------------------------------------------------------------------
def _masks_elsewhere(dataset: Path) -> Path:
    masks = dataset.parent / "masks"
    masks.mkdir()
    for i in range(6):
        shutil.move(dataset.parent / f"m{i}.nii.gz", masks / f"m{i}.nii.gz")
    dataset.write_text(dataset.read_text().replace(",m", ",masks/m").replace(",masks/mask", ",mask"))
    return masks


@pytest.mark.parametrize(
    "where, message",
    [
        (lambda d: d.parent, "holds the dataset's image"),
        (lambda d: Path(os.path.relpath(d.parent)), "holds the dataset's image"),
        (lambda d: _masks_elsewhere(d), "holds the dataset's mask"),
        (lambda d: d, "is the dataset CSV itself"),
        (lambda d: d.parent / "img0.nii.gz", "must be a folder when the input is a dataset CSV"),
    ],
    ids=["image-folder", "image-folder-relative", "mask-folder", "the-csv", "a-file"],
)
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_an_input_folder_or_file_is_never_the_output(dataset, where, message, overwrite):
    out = where(dataset)
    before = {p: state(p) for p in (dataset.parent, dataset.parent / "masks") if p.is_dir()}
    res = run(dataset, "-o", out, *FAST, *overwrite)
    assert res.exit_code == 2 and message in res.output, res.output
    assert {p: state(p) for p in before} == before


def test_a_symlink_to_the_input_folder_is_refused(dataset, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path, target_is_directory=True)
    before = state(tmp_path)
    res = run(dataset, "-o", link, *FAST, "--overwrite")
    assert res.exit_code == 2 and "holds the dataset's image" in res.output
    assert state(tmp_path) == before


def test_names_that_differ_only_in_case_are_refused(dataset, tmp_path):
    shutil.copy(tmp_path / "img1.nii.gz", tmp_path / "IMG0.nii.gz")
    dataset.write_text(dataset.read_text() + "IMG0.nii.gz,0,m1.nii.gz\n")
    res = run(dataset, "-o", tmp_path / "heat", *FAST)
    assert res.exit_code == 2 and "same heatmap name: IMG0, img0" in res.output and "differ only in case" in res.output
    assert not (tmp_path / "heat").exists()


# -- several jobs on one folder ------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    """The PID of another process that runs for the test's duration."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_only_the_debris_of_dead_writers_is_removed(dataset, tmp_path, live_pid):
    out = tmp_path / "heat"
    out.mkdir()
    host = owner_tag().split("@", 1)[1]
    live, dead = f"tomofield-{live_pid}@{host}", f"tomofield-{_dead_pid()}@{host}"
    keep = [
        out / f".img0.nii.gz.{live}.tmp.nii.gz",  # a concurrent job's heatmap in progress
        out / f"..img0.nii.gz.{live}.tmp.nii.gz.abc123.tmp.nii.gz",  # and its atomic write
        out / f".img1.nii.gz.tomofield-1@{host}x.tmp.nii.gz",  # another host's: only age tells
        out / ".img1.nii.gz.q1w2e3.tmp.nii.gz",  # an unknown writer's, young
        out / "notes.txt",
    ]
    gone = [
        out / f".img2.nii.gz.{dead}.tmp.nii.gz",
        out / f"..img2.nii.gz.{dead}.tmp.nii.gz.zz9.tmp.nii.gz",
        out / ".img3.nii.gz.old.tmp.nii.gz",  # an unknown writer's, two days old
        out / ".img3.nii.gz.claim",  # claimed by a dead job
    ]
    for p in [*keep, *gone]:
        p.write_text(dead if p.name.endswith(".claim") else "x")
    old = time.time() - 2 * 86400
    os.utime(out / ".img3.nii.gz.old.tmp.nii.gz", (old, old))
    (out / ".img5.nii.gz.claim").write_text(live)  # claimed by a live job: left to the end, then done here too
    res = run(dataset, "-o", out, *FAST)
    assert res.exit_code == 0 and "6 heatmap(s) written" in res.output, res.output
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert sorted(p.name for p in out.iterdir()) == sorted([*NAMES, *(p.name for p in keep)])


def test_two_processes_on_one_folder_share_the_work_and_leave_nothing_behind(dataset, tmp_path):
    out = tmp_path / "heat"
    cmd = [sys.executable, "-m", "tomofield", "run", str(dataset), "-o", str(out), *FAST[:-4], "-L", "60", *FAST[-4:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(p.name for p in out.iterdir()) == NAMES  # every heatmap once, no temporary file or claim
    written = [int(o.split(" heatmap(s) written")[0].split()[-1]) for o, _ in outs]
    assert sum(written) == 6, outs  # each heatmap published by exactly one of them
    for name in NAMES:
        assert read_heatmap_record(out / name)["engine"]["settings"]["directions"] == 60
    res = run(dataset, "-o", out, *FAST[:-4], "-L", "60", *FAST[-4:])
    assert res.exit_code == 0 and "0 heatmap(s) written, 6 already done" in res.output


class _Racer:
    """An engine whose first reconstruction lets ``other`` publish the same heatmap first."""

    def __init__(self, engine: Engine, other: Engine, cases, out: Path) -> None:
        self.engine, self.other, self.cases, self.out, self.fired = engine, other, cases, out, False

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run(self, *args, **kwargs):  # what run_dataset calls per volume
        if not self.fired:
            self.fired = True
            assert run_dataset(self.other, self.cases[:1], self.out).written == [self.cases[0].name]
        return self.engine.run(*args, **kwargs)


def test_a_heatmap_the_other_job_published_first_is_kept(dataset, tmp_path):
    cases, out = read_dataset(dataset), tmp_path / "heat"
    racer = _Racer(Engine(**KW), Engine(**KW), cases, out)
    result = run_dataset(racer, cases, out)
    assert result.skipped == ["img0"] and result.written == [f"img{i}" for i in range(1, 6)]
    assert sorted(p.name for p in out.iterdir()) == NAMES


def test_a_heatmap_another_job_made_otherwise_is_refused_not_replaced(dataset, tmp_path):
    cases, out = read_dataset(dataset), tmp_path / "heat"
    racer = _Racer(Engine(**KW), Engine(**{**KW, "directions": 5}), cases, out)
    with pytest.raises(InputError, match=r"img0\.nii\.gz \(directions 5 -> 4\); pass --overwrite"):
        run_dataset(racer, cases, out)
    assert sorted(p.name for p in out.iterdir()) == ["img0.nii.gz"]  # the other's work, and nothing else
    assert read_heatmap_record(out / "img0.nii.gz")["engine"]["settings"]["directions"] == 5


def test_redo_mode_replaces_only_the_stale_heatmaps(dataset, tmp_path):
    cases, out = read_dataset(dataset), tmp_path / "heat"
    run_dataset(Engine(**KW), cases[:3], out)
    run_dataset(Engine(**{**KW, "directions": 6}), cases[3:], out)
    before = state(out)
    result = run_dataset(Engine(**{**KW, "directions": 6}), cases, out, on_stale="redo")
    assert result.written == ["img0", "img1", "img2"] and result.skipped == ["img3", "img4", "img5"]
    assert all(state(out)[n] == before[n] for n in NAMES[3:])
    assert {read_heatmap_record(out / n)["engine"]["settings"]["directions"] for n in NAMES} == {6}


# -- evaluate ------------------------------------------------------------------------------------
def test_evaluate_refuses_a_folder_that_mixes_runs_or_outdated_inputs(dataset, done):
    ok = CliRunner().invoke(cli, ["evaluate", str(done), str(dataset), "--folds", "2", "-o", str(done.parent / "r")])
    assert ok.exit_code == 0, ok.output
    other = done.parent / "other"
    assert run(dataset, "-o", other, *FAST, "-L", "5").exit_code == 0
    shutil.copy2(other / "img3.nii.gz", done / "img3.nii.gz")
    res = CliRunner().invoke(cli, ["evaluate", str(done), str(dataset), "--folds", "2", "-o", str(done.parent / "r2")])
    assert res.exit_code == 2 and "img3.nii.gz was made otherwise than img0.nii.gz (directions 4 -> 5)" in res.output
    assert f"tomofield run {dataset} -o {done} --overwrite" in res.output.replace("\n", "")
    save_nifti(done / "img3.nii.gz", np.zeros((16, 16, 16), np.float32), affine_for_spacing((2, 1, 1)), overwrite=True)
    res = CliRunner().invoke(cli, ["evaluate", str(done), str(dataset), "--folds", "2", "-o", str(done.parent / "r2")])
    assert res.exit_code == 2 and "img3.nii.gz carries no provenance record" in res.output
    shutil.rmtree(done)
    shutil.copytree(other, done)
    save_nifti(
        dataset.parent / "img5.nii.gz",
        np.random.default_rng(9).normal(size=(16, 16, 16)).astype(np.float32),
        affine_for_spacing((2, 1, 1)),
        overwrite=True,
    )
    res = CliRunner().invoke(cli, ["evaluate", str(done), str(dataset), "--folds", "2", "-o", str(done.parent / "r2")])
    assert res.exit_code == 2 and "img5.nii.gz was made from another version of its input" in res.output
    assert not (done.parent / "r2.json").exists() and not (done.parent / "r2.csv").exists()


# -- compare -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_redoes_heatmaps_of_other_sizes(dataset, tmp_path):
    from tomofield.train import TrainConfig, Trainer

    cfg = TrainConfig(
        iterations=2, slices_per_volume=4, slice_size=16, lr=1e-3, norm="group-norm", checkpoint_every=2, val_every=2
    )
    Trainer(dataset, tmp_path / "run", cfg, device="cpu").fit()
    report = tmp_path / "report"

    def compare(directions: str):
        args = ["compare", str(dataset), "--weights", str(tmp_path / "run"), "-o", str(report), "--methods", "ToNNO"]
        res = CliRunner().invoke(cli, [*args, "-L", directions, "-M", "4", "--folds", "2", "--device", "cpu"])
        assert res.exit_code == 0, res.output

    compare("4")
    for name in ("table.md", "results.json", "results.csv", "results_cases.csv", "figure.png"):  # not the heatmaps
        (report / name).unlink()
    compare("6")
    heat = report / "heatmaps" / "tonno"
    assert sorted(p.name for p in heat.iterdir()) == NAMES
    assert {read_heatmap_record(heat / n)["engine"]["settings"]["directions"] for n in NAMES} == {6}


# -- the encoder's precision ---------------------------------------------------------------------
@pytest.mark.parametrize("head", ["sum", "logit", "layercam"])
@pytest.mark.parametrize("amp", ["auto", "off", "bf16", "fp16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_recorded_precision_is_the_one_the_scorer_runs_in(head, amp, device):
    """fp16 on CUDA under amp=auto makes other heatmaps than fp32 on CPU: the record says which ran."""
    from tomofield.batch import engine_record
    from tomofield.pipeline import Scorer

    engine = Engine(**{**KW, "head": head, "amp": amp})
    engine.device = torch.device(device)  # no GPU needed: only the choice of dtype is compared
    net = torch.nn.Conv2d(1, 1, 1) if engine.head.needs_encoder else None
    dtype = Scorer(engine.head, net, engine.device, amp=amp).dtype
    assert engine_record(engine)["autocast"] == str(dtype or torch.float32).removeprefix("torch.")
    if device == "cuda" and amp == "auto" and head == "logit":
        assert dtype == torch.float16  # the case that matters: not the CPU's fp32


def test_a_record_from_before_a_setting_existed_agrees_with_its_old_value():
    """Heatmaps made before ``intensity`` was recorded were made on the stored values (``none``)."""
    from tomofield.batch import engine_differences

    old = {"settings": {"directions": 4}}
    assert engine_differences(old, {"settings": {"directions": 4, "intensity": "none"}}) == []
    assert engine_differences(old, {"settings": {"directions": 4, "intensity": "volume"}}) == [
        "intensity none -> volume"
    ]
