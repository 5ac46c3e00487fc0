"""Cheap looks into a catalog file without opening a :class:`~fgsearch.catalog.Catalog`.

A library asks a few questions of its catalog before (or instead of) opening it: which build
(library id) the file holds now, whether a creation was left unfinished, which settings a
``--reindex`` should keep. These functions answer on one plain, read-only ``sqlite3`` connection
(~0.5 ms: no SQLAlchemy engine, no schema checks), opened ``immutable`` where the folder cannot be
written (a read-only mount or directory, where SQLite could not create its ``-shm`` file).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fgsearch.catalog.connect import cannot_write_here, marks, read_only_uri

T = TypeVar("T")


def _connect(catalog_file: Path, *, immutable: bool) -> sqlite3.Connection:
    con = sqlite3.connect(read_only_uri(catalog_file, immutable=immutable), uri=True)
    try:
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # opening is lazy: fail here, not later
    except BaseException:
        con.close()
        raise
    return con


def _read(catalog_file: Path, read: Callable[[sqlite3.Connection], T]) -> T:
    """``read(connection)`` on a read-only connection to ``catalog_file``, immutable where its
    folder cannot be written; a ``sqlite3.Error`` propagates."""
    try:
        con = _connect(catalog_file, immutable=False)
    except sqlite3.Error as e:
        if not cannot_write_here(e) or not catalog_file.is_file():
            raise
        con = _connect(catalog_file, immutable=True)
    try:
        return read(con)
    finally:
        con.close()


def peek_meta(catalog_file: Path, keys: Sequence[str]) -> dict[str, Any]:
    """The JSON-decoded values of those of ``keys`` the catalog's meta table holds; ``{}`` when
    the file cannot be read (missing, damaged, not a catalog)."""

    def read(con: sqlite3.Connection) -> dict[str, Any]:
        rows = con.execute(f"SELECT key, value FROM meta WHERE key IN ({marks(len(keys))})", tuple(keys))
        return {k: json.loads(v) for k, v in rows}

    try:
        return _read(catalog_file, read)
    except sqlite3.Error:
        return {}


def peek_library_id(catalog_file: Path) -> str | None:
    """The build id (library id) the catalog holds now: ``""`` in the moment a ``--reindex``
    replaces the catalog (no file, or no table yet), ``None`` when none is recorded (a library
    older than ids); a damaged file raises its ``sqlite3.Error``."""
    try:
        row = _read(catalog_file, lambda con: con.execute("SELECT value FROM meta WHERE key='library_id'").fetchone())
    except sqlite3.OperationalError as e:
        if not catalog_file.is_file() or "no such table" in str(e):
            return ""
        raise
    return json.loads(row[0]) if row else None


def peek_unfinished(catalog_file: Path) -> bool:
    """Whether the catalog is a creation that did not finish: a catalog of ours (meta table with a
    schema version) without a recorded model and without any image. A file that cannot be read,
    or is not ours, is not judged here (``False``: opening it reports what is wrong)."""

    def read(con: sqlite3.Connection) -> bool:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            return False  # not a catalog of ours: never wiped
        keys = {r[0] for r in con.execute("SELECT key FROM meta")}
        if "schema_version" not in keys or "dim" in keys:
            return False
        return "contents" not in tables or not con.execute("SELECT 1 FROM contents LIMIT 1").fetchone()

    try:
        return _read(catalog_file, read)
    except sqlite3.Error:
        return False
