"""The SQLite catalog of a library: files, image contents, regions, settings, runs.

Vectors are keyed by CONTENT, not by path: several files (duplicates, or a file that moved) share
one ``contents`` row, whose id is its global-vector id; each ``regions`` row id is a region-vector
id. Ids are AUTOINCREMENT, so an id is never reused after a delete and an orphan vector left by a
crash can never be mistaken for a new image.

Durability: WAL journal with ``synchronous=NORMAL``. A killed process never loses a committed
transaction in WAL mode; an OS crash may roll back the last commits, which the ingest protocol
tolerates (unconfirmed contents stay ``pending`` and are recovered). Readers work while a writer
writes (WAL), with a busy timeout for the short moments the writer holds the lock.

One query style: every statement is plain SQL text run on the pooled ``sqlite3`` connection of
a SQLAlchemy engine (:class:`~fgsearch.catalog.connect.SqlStore`). A search looks up thousands of
rows per query (``region_ids_by_content``, ``region_arrays``, ``contents_by_ids``,
``indexed_among``); SQLAlchemy Core builds a ``Row`` object per row and renders each ``IN`` list,
which made those lookups ~7x slower than plain tuples from ``sqlite3`` (``region_ids_by_content``
for 400 images of 16 regions: 14 ms as plain SQL, 96 ms through ``exec_driver_sql``, 123 ms as a
Core ``select``; 2-core machine, December 2026). Writes got faster too (reserving and confirming
4,000 images: ~3x). SQLAlchemy keeps the engine (pooling, per-connection pragmas, URLs for any
folder name), the table definitions a new catalog is created from, and its exception family:
a failed statement raises ``sqlalchemy.exc.DBAPIError`` with the sqlite error as ``.orig``.

The catalog may also be a PostgreSQL database (:mod:`.postgres`: same tables and statements,
psycopg 3, ``COPY`` for bulk inserts); its writer lock is an advisory lock
(:class:`~fgsearch.catalog.lock.AdvisoryLock`), and many writers share one library's work through
:class:`~fgsearch.catalog.claims.WorkQueue` (claims under a lease, ``FOR UPDATE SKIP LOCKED``).

Modules: :mod:`.schema` (tables, version, migrations), :mod:`.connect` (URIs, engine, how
statements run), :mod:`.postgres` (the PostgreSQL dialect: URLs, secrets, the adapter),
:mod:`.regions`, :mod:`.contents`, :mod:`.files` (the parts of :class:`Catalog`), :mod:`.store`
(:class:`Catalog` itself), :mod:`.lock` (the writer locks), :mod:`.claims` (shared work) and
:mod:`.peek` (cheap reads of a catalog file without opening a :class:`Catalog`).
"""

from __future__ import annotations

from fgsearch.catalog.claims import Claim, ClaimLostError, Reservation, WorkItem, WorkQueue
from fgsearch.catalog.connect import cannot_write_here, read_only_uri
from fgsearch.catalog.contents import ContentRow
from fgsearch.catalog.files import FileState
from fgsearch.catalog.lock import AdvisoryLock, WriteLock
from fgsearch.catalog.peek import peek_library_id, peek_meta, peek_unfinished
from fgsearch.catalog.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    contents_t,
    files_t,
    meta_t,
    metadata,
    regions_t,
    runs_t,
)
from fgsearch.catalog.store import Catalog, ModelInfo

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AdvisoryLock",
    "Catalog",
    "Claim",
    "ClaimLostError",
    "ContentRow",
    "FileState",
    "ModelInfo",
    "Reservation",
    "WorkItem",
    "WorkQueue",
    "WriteLock",
    "cannot_write_here",
    "contents_t",
    "files_t",
    "meta_t",
    "metadata",
    "peek_library_id",
    "peek_meta",
    "peek_unfinished",
    "read_only_uri",
    "regions_t",
    "runs_t",
]
