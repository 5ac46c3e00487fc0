"""The catalog's tables, its schema version and the steps that migrate an older catalog.

The ``sa.Table`` definitions are the one description of the schema: a new catalog is created from
them (``metadata.create_all``), and the statements elsewhere in the package name their columns.
Each migration step takes the catalog from version ``v`` to ``v + 1``; all the steps a catalog
needs run in one ``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash
leaves the old catalog as it was.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from fgsearch.errors import LibraryError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2

metadata = sa.MetaData()
meta_t = sa.Table("meta", metadata, sa.Column("key", sa.String, primary_key=True), sa.Column("value", sa.Text))
contents_t = sa.Table(
    "contents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("captured_at", sa.DateTime, nullable=True),
    sa.Column("state", sa.String(8), nullable=False),  # pending | ok
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_contents_captured", "captured_at"),
    sqlite_autoincrement=True,
)
regions_t = sa.Table(
    "regions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("content_id", sa.Integer, sa.ForeignKey("contents.id", ondelete="CASCADE"), nullable=False),
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
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False, unique=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("mtime_ns", sa.Integer, nullable=False),
    sa.Column("content_id", sa.Integer, sa.ForeignKey("contents.id", ondelete="SET NULL"), nullable=True),
    sa.Column("status", sa.String(8), nullable=False),  # ok | failed
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("seen_run", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Index("ix_files_content", "content_id"),
    sqlite_autoincrement=True,
)
runs_t = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    sa.Column("summary", sa.Text, nullable=True),
    sqlite_autoincrement=True,
)


def migrate_1_to_2(con: sqlite3.Connection) -> None:
    """v2 adds a proposal score to each region."""
    con.execute("ALTER TABLE regions ADD COLUMN score FLOAT")


#: version -> the step that takes a catalog from that version to the next
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: migrate_1_to_2}


def table_names(con: sqlite3.Connection) -> set[str]:
    """The user tables of a database (SQLite's own ``sqlite_*`` tables left out)."""
    rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'")
    return {r[0] for r in rows}


def create_schema(engine: sa.Engine) -> None:
    """The tables of a new catalog, at the current schema version."""
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.exec_driver_sql(
            "INSERT INTO meta (key, value) VALUES (?, ?)", ("schema_version", json.dumps(SCHEMA_VERSION))
        )


def migrate(con: sqlite3.Connection, path: Path, version: int) -> None:
    """Every step from ``version`` to :data:`SCHEMA_VERSION` and the version bump, in one
    transaction (committed by the caller's :meth:`SqlStore.writing` block)."""
    # DDL would otherwise run outside any transaction: a crash between a step and the version
    # bump would leave a half-migrated catalog
    con.execute("BEGIN IMMEDIATE")
    for v in range(version, SCHEMA_VERSION):
        logger.info("migrating catalog %s: v%d -> v%d", path, v, v + 1)
        MIGRATIONS[v](con)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(SCHEMA_VERSION),))


def check_version(path: Path, version: int, *, read_only: bool) -> None:
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
        raise LibraryError(
            f"catalog {path} is empty (its records are lost); rebuild the library with "
            f"`fgsearch index PHOTOS --library {path.parent} --reindex --model MODEL`"
        )
    return True
