"""A run directory is untrusted input: every bad one is refused with a message and left as it was.

One real run (``tomofield train``, 2 steps) is copied for each case and damaged: its
``config.json`` (checked against ``checkpoint.CONFIG_SCHEMA``), its ``model.safetensors``
and its ``state.safetensors`` (``checkpoint.STATE_SCHEMA``). Each case is tried as a user
meets it: ``tomofield run --weights RUN``, ``tomofield train --teacher RUN`` and
``tomofield train --resume``: exit status 2, ``Error: ...`` naming the file, no traceback,
no output, and the run directory byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tomofield
from tomofield import Engine
from tomofield.checkpoint import CONFIG, CONFIG_SCHEMA, MODEL, STATE, RunDir, read_state
from tomofield.cli import cli
from tomofield.errors import InputError
from tomofield.io import affine_for_spacing, save_nifti
from tomofield.protocols import Option

TRAIN = ["--slices-per-volume", "2", "--slice-size", "16", "--norm", "group-norm", "--checkpoint-every", "2"]
TRAIN += ["--device", "cpu", "--seed", "1"]
RUN = ["-L", "4", "-M", "4", "--device", "cpu"]
DROP = object()  # a key to delete
STALE = ".model.safetensors.abcd1234.tmp.safetensors"  # a write a kill cut short


# -- the run, its copies, and what a user sees ------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset CSV, run directory): 4 volumes of 12^3, a 2-step classification run."""
    base = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        vol = rng.normal(0, 0.1, (12, 12, 12)).astype(np.float32)
        if i % 2 == 0:
            vol[3:8, 4:9, 3:8] += 1.0
        save_nifti(base / f"v{i}.nii.gz", torch.from_numpy(vol), affine_for_spacing((1.0, 1.0, 1.0)))
        rows.append(f"v{i}.nii.gz,{int(i % 2 == 0)}")
    (base / "data.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    res = CliRunner().invoke(
        cli, ["train", str(base / "data.csv"), "-o", str(base / "run"), "--iterations", "2", *TRAIN]
    )
    assert res.exit_code == 0, res.output
    return base / "data.csv", base / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A fresh copy of the trained run, to damage."""
    return Path(shutil.copytree(trained[1], tmp_path / "run", symlinks=True))


@pytest.fixture
def volume(tmp_path) -> Path:
    data = np.random.default_rng(1).random((10, 10, 10)).astype(np.float32)
    return save_nifti(tmp_path / "scan.nii.gz", torch.from_numpy(data), affine_for_spacing((1.0, 1.0, 1.0)))


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a file's SHA-256, a link's target, a folder."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[key] = "dir"
        elif not p.is_file():
            out[key] = "special"
        else:
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def use_weights(run: Path, volume: Path, tmp_path: Path) -> tuple[Any, list[Path]]:
    out = tmp_path / "out" / "heat.nii.gz"
    return CliRunner().invoke(cli, ["run", str(volume), "-o", str(out), "--weights", str(run), *RUN]), [out.parent]


def use_teacher(run: Path, csv: Path, tmp_path: Path) -> tuple[Any, list[Path]]:
    out = tmp_path / "student"
    args = ["train", str(csv), "-o", str(out), "--task", "regression", "--teacher", str(run), "--iterations", "1"]
    args += ["--slices-per-volume", "2", "--teacher-quantile", "0.5", "--device", "cpu"]
    return CliRunner().invoke(cli, args), [out]


def use_resume(run: Path, csv: Path) -> Any:
    return CliRunner().invoke(cli, ["train", str(csv), "-o", str(run), "--iterations", "2", *TRAIN, "--resume"])


def assert_refused(res: Any, message: str, names: str) -> None:
    """Exit 2 with ``Error: ...`` holding ``message`` and the file ``names``; no traceback."""
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    text = " ".join(res.output.split())  # the console may wrap long messages
    assert "Error:" in text and "Traceback" not in text
    assert message in text, text
    assert names in text, text


# -- ways to damage a run -------------------------------------------------------------------
def edit(**changes: Any) -> Callable[[Path], None]:
    """Set (or with DROP delete) keys of the run's config.json."""

    def apply(run: Path) -> None:
        cfg = json.loads((run / CONFIG).read_text())
        for key, value in changes.items():
            if value is DROP:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        (run / CONFIG).write_text(json.dumps(cfg))

    return apply


def raw(data: bytes) -> Callable[[Path], None]:
    return lambda run: (run / CONFIG).write_bytes(data)


def link_outside(name: str) -> Callable[[Path], None]:
    """Move the run's ``name`` beside the run and leave a link to it (a valid file, outside)."""

    def apply(run: Path) -> None:
        outside = run.parent / f"elsewhere-{name}"
        shutil.move(run / name, outside)
        (run / name).symlink_to(outside)

    return apply


#: config.json: (id, damage, message) for every use of a run directory.
CONFIG_CASES = [
    ("a list", raw(b"[1, 2]"), "holds a list, not an object"),
    ("a text", raw(b'"tomofield-run/1"'), "holds a text, not an object"),
    ("a number", raw(b"3"), "holds a number, not an object"),
    ("null", raw(b"null"), "holds null, not an object"),
    ("empty file", raw(b""), "is not valid JSON"),
    ("cut short", raw(b'{"format": "tomofield-run/1", "encoder": '), "is not valid JSON"),
    ("not UTF-8", raw(b'{"format": "tomofield-run/1", "encoder": "\xff"}'), "not UTF-8 text"),
    ("nested too deeply", raw(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    ("no format", edit(format=DROP), "has no 'format' key; this tomofield reads 'tomofield-run/1'"),
    ("other format", edit(format="tomofield-run/2"), "has format 'tomofield-run/2'; this tomofield reads"),
    ("no encoder", edit(encoder=DROP), "lacks the key(s) 'encoder'"),
    ("encoder a number", edit(encoder=3), "key 'encoder' holds 3 (a number); valid: a registered or timm"),
    ("encoder empty", edit(encoder=""), "key 'encoder' holds '' (a text)"),
    ("encoder a folder", edit(encoder="local-dir:/tmp"), "key 'encoder' holds 'local-dir:/tmp' (a text)"),
    ("encoder on a hub", edit(encoder="hf-hub:timm/resnet10t"), "key 'encoder' holds 'hf-hub:timm/resnet10t'"),
    ("in_chans a text", edit(in_chans="1"), "key 'in_chans' holds '1' (a text); valid: an integer >= 1"),
    ("in_chans 0", edit(in_chans=0), "key 'in_chans' holds 0 (a number); valid: an integer >= 1"),
    ("in_chans true", edit(in_chans=True), "key 'in_chans' holds true (true/false); valid: an integer >= 1"),
    ("num_classes 0", edit(num_classes=0), "key 'num_classes' holds 0 (a number); valid: an integer in 1..100000"),
    ("num_classes huge", edit(num_classes=10**6), "key 'num_classes' holds 1000000 (a number); valid: an integer in"),
    ("num_classes 1.5", edit(num_classes=1.5), "key 'num_classes' holds 1.5 (a number)"),
    ("unknown norm", edit(norm="layer-norm"), "unknown norm 'layer-norm'; valid: frozen-bn, batch-norm, group-norm"),
    ("norm null", edit(norm=None), "key 'norm' holds null (null); valid: one of frozen-bn, batch-norm, group-norm"),
    ("slice_size a text", edit(slice_size="16"), "key 'slice_size' holds '16' (a text); valid: an integer in 8..4096"),
    ("slice_size 16.0", edit(slice_size=16.0), "key 'slice_size' holds 16.0 (a number); valid: an integer in"),
    ("slice_size true", edit(slice_size=True), "key 'slice_size' holds true (true/false)"),
    ("slice_size 4", edit(slice_size=4), "key 'slice_size' holds 4 (a number); valid: an integer in 8..4096"),
    ("slice_size huge", edit(slice_size=100_000), "key 'slice_size' holds 100000"),
    ("unknown geometry", edit(geometry="spherical"), "unknown geometry 'spherical'; valid: physical, normalized"),
    ("unknown extent", edit(extent="loose"), "unknown extent 'loose'; valid: unit, tight"),
    ("extent a list", edit(extent=["unit"]), "key 'extent' holds [\"unit\"] (a list); valid: one of unit, tight"),
    ("task a number", edit(task=7), "key 'task' holds 7 (a number); valid: a task name"),
    ("training a text", edit(training="fast"), "key 'training' holds 'fast' (a text); valid: an object"),
    ("dataset a text", edit(dataset="data.csv"), "key 'dataset' holds 'data.csv' (a text); valid: an object"),
    ("dataset csv a number", edit(dataset={"csv": 5}), "key 'dataset' holds {\"csv\": 5} (an object)"),
    ("iteration -1", edit(iteration=-1), "key 'iteration' holds -1 (a number); valid: an integer >= 0"),
    ("metrics a list", edit(metrics=[1]), "key 'metrics' holds [1] (a list); valid: an object of numbers"),
    ("loss_log of texts", edit(loss_log=[{"loss": "low"}]), 'key \'loss_log\' holds [{"loss": "low"}]'),
    ("teacher a number", edit(teacher=5), "key 'teacher' holds 5 (a number); valid: the teacher's run directory"),
    ("teacher_baseline NaN", edit(teacher_baseline=float("nan")), "key 'teacher_baseline' holds NaN"),
    ("head_defaults a list", edit(head_defaults=[1]), "key 'head_defaults' holds [1] (a list)"),
    ("head_defaults of a number", edit(head_defaults={"logit": 3}), "key 'head_defaults' holds {\"logit\": 3}"),
    ("head option a list", edit(head_defaults={"logit": {"target": [0]}}), "key 'head_defaults' holds"),
    ("typo slicesize", edit(slicesize=32), "unknown key 'slicesize'; did you mean 'slice_size'?"),
    ("typo slice-size", edit(**{"slice-size": 32}), "unknown key 'slice-size'; did you mean 'slice_size'?"),
    ("config.json links outside", link_outside(CONFIG), "outside the run directory"),
]
#: config.json: what only a teacher needs.
TEACHER_CASES = [
    ("teacher without norm", edit(norm=DROP), "lacks the key(s) 'norm', which a teacher needs"),
    ("teacher without in_chans", edit(in_chans=DROP), "lacks the key(s) 'in_chans', which a teacher needs"),
    ("teacher without task", edit(task=DROP), "lacks the key(s) 'task', which a teacher needs"),
    ("teacher a regression run", edit(task="regression"), "is a 'regression' run; it must be a classification run"),
    ("teacher of 3 channels", edit(in_chans=3), "takes 3 channel(s), the volumes have 1"),
]


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])

    return apply


def _replace_dir(name: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()

    return apply


def _dangling(name: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).unlink()
        (run / name).symlink_to(run / "gone.safetensors")

    return apply


def _fifo(name: str) -> Callable[[Path], None]:
    """A named pipe in the file's place: reading it would wait for ever."""

    def apply(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)

    return apply


#: model.safetensors: (id, damage, message) for --weights and --teacher.
MODEL_CASES = [
    ("model missing", lambda r: (r / MODEL).unlink(), "model.safetensors' does not exist"),
    ("model a folder", _replace_dir(MODEL), "model.safetensors' is a folder"),
    ("model a link to nothing", _dangling(MODEL), "model.safetensors' is a link to nothing"),
    ("model a FIFO", _fifo(MODEL), "model.safetensors' is not a regular file"),
    ("model links outside", link_outside(MODEL), "outside the run directory"),
    ("model a text", lambda r: (r / MODEL).write_text("weights"), "as safetensors (a truncated file, or another"),
    ("model empty", lambda r: (r / MODEL).write_bytes(b""), "as safetensors (a truncated file, or another"),
    ("model a pickle", lambda r: torch.save({"w": torch.zeros(2)}, r / MODEL), "as safetensors"),
    ("model truncated", _truncate(MODEL, 0.9), "as safetensors (a truncated file, or another format)"),
    ("model header only", _truncate(MODEL, 0.001), "as safetensors (a truncated file, or another format)"),
    ("model of another net", lambda r: save_file({"w": torch.zeros(2)}, str(r / MODEL)), "do not fit the encoder"),
]


# -- state.safetensors ---------------------------------------------------------------------
def _state(meta: dict[str, Any] | None = None, tensors: Callable[[dict], dict] | None = None, *, keep_meta=True):
    """Rewrite state.safetensors with metadata ``meta`` changed (DROP deletes) and ``tensors`` applied."""

    def apply(run: Path) -> None:
        path = run / STATE
        with safe_open(str(path), framework="pt") as fh:
            old = dict(fh.metadata())
        new = {**old, **(meta or {})} if keep_meta else None
        if new is not None:
            new = {k: v for k, v in new.items() if v is not DROP}
        t = load_file(str(path))
        save_file(tensors(t) if tensors else t, str(path), metadata=new)

    return apply


def _set(**changes: Any) -> Callable[[dict], dict]:
    """Set (or with DROP delete) tensors."""
    return lambda t: {k: v for k, v in {**t, **changes}.items() if v is not DROP}


def _reshape(prefix: str) -> Callable[[dict], dict]:
    """The first 4D tensor whose name starts with ``prefix`` replaced by one of another shape."""

    def apply(t: dict) -> dict:
        key = next(k for k in sorted(t) if k.startswith(prefix) and t[k].dim() == 4)
        return {**t, key: torch.zeros(3, 3, 3, 3)}

    return apply


def _without_betas(run: Path) -> None:
    with safe_open(str(run / STATE), framework="pt") as fh:
        meta = dict(fh.metadata())
    groups = json.loads(meta["param_groups"])
    for g in groups:
        g.pop("betas")
    _state({"param_groups": json.dumps(groups)})(run)


#: state.safetensors: (id, damage, message) for --resume. All are refused before the folder is touched.
STATE_CASES = [
    ("state a text", lambda r: (r / STATE).write_text("state"), "as safetensors (truncated, or another kind"),
    ("state empty", lambda r: (r / STATE).write_bytes(b""), "as safetensors (truncated, or another kind"),
    ("state truncated", _truncate(STATE, 0.5), "as safetensors (truncated, or another kind of file)"),
    ("state a pickle", lambda r: torch.save({"w": torch.zeros(2)}, r / STATE), "as safetensors"),
    ("state links outside", link_outside(STATE), "outside the run directory"),
    ("state a link to nothing", _dangling(STATE), "state.safetensors' is a link to nothing"),
    ("state a FIFO", _fifo(STATE), "state.safetensors' is not a regular file"),
    ("state without metadata", _state(keep_meta=False), "has no metadata; it is not a checkpoint"),
    ("no iteration", _state({"iteration": DROP}), "lacks the metadata key 'iteration'"),
    ("no param_groups", _state({"param_groups": DROP}), "lacks the metadata key 'param_groups'"),
    ("no history", _state({"history": DROP}), "lacks the metadata key 'history'"),
    ("no training", _state({"training": DROP}), "lacks the metadata key 'training'"),
    ("no dataset_sha256", _state({"dataset_sha256": DROP}), "lacks the metadata key 'dataset_sha256'"),
    ("iteration not JSON", _state({"iteration": "two"}), "metadata 'iteration' is not valid JSON"),
    ("history not JSON", _state({"history": "[{"}), "metadata 'history' is not valid JSON"),
    ("training not JSON", _state({"training": "{'seed': 1}"}), "metadata 'training' is not valid JSON"),
    ("deep history", _state({"history": "[" * 100_000 + "]" * 100_000}), "metadata 'history' is not usable JSON"),
    ("iteration -1", _state({"iteration": "-1"}), "metadata 'iteration' holds -1; valid: an integer >= 0"),
    ("iteration 2.5", _state({"iteration": "2.5"}), "metadata 'iteration' holds 2.5; valid: an integer >= 0"),
    ("iteration a text", _state({"iteration": '"2"'}), "metadata 'iteration' holds '2'; valid: an integer"),
    ("history an object", _state({"history": "{}"}), "metadata 'history' holds {}; valid: a list of objects"),
    ("history of texts", _state({"history": '[{"val_auc": "high"}]'}), "metadata 'history' holds"),
    ("loss_log a number", _state({"loss_log": "3"}), "metadata 'loss_log' holds 3; valid: a list of objects"),
    ("training a list", _state({"training": "[]"}), "metadata 'training' holds []; valid: an object"),
    ("param_groups an object", _state({"param_groups": "{}"}), "metadata 'param_groups' holds {}; valid: a list"),
    ("param_groups no params", _state({"param_groups": '[{"lr": 1}]'}), "metadata 'param_groups' holds"),
    ("world_size 0", _state({"world_size": "0"}), "metadata 'world_size' holds 0; valid: an integer >= 1"),
    ("sha256 not hex", _state({"dataset_sha256": "abc"}), "metadata 'dataset_sha256' holds 'abc'; valid: 64 hex"),
    ("odd tensor name", _state(tensors=_set(**{"opt.x": torch.zeros(1)})), "holds tensor(s) 'opt.x' that are not"),
    (
        "no model tensors",
        _state(tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("model.")}),
        "holds no model weights",
    ),
    (
        "no rng",
        _state(tensors=_set(rng=DROP)),
        "the random state 'rng' of process 0 of 1 should be a 1-D uint8 tensor, got missing",
    ),
    ("rng of floats", _state(tensors=_set(rng=torch.zeros(8))), "should be a 1-D uint8 tensor, got F32"),
    ("rng of 2 processes", _state({"world_size": "2"}), "the random state 'rng.1' of process 1 of 2"),
    # these pass the header and are refused when the tensors are loaded into the model
    ("model tensor reshaped", _state(tensors=_reshape("model.")), "state.safetensors' do not fit the encoder"),
    ("optimizer tensor reshaped", _state(tensors=_reshape("opt.")), "does not fit"),
    ("param group without betas", _without_betas, "parameter group 0 records"),
    ("rng cut short", _state(tensors=_set(rng=torch.zeros(10, dtype=torch.uint8))), "random state in"),
    ("state a folder", _replace_dir(STATE), "state.safetensors' is a folder"),
]


# -- the tests -------------------------------------------------------------------------------
def test_a_good_run_serves_every_use(trained, run, volume, tmp_path):
    """The copies the other tests damage work undamaged: each refusal below is the damage's."""
    csv, _ = trained
    res, _ = use_weights(run, volume, tmp_path)
    assert res.exit_code == 0, res.output
    (run / STALE).write_bytes(b"cut short")
    res = use_resume(run, csv)
    assert res.exit_code == 0, res.output
    assert not (run / STALE).exists()  # removed once the checkpoint is loaded
    res, (student,) = use_teacher(run, csv, tmp_path)
    assert res.exit_code == 0, res.output
    assert json.loads((student / CONFIG).read_text())["teacher"] == str(run.resolve())


@pytest.mark.parametrize("damage, message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_run_weights_refuses_a_bad_config(run, volume, tmp_path, damage, message):
    damage(run)
    before = snapshot(run)
    res, outputs = use_weights(run, volume, tmp_path)
    assert_refused(res, message, CONFIG)
    assert snapshot(run) == before
    assert not any(p.exists() for p in outputs)
    with pytest.raises(InputError, match="config.json"):
        Engine(weights=str(run), device="cpu")


@pytest.mark.parametrize(
    "damage, message", [c[1:] for c in CONFIG_CASES + TEACHER_CASES], ids=[c[0] for c in CONFIG_CASES + TEACHER_CASES]
)
def test_train_teacher_refuses_a_bad_config(trained, run, tmp_path, damage, message):
    damage(run)
    before = snapshot(run)
    res, outputs = use_teacher(run, trained[0], tmp_path)
    assert_refused(res, message, str(run))
    assert snapshot(run) == before
    assert not any(p.exists() for p in outputs)


@pytest.mark.parametrize("damage, message", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
@pytest.mark.parametrize("use", ["weights", "teacher"])
def test_a_bad_model_file_is_refused(trained, run, volume, tmp_path, damage, message, use):
    damage(run)
    before = snapshot(run)
    if use == "weights":
        res, outputs = use_weights(run, volume, tmp_path)
    else:
        res, outputs = use_teacher(run, trained[0], tmp_path)
    assert_refused(res, message, str(run))
    assert snapshot(run) == before
    assert not any(p.exists() for p in outputs)


@pytest.mark.parametrize("damage, message", [c[1:] for c in STATE_CASES], ids=[c[0] for c in STATE_CASES])
def test_resume_refuses_a_bad_state_and_touches_nothing(trained, run, damage, message):
    damage(run)
    (run / STALE).write_bytes(b"cut short")  # even the leftovers of a kill stay until the checkpoint loads
    before = snapshot(run)
    res = use_resume(run, trained[0])
    assert_refused(res, message, STATE)
    assert snapshot(run) == before


def test_read_state_decodes_a_good_checkpoint(run):
    st = read_state(run)
    assert (st.iteration, st.world_size, st.history) == (2, 1, [])
    assert st.training["slice_size"] == 16 and len(st.dataset_sha256) == 64
    assert any(k.startswith("model.") for k in st.tensors())


def test_paths_a_run_records_are_never_opened(run, volume, tmp_path):
    """The dataset CSV and the teacher are provenance: pointing them anywhere changes nothing."""
    want = tomofield.load_volume([volume])
    reference = Engine(weights=str(run), head="logit", directions=4, slices=4, device="cpu")
    heat = reference.reconstruct(want.data, want.spacing)
    trap = tmp_path / "trap"  # a folder of bad files: opening any of them would fail
    trap.mkdir()
    (trap / CONFIG).write_text("[]")
    (trap / MODEL).write_text("no")
    edit(
        teacher=str(trap),
        teacher_baseline=0.5,
        dataset={"csv": "../../../../etc/shadow", "sha256": "0" * 64, "volumes": 4},
        training={**json.loads((run / CONFIG).read_text())["training"], "teacher": str(trap)},
    )(run)
    assert {k for k, v in CONFIG_SCHEMA.items() if v.recorded_path} == {"dataset", "teacher"}
    engine = Engine(weights=str(run), head="logit", directions=4, slices=4, device="cpu")
    assert torch.equal(engine.reconstruct(want.data, want.spacing), heat)


def test_links_inside_the_run_and_a_linked_run_are_followed(run, tmp_path):
    (run / "weights").mkdir()
    shutil.move(run / MODEL, run / "weights" / MODEL)
    (run / MODEL).symlink_to(Path("weights") / MODEL)
    (tmp_path / "alias").symlink_to(run)
    rd = RunDir(tmp_path / "alias")
    assert rd.weights().keys() == load_file(run / "weights" / MODEL).keys()
    assert read_state(tmp_path / "alias").iteration == 2


# -- head_defaults against the head's declared options -----------------------------------------
class ProbeHead:
    """A head with one option of each kind a run may or may not set."""

    needs_encoder = False
    needs_grad = False
    compilable = False
    options = (
        Option("count", int, 1, "an integer"),
        Option("gain", float, 1.0, "a number"),
        Option("mode", str, "a", "a choice", choices=("a", "b")),
        Option("path", str, None, "a file"),
    )

    def __init__(self, count: int = 1, gain: float = 1.0, mode: str = "a", path: str | None = None) -> None:
        self.count, self.gain, self.mode, self.path = count, gain, mode, path

    def __call__(self, encoder, slices):
        return slices.mean(dim=(2, 3), keepdim=True)


@pytest.fixture
def probe_head():
    class Heads:
        @tomofield.hookimpl
        def register_heads(self, register):
            register("probe", ProbeHead, "test head")

    tomofield.plugins.register_plugin(Heads(), name="probe-head-test")


HEAD_CASES = [
    (
        "undeclared option",
        {"depth": 2},
        "head_defaults.probe sets 'depth', which head 'probe' does not take; its options: count, gain, mode, path",
    ),
    ("integer as text", {"count": "3"}, "head_defaults.probe.count holds '3'; valid: an integer"),
    ("integer as 1.5", {"count": 1.5}, "head_defaults.probe.count holds 1.5; valid: an integer"),
    ("number as true", {"gain": True}, "head_defaults.probe.gain holds true; valid: a number"),
    ("unknown choice", {"mode": "c"}, "head_defaults.probe.mode holds 'c'; valid: one of a, b"),
    ("a file", {"path": "/etc/passwd"}, "may not set the text option 'path' (it may name a file)"),
]


@pytest.mark.parametrize("options, message", [c[1:] for c in HEAD_CASES], ids=[c[0] for c in HEAD_CASES])
def test_head_defaults_must_fit_the_heads_options(run, volume, tmp_path, probe_head, options, message):
    edit(head_defaults={"probe": options})(run)
    before = snapshot(run)
    with pytest.raises(InputError, match="config.json") as info:
        Engine(weights=str(run), head="probe", device="cpu")
    assert message in str(info.value)
    out = tmp_path / "out" / "heat.nii.gz"
    res = CliRunner().invoke(cli, ["run", str(volume), "-o", str(out), "--weights", str(run), "--head", "probe", *RUN])
    assert_refused(res, message, CONFIG)
    assert snapshot(run) == before and not out.parent.exists()


def test_head_defaults_that_fit_are_the_heads_defaults(run, probe_head):
    edit(head_defaults={"probe": {"count": 3, "gain": 2, "mode": "b"}, "other": {"x": "y"}})(run)
    head = Engine(weights=str(run), head="probe", device="cpu").head
    assert (head.count, head.gain, head.mode, head.path) == (3, 2, "b", None)
    assert Engine(weights=str(run), head="probe", device="cpu", head_options={"count": 5}).head.count == 5


def test_fast_keeps_the_runs_slice_size_and_sizes_the_rest_to_the_volume(trained):
    """The encoder was trained at its slice size: the per-volume preset chooses only L and M around it."""
    run_size = RunDir(trained[1]).engine_defaults()["slice_size"]
    engine = Engine(weights=str(trained[1]), preset="fast", device="cpu")
    cfg = engine.config_for((300, 512, 512))
    assert (cfg.directions, cfg.slices, cfg.slice_size) == (48, 48, run_size)
    assert engine.provenance()["settings"]["slice_size"] == run_size
    assert engine.provenance()["settings"]["directions"] == "preset fast"
