"""File rows of the catalog: runs, what each file holds or why it failed, mark-and-sweep, filters.

A file row points at the content (image bytes) it holds, or records why it failed. An index run
marks every file it sees with its run id; :meth:`FileRows.sweep` then deletes the rows under the
run's roots it did not see, and the contents no file uses any more. Failures, links and seen-marks
are buffered and written by :meth:`FileRows.commit` in one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fgsearch.catalog.connect import chunks, from_raw, marks, now, raw, to_sql_datetime
from fgsearch.catalog.contents import ContentRows
from fgsearch.scan import display_path

_FILE_COLUMNS = ("raw_path", "path", "size", "mtime_ns", "content_id", "status", "reason", "seen_run", "updated_at")
_UPSERT_FILE = (
    f"INSERT INTO files ({', '.join(_FILE_COLUMNS)}) VALUES ({marks(len(_FILE_COLUMNS))}) "
    "ON CONFLICT (raw_path) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _FILE_COLUMNS[1:])
)
_VANISHED = "content vanished during indexing; run again"


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    status: str


def _under(root: str) -> tuple[str, list[Any]]:
    """SQL condition and its parameters: a file row at ``root`` or inside it (compared as bytes)."""
    root = root.rstrip(os.sep) or os.sep
    prefix = raw(root if root.endswith(os.sep) else root + os.sep)  # "/" stays "/"
    return "(files.raw_path = ? OR substr(files.raw_path, 1, ?) = ?)", [raw(root), len(prefix), prefix]


def _mtime_ns(when: datetime) -> int:
    """A time as file mtime nanoseconds, clamped to SQLite's 64-bit integers (a date past 2262 or
    before 1677 means 'after/before every file', not an overflow)."""
    return max(-(2**63), min(2**63 - 1, int(when.timestamp() * 1e9)))


def file_conditions(
    path_glob: str | None,
    path_prefix: str | None,
    modified_after: datetime | None,
    modified_before: datetime | None,
    *,
    pg: bool = False,
) -> tuple[str, list[Any]]:
    """SQL conditions on one file row, and their parameters: ok, and matching every given path and
    modification-time filter. The glob matches the path as shown (``display_path``: a byte that is
    not UTF-8 as its escape), the prefix the exact bytes. PostgreSQL has no ``GLOB``: the pattern
    goes as the equivalent regular expression."""
    conds: list[str] = ["files.status = 'ok'"]
    params: list[Any] = []
    if path_glob:
        glob = display_path(path_glob)  # a glob typed with a byte that is not UTF-8 matches its escape
        if pg:
            from fgsearch.catalog.postgres import glob_regex

            conds.append("files.path ~ ?")
            params.append(glob_regex(glob))
        else:
            conds.append("files.path GLOB ?")
            params.append(glob)
    if path_prefix:
        prefix = raw(path_prefix.rstrip(os.sep) + os.sep)
        # first a range of the raw_path index (the names under the folder sort from the prefix up
        # to the prefix with its last byte, the separator, one higher): 63 of 62,500 files were a
        # scan of every row (~200 ms, bench_query.py), then the exact test
        conds.append("files.raw_path >= ? AND files.raw_path < ? AND substr(files.raw_path, 1, ?) = ?")
        params += [prefix, prefix[:-1] + bytes([prefix[-1] + 1]), len(prefix), prefix]
    if modified_after:
        conds.append("files.mtime_ns >= ?")
        params.append(_mtime_ns(modified_after))
    if modified_before:
        conds.append("files.mtime_ns < ?")
        params.append(_mtime_ns(modified_before))
    return " AND ".join(conds), params


def upsert_files(con: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert or replace file rows ``(path, size, mtime_ns, content_id, status, reason, seen_run)``;
    a reason is text (one quoting a name that is not UTF-8 keeps its escape)."""
    stamp = to_sql_datetime(now())
    out = []
    for path, size, mtime_ns, content_id, status, reason, run_id in rows:
        text = None if reason is None else display_path(reason)
        out.append((raw(path), display_path(path), size, mtime_ns, content_id, status, text, run_id, stamp))
    con.executemany(_UPSERT_FILE, out)


class FileRows(ContentRows):
    """Runs and file rows of one catalog, on top of its contents (a file row points at one)."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self._pending_files: list[tuple[Any, ...]] = []
        self._pending_links: list[tuple[str, int, int, str, int]] = []
        self._pending_seen: list[tuple[list[str], int]] = []
        self.last_sweep_files = 0

    # ---- runs ------------------------------------------------------------------------------
    def begin_run(self) -> int:
        with self.writing() as con:
            cur = con.execute("INSERT INTO runs (started_at) VALUES (?) RETURNING id", (to_sql_datetime(now()),))
            return int(cur.fetchone()[0])

    def end_run(self, run_id: int, summary: dict[str, Any]) -> None:
        with self.writing() as con:
            con.execute(
                "UPDATE runs SET finished_at = ?, summary = ? WHERE id = ?",
                (to_sql_datetime(now()), json.dumps(summary), run_id),
            )

    def confirm_contents(self, content_ids: Sequence[int], files: Sequence[tuple[str, int, int]], run_id: int) -> None:
        """Mark contents ``ok`` and write their file rows, in one transaction."""
        with self.writing() as con:
            for chunk in chunks(list(content_ids)):
                con.execute(f"UPDATE contents SET state = 'ok' WHERE id IN ({marks(len(chunk))})", tuple(chunk))
            rows = [(p, s, m, cid, "ok", None, run_id) for cid, (p, s, m) in zip(content_ids, files, strict=True)]
            upsert_files(con, rows)

    # ---- files -----------------------------------------------------------------------------
    def file_states(self, paths: Sequence[str]) -> dict[str, FileState]:
        out: dict[str, FileState] = {}
        with self.reading() as con:
            for chunk in chunks(list(paths)):
                sql = f"SELECT raw_path, size, mtime_ns, status FROM files WHERE raw_path IN ({marks(len(chunk))})"
                for p, size, mtime, status in con.execute(sql, tuple(raw(p) for p in chunk)):
                    out[from_raw(p)] = FileState(size, mtime, status)
        return out

    def record_failure(self, path: str, size: int, mtime_ns: int, reason: str, run_id: int) -> None:
        self._pending_files.append((path, size, mtime_ns, None, "failed", reason, run_id))

    def mark_seen(self, paths: Sequence[str], run_id: int) -> None:
        if paths:
            self._pending_seen.append((list(paths), run_id))

    def link_file(self, path: str, size: int, mtime_ns: int, sha256: str, run_id: int) -> None:
        """Point a file at already-embedded content with the same bytes (rename, move, duplicate)."""
        self._pending_links.append((path, size, mtime_ns, sha256, run_id))

    def commit(self) -> None:
        """Write buffered failures, links and seen-marks in one transaction."""
        if not (self._pending_files or self._pending_links or self._pending_seen):
            return
        with self.writing() as con:
            rows = list(self._pending_files)
            for path, size, mtime, sha, run_id in self._pending_links:
                found = con.execute("SELECT id FROM contents WHERE sha256 = ? AND state = 'ok'", (sha,)).fetchone()
                if found is None:
                    rows.append((path, size, mtime, None, "failed", _VANISHED, run_id))
                else:
                    rows.append((path, size, mtime, found[0], "ok", None, run_id))
            upsert_files(con, rows)
            for paths, run_id in self._pending_seen:
                for chunk in chunks(paths):
                    sql = f"UPDATE files SET seen_run = ? WHERE raw_path IN ({marks(len(chunk))})"
                    con.execute(sql, (run_id, *(raw(p) for p in chunk)))
        self._pending_files.clear()
        self._pending_links.clear()
        self._pending_seen.clear()

    # ---- mark and sweep --------------------------------------------------------------------
    def unseen_paths(self, run_id: int, roots: Sequence[str]) -> list[str]:
        """Paths of files under ``roots`` that run ``run_id`` has not seen (what :meth:`sweep` would delete)."""
        out: list[str] = []
        with self.reading() as con:
            for root in roots:
                cond, params = _under(root)
                sql = f"SELECT files.raw_path FROM files WHERE {cond} AND files.seen_run != ?"
                out.extend(from_raw(r[0]) for r in con.execute(sql, (*params, run_id)))
        return out

    def sweep(self, run_id: int, roots: Sequence[str]) -> tuple[list[int], list[int]]:
        """Delete files under ``roots`` not seen in ``run_id``, then contents no file uses any more.

        Returns the removed content ids and region ids (to remove from the vector indexes)."""
        removed_files = 0
        with self.writing() as con:
            for root in roots:
                cond, params = _under(root)
                cur = con.execute(f"DELETE FROM files WHERE {cond} AND files.seen_run != ?", (*params, run_id))
                removed_files += max(cur.rowcount, 0)
            orphans = con.execute(
                "SELECT contents.id FROM contents WHERE contents.state = 'ok' "
                "AND NOT (EXISTS (SELECT 1 FROM files WHERE files.content_id = contents.id))"
            )
            cids = [r[0] for r in orphans]
        self.last_sweep_files = removed_files
        if not cids:
            return [], []
        return self.drop_contents(cids)

    # ---- reading ---------------------------------------------------------------------------
    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        sql = "SELECT raw_path, reason FROM files WHERE status = 'failed' ORDER BY raw_path"
        params: tuple[int, ...] = ()
        if limit is not None:
            sql, params = sql + " LIMIT ?", (limit,)
        with self.reading() as con:
            return [(from_raw(p), r or "") for p, r in con.execute(sql, params)]

    def filter_contents(
        self,
        *,
        path_glob: str | None = None,
        path_prefix: str | None = None,
        captured_after: datetime | None = None,
        captured_before: datetime | None = None,
        modified_after: datetime | None = None,
        modified_before: datetime | None = None,
    ) -> list[int]:
        """Content ids with at least one ok file matching every given condition."""
        cond, params = file_conditions(path_glob, path_prefix, modified_after, modified_before, pg=self.pg)
        if captured_after:
            cond += " AND contents.captured_at >= ?"
            params.append(to_sql_datetime(captured_after))
        if captured_before:
            cond += " AND contents.captured_at < ?"
            params.append(to_sql_datetime(captured_before))
        sql = (
            "SELECT DISTINCT contents.id FROM contents JOIN files ON files.content_id = contents.id "
            f"WHERE contents.state = 'ok' AND {cond}"
        )
        with self.reading() as con:
            return [r[0] for r in con.execute(sql, params)]

    def matching_paths(
        self,
        content_ids: Sequence[int],
        *,
        path_glob: str | None = None,
        path_prefix: str | None = None,
        modified_after: datetime | None = None,
        modified_before: datetime | None = None,
    ) -> dict[int, list[str]]:
        """Per content id, its ok paths (sorted) that pass the file conditions of :meth:`filter_contents`."""
        cond, params = file_conditions(path_glob, path_prefix, modified_after, modified_before, pg=self.pg)
        sql = f"SELECT content_id, raw_path FROM files WHERE content_id IN ({{marks}}) AND {cond} ORDER BY raw_path"
        out: dict[int, list[str]] = {}
        for cid, path in self.select_in(sql, content_ids, params):
            out.setdefault(int(cid), []).append(from_raw(path))
        return out
