"""The catalog on PostgreSQL: URLs and their secrets, the engine, the adapter that runs the
catalog's SQL on psycopg, and the few statements that differ from SQLite.

A library's catalog may be a PostgreSQL database named by a SQLAlchemy URL
(``postgresql+psycopg://USER@HOST:PORT/DB``). The schema is the one of
:mod:`fgsearch.catalog.schema` (identity columns, ``timestamptz``, ``JSONB`` for the JSON values,
``BYTEA`` for exact file names); the statements of the package are written once, with ``?``
placeholders, and :class:`PgConnection` runs them on psycopg. Bulk inserts use ``COPY``; ``IN``
lists go as one array parameter (no parameter limit).

Secrets never travel with the library: a password in a URL is used by this process and never
recorded, printed or logged (:func:`public_url`, :func:`redact`); every other process takes it from
the environment (libpq's ``PGPASSWORD`` or ``~/.pgpass``, or the variable a library description
names in ``password_env``).
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from fgsearch.errors import LibraryError

#: connections per process: the writer's few threads and a server's request threads
POOL_SIZE = 4
POOL_OVERFLOW = 8
CONNECT_TIMEOUT_S = 10


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql[+driver]://`` or ``postgres://``)."""
    return isinstance(target, str) and re.match(r"^postgres(ql)?(\+\w+)?://", target) is not None


def parse_url(url: str) -> sa.engine.URL:
    """A PostgreSQL URL as SQLAlchemy's ``URL`` with the psycopg 3 driver (``postgresql://`` and
    ``postgres://`` mean the same database); a malformed one is an error naming the form."""
    try:
        u = sa.engine.make_url(url)
    except sa.exc.ArgumentError as e:
        raise LibraryError(
            f"cannot read the catalog URL {redact(url, url)!r}; write it as postgresql+psycopg://USER@HOST:PORT/DATABASE"
        ) from e
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.drivername != "postgresql+psycopg":
        raise LibraryError(
            f"the catalog URL uses the driver {u.drivername!r}; fgsearch speaks to PostgreSQL through psycopg 3: "
            "write it as postgresql+psycopg://USER@HOST:PORT/DATABASE"
        )
    if not u.database:
        raise LibraryError(
            "the catalog URL names no database; write it as postgresql+psycopg://USER@HOST:PORT/DATABASE"
        )
    return u


def public_url(url: str | sa.engine.URL) -> str:
    """The URL as it may be recorded, printed and logged: without its password."""
    u = parse_url(url) if isinstance(url, str) else url
    bare = sa.engine.URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query)
    return bare.render_as_string(hide_password=False)


def redact(text: str, url: str | sa.engine.URL | None) -> str:
    """``text`` with the password of ``url`` (as written, and percent-decoded) replaced by ``***``."""
    if url is None:
        return text
    try:
        password = (sa.engine.make_url(url) if isinstance(url, str) else url).password
    except sa.exc.ArgumentError:
        return text
    if not password:
        return text
    from urllib.parse import quote

    for form in {str(password), quote(str(password), safe="")}:
        if form:
            text = text.replace(form, "***")
    return text


def connect_url(url: str, password_env: str | None = None) -> sa.engine.URL:
    """The URL this process connects with: its own password if it has one, else the one in the
    environment variable ``password_env`` names (a named variable that is unset is an error);
    without either, libpq's ``PGPASSWORD`` or ``~/.pgpass`` apply."""
    u = parse_url(url)
    if u.password is None and password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise LibraryError(
                f"the library's catalog takes its password from ${password_env}, which is not set; "
                f"export {password_env}=... (or PGPASSWORD) and run again"
            )
        u = u.set(password=value)
    return u


def application_name() -> str:
    """How this process shows in ``pg_stat_activity`` (and in the message a second writer gets)."""
    return f"fgsearch pid {os.getpid()} on {socket.gethostname()}"[:63]


def create_pg_engine(u: sa.engine.URL, *, read_only: bool, pool: bool = True) -> sa.Engine:
    """An engine on a PostgreSQL catalog: UTC session time, a read-only session for readers, a
    pool (``pool=False``: one connection the caller keeps, e.g. the writer lock's).

    A reader's pool checks a connection before it hands it out (a replica survives a PostgreSQL
    restart); a writer's does not: a lost connection fails the run (exit 1, every committed batch
    kept) instead of carrying on without the writer lock that died with the old connection."""
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's postgresql+psycopg dialect imports it too)
    except ImportError as e:
        raise LibraryError(
            "a PostgreSQL catalog needs psycopg 3; install it with pip install 'fgsearch[postgres]'"
        ) from e
    options = "-c timezone=UTC" + (" -c default_transaction_read_only=on" if read_only else "")
    args = {"options": options, "application_name": application_name(), "connect_timeout": CONNECT_TIMEOUT_S}
    if not pool:
        return sa.create_engine(u, poolclass=sa.pool.NullPool, connect_args=args)
    return sa.create_engine(
        u, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_pre_ping=read_only, connect_args=args
    )


def connection_error(err: BaseException, shown: str) -> LibraryError:
    """The one-line error for a catalog database that cannot be reached or refuses us."""
    orig = getattr(err, "orig", None) or err
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    reason = lines[-1] if lines else type(orig).__name__
    low = str(orig).lower()
    if "password authentication failed" in low or "no password supplied" in low or "authentication failed" in low:
        fix = "check the user, and set PGPASSWORD (or the variable the library's password_env names) to its password"
    elif "does not exist" in low and "database" in low:
        fix = "create the database (createdb) or correct the URL"
    else:
        fix = "check that PostgreSQL runs there and that the URL's host, port and database are right"
    return LibraryError(f"cannot open the catalog {shown} ({reason}); {fix}")


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """The catalog's SQL for psycopg: ``?`` placeholders become ``%s`` (a literal ``%`` is doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection that runs the catalog's SQL (``?`` placeholders), as the ``sqlite3``
    connection does: ``execute`` and ``executemany`` return a cursor, ``commit``, ``rollback``."""

    def __init__(self, con: Any) -> None:
        self.con = con

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.con.execute(pg_sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cur = self.con.cursor()
        cur.executemany(pg_sql(sql), [tuple(r) for r in rows])
        return cur

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Bulk insert with ``COPY`` (one round trip for any number of rows)."""
        with self.con.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)

    def next_ids(self, table: str, n: int) -> list[int]:
        """``n`` new ids from ``table``'s identity sequence (never reused, like SQLite's AUTOINCREMENT)."""
        if n <= 0:
            return []
        sql = "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)"
        return [int(r[0]) for r in self.con.execute(sql, (table, n))]

    def commit(self) -> None:
        self.con.commit()

    def rollback(self) -> None:
        self.con.rollback()


def table_names(con: Any) -> set[str]:
    """The tables of the connection's current schema."""
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
        "AND table_type = 'BASE TABLE'"
    )
    return {r[0] for r in rows}


def glob_regex(glob: str) -> str:
    """SQLite's ``GLOB`` pattern as a PostgreSQL regular expression (``*``, ``?``, ``[...]`` with
    ``^`` for negation; case-sensitive; the whole text must match)."""
    out, i = ["^"], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and _class_end(glob, i) > 0:
            j = _class_end(glob, i)
            body = glob[i + 1 : j]
            neg = body.startswith("^")
            body = (body[1:] if neg else body).replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
            out.append("[" + ("^" if neg else "") + body + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return "".join(out)


def _class_end(glob: str, i: int) -> int:
    """The index of the ``]`` closing the character class opened at ``glob[i]`` (``-1``: none, the
    ``[`` is literal); a ``]`` first in the class (after an optional ``^``) is a member."""
    k = i + 1
    if glob[k : k + 1] == "^":
        k += 1
    if glob[k : k + 1] == "]":
        k += 1
    return glob.find("]", k)
