"""Opening a catalog and running SQL on it: URIs, the engine, and the one way statements run.

Every statement of the package goes through :class:`SqlStore`: plain SQL text on the pooled
driver connection of a SQLAlchemy engine (see the package docstring for why). The engine keeps
what SQLAlchemy is good at here: a connection pool, the settings of every new connection, a URL
that opens any folder name. Two dialects: an SQLite file (the default, ``sqlite3`` connections)
and a PostgreSQL database (:mod:`fgsearch.catalog.postgres`: psycopg 3 connections behind
:class:`~fgsearch.catalog.postgres.PgConnection`, which takes the same ``?`` placeholders). A
driver error raised by a statement leaves as the matching ``sqlalchemy.exc.DBAPIError`` subclass
(``.orig`` is the driver's error), so a caller sees one family of database errors whichever
statement failed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import sqlalchemy as sa

CHUNK = 30_000  # SQLite bound-parameter limit is 32,766 (PostgreSQL's is 65,535)


def read_only_uri(path: Path, *, immutable: bool = False) -> str:
    """An sqlite3 URI that opens ``path`` for reading only (any folder name: the path is quoted).

    ``immutable`` is for a library on a read-only mount or in a folder this user cannot write:
    SQLite then needs no ``-shm`` file (which it could not create), and reads the database file as
    it is (a clean writer leaves nothing in the WAL when it closes)."""
    return f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")


def cannot_write_here(err: BaseException) -> bool:
    """Whether an sqlite error on a read-only open means the folder or mount is not writable."""
    msg = str(err).lower()
    return "readonly database" in msg or "unable to open database file" in msg


def create_engine(path: Path, *, read_only: bool, immutable: bool) -> sa.Engine:
    """An engine on ``path``: WAL and ``synchronous=NORMAL`` for a writer, foreign keys and a 30 s
    busy timeout for everyone. ``URL.create``, not an f-string: a folder named "a?b", "a#b" or
    "a%20b" must open that folder."""
    if read_only:
        query = {"mode": "ro", "uri": "true", **({"immutable": "1"} if immutable else {})}
        url = sa.engine.URL.create("sqlite", database=f"file:{quote(str(path))}", query=query)
    else:
        url = sa.engine.URL.create("sqlite", database=str(path))
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _: Any) -> None:
        cur = dbapi_conn.cursor()
        if not read_only:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    """``seq`` in slices of at most ``n`` (an ``IN`` list stays within SQLite's parameter limit)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def marks(n: int) -> str:
    """``?,?,...`` for an ``IN`` list of ``n`` values."""
    return ",".join("?" * n)


def now() -> datetime:
    """The catalog's clock: UTC, without a time zone (as stored)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def to_sql_datetime(value: datetime | None) -> str | None:
    """A datetime as the catalog stores it (SQLAlchemy's SQLite ``DateTime`` text, microseconds
    always written, time zone dropped), so that text comparison orders times."""
    if value is None:
        return None
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}"
    )


def from_sql_datetime(value: str | datetime | None) -> datetime | None:
    """A stored ``DateTime`` column as a datetime (UTC, without a time zone): SQLite gives its text,
    PostgreSQL a ``timestamptz`` (an aware datetime)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is None else value.astimezone(timezone.utc).replace(tzinfo=None)
    return datetime.fromisoformat(value)


def raw(path: str) -> bytes:
    """A path as the catalog keys it: its exact bytes (a name that is not UTF-8 comes from
    ``os.fsdecode`` with its bytes kept as lone surrogates, and goes back to those bytes)."""
    return os.fsencode(path)


def from_raw(raw_path: bytes) -> str:
    """A stored path as the ``str`` the ``os`` functions take (the inverse of :func:`raw`)."""
    return os.fsdecode(raw_path)


def driver_errors(pg: bool) -> tuple[type[Exception], ...]:
    """The driver's own error classes (re-raised as ``DBAPIError`` by :class:`SqlStore`)."""
    if not pg:
        return (sqlite3.Error,)
    import psycopg

    return (sqlite3.Error, psycopg.Error)


@contextlib.contextmanager
def _as_dbapi_errors(pg: bool) -> Iterator[None]:
    """Re-raise a driver error (``sqlite3.Error``, ``psycopg.Error``) as SQLAlchemy's matching
    ``DBAPIError`` subclass."""
    errors = driver_errors(pg)
    try:
        yield
    except errors as e:
        base = errors[-1] if pg and not isinstance(e, sqlite3.Error) else sqlite3.Error
        raise sa.exc.DBAPIError.instance(None, None, e, base) from e


def _driver(pooled: Any, pg: bool) -> sqlite3.Connection:
    """The driver connection inside a pooled one: ``sqlite3``, or psycopg's behind the adapter that
    speaks the same ``?`` SQL (typed as ``sqlite3.Connection``: the methods the catalog calls)."""
    if pg:
        from fgsearch.catalog.postgres import PgConnection

        return cast(sqlite3.Connection, PgConnection(pooled.driver_connection))
    return cast(sqlite3.Connection, pooled.driver_connection)  # the engine's driver is pysqlite


class SqlStore:
    """The engine of one catalog and the three ways its statements run."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        #: the catalog is a PostgreSQL database (else an SQLite file): the few statements that differ ask
        self.pg = engine.dialect.name == "postgresql"
        self._joint = threading.local()  # this thread's open transaction() (its connection), if any

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction around several catalog writes, and whatever else the caller writes on
        its connection: every ``writing()`` (and ``reading()``) block of this thread inside it runs
        on that connection, and everything commits when the block ends, or nothing does. Yields
        the driver's connection (psycopg's for PostgreSQL), e.g. for a vector store in the same
        database (``index.add(..., connection=conn)``)."""
        current = getattr(self._joint, "con", None)
        if current is not None:  # nested: the outer block commits
            yield current[1]
            return
        with _as_dbapi_errors(self.pg):
            pooled = self.engine.raw_connection()
            try:
                con = _driver(pooled, self.pg)
                self._joint.con = (con, pooled.driver_connection)
                try:
                    yield pooled.driver_connection
                    con.commit()
                except BaseException:
                    con.rollback()
                    raise
            finally:
                self._joint.con = None
                pooled.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection for reads (rows come back as plain tuples)."""
        joint = getattr(self._joint, "con", None)
        if joint is not None:  # inside transaction(): read what it wrote
            yield joint[0]
            return
        with _as_dbapi_errors(self.pg):
            pooled = self.engine.raw_connection()
            try:
                yield _driver(pooled, self.pg)
            finally:
                pooled.close()  # back to the pool, rolled back

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection whose statements commit together when the block ends, or not at all
        (inside :meth:`transaction`: its connection, committed with it)."""
        joint = getattr(self._joint, "con", None)
        if joint is not None:
            yield joint[0]
            return
        with _as_dbapi_errors(self.pg):
            pooled = self.engine.raw_connection()
            try:
                con = _driver(pooled, self.pg)
                try:
                    yield con
                    con.commit()
                except BaseException:
                    con.rollback()
                    raise
            finally:
                pooled.close()

    def select_in(self, sql: str, ids: Iterable[int], params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (whose ``{marks}`` is the ``IN`` list, bound before ``params``) for ``ids``,
        in chunks within SQLite's parameter limit; an ``ORDER BY`` holds within each chunk.
        PostgreSQL takes the whole list as one array parameter (``IN (SELECT unnest(?))``)."""
        out: list[tuple[Any, ...]] = []
        with self.reading() as con:
            if self.pg:
                ints = [int(i) for i in ids]
                if ints:
                    out.extend(con.execute(sql.format(marks="SELECT unnest(?::bigint[])"), (ints, *params)).fetchall())
                return out
            for chunk in chunks([int(i) for i in ids]):
                out.extend(con.execute(sql.format(marks=marks(len(chunk))), (*chunk, *params)).fetchall())
        return out
