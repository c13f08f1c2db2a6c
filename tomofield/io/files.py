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


#: The most bytes in one name where the file system does not say (Linux, macOS and Windows file systems: 255).
NAME_MAX = 255
#: The most bytes in a whole path where the system does not say (Linux's PATH_MAX).
PATH_MAX = 4096
#: Bytes of an output's name that a temporary file beside it keeps (:func:`temp_affixes`), and of its ending.
_TEMP_STEM, _TEMP_ENDING = 64, 16


def _nearest_folder(path: Path) -> Path:
    """``path`` where it is a folder, else its nearest existing ancestor (``.`` for a relative path with none)."""
    for p in (path, *path.parents):
        with suppress(OSError):
            if p.exists():
                return p
    return Path(".")


def _limit(path: Path, name: str, default: int) -> int:
    """``os.pathconf``'s ``name`` for the file system of ``path`` (its nearest existing folder), else ``default``."""
    with suppress(OSError, ValueError, AttributeError):  # AttributeError: no pathconf (Windows)
        value = int(os.pathconf(_nearest_folder(path), name))
        if value > 0:
            return value
    return default


def name_limit(path: str | Path) -> int:
    """The most bytes one name may have on the file system ``path`` is (or would be) on: NAME_MAX, usually 255."""
    return _limit(Path(path), "PC_NAME_MAX", NAME_MAX)


def _head(text: str, size: int) -> str:
    """The start of ``text`` that takes at most ``size`` bytes in a file name (never half a character)."""
    while len(os.fsencode(text)) > size:
        text = text[: max(0, min(len(text) - 1, size))]
    return text


def temp_affixes(path: str | Path) -> tuple[str, str]:
    """The prefix and suffix of :func:`atomic_write`'s temporary names beside ``path`` (mkstemp puts 8 characters
    between): the name's first bytes and its ending, so a temporary name stays short whatever the name."""
    name = Path(path).name
    ending = ".nii.gz" if name.lower().endswith(".nii.gz") else Path(name).suffix
    if len(os.fsencode(ending)) > _TEMP_ENDING:  # a dot far into a long name: no real ending
        ending = ""
    return f".{_head(name, _TEMP_STEM)}.", f".tmp{ending}"


def check_name_lengths(path: str | Path, shown: str | None = None, beside: dict[str, int] | None = None) -> None:
    """Refuse an output path that its file system could not name, before any work.

    Refused: a part of the path longer than NAME_MAX bytes (:func:`name_limit`), the whole
    path longer than PATH_MAX, and a name whose files beside it (``beside``: what each is,
    and its length in bytes, e.g. a temporary file named after the output) would be longer
    than NAME_MAX. The message names the path and the limit.
    """
    path = Path(path)
    shown = str(path) if shown is None else shown
    too_long = f"cannot write {shown!r}: {_WRITE_FAILURES[errno.ENAMETOOLONG]} (ENAMETOOLONG): "
    limit = name_limit(path)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit and part != path.anchor:
            shown_part = part if len(part) <= 40 else f"{part[:20]}...{part[-12:]}"
            raise InputError(
                f"{too_long}{shown_part!r} is {size} bytes, and this file system takes at most {limit} bytes per "
                "name (NAME_MAX)"
            )
    for what, size in (beside or {}).items():
        if size > limit:
            room = limit - (size - len(os.fsencode(path.name)))
            raise InputError(
                f"{too_long}{what} would be named {size} bytes long, and this file system takes at most {limit} "
                f"bytes per name (NAME_MAX); the name may have at most {room} bytes"
            )
    whole, path_max = len(os.fsencode(str(path))), _limit(path, "PC_PATH_MAX", PATH_MAX)
    if whole >= path_max:
        raise InputError(
            f"{too_long}the path is {whole} bytes, and this system takes paths of at most {path_max - 1} bytes "
            "(PATH_MAX)"
        )


#: What a file that is neither a regular file nor a folder is, by its stat mode.
_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file(path: str | Path) -> str | None:
    """What ``path`` is where it exists but is neither a regular file nor a folder (through links): ``a FIFO
    (named pipe)``, ``a character device``...; None otherwise (a file, a folder, or nothing there)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, unreadable, or no valid path: the reader says which
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((what for test, what in _SPECIAL if test(mode)), "not a regular file")


def check_regular_file(path: str | Path, what: str = "input") -> Path:
    """Refuse, without opening it, an input that is a FIFO, a device or a socket: reading one may wait forever
    (a FIFO nobody writes) or never end (``/dev/zero``). A missing file or a folder passes: the reader says so.

    Raises:
        InputError: naming ``what``, the path and what it is.
    """
    kind = special_file(path)
    if kind is not None:
        raise InputError(
            f"{what} {str(path)!r} is not a regular file but {kind}: reading it could wait forever or never end; "
            "give a file"
        )
    return Path(path)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one existing file (through links, ``..`` or case-insensitive names)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_target(path: Path, shown: str, overwrite: bool, inputs: Sequence[str | Path], folder: bool = False) -> None:
    """Refuse a target that cannot or must not be written: see :func:`check_output_path`."""
    try:
        if folder:
            _check_folder_unsafe(path, shown, inputs)
        else:
            _check_target_unsafe(path, shown, overwrite, inputs)
    except OSError as exc:  # a loop of links, a name the system refuses: what writing it would meet
        raise write_error(shown, exc) from exc


def _temp_size(path: Path) -> int:
    """Bytes of the name of :func:`atomic_write`'s temporary file beside ``path``."""
    prefix, suffix = temp_affixes(path)
    return len(os.fsencode(prefix)) + 8 + len(os.fsencode(suffix))  # mkstemp's 8 random characters


def _check_folder_unsafe(path: Path, shown: str, inputs: Sequence[str | Path]) -> None:
    check_name_lengths(path, shown)
    if path.exists() and not path.is_dir():
        what = "an input" if any(same_file(path, q) for q in inputs) else "a file"
        raise InputError(f"output folder {shown!r} is {what}; give a folder (a new one is made)")
    there = _nearest_folder(path)
    if not there.is_dir():
        raise InputError(
            f"cannot write {shown!r}: a part of the path is a file, not a folder: {str(there)!r}; choose another path"
        )
    if not os.access(there, os.W_OK | os.X_OK):
        which = "it" if there == path else f"the folder {str(there)!r}"
        raise InputError(f"cannot write {shown!r}: {which} is not writable; choose another")


def _check_target_unsafe(path: Path, shown: str, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    check_name_lengths(path, shown, {"its temporary file": _temp_size(path)})
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
    *,
    folder: bool = False,
) -> Path:
    """Refuse early an output that could not be written or must not be: the one check of every command's outputs.

    Refused: a wrong suffix (``suffixes``; empty: any), a folder, one of ``inputs`` (even
    with ``overwrite``), a path under a file, an existing file unless ``overwrite``, a
    folder this process cannot write to, and a name longer than the file system takes
    (:func:`check_name_lengths`, with the temporary name beside it).

    ``folder``: the output is a folder that a command fills (a run directory, a report or
    dataset folder): refused when it is a file, under a file, too long a name, or in (or
    itself) a folder this process cannot write to; whether an existing one may be used
    (empty, or continued) is the command's to say.
    """
    shown = str(path)
    path = Path(path)
    if not folder and suffixes and not shown.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise InputError(f"output {shown!r} must end with one of: {', '.join(suffixes)}")
    _check_target(path, shown, overwrite, inputs, folder=folder)
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
    on failure the temporary files, and folders made for them, are removed, and the failure
    becomes an InputError naming the path: an OSError (full disk, permissions, read-only
    file system) with the reason and what to do, any other exception of a writer with its
    type and text. A new file gets the permissions of the umask, as an ordinary file
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
            # the name's start only: a temporary name must not outgrow the file system's limit
            prefix, suffix = temp_affixes(path)
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
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
    except InputError:  # a writer's own refusal (a value its format cannot hold): as it is
        raise
    except OSError as exc:
        raise write_error(current, exc) from exc
    except Exception as exc:  # any other failure of a writer: a message too, with nothing left half-written
        raise InputError(
            f"cannot write {str(current)!r}: writing it failed ({type(exc).__name__}: {exc}); nothing was written"
        ) from exc
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
