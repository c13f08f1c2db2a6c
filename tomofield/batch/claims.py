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


def _writer_gone(owner: str | None, age_s: float) -> bool:
    """Whether a temporary file or claim of ``owner`` (``tomofield-PID@HOST``) may be removed."""
    if age_s > STALE_AFTER_S:
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
    with suppress(OSError, UnicodeDecodeError):
        return path.read_text().strip() or None
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
