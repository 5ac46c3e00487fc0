"""Salvage a damaged SQLite catalog: copy every row that can still be read into a new catalog,
keep the damaged file aside, and say what was recovered.

Python's ``sqlite3`` has no binding of SQLite's recovery extension, so the rows are read through
SQL: each table is scanned in rowid order; where the scan hits a damaged page (SQLite raises
"database disk image is malformed"), the scan seeks past it (exponential steps, then a binary
search for the first rowid that can be read again), so one bad leaf page costs the rows on that
page and one bad interior page the rows below it, never the rest of the table. Rows come back
as SQLite stored them; a row whose values do not have the types the schema says (a page of
random bytes that still parses) is dropped.

What the new catalog holds, and why (the library's doctor then makes catalog and vector indexes
agree; :mod:`fgsearch.library.repair`):

- every readable ``meta``, ``runs``, ``contents`` row, with its id (= its global vector's id);
- every readable ``regions`` row of a recovered content, with its id (= its region vector's id);
- every readable ``files`` row; one whose content was lost is reset (``content_id`` NULL,
  ``mtime_ns`` -1) so that the next ``index`` run hashes and embeds that file again;
- the AUTOINCREMENT counters at least where they were (ids are never reused: a vector left
  in an index by a lost row is never mistaken for a new image).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgsearch.catalog.connect import create_engine, read_only_uri
from fgsearch.catalog.schema import SCHEMA_VERSION, create_schema, metadata
from fgsearch.errors import LibraryError

logger = logging.getLogger(__name__)

TABLES = ("meta", "runs", "contents", "regions", "files")  # parents before children
MAX_ROWID = 1 << 62
BATCH = 50_000  # rows per executemany
_INT = (int,)
_NUM = (int, float)
_TEXT = (str,)


@dataclass
class SalvageReport:
    """What a salvage recovered. ``recovered``: rows copied per table. ``before``: rows the table
    held, where an intact index of it could still count them (else absent). ``damaged_spans``: how
    many times a table's scan had to skip damaged pages. ``files_requeued``: files whose image
    row was lost (the next ``index`` run embeds them again)."""

    kept_aside: Path
    recovered: dict[str, int] = field(default_factory=dict)
    before: dict[str, int] = field(default_factory=dict)
    damaged_spans: dict[str, int] = field(default_factory=dict)
    invalid_rows: dict[str, int] = field(default_factory=dict)
    files_requeued: int = 0
    meta_keys_lost: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept_aside": str(self.kept_aside),
            "recovered": dict(self.recovered),
            "before": dict(self.before),
            "damaged_spans": dict(self.damaged_spans),
            "invalid_rows": dict(self.invalid_rows),
            "files_requeued": self.files_requeued,
            "meta_keys_lost": list(self.meta_keys_lost),
            "seconds": round(self.seconds, 3),
        }


# ---- reading what can be read ----------------------------------------------------------------
def _first_row_from(con: sqlite3.Connection, table: str, start: int, cols: str) -> tuple[bool, Any]:
    """(whether the first row at ``rowid >= start`` can be read, whole; that row, or None at the end)."""
    try:
        row = con.execute(
            f"SELECT rowid, {cols} FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1", (start,)
        ).fetchone()
    except sqlite3.DatabaseError:
        return False, None
    return True, row


def _first_rowid_from(con: sqlite3.Connection, table: str, start: int, cols: str) -> tuple[bool, int | None]:
    ok, row = _first_row_from(con, table, start, cols)
    return ok, None if row is None else int(row[0])


def _next_readable(con: sqlite3.Connection, table: str, after: int, cols: str) -> int | None:
    """The first readable rowid from the smallest start past ``after`` from which the table can be
    read again (None: nothing readable is left). Steps double until a seek succeeds, then a binary
    search narrows it."""
    step, bad = 1, after
    while after + step < MAX_ROWID:
        ok, found = _first_rowid_from(con, table, after + step, cols)
        if ok:
            lo, hi, hi_found = bad, after + step, found  # lo fails, hi reads
            while hi - lo > 1:
                mid = (lo + hi) // 2
                ok, found = _first_rowid_from(con, table, mid, cols)
                if ok:
                    hi, hi_found = mid, found
                else:
                    lo = mid
            return hi_found
        bad = after + step
        step *= 2
    return None


def iter_rows(
    con: sqlite3.Connection, table: str, columns: list[str], spans: list[int] | None = None
) -> Iterator[tuple[Any, ...]]:
    """Every readable row of ``table`` (``rowid`` first, then ``columns``), in rowid order; each
    damaged span the scan skips adds 1 to ``spans[0]``."""
    spans = spans if spans is not None else [0]
    pos = 0
    cols = ", ".join(columns)
    # ">= pos", not "> pos - 1": a seek lands on the page of the rowid it names, and pos - 1 may
    # lie on the damaged page that was just skipped
    sql = f"SELECT rowid, {cols} FROM {table} WHERE rowid >= ? ORDER BY rowid"
    while True:
        try:
            for r in con.execute(sql, (pos,)):
                pos = int(r[0]) + 1
                yield r
            return
        except sqlite3.DatabaseError as e:
            if "no such" in str(e):  # the table (or a column) is not there: sqlite_master lost it
                spans[0] += 1
                return
            # sqlite3's cursor steps to the next row before it hands out the current one, so the
            # error of the step onto a damaged page swallows the last good row: read on one by one
            while True:
                ok, row = _first_row_from(con, table, pos, cols)
                if not ok:
                    break
                if row is None:
                    return
                pos = int(row[0]) + 1
                yield row
            spans[0] += 1
            nxt = _next_readable(con, table, pos, cols)  # a start past pos: always progress
            if nxt is None:
                return
            pos = nxt


def scan_table(con: sqlite3.Connection, table: str, columns: list[str]) -> tuple[list[tuple[Any, ...]], int]:
    """Every readable row of ``table`` (``rowid`` first, then ``columns``), and how many damaged
    spans the scan skipped."""
    spans = [0]
    rows = list(iter_rows(con, table, columns, spans))
    return rows, spans[0]


def _count_by_index(con: sqlite3.Connection, table: str) -> int | None:
    """The table's row count as one of its indexes (intact) still gives it; None if none can."""
    try:
        names = [
            r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=?", (table,))
        ]
    except sqlite3.DatabaseError:
        return None
    counts = []
    for name in names:
        with contextlib.suppress(sqlite3.DatabaseError):
            counts.append(int(con.execute(f'SELECT count(*) FROM {table} INDEXED BY "{name}"').fetchone()[0]))
    return max(counts) if counts else None


# ---- which rows are sound --------------------------------------------------------------------
def _typed(value: Any, kinds: tuple[type, ...], nullable: bool = False) -> bool:
    return (nullable and value is None) or (isinstance(value, kinds) and not isinstance(value, bool))


_CHECKS: dict[str, Any] = {
    "meta": lambda r: _typed(r[1], _TEXT) and _typed(r[2], _TEXT, True),
    "runs": lambda r: _typed(r[1], _INT) and _typed(r[2], _TEXT),
    "contents": lambda r: (
        _typed(r[1], _INT)
        and _typed(r[2], _TEXT)
        and len(r[2]) == 64
        and _typed(r[3], _INT)
        and _typed(r[4], _INT)
        and r[6] in ("ok", "pending")
    ),
    "regions": lambda r: _typed(r[1], _INT) and _typed(r[2], _INT) and all(_typed(v, _NUM) for v in r[3:7]),
    "files": lambda r: (
        _typed(r[1], _INT)
        and isinstance(r[2], bytes)
        and _typed(r[3], _TEXT)
        and _typed(r[4], _INT)
        and _typed(r[5], _INT)
        and _typed(r[6], _INT, True)
        and r[7] in ("ok", "failed")
    ),
}


def _columns(table: str) -> list[str]:
    return [c.name for c in metadata.tables[table].columns]


# ---- the salvage -----------------------------------------------------------------------------
def salvage_catalog(catalog_file: Path) -> SalvageReport:
    """Copy what ``catalog_file`` still gives into a new catalog at the same path; the damaged
    file (and its WAL) is renamed ``catalog-damaged-<UTC time>.sqlite`` beside it. The caller
    holds the library's writer lock."""
    t0 = time.perf_counter()
    catalog_file = Path(catalog_file)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = catalog_file.with_name(f"catalog-damaged-{stamp}.sqlite")
    report = SalvageReport(kept_aside=aside)
    new = catalog_file.with_name(catalog_file.name + ".salvage")
    for leftover in (new, Path(f"{new}-wal"), Path(f"{new}-shm"), Path(f"{new}-journal")):
        leftover.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(read_only_uri(catalog_file), uri=True)
        # lenient reads: a file shorter than its header says (truncated) is otherwise refused whole,
        # and a schema entry that does not parse does not hide the others (nothing is written)
        src.execute("PRAGMA writable_schema=ON")
    except sqlite3.Error as e:
        raise LibraryError(f"cannot open the catalog {catalog_file} to salvage it ({e})") from e
    try:
        meta = [r for r in iter_rows(src, "meta", _columns("meta")) if _CHECKS["meta"](r)]
        _check_version(catalog_file, meta)
        _copy_into(new, src, report)
    except BaseException:
        for leftover in (new, Path(f"{new}-journal")):
            leftover.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    _swap(catalog_file, new, aside)
    report.seconds = time.perf_counter() - t0
    logger.info("salvaged catalog %s: %s (damaged file kept as %s)", catalog_file, report.recovered, aside)
    return report


def _old_sequences(src: sqlite3.Connection) -> dict[str, int]:
    try:
        return {str(n): int(s) for n, s in src.execute("SELECT name, seq FROM sqlite_sequence")}
    except sqlite3.DatabaseError:
        return {}


def _check_version(catalog_file: Path, meta_rows: list[tuple[Any, ...]]) -> None:
    import json

    version = next((r[2] for r in meta_rows if r[1] == "schema_version"), None)
    if version is not None and int(json.loads(version)) != SCHEMA_VERSION:
        raise LibraryError(
            f"the damaged catalog {catalog_file} has schema v{json.loads(version)}; this fgsearch salvages "
            f"v{SCHEMA_VERSION} only: restore it from a backup, or salvage it with the fgsearch that wrote it"
        )


def _copy_into(path: Path, src: sqlite3.Connection, report: SalvageReport) -> None:
    """Create a new catalog at ``path`` and stream every sound row of ``src`` into it, table by
    table (parents first: regions and files are matched against the contents recovered)."""
    engine = create_engine(path, read_only=False, immutable=False)
    try:
        create_schema(engine)  # writes schema_version: a recovered meta row replaces it
    finally:
        engine.dispose()
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("PRAGMA synchronous=OFF")  # the file is renamed into place only once complete and fsynced
        con.execute("BEGIN")
        content_ids: set[int] = set()
        for table in TABLES:
            _copy_table(con, src, table, content_ids, report)
        report.meta_keys_lost = _meta_keys_lost(con)
        for name, seq in _old_sequences(src).items():
            con.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, name))
            con.execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? WHERE NOT EXISTS "
                "(SELECT 1 FROM sqlite_sequence WHERE name = ?)",
                (name, seq, name),
            )
        con.commit()
        problems = [r[0] for r in con.execute("PRAGMA quick_check") if r[0] != "ok"]
        if problems:
            raise LibraryError(f"the salvaged catalog {path} fails its own check ({problems[0]}); nothing was replaced")
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_table(
    con: sqlite3.Connection, src: sqlite3.Connection, table: str, content_ids: set[int], report: SalvageReport
) -> None:
    cols = _columns(table)
    sql = f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    spans, kept, invalid, requeued = [0], 0, 0, 0
    check = _CHECKS[table]
    ci, mi = (cols.index("content_id") + 1, cols.index("mtime_ns") + 1) if table == "files" else (0, 0)
    batch: list[tuple[Any, ...]] = []
    for r in iter_rows(src, table, cols, spans):
        if not check(r):
            invalid += 1
            continue
        if table == "contents":
            content_ids.add(int(r[1]))
        elif table == "regions" and int(r[2]) not in content_ids:
            continue  # its image's row was lost: the region goes with it
        elif table == "files" and r[ci] is not None and int(r[ci]) not in content_ids:
            r = tuple(None if i == ci else (-1 if i == mi else v) for i, v in enumerate(r))  # re-queued
            requeued += 1
        batch.append(r[1:])
        kept += 1
        if len(batch) >= BATCH:
            con.executemany(sql, batch)
            batch.clear()
    con.executemany(sql, batch)
    report.recovered[table] = kept
    report.damaged_spans[table] = spans[0]
    report.invalid_rows[table] = invalid
    if table == "files":
        report.files_requeued = requeued
    n = _count_by_index(src, table)
    if n is not None:
        report.before[table] = n


def _meta_keys_lost(con: sqlite3.Connection) -> list[str]:
    have = {r[0] for r in con.execute("SELECT key FROM meta")}
    want = ("model_name", "model_ref", "dim", "image_size", "regions", "backend", "model_source", "library_id")
    return [k for k in want if k not in have]


def _swap(catalog_file: Path, new: Path, aside: Path) -> None:
    """Keep the damaged catalog (and its WAL) aside, then move the salvaged one into its place."""
    os.replace(catalog_file, aside)
    wal = Path(f"{catalog_file}-wal")
    if wal.exists():
        os.replace(wal, Path(f"{aside}-wal"))
    Path(f"{catalog_file}-shm").unlink(missing_ok=True)
    os.replace(new, catalog_file)
    fd = os.open(catalog_file.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
