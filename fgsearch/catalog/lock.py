"""The library's writer lock: one writer at a time per library, released if it dies.

``flock`` on ``<library>/lock`` (an SQLite catalog): the kernel drops the lock with its holder's
last descriptor, so a killed writer never leaves a library locked. The lock file holds the
holder's PID for the message another writer gets.

:class:`AdvisoryLock` (a PostgreSQL catalog): a session advisory lock held on a connection of the
writer's own; PostgreSQL drops it when that session ends, so a writer killed on any machine never
leaves the library locked. Exclusive for a library whose vector store lives in one folder (one
writer); shared by the writers of a library whose store every machine reaches (pgvector, a Qdrant
server), which then split the work with :class:`fgsearch.catalog.claims.WorkQueue`. The two modes
exclude each other, so a one-writer run never overlaps a shared one.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from fgsearch.diskfull import full_disk_message, is_full_disk
from fgsearch.errors import LibraryError, LibraryLockedError

#: the advisory lock's key pair (two int4): "fgsc" and the writer lock's number
ADVISORY_KEY = (0x66677363, 1)


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


class AdvisoryLock:
    """The writer lock of a library with a PostgreSQL catalog (see the module docstring).

    ``url`` is the catalog's URL (with the password this process connects with), ``shown`` the
    library as messages name it; ``shared`` takes the lock with the other writers of a library
    whose vector store they all reach."""

    def __init__(self, url: Any, shown: str, *, shared: bool = False) -> None:
        self.url = url
        self.shown = shown
        self.shared = shared
        self._engine: Any = None
        self._con: Any = None

    def acquire(self) -> None:
        import psycopg
        import sqlalchemy as sa

        from fgsearch.catalog.postgres import connection_error, create_pg_engine, public_url

        engine = create_pg_engine(self.url, read_only=False, pool=False)
        try:
            pooled = engine.raw_connection()
        except (sa.exc.DBAPIError, psycopg.Error) as e:
            engine.dispose()
            raise connection_error(e, public_url(self.url)) from None
        con: Any = pooled.driver_connection
        con.autocommit = True
        fn = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
        if not con.execute(f"SELECT {fn}(%s, %s)", ADVISORY_KEY).fetchone()[0]:
            holders = self._holders(con)
            pooled.close()
            engine.dispose()
            self._refuse(holders)
        self._engine, self._con = engine, pooled

    @staticmethod
    def _holders(con: Any) -> list[tuple[str, bool]]:
        """The sessions holding the lock: (how each shows, whether it holds it shared)."""
        rows = con.execute(
            "SELECT coalesce(nullif(a.application_name, ''), 'PID ' || l.pid), l.mode FROM pg_locks AS l "
            "LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 2",
            ADVISORY_KEY,
        ).fetchall()
        return [(str(name), mode == "ShareLock") for name, mode in rows]

    def _refuse(self, holders: list[tuple[str, bool]]) -> NoReturn:
        who = ", ".join(sorted({h for h, _ in holders})) or "another session"
        if self.shared and holders and not any(s for _, s in holders):
            raise LibraryLockedError(
                f"library {self.shown} is locked by {who}, a writer that indexes alone (its vector store is "
                "local); wait for it to finish or stop it"
            )
        if not self.shared and holders and all(s for _, s in holders):
            raise LibraryLockedError(
                f"library {self.shown} is being indexed by {len(holders)} writer(s) ({who}); wait for them "
                "to finish or stop them"
            )
        raise LibraryLockedError(
            f"library {self.shown} is locked by {who} (another fgsearch is indexing it); wait for it to finish "
            "or stop it"
        )

    def alive(self) -> bool:
        """Whether the lock's session still holds it (a PostgreSQL restart ends every session)."""
        if self._con is None:
            return False
        try:
            self._con.driver_connection.execute("SELECT 1")
        except Exception:
            return False
        return True

    def release(self) -> None:
        if self._con is None:
            return
        import contextlib

        fn = "pg_advisory_unlock_shared" if self.shared else "pg_advisory_unlock"
        try:
            with contextlib.suppress(Exception):  # a lost session has released it already
                self._con.driver_connection.execute(f"SELECT {fn}(%s, %s)", ADVISORY_KEY)
            with contextlib.suppress(Exception):
                self._con.close()
        finally:
            self._engine.dispose()
            self._con = self._engine = None
