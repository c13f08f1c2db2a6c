"""The file-system layer: atomic writes, output checks, and what a failed write means."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

from tomofield.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def cache_dir() -> Path:
    """tomofield's cache directory: compiled kernels, converted weights.

    ``TOMOFIELD_CACHE`` when set, else ``tomofield`` under ``XDG_CACHE_HOME`` (default
    ``~/.cache``, so ``~/.cache/tomofield``). Nothing is created here.
    """
    base = os.environ.get("TOMOFIELD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tomofield"
    )
    return Path(base)


#: Why a write failed, by errno, and what to do about it.
_WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write elsewhere",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose a folder on a writable one",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
}


def write_error(path: str | Path, exc: OSError) -> InputError:
    """The InputError for an OSError raised while writing ``path``: the path, the reason, the fix."""
    reason = _WRITE_FAILURES.get(exc.errno or -1)
    if reason is None:
        reason = f"{exc.strerror or exc}; choose another output path"
    name = errno.errorcode.get(exc.errno or -1)
    return InputError(f"cannot write {str(path)!r}: {reason}" + (f" ({name})" if name else ""))


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one existing file (through links, ``..`` or case-insensitive names)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_target(path: Path, shown: str, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    """Refuse a target that cannot or must not be written: see :func:`check_output_path`."""
    try:
        _check_target_unsafe(path, shown, overwrite, inputs)
    except OSError as exc:  # a name too long, a loop of links: what writing it would meet
        raise write_error(shown, exc) from exc


def _check_target_unsafe(path: Path, shown: str, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    if path.is_dir():
        raise InputError(f"output {shown!r} is a folder; give a file name (inside it or elsewhere)")
    for q in inputs:
        if same_file(path, q):
            raise InputError(
                f"output {shown!r} is the input {str(q)!r}; writing it would destroy the input "
                "(even with --overwrite): choose another output name"
            )
    folder = next((p for p in path.parents if p.exists()), Path("."))
    if not folder.is_dir():
        raise InputError(f"cannot write {shown!r}: {str(folder)!r} is a file, not a folder; choose another path")
    if path.exists() and not overwrite:
        raise InputError(f"output {shown!r} exists; pass --overwrite to replace it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {shown!r}: the folder {str(folder)!r} is not writable; choose another")


def check_output_path(
    path: str | Path,
    overwrite: bool = False,
    suffixes: Sequence[str] = NIFTI_SUFFIXES,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Refuse early an output that could not be written or must not be.

    Refused: a wrong suffix, a folder, one of ``inputs`` (even with ``overwrite``), a path
    under a file, an existing file unless ``overwrite``, and a folder this process cannot
    write to.
    """
    shown = str(path)
    path = Path(path)
    if not shown.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise InputError(f"output {shown!r} must end with one of: {', '.join(suffixes)}")
    _check_target(path, shown, overwrite, inputs)
    return path


def _umask() -> int:
    """The process's umask (read without changing it where /proc tells)."""
    with suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_all(
    writes: Sequence[tuple[str | Path, Callable[[Path], object]]],
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
) -> list[Path]:
    """Write several files all or none: each ``write(tmp)`` on a temporary name beside its path, then rename.

    Every target is checked first (as :func:`check_output_path` does, without the suffix),
    so nothing is written when one is refused. Until every write succeeded nothing appears;
    on failure the temporary files, and folders made for them, are removed, and an OSError
    (full disk, permissions, read-only file system) becomes an InputError naming the path
    and the reason. A new file gets the permissions of the umask, as an ordinary file
    does; a replaced one keeps its own.
    """
    targets = [(Path(p), w) for p, w in writes]
    for path, _ in targets:
        _check_target(path, str(path), overwrite, inputs)
    made: list[Path] = []  # folders created here, removed again on failure
    temps: list[Path] = []
    done = False
    current = targets[0][0] if targets else Path(".")
    try:
        for path, _ in targets:
            current = path
            missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            made += [p for p in reversed(missing) if p not in made]
        umask = _umask()
        for path, write in targets:
            current = path
            suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
            # the name's start only: a temporary name must not outgrow the file system's limit
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=f".tmp{suffix}", dir=path.parent)
            os.close(fd)
            temps.append(Path(tmp))
            mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~umask
            os.chmod(tmp, mode)
            write(Path(tmp))
            if Path(tmp).exists():  # the writer may have replaced the file: the mode again
                os.chmod(tmp, mode)
        for (path, _), temp in zip(targets, temps, strict=True):
            current = path
            os.replace(temp, path)
        done = True
    except OSError as exc:
        raise write_error(current, exc) from exc
    finally:
        for temp in temps if not done else []:
            with suppress(OSError):
                os.unlink(temp)
        if not done:
            for folder in reversed(made):
                with suppress(OSError):
                    folder.rmdir()
    return [path for path, _ in targets]


def atomic_write(
    path: str | Path, write: Callable[[Path], object], overwrite: bool = False, inputs: Sequence[str | Path] = ()
) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it into place.

    Nothing appears at ``path`` unless ``write`` succeeds; an existing file is kept
    unless ``overwrite``, and one of ``inputs`` always. See :func:`atomic_write_all`.
    """
    return atomic_write_all([(path, write)], overwrite=overwrite, inputs=inputs)[0]
