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

from fgsearch.catalog.health import full_disk_message, is_full_disk
from fgsearch.errors import LibraryError, LibraryLockedError


class WriteLock:
    """Exclusive writer lock on ``<library>/lock``.

    ``flock`` is the locking call (``fcntl.flock``); it is a parameter so that a filesystem
    without locks (``ENOLCK``, some network mounts) can be played in a test. ``pwrite`` writes the
    holder's PID (``os.pwrite``); a parameter so that a full disk at that write can be played too."""

    def __init__(
        self,
        lib_dir: Path,
        *,
        flock: Callable[[int, int], None] = fcntl.flock,
        pwrite: Callable[[int, bytes, int], int] = os.pwrite,
    ) -> None:
        self.path = Path(lib_dir) / "lock"
        self._flock = flock
        self._pwrite = pwrite
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if is_full_disk(e):
                raise LibraryError(full_disk_message(self.path.parent, e)) from e
            raise LibraryError(
                f"cannot open the lock file {self.path}: {e.strerror or e}; check the --library folder"
            ) from e
        try:
            self._flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._refuse(fd, e)
        try:
            self._write_pid(fd, os.getpid())
        except OSError as e:
            os.close(fd)  # drops the lock: this run cannot write anything anyway
            if is_full_disk(e):
                raise LibraryError(full_disk_message(self.path.parent, e)) from e
            raise LibraryError(
                f"cannot write the lock file {self.path}: {e.strerror or e}; check the --library folder"
            ) from e
        self._fd = fd

    def _write_pid(self, fd: int, pid: int) -> None:
        os.ftruncate(fd, 0)
        self._pwrite(fd, str(pid).encode(), 0)

    def holder(self) -> str | None:
        """The PID (as recorded) of the process holding the lock now, or None when it is free.
        Takes and drops the lock at once if free (never blocks); a folder that cannot be read says None."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                self._flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return os.pread(fd, 32, 0).decode(errors="ignore").strip() or "?"
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

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
