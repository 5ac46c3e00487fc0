"""The library's writer lock: one writer at a time per library folder, released if it dies.

``flock`` on ``<library>/lock``: the kernel drops the lock with its holder's last descriptor, so a
killed writer never leaves a library locked. The lock file holds the holder's PID for the message
another writer gets.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from fgsearch.errors import LibraryError, LibraryLockedError


class WriteLock:
    """Exclusive writer lock on ``<library>/lock``.

    ``flock`` is the locking call (``fcntl.flock``); it is a parameter so that a filesystem
    without locks (``ENOLCK``, some network mounts) can be played in a test."""

    def __init__(self, lib_dir: Path, *, flock: Callable[[int, int], None] = fcntl.flock) -> None:
        self.path = Path(lib_dir) / "lock"
        self._flock = flock
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LibraryError(
                f"cannot open the lock file {self.path}: {e.strerror or e}; check the --library folder"
            ) from e
        try:
            self._flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._refuse(fd, e)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def _refuse(self, fd: int, e: OSError) -> NoReturn:
        """Close ``fd`` and say why the lock was not taken: held by another process, or not
        available on this filesystem at all."""
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)  # e.g. ENOLCK: the filesystem has no locks; nobody holds this one
            raise LibraryError(
                f"cannot lock {self.path}: {e.strerror or e}; put the library on a local disk (--library)"
            ) from e
        try:
            pid = os.pread(fd, 32, 0).decode(errors="ignore").strip() or "?"
        finally:
            os.close(fd)
        raise LibraryLockedError(
            f"library {self.path.parent} is locked by PID {pid} (another fgsearch is indexing it); "
            "wait for it to finish or stop it"
        ) from None

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
