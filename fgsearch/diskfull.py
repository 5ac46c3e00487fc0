"""A full disk, told apart from damage: the mount point, the space left and the fix.

A full disk is never damage: :func:`full_disk_message` names the disk (its mount point and the
space left) and the fix (free space, run the same command again). This module imports nothing
else of fgsearch, so every layer (the catalog, the library record, the lock) can use it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

#: free space under which a "disk I/O error" is taken for a full disk: SQLite needs 32 KiB for a
#: reader's ``-shm`` file and a page or more per write
FULL_BELOW_BYTES = 1 << 20


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (its nearest existing folder)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int | None:
    """Space left to this user on the file system of ``path`` (None when it cannot be asked)."""
    try:
        return shutil.disk_usage(mount_point(path)).free
    except OSError:
        return None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def is_full_disk(err: BaseException, folder: Path | None = None) -> bool:
    """Whether ``err`` (an ``OSError``, a sqlite error or SQLAlchemy's wrapper of one) comes from a
    full disk or quota; an SQLite "disk I/O error" counts when the disk of ``folder`` has (almost)
    no space left (SQLite reports a ``-shm`` file it cannot grow that way)."""
    orig = getattr(err, "orig", None) or err
    code = getattr(orig, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return True
    low = str(orig).lower()
    if "database or disk is full" in low or "no space left" in low:
        return True
    if folder is not None and "disk i/o error" in low:
        free = free_bytes(folder)
        return free is not None and free < FULL_BELOW_BYTES
    return False


def full_disk_message(folder: Path, err: BaseException | str, what: str = "library") -> str:
    """One line naming the full disk (mount point, space left) and the fix; nothing is damaged."""
    msg = str(getattr(err, "orig", None) or err)
    mp = mount_point(folder)
    free = free_bytes(folder)
    left = f", {_size(free)} free" if free is not None else ""
    return (
        f"the disk holding {what} {folder} (mounted at {mp}{left}) is full ({msg}); free some space and run "
        "the same command again (nothing is damaged: what was committed so far is kept)"
    )
