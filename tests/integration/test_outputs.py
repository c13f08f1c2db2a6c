"""Outputs and the file system: every writer refuses what it must not replace, writes atomically
with the umask's permissions, and turns the OS's write errors into messages naming the path."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomofield import InputError
from tomofield.cli import cli
from tomofield.compare import check_report_dir, report_files, run_comparison
from tomofield.io import Heatmap, affine_for_spacing, atomic_write, check_output_path, load_volume, save_nifti
from tomofield.outputs.preview import write_preview
from tomofield.report import report_paths, write_reports
from tomofield.synth import write_dataset

FAST = ["-L", "4", "-M", "4", "--slice-size", "16", "--device", "cpu", "--head", "sum"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to show that nothing appeared, vanished or changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return save_nifti(tmp_path / "scan.nii.gz", rng.random((12, 12, 12), dtype=np.float32), np.eye(4))


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- tomofield run: the output path -----------------------------------------------------------
def _parent_is_file(t: Path) -> tuple[list[str], str]:
    (t / "afile").write_text("x")
    return ["-o", str(t / "afile" / "h.nii.gz")], "afile' is a file, not a folder"


def _output_is_folder(t: Path) -> tuple[list[str], str]:
    (t / "adir.nii.gz").mkdir()
    return ["-o", str(t / "adir.nii.gz")], "is a folder; give a file name"


def _output_is_folder_overwrite(t: Path) -> tuple[list[str], str]:
    args, msg = _output_is_folder(t)
    return [*args, "--overwrite"], msg


def _output_is_input(t: Path) -> tuple[list[str], str]:
    return ["-o", str(t / "scan.nii.gz"), "--overwrite"], "is the input"


def _output_is_input_dotted(t: Path) -> tuple[list[str], str]:
    return ["-o", str(t / "." / "sub" / ".." / "scan.nii.gz"), "--overwrite"], "is the input"


def _output_links_to_input(t: Path) -> tuple[list[str], str]:
    (t / "link.nii.gz").symlink_to(t / "scan.nii.gz")
    return ["-o", str(t / "link.nii.gz"), "--overwrite"], "is the input"


def _output_hard_links_input(t: Path) -> tuple[list[str], str]:
    os.link(t / "scan.nii.gz", t / "hard.nii.gz")
    return ["-o", str(t / "hard.nii.gz"), "--overwrite"], "is the input"


def _preview_parent_is_file(t: Path) -> tuple[list[str], str]:
    (t / "afile").write_text("x")
    return ["-o", str(t / "h.nii.gz"), "--preview", str(t / "afile" / "p.png")], "afile' is a file, not a folder"


def _preview_is_folder(t: Path) -> tuple[list[str], str]:
    (t / "p.png").mkdir()
    return ["-o", str(t / "h.nii.gz"), "--preview", str(t / "p.png"), "--overwrite"], "is a folder"


def _name_too_long(t: Path) -> tuple[list[str], str]:
    return ["-o", str(t / ("a" * 300 + ".nii.gz"))], "the name is too long; choose a shorter one (ENAMETOOLONG)"


RUN_CASES = [
    ("name too long", _name_too_long),
    ("parent is a file", _parent_is_file),
    ("output is a folder", _output_is_folder),
    ("output is a folder, --overwrite", _output_is_folder_overwrite),
    ("output is the input", _output_is_input),
    ("output is the input, spelled otherwise", _output_is_input_dotted),
    ("output is a symlink to the input", _output_links_to_input),
    ("output is a hard link of the input", _output_hard_links_input),
    ("preview parent is a file", _preview_parent_is_file),
    ("preview is a folder", _preview_is_folder),
]


@pytest.mark.parametrize("name, make", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_refuses_outputs_it_cannot_or_must_not_write(scan, tmp_path, name, make):
    if "sub" in name or "spelled" in name:
        (tmp_path / "sub").mkdir()
    args, message = make(tmp_path)
    before = snapshot(tmp_path)
    res = CliRunner().invoke(cli, ["run", str(scan), *args, *FAST])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "pass --overwrite" not in res.output  # a suggestion that would not help
    assert snapshot(tmp_path) == before  # input untouched, nothing written
    assert not leftovers(tmp_path)


def test_output_folder_message_does_not_suggest_overwrite(tmp_path):
    (tmp_path / "d.nii.gz").mkdir()
    for overwrite in (False, True):
        with pytest.raises(InputError) as info:
            check_output_path(tmp_path / "d.nii.gz", overwrite)
        assert "is a folder" in str(info.value) and "--overwrite" not in str(info.value)


def test_unwritable_folder_is_refused_early(scan, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: simulate the folder's
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **kw: Path(p) != ro and real(p, m, **kw))
    else:
        ro.chmod(0o500)
    try:
        res = CliRunner().invoke(cli, ["run", str(scan), "-o", str(ro / "h.nii.gz"), *FAST])
        assert res.exit_code == 2, res.output
        assert f"the folder {str(ro)!r} is not writable" in res.output
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


# -- errors from the OS while writing --------------------------------------------------------
OS_ERRORS = [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EDQUOT, "the disk quota is exceeded"),
    (errno.EACCES, "permission denied"),
    (errno.EROFS, "the file system is read-only"),
    (errno.EIO, "Input/output error"),
]


@pytest.mark.parametrize("code, reason", OS_ERRORS, ids=[errno.errorcode[c] for c, _ in OS_ERRORS])
def test_write_errors_become_messages_and_leave_nothing(scan, tmp_path, monkeypatch, code, reason):
    def failing_save(img, filename):
        Path(filename).write_bytes(b"partial")  # what a write cut short leaves
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(nibabel, "save", failing_save)
    before = snapshot(tmp_path)
    out = tmp_path / "new" / "deeper" / "h.nii.gz"
    res = CliRunner().invoke(cli, ["run", str(scan), "-o", str(out), *FAST])
    assert res.exit_code == 2, res.output
    assert f"cannot write {str(out)!r}: {reason}" in res.output and errno.errorcode[code] in res.output
    assert "Traceback" not in res.output
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "new").exists()  # the folders made for it are gone too
    assert not leftovers(tmp_path)


def test_failing_temporary_file_becomes_a_message(tmp_path, monkeypatch):
    import tempfile

    def no_temp(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", no_temp)
    with pytest.raises(InputError, match="cannot write .*h.txt': permission denied"):
        atomic_write(tmp_path / "h.txt", lambda t: t.write_text("x"))
    assert list(tmp_path.iterdir()) == []


def test_write_error_of_any_writer_names_the_path(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    heat = np.random.default_rng(0).random((8, 8, 8))
    with pytest.raises(InputError, match="p.png': no space left"):
        write_preview(tmp_path / "p.png", heat, heat)
    assert list(tmp_path.iterdir()) == []


# -- permissions ------------------------------------------------------------------------------
def _writers(tmp_path: Path):
    heat = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    return [
        ("nifti", lambda: save_nifti(tmp_path / "a.nii.gz", heat, np.eye(4))),
        ("preview", lambda: write_preview(tmp_path / "a.png", heat, heat)),
        ("reports", lambda: write_reports(tmp_path / "r", {"m": {"f1": 0.5}})[0]),
        ("text", lambda: atomic_write(tmp_path / "t.txt", lambda t: t.write_text("x"))),
    ]


WRITERS = ["nifti", "preview", "reports", "text"]


@pytest.mark.parametrize("which", WRITERS)
def test_new_files_get_the_umask_permissions(tmp_path, umask_027, which):
    path = dict(_writers(tmp_path))[which]()
    assert mode(path) == 0o640  # 0o666 & ~0o027, as open() would make it, not mkstemp's 0o600


def test_replaced_file_keeps_its_permissions(tmp_path, umask_027):
    p = tmp_path / "t.txt"
    p.write_text("old")
    p.chmod(0o664)
    atomic_write(p, lambda t: t.write_text("new"), overwrite=True)
    assert p.read_text() == "new" and mode(p) == 0o664


def test_synthetic_dataset_files_get_the_umask_permissions(tmp_path, umask_027):
    paths = write_dataset(tmp_path / "ds", n=4, size=16)
    files = [p for p in (tmp_path / "ds").rglob("*") if p.is_file()]
    assert paths["dataset"] in files and len(files) == 4 * 2 + 3 + 1  # images, masks, CSVs, synth.json
    assert {mode(p) for p in files} == {0o640}


# -- no replacement without overwrite ---------------------------------------------------------
@pytest.mark.parametrize("which", WRITERS)
def test_every_writer_refuses_to_replace_without_overwrite(tmp_path, which):
    writers = dict(_writers(tmp_path))
    path = writers[which]()
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        dict(_writers(tmp_path))[which]()
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)
    assert path.exists()


def test_heatmap_never_replaces_its_input(write_nifti, tmp_path):
    src = write_nifti("v.nii.gz", np.random.default_rng(0).random((8, 8, 8)))
    vol = load_volume(src)
    before = src.read_bytes()
    with pytest.raises(InputError, match="is the input"):
        Heatmap.on(vol.data, vol).save(src, overwrite=True)
    assert src.read_bytes() == before and not leftovers(tmp_path)


def test_reports_are_written_both_or_neither(tmp_path):
    json_path, csv_path, _ = report_paths(tmp_path / "r")
    csv_path.write_text("mine")
    with pytest.raises(InputError, match="r.csv' exists"):
        write_reports(tmp_path / "r", {"m": {"f1": 0.5}})
    assert not json_path.exists() and csv_path.read_text() == "mine"


@pytest.mark.parametrize(
    "prefix, names",
    [
        ("r", ("r.json", "r.csv", "r_cases.csv")),
        ("r.json", ("r.json", "r.csv", "r_cases.csv")),
        ("my.report", ("my.report.json", "my.report.csv", "my.report_cases.csv")),
    ],
)
def test_report_prefix_keeps_its_name(tmp_path, prefix, names):
    assert tuple(p.name for p in write_reports(tmp_path / prefix, {"m": {"f1": 0.5}})) == names


def test_reports_json_is_strict_json(tmp_path):
    path = write_reports(tmp_path / "r", {"m": {"f1": float("nan"), "std": {"f1": float("inf")}, "n": np.int64(3)}})[0]
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data == {"m": {"f1": None, "std": {"f1": None}, "n": 3}}


def test_evaluate_never_replaces_the_dataset_csv(dataset, tmp_path):
    heat = tmp_path / "heat"
    heat.mkdir()
    for i in range(6):
        m = load_volume(tmp_path / f"m{i}.nii.gz")
        save_nifti(heat / f"img{i}.nii.gz", m.data.numpy() + 0.01 * i, m.affine)
    before = snapshot(tmp_path)
    prefix = tmp_path / "data"  # data.csv is the dataset
    res = CliRunner().invoke(cli, ["evaluate", str(heat), str(dataset), "-o", str(prefix), "--overwrite"])
    assert res.exit_code == 2, res.output
    assert "is the input" in res.output and "data.csv" in res.output
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


# -- compare's report folder ------------------------------------------------------------------
def test_compare_refuses_a_report_folder_that_is_a_file(dataset, tmp_path):
    (tmp_path / "rep").write_text("x")
    res = CliRunner().invoke(cli, ["compare", str(dataset), "--weights", str(tmp_path), "-o", str(tmp_path / "rep")])
    assert res.exit_code == 2 and "report folder" in res.output and "is a file" in res.output
    assert (tmp_path / "rep").read_text() == "x"


def test_compare_refuses_an_earlier_comparison_before_any_work(dataset, tmp_path):
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "table.md").write_text("earlier")
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="holds an earlier comparison \\(table.md\\); choose another folder"):
        run_comparison(dataset, tmp_path / "no-such-run", rep, None)  # refused before the weights are read
    assert snapshot(tmp_path) == before and not (rep / "heatmaps").exists()
    assert check_report_dir(rep, overwrite=True) == rep
    assert [p.name for p in report_files(rep)] == [
        "table.md",
        "results.json",
        "results.csv",
        "results_cases.csv",
        "figure.png",
    ]


def test_compare_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="'.*f' is a file, not a folder"):
        check_report_dir(tmp_path / "f" / "rep")


# -- the synthetic dataset --------------------------------------------------------------------
def test_synth_cli_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    res = CliRunner().invoke(cli, ["synth", str(tmp_path / "f" / "ds"), "--n", "4", "--size", "16"])
    assert res.exit_code == 2 and "a part of the path is a file, not a folder" in res.output
    assert snapshot(tmp_path) == {"f": b"x"}


def test_synth_into_a_file_or_under_one_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file; give a new or empty folder"):
        write_dataset(tmp_path / "f", n=4, size=16)
    with pytest.raises(InputError, match="cannot write"):
        write_dataset(tmp_path / "f" / "ds", n=4, size=16)
    assert snapshot(tmp_path) == {"f": b"x"}


def test_synth_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fills_up(img, filename):
        calls.append(filename)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        nibabel.nifti1.save(img, filename)

    monkeypatch.setattr(nibabel, "save", fills_up)
    with pytest.raises(InputError, match="no space left on the device"):
        write_dataset(tmp_path / "a" / "ds", n=4, size=16)
    assert len(calls) == 4 and list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_folder_when_the_write_fails(tmp_path):
    def boom(tmp: Path) -> None:
        raise RuntimeError("writer failed")

    with pytest.raises(InputError, match="z.txt': writing it failed \\(RuntimeError: writer failed\\)") as info:
        atomic_write(tmp_path / "x" / "y" / "z.txt", boom)  # any writer's failure: a message (issue 31)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert list(tmp_path.iterdir()) == []


def test_save_nifti_refuses_values_its_type_cannot_hold(tmp_path):
    aff = affine_for_spacing((1, 1, 1))
    with pytest.raises(InputError, match=r"as float32: values span \[0.0, 1e\+300\]"):
        save_nifti(tmp_path / "a.nii.gz", np.array([[[0.0, 1e300]] * 2] * 2), aff)
    with pytest.raises(InputError, match=r"as uint8: values span \[0.0, 300.0\]; uint8 holds the integers 0..255"):
        save_nifti(tmp_path / "b.nii.gz", np.full((2, 2, 2), 300.0) * np.eye(2)[0], aff, dtype=np.uint8)
    with pytest.raises(InputError, match="with fractions"):
        save_nifti(tmp_path / "c.nii.gz", np.full((2, 2, 2), 0.5), aff, dtype=np.uint8)
    with pytest.raises(InputError, match="not writing .*the heatmap holds 1 NaN or infinite value"):
        data = torch.zeros(1, 2, 2, 2)
        data[0, 0, 0, 0] = float("nan")
        Heatmap(data, aff, (1.0, 1.0, 1.0)).save(tmp_path / "d.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_a_long_valid_name_is_written(tmp_path):
    name = "h" * 240 + ".nii.gz"  # 247 characters: valid, though name + temporary suffix would not be
    path = save_nifti(tmp_path / name, np.zeros((2, 2, 2), np.float32), np.eye(4))
    assert [p.name for p in tmp_path.iterdir()] == [name] and path.name == name
