"""Several jobs on one folder: claims on volumes, temporary files named by their writer, publishing by hard link."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Collection
from contextlib import suppress
from pathlib import Path

#: Temporary files and claims older than this are removed whoever wrote them (an unfinished
#: write or one volume's work never takes this long); younger ones only when their writer is gone.
STALE_AFTER_S = 24 * 3600


_OWNER = re.compile(r"tomofield-(\d+)@([A-Za-z0-9_-]+)")


def owner_tag() -> str:
    """This process's name in claims and temporary files: ``tomofield-PID@HOST``."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"
    return f"tomofield-{os.getpid()}@{host}"


def _writer_gone(owner: str | None, age_s: float, stale_after: float | None = STALE_AFTER_S) -> bool:
    """Whether a temporary file, claim or lock of ``owner`` (``tomofield-PID@HOST``) may be removed.

    Older than ``stale_after`` seconds (None: never by age), or of a process on this host that is gone.
    """
    if stale_after is not None and age_s > stale_after:
        return True
    m = _OWNER.fullmatch(owner) if owner else None
    if m is None or m.group(2) != owner_tag().split("@", 1)[1] or os.name != "posix":
        return False  # unknown writer, or another host: only its age tells
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


def _claim_owner(path: Path) -> str | None:
    """The owner tag a claim or lock holds: its first line."""
    with suppress(OSError, UnicodeDecodeError):
        return path.read_text().strip().split("\n", 1)[0].strip() or None
    return None


def sweep(out_dir: Path, keep: Collection[str] = ()) -> list[Path]:
    """Remove the temporary files and claims in ``out_dir`` whose writer is gone (never those named in ``keep``)."""
    removed = []
    now = time.time()
    for p in out_dir.glob(".*"):
        name = p.name
        if name in keep:  # a heatmap whose volume's name looks like a temporary file's
            continue
        if name.endswith(".claim"):
            owner = _claim_owner(p)
        elif re.search(r"\.tmp\.nii(\.gz)?$", name):
            m = _OWNER.search(name)
            owner = m.group(0) if m else None
        else:
            continue
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        if _writer_gone(owner, age):
            with suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _claim(target: Path, tag: str) -> bool:
    """Claim ``target``'s volume for this process; False when a live job holds it."""
    claim = target.with_name(f".{target.name}.claim")
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - claim.stat().st_mtime
            except FileNotFoundError:
                continue
            if not _writer_gone(_claim_owner(claim), age):
                return False
            with suppress(FileNotFoundError):
                claim.unlink()
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(tag)
        return True
    return False


def _release(target: Path) -> None:
    """Remove the claim on ``target``'s volume (once it is published, whoever held it)."""
    with suppress(FileNotFoundError):
        target.with_name(f".{target.name}.claim").unlink()


def _publish(tmp: Path, target: Path, replace: bool) -> bool:
    """Move ``tmp`` to ``target``; without ``replace``, False (and ``tmp`` kept) when ``target`` exists."""
    if replace:
        os.replace(tmp, target)
        return True
    try:
        os.link(tmp, target)  # atomic, and fails when another job published first
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: check, then rename
        if target.exists():
            return False
        os.replace(tmp, target)
        return True
    tmp.unlink()
    return True


# -- locks: one job at a time in a folder -------------------------------------------------------
def _lock_text(path: Path) -> str:
    """What a lock says of its holder: ``tomofield-PID@HOST (pid PID on HOST), started TIME``."""
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    owner = lines[0].strip() if lines else "an unknown process"
    m = _OWNER.fullmatch(owner)
    who = f"{owner} (pid {m.group(1)} on {m.group(2)})" if m else owner
    since = next((line.split(" ", 1)[1].strip() for line in lines[1:] if line.startswith("started ")), None)
    return who + (f", started {since}" if since else "")


def lock_holder(path: Path) -> str | None:
    """Who holds the lock file ``path``, as :func:`acquire_lock` wrote it; None when it is free.

    A lock whose holder is gone (a process of this host that no longer runs) is free. A
    lock of another host, or of an unknown writer, is held: only its age could tell, and a
    long job holds its lock for days, so it is never taken by age.
    """
    try:
        path.stat()
    except FileNotFoundError:
        return None
    except OSError:
        return _lock_text(path)
    return None if _writer_gone(_claim_owner(path), 0.0, stale_after=None) else _lock_text(path)


def acquire_lock(path: Path) -> tuple[bool, str | None]:
    """Take the lock file ``path`` for this process: created exclusively (``O_CREAT | O_EXCL``), holding
    :func:`owner_tag` and the start time.

    Returns:
        ``(True, None)`` when it was free; ``(True, HOLDER)`` when it was the lock of a process
        gone from this host, taken over (``HOLDER`` as :func:`lock_holder` words it);
        ``(False, HOLDER)`` when a live process holds it.
    """
    tag = owner_tag()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    replaced: str | None = None
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(path)
            if holder is not None:
                return False, holder
            replaced = _lock_text(path)
            with suppress(FileNotFoundError):
                path.unlink()
            continue
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{tag}\nstarted {started}\n")
        except BaseException:  # a lock that does not name its holder would hold for ever
            with suppress(FileNotFoundError):
                path.unlink()
            raise
        return True, replaced
    return False, lock_holder(path) or _lock_text(path)


def release_lock(path: Path) -> None:
    """Remove the lock file ``path`` where this process holds it (never another's)."""
    if _claim_owner(path) == owner_tag():
        with suppress(FileNotFoundError):
            path.unlink()
