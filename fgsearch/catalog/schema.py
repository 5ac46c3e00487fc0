"""The catalog's tables, its schema version and the steps that migrate an older catalog.

The ``sa.Table`` definitions are the one description of the schema: a new catalog is created from
them (``metadata.create_all``), and the statements elsewhere in the package name their columns.
Each migration step takes the catalog from version ``v`` to ``v + 1``; all the steps a catalog
needs run in one ``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash
leaves the old catalog as it was.

The same tables on PostgreSQL (the column types below say what each dialect gets): ids are
``BIGINT`` identity columns (never reused, as SQLite's ``AUTOINCREMENT``), times ``timestamptz``
(UTC), JSON values ``JSONB``, exact file names ``BYTEA``, sizes and mtimes ``BIGINT``. A PostgreSQL
catalog starts at schema v3, so the steps below (written for SQLite) never run on one; a later step
must take the connection of either dialect (``MIGRATIONS`` steps get the catalog's connection and
``pg``). SQLite's tables and their DDL are unchanged by this.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from fgsearch.errors import LibraryError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3

# column types: SQLite's as they always were, PostgreSQL's where they must differ
ID = sa.Integer().with_variant(sa.BigInteger(), "postgresql")  # 64-bit vector ids
BIG = sa.Integer().with_variant(sa.BigInteger(), "postgresql")  # sizes, nanosecond mtimes
TIME = sa.DateTime().with_variant(sa.DateTime(timezone=True), "postgresql")  # stored as UTC
JSON_TEXT = sa.Text().with_variant(postgresql.JSONB(), "postgresql")  # JSON text (SQLite), JSONB


def _id() -> sa.Column[int]:
    """An id column: SQLite's ``INTEGER PRIMARY KEY AUTOINCREMENT``, PostgreSQL's identity."""
    return sa.Column("id", ID, sa.Identity(), primary_key=True)


metadata = sa.MetaData()
meta_t = sa.Table("meta", metadata, sa.Column("key", sa.String, primary_key=True), sa.Column("value", JSON_TEXT))
contents_t = sa.Table(
    "contents",
    metadata,
    _id(),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("captured_at", TIME, nullable=True),
    sa.Column("state", sa.String(8), nullable=False),  # pending | ok
    sa.Column("created_at", TIME, nullable=False),
    sa.Index("ix_contents_captured", "captured_at"),
    sqlite_autoincrement=True,
)
regions_t = sa.Table(
    "regions",
    metadata,
    _id(),
    sa.Column("content_id", ID, sa.ForeignKey("contents.id", ondelete="CASCADE"), nullable=False),
    sa.Column("x1", sa.Float, nullable=False),
    sa.Column("y1", sa.Float, nullable=False),
    sa.Column("x2", sa.Float, nullable=False),
    sa.Column("y2", sa.Float, nullable=False),
    sa.Column("proposer", sa.String(16), nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("score", sa.Float, nullable=True),  # schema v2
    sa.Index("ix_regions_content", "content_id"),
    sqlite_autoincrement=True,
)
files_t = sa.Table(
    "files",
    metadata,
    _id(),
    # the name exactly as the file system has it (os.fsencode), the key; ``path`` is its text as
    # shown (bytes that are not UTF-8 as \xNN escapes), for people and --path globs (schema v3)
    sa.Column("raw_path", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size", BIG, nullable=False),
    sa.Column("mtime_ns", BIG, nullable=False),
    sa.Column("content_id", ID, sa.ForeignKey("contents.id", ondelete="SET NULL"), nullable=True),
    sa.Column("status", sa.String(8), nullable=False),  # ok | failed
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("seen_run", BIG, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    sa.Index("ix_files_content", "content_id"),
    sa.Index("ix_files_path", "path"),
    sqlite_autoincrement=True,
)
runs_t = sa.Table(
    "runs",
    metadata,
    _id(),
    sa.Column("started_at", TIME, nullable=False),
    sa.Column("finished_at", TIME, nullable=True),
    sa.Column("summary", JSON_TEXT, nullable=True),
    sqlite_autoincrement=True,
)


def migrate_1_to_2(con: sqlite3.Connection) -> None:
    """v2 adds a proposal score to each region."""
    con.execute("ALTER TABLE regions ADD COLUMN score FLOAT")


#: the failure a v2 catalog recorded for a file whose name is not valid UTF-8 (its path an escape)
_V2_NOT_UTF8 = "file name is not valid UTF-8; rename the file"


def migrate_2_to_3(con: sqlite3.Connection) -> None:
    """v3 keys a file by its exact name (``raw_path``, bytes), so that a name that is not UTF-8 and
    a file literally called by that name's ``\\xNN`` escape are two rows. v2 stored text only: its
    rows' bytes are their UTF-8, except the failures it recorded for names that were not UTF-8, whose
    path is the escape, not the name; those are dropped (the next run indexes the real file)."""
    con.execute("DELETE FROM files WHERE status = 'failed' AND reason = ?", (_V2_NOT_UTF8,))
    con.execute(
        "CREATE TABLE files_v3 (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, raw_path BLOB NOT NULL UNIQUE, "
        "path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
        "content_id INTEGER REFERENCES contents (id) ON DELETE SET NULL, status VARCHAR(8) NOT NULL, "
        "reason TEXT, seen_run INTEGER NOT NULL, updated_at DATETIME NOT NULL)"
    )
    columns = "id, path, size, mtime_ns, content_id, status, reason, seen_run, updated_at"
    con.execute(f"INSERT INTO files_v3 (raw_path, {columns}) SELECT CAST(path AS BLOB), {columns} FROM files")
    con.execute("DROP TABLE files")
    con.execute("ALTER TABLE files_v3 RENAME TO files")
    con.execute("CREATE INDEX ix_files_content ON files (content_id)")
    con.execute("CREATE INDEX ix_files_path ON files (path)")


#: version -> the step that takes a catalog from that version to the next
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: migrate_1_to_2, 2: migrate_2_to_3}


def table_names(con: sqlite3.Connection) -> set[str]:
    """The user tables of a database (SQLite's own ``sqlite_*`` tables left out)."""
    rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'")
    return {r[0] for r in rows}


def create_schema(engine: sa.Engine) -> None:
    """The tables of a new catalog, at the current schema version (one transaction on PostgreSQL)."""
    mark = "%s" if engine.dialect.name == "postgresql" else "?"
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.exec_driver_sql(
            f"INSERT INTO meta (key, value) VALUES ({mark}, {mark})", ("schema_version", json.dumps(SCHEMA_VERSION))
        )


def migrate(con: sqlite3.Connection, path: Path | str, version: int, *, pg: bool = False) -> None:
    """Every step from ``version`` to :data:`SCHEMA_VERSION` and the version bump, in one
    transaction (committed by the caller's :meth:`SqlStore.writing` block)."""
    # DDL would otherwise run outside any transaction: a crash between a step and the version
    # bump would leave a half-migrated catalog (PostgreSQL's DDL is transactional already)
    if not pg:
        con.execute("BEGIN IMMEDIATE")
    for v in range(version, SCHEMA_VERSION):
        logger.info("migrating catalog %s: v%d -> v%d", path, v, v + 1)
        MIGRATIONS[v](con)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(SCHEMA_VERSION),))


def check_version(path: Path | str, version: int, *, read_only: bool) -> None:
    """Refuse a catalog newer than this fgsearch, or one a reader would need to migrate."""
    if version > SCHEMA_VERSION:
        raise LibraryError(
            f"catalog {path} has schema v{version}, newer than this fgsearch supports "
            f"(v{SCHEMA_VERSION}); upgrade fgsearch"
        )
    if version < SCHEMA_VERSION and read_only:
        raise LibraryError(
            f"catalog {path} has schema v{version}; run `fgsearch index` once to upgrade it to v{SCHEMA_VERSION}"
        )


def check_tables(path: Path, tables: set[str], *, create: bool) -> bool:
    """Whether the catalog at ``path`` needs its tables created (a new, empty file); an SQLite file
    of something else, or an emptied catalog that may not be created here, is an error."""
    if "meta" in tables:
        return False
    if tables:
        raise LibraryError(
            f"{path} is an SQLite file but not an fgsearch catalog (tables: "
            f"{', '.join(sorted(tables)[:5])}); choose another --library folder"
        )
    if not create:
        from fgsearch.library_record import rebuild_command

        raise LibraryError(
            f"catalog {path} is empty (its records are lost); rebuild the library with `{rebuild_command(path.parent)}`"
        )
    return True
