"""The loader of the compiled kernels: build keys, the on-disk cache, the fallback warning."""

from __future__ import annotations

import importlib.resources
import os
import stat
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tomofield.geometry import Directions, fibonacci_directions, random_bases, stack_extents
from tomofield.io import cache_dir
from tomofield.pipeline.backproject import backproject_grid
from tomofield.pipeline.kernels import native

SOURCE = native.SOURCE_PATH.read_text()
needs_sh = pytest.mark.skipif(sys.platform == "win32", reason="fake compilers are shell scripts")


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """An empty cache, no loaded library, no warning given yet; the process's loader restored after."""
    monkeypatch.setenv("TOMOFIELD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TOMOFIELD_NATIVE", raising=False)
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setattr(native, "reason", None)
    native.load.cache_clear()
    yield tmp_path / "cache"
    native.load.cache_clear()


def _fake_compiler(path: Path, version: str, fail: str | None = None) -> str:
    """A shell script answering ``--version`` with ``version``; compiling fails with ``fail`` on stderr."""
    body = f'if [ "$1" = "--version" ]; then echo "{version}"; echo "second line"; exit 0; fi\n'
    body += f'echo "{fail}" >&2; exit 1\n' if fail else "exit 1\n"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _recorded(fn) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fn()
    return [w for w in seen if "native CPU kernels" in str(w.message)]


def test_source_ships_with_the_package():
    assert importlib.resources.files("tomofield.pipeline.kernels").joinpath("cpu.c").is_file()
    assert "void bp_scalar(" in SOURCE and "void slice_trilinear(" in SOURCE


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TOMOFIELD_CACHE", str(tmp_path / "tf"))
    assert cache_dir() == tmp_path / "tf"
    monkeypatch.delenv("TOMOFIELD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tomofield"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "tomofield"


def test_cpu_features_read_the_instruction_set_line(tmp_path):
    """One digest per feature set: the same set on every core (any order) agrees, another set differs."""

    def info(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    a = info("a", "processor\t: 0\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2\n")
    a_reordered = info("b", "model name\t: x\nflags\t\t: avx2 fpu sse2\n")
    avx512 = info("c", "flags\t\t: fpu sse2 avx2 avx512f\n")
    arm = info("d", "Features\t: fp asimd sve\n")
    assert native.cpu_features(a) == native.cpu_features(a_reordered)
    assert len({native.cpu_features(p) for p in (a, avx512, arm)}) == 3
    # no such line (or no such file): the platform's own description, still a stable digest
    assert native.cpu_features(info("e", "nothing\n")) == native.cpu_features(tmp_path / "missing")


def test_build_key_covers_what_makes_a_build_incompatible(monkeypatch):
    monkeypatch.setattr(native, "_compiler_identity", lambda cc: (f"/usr/bin/{cc}", f"{cc} (Debian) 12.2.0"))
    monkeypatch.setattr(native, "cpu_features", lambda: "skylake-avx512")
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    key = native.build_key(SOURCE, "gcc", native.FLAGS)
    assert key == native.build_key(SOURCE, "gcc", native.FLAGS)  # same source, compiler and CPU: reused
    others = {
        native.build_key(SOURCE + "\n", "gcc", native.FLAGS),  # source
        native.build_key(SOURCE, "clang", native.FLAGS),  # compiler
        native.build_key(SOURCE, "gcc", native.FLAGS[:2]),  # flags (OpenMP off)
        native.build_key(SOURCE, "gcc", ("-O3", "-march=x86-64-v2", *native.FLAGS[2:])),
    }
    monkeypatch.setattr(native, "cpu_features", lambda: "zen2")
    others.add(native.build_key(SOURCE, "gcc", native.FLAGS))  # another CPU, same architecture
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    others.add(native.build_key(SOURCE, "gcc", native.FLAGS))
    assert key not in others and len(others) == 6


@needs_sh
def test_build_key_reads_the_compiler_version(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old = _fake_compiler(tmp_path / "a" / "cc", "cc 11.4.0")
    new = _fake_compiler(tmp_path / "b" / "cc", "cc 12.2.0")
    same = _fake_compiler(tmp_path / "cc", "cc 12.2.0")
    keys = {native.build_key(SOURCE, cc, native.FLAGS) for cc in (old, new, same)}
    assert len(keys) == 3  # version line and path both count
    assert native._compiler_identity(new) == (os.path.realpath(new), "cc 12.2.0")


def test_a_build_for_another_cpu_is_never_loaded(fresh_loader, monkeypatch):
    """A cache shared by two CPUs: each gets its own library, the first one's is not reused."""
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(native, "cpu_features", lambda: "cpu-a")
    lib_a = native.load()
    assert lib_a is not None, native.reason
    path_a = Path(lib_a._name)
    assert path_a.parent == fresh_loader and path_a.is_file()

    monkeypatch.setattr(native, "cpu_features", lambda: "cpu-b")
    native.load.cache_clear()
    lib_b = native.load()
    assert lib_b is not None, native.reason
    path_b = Path(lib_b._name)
    assert path_b != path_a and path_b.parent == fresh_loader
    assert sorted(fresh_loader.iterdir()) == sorted([path_a, path_b])

    # back on the first CPU: its build is found again, nothing is compiled
    monkeypatch.setattr(native, "cpu_features", lambda: "cpu-a")
    monkeypatch.setattr(native.subprocess, "run", _no_compile(native.subprocess.run))
    native.load.cache_clear()
    assert Path(native.load()._name) == path_a


def _no_compile(run):
    def guarded(cmd, *args, **kwargs):
        assert "--version" in cmd, f"unexpected compile: {cmd}"
        return run(cmd, *args, **kwargs)

    return guarded


def _torch_equals_auto() -> None:
    n = fibonacci_directions(6)
    u, v = random_bases(n, torch.Generator().manual_seed(0))
    e = torch.tensor([1.0, 0.5, 0.8], dtype=torch.float64)
    dirs = Directions(n, u, v, *stack_extents(e, n, u, v, "tight"), 5).to("cpu")
    q = torch.randn(6, 5, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    auto = backproject_grid(q, dirs, (4, 5, 6), e, (8, 8), kernel="auto")
    assert torch.equal(auto, backproject_grid(q, dirs, (4, 5, 6), e, (8, 8), kernel="torch"))


def test_no_compiler_warns_once_and_falls_back_to_torch(fresh_loader, monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)

    def run() -> None:
        assert not native.available()
        assert not native.available()
        native.load.cache_clear()  # a second attempt in the same process stays quiet too
        _torch_equals_auto()

    (warning,) = _recorded(run)
    assert warning.category is RuntimeWarning
    text = str(warning.message)
    assert "\n" not in text
    assert text == (
        "tomofield: native CPU kernels unavailable (OSError: no C compiler found (set CC)); "
        "using the torch fallback (same values, slower)"
    )
    assert "no C compiler found" in native.reason
    assert not fresh_loader.exists() or not any(fresh_loader.iterdir())


@needs_sh
def test_compile_error_is_named_in_the_warning(fresh_loader, monkeypatch, tmp_path):
    cc = _fake_compiler(tmp_path / "badcc", "badcc 1.0", fail="cpu.c:1:10: fatal error: immintrin.h: No such file")
    monkeypatch.setenv("CC", cc)
    (warning,) = _recorded(lambda: native.available())
    text = str(warning.message)
    assert "\n" not in text and text.endswith("; using the torch fallback (same values, slower)")
    assert "(compiler exited with status 1: cpu.c:1:10: fatal error: immintrin.h: No such file)" in text
    assert "immintrin.h" in native.reason
    assert not list(fresh_loader.glob("native_*"))  # nothing half-built left in the cache


def test_switched_off_is_silent(fresh_loader, monkeypatch):
    monkeypatch.setenv("TOMOFIELD_NATIVE", "0")
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert _recorded(lambda: native.available() or _torch_equals_auto()) == []
    assert native.reason == "switched off by TOMOFIELD_NATIVE=0"
