"""PostgreSQL plumbing of the pgvector backend: connecting, one-line errors, the extension, and the
binary encoding of vectors (COPY in, raw ``vector`` values out).

psycopg (3) is imported only when a connection is made. Nothing here knows about indexes.
"""

from __future__ import annotations

import re
import struct
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..errors import BackendUnavailableError, CollectionMismatchError, DimensionMismatchError, IndexInputError

#: The oldest pgvector with ``halfvec`` and iterative index scans' predecessor features we use.
MIN_PGVECTOR = (0, 7, 0)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")


def psycopg_module() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise BackendUnavailableError("the pgvector backend needs psycopg 3: pip install 'fgsearch[pgvector]'") from e
    return psycopg


def check_table_name(name: str) -> str:
    """A table name safe to put in SQL unquoted (lower case letters, digits, ``_``)."""
    if not _NAME.match(name):
        raise IndexInputError(
            f"pgvector: table {name!r} must be lower-case letters, digits and _ (at most 51, not starting with a digit)"
        )
    return name


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://``) or a libpq one, as libpq takes it."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise IndexInputError(
            f"pgvector: url must start with postgresql:// (or postgresql+psycopg://), got {redact(url)!r}"
        )
    return urlunsplit(("postgresql", *parts[1:]))


def has_password(url: str) -> bool:
    return bool(urlsplit(url).password)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages, logs and ``status``)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit((parts.scheme, f"{user}@{netloc[-1]}", parts.path, parts.query, parts.fragment))


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def connect(url: str, *, autocommit: bool, timeout_s: float) -> Any:
    """A psycopg connection to ``url``; failures become one-line errors naming the fix."""
    psycopg = psycopg_module()
    where = redact(url)
    try:
        return psycopg.connect(libpq_url(url), autocommit=autocommit, connect_timeout=max(1, int(timeout_s)))
    except psycopg.OperationalError as e:
        msg = _first_line(e)
        low = msg.lower()
        if (
            "password authentication failed" in low
            or "no password supplied" in low
            or ("role" in low and "does not exist" in low)
        ):
            fix = "check the user name in the URL and the password in PGPASSWORD (or ~/.pgpass)"
            raise BackendUnavailableError(f"PostgreSQL at {where} refused the login ({msg}); {fix}") from e
        if "database" in low and "does not exist" in low:
            raise BackendUnavailableError(
                f"PostgreSQL at {where}: {msg}; create the database (createdb NAME) or fix the URL"
            ) from e
        raise BackendUnavailableError(
            f"cannot reach PostgreSQL at {where} ({msg}); check the URL (host, port or socket folder) "
            "and that the server is running"
        ) from e


def ensure_extension(conn: Any, where: str) -> tuple[int, ...]:
    """Make sure the ``vector`` extension exists in the connected database (create it when allowed)."""
    psycopg = psycopg_module()
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is None:
        db, user = conn.execute("SELECT current_database(), current_user").fetchone()
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.errors.InsufficientPrivilege as e:
            raise BackendUnavailableError(
                f"database {db} at {where} has no pgvector extension and user {user} may not create it; "
                f'ask the database owner or a superuser to run: CREATE EXTENSION vector; (in database "{db}")'
            ) from e
        except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile) as e:
            raise BackendUnavailableError(
                f"the PostgreSQL server at {where} has no pgvector installed ({_first_line(e)}); "
                "install pgvector 0.7 or newer on the server (https://github.com/pgvector/pgvector#installation)"
            ) from e
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    version = tuple(int(x) for x in re.findall(r"\d+", str(row[0]))[:3])
    if version < MIN_PGVECTOR:
        raise BackendUnavailableError(
            f"pgvector {row[0]} at {where} is too old (halfvec needs 0.7); run ALTER EXTENSION vector UPDATE"
        )
    return version


# ------------------------------------------------------------------------------ encoding
def copy_rows(ids: np.ndarray, vecs: np.ndarray) -> bytes:
    """``COPY ... (id, embedding) FROM STDIN (FORMAT BINARY)`` data for int64 ids and float32 rows."""
    n, d = vecs.shape
    rec = np.zeros(
        n,
        dtype=[("nf", ">i2"), ("l1", ">i4"), ("id", ">i8"), ("l2", ">i4"), ("dim", ">u2"), ("unused", ">u2"),
               ("v", ">f4", (d,))],
    )  # fmt: skip
    rec["nf"] = 2
    rec["l1"] = 8
    rec["id"] = ids
    rec["l2"] = 4 + 4 * d
    rec["dim"] = d
    rec["v"] = vecs
    return _COPY_HEADER + rec.tobytes() + _COPY_TRAILER


def decode_vector(raw: bytes, dim: int) -> np.ndarray:
    """A binary ``vector`` value (uint16 dim, uint16 unused, big-endian float32s) as float32."""
    return np.frombuffer(raw, dtype=">f4", count=dim, offset=4).astype(np.float32)


def decode_rows(rows: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(id, binary vector) rows -> (int64 ids, float32 [n, dim])."""
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, dim), dtype=np.float32)
    buf = b"".join(r[1] for r in rows)
    rec = np.frombuffer(buf, dtype=[("hdr", ">u4"), ("v", ">f4", (dim,))])
    return ids, rec["v"].astype(np.float32)


def vector_literal(q: np.ndarray) -> str:
    """A query vector as pgvector text (``repr`` of each float32 round-trips exactly through strtof)."""
    return "[" + ",".join(map(repr, q.astype(np.float32).tolist())) + "]"


def table_dim(conn: Any, table: str) -> int | None:
    """The dimension of ``table``'s ``embedding`` column; None when the table does not exist."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
    if not exists:
        return None
    row = conn.execute(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding' AND NOT a.attisdropped",
        (table,),
    ).fetchone()
    if row is None or not str(row[0]).startswith("vector("):
        raise CollectionMismatchError(
            f"table {table} exists and is not an fgsearch vector table (no embedding vector column); "
            "choose another table (--backend-opt table=NAME)"
        )
    return int(str(row[0])[len("vector(") : -1])


def driver_connection(connection: Any) -> Any:
    """The psycopg connection behind a SQLAlchemy Connection (or a pooled DBAPI one), or itself."""
    raw = connection
    inner = getattr(raw, "connection", None)  # a SQLAlchemy Connection -> its pooled DBAPI connection
    if inner is not None and hasattr(inner, "driver_connection"):
        raw = inner.driver_connection
    elif hasattr(raw, "driver_connection"):
        raw = raw.driver_connection
    return raw


def create_tables(conn: Any, meta: str, table: str, dim: int) -> None:
    """Create the metadata table (if missing) and ``table`` with its metadata row, in one transaction."""
    with conn.transaction():
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {meta} (table_name text PRIMARY KEY, dim integer NOT NULL, "
            "generation bigint NOT NULL DEFAULT 0, params jsonb NOT NULL DEFAULT '{}')"
        )
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, embedding vector({dim}) NOT NULL)")
        if 4 * dim + 8 < 6000:  # keep rows in line: a re-rank reads dozens per query
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE PLAIN")
        conn.execute(
            f"INSERT INTO {meta} (table_name, dim) VALUES (%s, %s) ON CONFLICT (table_name) DO NOTHING",
            (table, dim),
        )


def candidate_sql(table: str, dim: int, storage: str | None, *, exact: bool, filtered: bool) -> str:
    """The candidate query of a search: parameters (allowed ids when ``filtered``), the query
    vector, LIMIT; ``exact`` scans and sorts, else it is ordered the way the HNSW index over
    ``storage`` (``"halfvec"`` or ``"vector"``) can serve it."""
    where = "WHERE id = ANY(%s)" if filtered else ""
    if exact:  # "+ 0": an expression no index matches, so the planner scans and sorts exactly
        return f"SELECT id, embedding FROM {table} {where} ORDER BY (embedding <#> %s::vector) + 0 LIMIT %s"
    if storage == "halfvec":
        order = f"embedding::halfvec({dim}) <#> %s::halfvec({dim})"
    else:
        order = f"embedding <#> %s::vector({dim})"
    return f"SELECT id, embedding FROM {table} {where} ORDER BY {order} LIMIT %s"


def check_dim(table: str, where: str, found: int, dim: int | None) -> None:
    """Refuse a table whose vectors are not ``dim``-d (None: any)."""
    if dim is not None and found != dim:
        raise DimensionMismatchError(
            f"table {table} in {where} holds {found}-d vectors, expected {dim}-d; use another table "
            "(--backend-opt table=NAME) or rebuild the library with --reindex"
        )
