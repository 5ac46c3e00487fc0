"""Content rows of the catalog: indexed images keyed by their bytes, reserved before they are embedded.

Vectors are keyed by CONTENT, not by path: several files (duplicates, or a file that moved) share
one ``contents`` row, whose id is its global-vector id. Ingest reserves a content and its regions
(state ``pending``) before it writes their vectors and confirms them afterwards; a content still
``pending`` after a crash is recovered (:meth:`ContentRows.pending_contents`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fgsearch.boxes import Box
from fgsearch.catalog.connect import chunks, from_raw, from_sql_datetime, marks, now, raw, to_sql_datetime
from fgsearch.catalog.regions import RegionRows


@dataclass(frozen=True)
class ContentRow:
    """An indexed image: one representative path (the first by name) and every path with its bytes."""

    id: int
    path: str
    paths: tuple[str, ...]
    width: int
    height: int
    captured_at: datetime | None


def _insert_contents(con: sqlite3.Connection, items: Sequence[dict[str, Any]]) -> list[int]:
    """Insert each item as a ``pending`` content; their ids, in order."""
    sql = "INSERT INTO contents (sha256, width, height, captured_at, state, created_at) VALUES (?, ?, ?, ?, ?, ?)"
    stamp = to_sql_datetime(now())
    ids = []
    for it in items:
        row = (it["sha256"], it["width"], it["height"], to_sql_datetime(it.get("captured_at")), "pending", stamp)
        ids.append(int(con.execute(sql, row).lastrowid or 0))
    return ids


def _insert_pg(con: Any, items: Sequence[dict[str, Any]]) -> tuple[list[int], list[list[int]]]:
    """PostgreSQL: ids from the identity sequences, then the rows in one ``COPY`` per table."""
    stamp = to_sql_datetime(now())
    cids = con.next_ids("contents", len(items))
    con.copy_rows(
        "contents",
        ("id", "sha256", "width", "height", "captured_at", "state", "created_at"),
        [
            (cid, it["sha256"], it["width"], it["height"], to_sql_datetime(it.get("captured_at")), "pending", stamp)
            for cid, it in zip(cids, items, strict=True)
        ],
    )
    rids = con.next_ids("regions", sum(len(it["boxes"]) for it in items))
    out: list[list[int]] = []
    rows = []
    for cid, it in zip(cids, items, strict=True):
        scores = it.get("scores") or [None] * len(it["boxes"])
        mine = rids[: len(it["boxes"])]
        rids = rids[len(it["boxes"]) :]
        for rank, (rid, b, sc) in enumerate(zip(mine, it["boxes"], scores, strict=True)):
            rows.append((rid, cid, float(b[0]), float(b[1]), float(b[2]), float(b[3]), it["proposer"], rank, sc))
        out.append(mine)
    con.copy_rows("regions", ("id", "content_id", "x1", "y1", "x2", "y2", "proposer", "rank", "score"), rows)
    return cids, out


def _insert_regions(
    con: sqlite3.Connection, content_ids: Sequence[int], items: Sequence[dict[str, Any]]
) -> list[list[int]]:
    """Insert each item's boxes (rank order) as regions of its content; their ids per item."""
    sql = "INSERT INTO regions (content_id, x1, y1, x2, y2, proposer, rank, score) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    out: list[list[int]] = []
    for cid, it in zip(content_ids, items, strict=True):
        scores = it.get("scores") or [None] * len(it["boxes"])
        ids = []
        for rank, (b, sc) in enumerate(zip(it["boxes"], scores, strict=True)):
            row = (cid, float(b[0]), float(b[1]), float(b[2]), float(b[3]), it["proposer"], rank, sc)
            ids.append(int(con.execute(sql, row).lastrowid or 0))
        out.append(ids)
    return out


class ContentRows(RegionRows):
    """Contents of one catalog and the lookups a search makes on them."""

    def content_hashes(self) -> set[str]:
        with self.reading() as con:
            return {r[0] for r in con.execute("SELECT sha256 FROM contents WHERE state = 'ok'")}

    def content_sha256(self, content_id: int) -> str | None:
        """The SHA-256 of an image's bytes (None when the id is no content of this catalog)."""
        with self.reading() as con:
            row = con.execute("SELECT sha256 FROM contents WHERE id = ?", (content_id,)).fetchone()
        return None if row is None else str(row[0])

    def reserve_contents(self, items: Sequence[dict[str, Any]]) -> tuple[list[int], list[list[int]]]:
        """Insert contents (state ``pending``) and their regions; returns their ids (committed)."""
        if not items:
            return [], []
        with self.writing() as con:
            if self.pg:
                return _insert_pg(con, items)
            content_ids = _insert_contents(con, items)
            region_ids = _insert_regions(con, content_ids, items)
        return content_ids, region_ids

    def pending_contents(self) -> tuple[list[int], list[int]]:
        with self.reading() as con:
            cids = [r[0] for r in con.execute("SELECT id FROM contents WHERE state = 'pending'")]
        return cids, self.region_ids_of(cids)

    def drop_contents(
        self, content_ids: Sequence[int], keep_files_for_reindex: bool = False
    ) -> tuple[list[int], list[int]]:
        """Delete contents (their regions go too). With ``keep_files_for_reindex`` their files are
        reset so the next index run embeds them again."""
        rids = self.region_ids_of(content_ids)
        with self.writing() as con:
            for chunk in chunks(list(content_ids)):
                ids, m = tuple(chunk), marks(len(chunk))
                if keep_files_for_reindex:
                    con.execute(f"UPDATE files SET mtime_ns = -1, content_id = NULL WHERE content_id IN ({m})", ids)
                con.execute(f"DELETE FROM regions WHERE content_id IN ({m})", ids)
                con.execute(f"DELETE FROM contents WHERE id IN ({m})", ids)
        return list(content_ids), rids

    def all_vector_ids(self, include_pending: bool = False) -> tuple[list[int], list[int]]:
        """Global and region vector ids of confirmed contents (also of reserved ones: ``include_pending``),
        read on one connection."""
        states = "'ok', 'pending'" if include_pending else "'ok'"
        with self.reading() as con:
            cids = [r[0] for r in con.execute(f"SELECT id FROM contents WHERE state IN ({states})")]
            rids = [
                r[0]
                for r in con.execute(
                    "SELECT regions.id FROM regions JOIN contents ON contents.id = regions.content_id "
                    f"WHERE contents.state IN ({states})"
                )
            ]
        return cids, rids

    def content_of_path(self, path: str) -> int | None:
        """The indexed image a file path holds (None when the path is not an indexed file)."""
        with self.reading() as con:
            row = con.execute(
                "SELECT f.content_id FROM files AS f JOIN contents AS c ON c.id = f.content_id "
                "WHERE f.raw_path = ? AND f.status = 'ok' AND c.state = 'ok'",
                (raw(path),),
            ).fetchone()
        return None if row is None else int(row[0])

    def contents_by_ids(self, ids: Sequence[int]) -> list[ContentRow]:
        """Indexed images for ids (in the given order), skipping ids without an ok file."""
        found: dict[int, tuple[int, int, datetime | None, list[str]]] = {}
        for cid, w, h, cap, path in self.select_in(
            "SELECT c.id, c.width, c.height, c.captured_at, f.raw_path FROM contents AS c "
            "JOIN files AS f ON f.content_id = c.id "
            "WHERE c.id IN ({marks}) AND c.state = 'ok' AND f.status = 'ok' ORDER BY c.id, f.raw_path",
            ids,
        ):
            if cid not in found:
                found[cid] = (w, h, from_sql_datetime(cap), [])
            found[cid][3].append(from_raw(path))
        return [
            ContentRow(cid, found[cid][3][0], tuple(found[cid][3]), found[cid][0], found[cid][1], found[cid][2])
            for cid in ids
            if cid in found
        ]

    def indexed_among(self, ids: Sequence[int]) -> list[int]:
        """Those of ``ids`` that are indexed images (an ok content with an ok file), ascending: what
        :meth:`contents_by_ids` would return rows for, without building the rows."""
        rows = self.select_in(
            "SELECT c.id FROM contents AS c WHERE c.id IN ({marks}) AND c.state = 'ok' "
            "AND EXISTS (SELECT 1 FROM files AS f WHERE f.content_id = c.id AND f.status = 'ok')",
            ids,
        )
        return sorted(r[0] for r in rows)

    def regions_by_ids(self, region_ids: Sequence[int]) -> dict[int, tuple[Box, ContentRow]]:
        """Per region id of an indexed image, its box and the image."""
        boxes = self.region_owners_and_boxes(region_ids)
        rows = {r.id: r for r in self.contents_by_ids(sorted({c for c, _ in boxes.values()}))}
        return {rid: (box, rows[cid]) for rid, (cid, box) in boxes.items() if cid in rows}
