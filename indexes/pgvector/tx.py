"""Transactions of the pgvector backend: the caller's connection, commits and savepoints.

A writer's adds and removes run in the transaction of its own connection (committed by
``flush``), or in the caller's (``connection=``: a SQLAlchemy connection on psycopg or a psycopg
connection to the same database), each inside a savepoint so that a failed call undoes itself alone.
Errors are translated here: a lost connection is :class:`BackendUnavailableError` (what was lost
and what to do), any other server error :class:`IndexBackendError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import BackendUnavailableError, IndexBackendError, IndexInputError
from ..faults import faults
from .sql import driver_connection, psycopg_module

_SAVEPOINT = "fgsearch_pgvector"


def _same_database(mine: Any, theirs: Any) -> bool:
    return bool(
        (mine.info.dbname, mine.info.host, mine.info.port) == (theirs.info.dbname, theirs.info.host, theirs.info.port)
    )


def joins_database(own: Any, connection: Any) -> bool:
    """Whether ``connection`` is a psycopg connection (or SQLAlchemy's on psycopg) to ``own``'s database."""
    raw = driver_connection(connection)
    return isinstance(raw, psycopg_module().Connection) and _same_database(own, raw)


def caller_connection(own: Any, connection: Any) -> Any:
    """The psycopg connection under ``connection``, checked: psycopg, in a transaction, same database."""
    raw = driver_connection(connection)
    if not isinstance(raw, psycopg_module().Connection):
        raise IndexInputError(
            "connection= takes a SQLAlchemy Connection on the psycopg driver (postgresql+psycopg://) "
            f"or a psycopg Connection, got {type(connection).__name__}"
        )
    if raw.autocommit:
        raise IndexInputError("connection= must be in a transaction (not autocommit): its commit writes the vectors")
    if not _same_database(own, raw):
        mine, theirs = own.info, raw.info
        raise IndexInputError(
            f"connection= reaches database {theirs.dbname} at {theirs.host}:{theirs.port}; the vectors "
            f"live in {mine.dbname} at {mine.host}:{mine.port}"
        )
    return raw


def _lost(what: str, e: BaseException) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"{what} failed: lost the connection ({' '.join(str(e).split())}); "
        "changes since the last flush are lost, run the job again"
    )


def commit_pending(conn: Any, table: str, where: str) -> None:
    """Commit ``conn``'s open transaction, if any."""
    psycopg = psycopg_module()
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    faults.reach("pgvector.before_commit", table)
    try:
        conn.commit()
    except psycopg.OperationalError as e:
        raise _lost(f"committing table {table} at {where}", e) from e


def in_savepoint(conn: Any, what: str, fn: Callable[[], None]) -> None:
    """Run ``fn`` on ``conn`` inside a savepoint: a failure rolls back ``fn``'s work alone."""
    psycopg = psycopg_module()
    started = False
    try:
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        started = True
        fn()
    except BaseException as e:
        try:
            if started:
                conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                conn.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        except psycopg.Error:
            pass  # the connection itself is gone: the error below says so
        if isinstance(e, psycopg.OperationalError):
            raise _lost(what, e) from e
        if isinstance(e, psycopg.Error):
            raise IndexBackendError(f"{what} failed: {' '.join(str(e).split())}") from e
        raise
    conn.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
