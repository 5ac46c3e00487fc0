"""Work shared by many writers: a queue of files in the catalog, claimed in batches under a lease.

A driver plans what changed and :meth:`WorkQueue.enqueue` s those files. Any number of writers,
on any machines, then loop::

    claim = queue.claim(batch_size, lease_s)           # rows no one else holds (SKIP LOCKED)
    store.remove(claim.undo)                           # vectors an expired earlier claim left
    ...read, hash, decode, embed the claim's files...
    res = queue.reserve(items, contents)               # pending content + region ids (one txn)
    ...write res' vectors into the shared vector store (idempotent upsert by id)...
    queue.complete(res, run_id)                        # contents ok + file rows + done (one txn)
    queue.link(copies, run_id)                         # files whose bytes are indexed already
    queue.release(items)                               # give back what this writer will not do

On PostgreSQL a claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` (two writers never get the same
row); on SQLite (one writer) the same statements run without it. A claim holds its rows until
``lease_until``; a writer that dies (``kill -9``, a lost node) stops renewing it, and after the
lease expires the next :meth:`WorkQueue.claim` takes the rows again and undoes the reservation the
dead writer made (its pending content and region rows are dropped and their vector ids returned in
:attr:`Claim.undo`, to be removed from the store before the new vectors go in). A writer that
outlives its lease finds out at :meth:`reserve` or :meth:`complete` (:class:`ClaimLostError`,
nothing of its batch is committed). So no image is lost (a file leaves the queue only in the
transaction that commits its rows) and none is in the store twice (ids are never reused, and a
content's vectors are written under one claim).

The table is created by the first :meth:`WorkQueue.open` with ``create=True`` (the driver's);
catalogs that never share work have no such table.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from fgsearch.catalog.connect import from_raw, now, raw, to_sql_datetime
from fgsearch.catalog.files import upsert_files
from fgsearch.catalog.lock import ADVISORY_KEY
from fgsearch.catalog.schema import BIG, ID, TIME
from fgsearch.errors import LibraryError

if TYPE_CHECKING:
    from fgsearch.catalog.store import Catalog

work_metadata = sa.MetaData()
work_t = sa.Table(
    "work",
    work_metadata,
    sa.Column("id", ID, sa.Identity(), primary_key=True),
    sa.Column("raw_path", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("root", sa.LargeBinary, nullable=True),  # the folder it was found under (a sidecar's base)
    sa.Column("size", BIG, nullable=False),
    sa.Column("mtime_ns", BIG, nullable=False),
    sa.Column("state", sa.String(8), nullable=False),  # queued | claimed
    sa.Column("owner", sa.Text, nullable=True),
    sa.Column("lease_until", TIME, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("content_id", ID, nullable=True),  # reserved under the current claim, not yet complete
    sa.Index("ix_work_state", "state", "lease_until"),
    sqlite_autoincrement=True,
)


class ClaimLostError(LibraryError):
    """A writer's claim expired and another writer took its work: nothing of the batch was committed."""


@dataclass(frozen=True)
class WorkItem:
    """One claimed file: the queue row's id, the path and the (size, mtime) it was planned with,
    how many claims it has had, and the folder it was found under (``None``: not given)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    attempts: int
    root: str | None = None


@dataclass(frozen=True)
class Claim:
    """What :meth:`WorkQueue.claim` gives a writer: its items, and the vector ids (global, region) an
    expired earlier claim of these items reserved, to remove from the vector store first."""

    items: list[WorkItem]
    undo: tuple[list[int], list[int]] = ([], [])


@dataclass(frozen=True)
class Reservation:
    """Pending ids of the items :meth:`WorkQueue.reserve` got (``items[i]`` -> ``content_ids[i]``,
    ``region_ids[i]``; in the order of their bytes' hashes, not as given), and the ``copies``:
    items whose bytes are indexed or reserved already (by this batch or another writer), to
    :meth:`WorkQueue.link` later."""

    items: list[WorkItem]
    content_ids: list[int]
    region_ids: list[list[int]]
    copies: list[tuple[WorkItem, str]] = field(default_factory=list)  # (item, sha256)


def default_owner() -> str:
    """A writer's name in the queue: host, PID and a random part (a PID is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class WorkQueue:
    """The shared work of one library's catalog (see the module docstring)."""

    def __init__(self, catalog: Catalog, owner: str | None = None) -> None:
        self.catalog = catalog
        self.owner = owner or default_owner()
        self._lock = " FOR UPDATE SKIP LOCKED" if catalog.pg else ""

    @classmethod
    def open(cls, catalog: Catalog, *, create: bool = False, owner: str | None = None) -> WorkQueue:
        """The queue of ``catalog``; ``create`` makes its table when missing (the driver's job)."""
        if create:
            with catalog.engine.begin() as conn:
                if catalog.pg:  # two drivers at once: one creates, the other then sees the table
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_KEY[0]}, 2)")
                work_metadata.create_all(conn, checkfirst=True)
        elif not sa.inspect(catalog.engine).has_table("work"):
            raise LibraryError(f"the catalog {catalog.location} has no shared work queue; the driver creates it")
        return cls(catalog, owner)

    # ---- the driver ------------------------------------------------------------------------
    def enqueue(self, files: Sequence[tuple[str, int, int]], root: str | None = None) -> int:
        """Queue ``(path, size, mtime_ns)`` files found under ``root``; a file queued already keeps
        its row (and claim). Returns how many rows were added."""
        sql = (
            "INSERT INTO work (raw_path, root, size, mtime_ns, state, attempts) VALUES (?, ?, ?, ?, 'queued', 0) "
            "ON CONFLICT (raw_path) DO NOTHING"
        )
        base = None if root is None else raw(root)
        before = self.counts()["total"]
        with self.catalog.writing() as con:
            con.executemany(sql, [(raw(p), base, int(s), int(m)) for p, s, m in files])
        return self.counts()["total"] - before

    def counts(self) -> dict[str, int]:
        """Rows queued, claimed (lease running), expired (claimed, lease over) and in total."""
        t = "now()" if self.catalog.pg else "?"
        params = () if self.catalog.pg else (to_sql_datetime(now()),)
        sql = (
            f"SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'claimed' "
            f"AND lease_until >= {t}), count(*) FILTER (WHERE state = 'claimed' AND lease_until < {t}), count(*) "
            "FROM work"
        )
        with self.catalog.reading() as con:
            q, c, e, n = con.execute(sql, params * 2).fetchone()
        return {"queued": int(q), "claimed": int(c), "expired": int(e), "total": int(n)}

    # ---- a writer --------------------------------------------------------------------------
    def claim(self, batch_size: int, lease_s: float) -> Claim:
        """Up to ``batch_size`` files no live claim holds (queued, or claimed under a lease that
        expired), held by this writer for ``lease_s`` seconds. The reservation an expired claim left
        is undone here (see :class:`Claim`)."""
        if batch_size < 1 or lease_s <= 0:
            raise LibraryError(f"claim needs batch_size >= 1 and lease_s > 0, got {batch_size} and {lease_s}")
        pg = self.catalog.pg
        t = "now()" if pg else "?"
        pick = (
            f"SELECT id FROM work WHERE state = 'queued' OR (state = 'claimed' AND lease_until < {t}) "
            f"ORDER BY id LIMIT ?{self._lock}"
        )
        until = "now() + make_interval(secs => ?)" if pg else "?"
        with self.catalog.writing() as con:
            tnow = to_sql_datetime(now())
            ids = [r[0] for r in con.execute(pick, (batch_size,) if pg else (tnow, batch_size))]
            if not ids:
                return Claim([])
            stale = self._undo(con, ids)
            lease = (float(lease_s),) if pg else (to_sql_datetime(now() + timedelta(seconds=lease_s)),)
            rows = con.execute(
                f"UPDATE work SET state = 'claimed', owner = ?, lease_until = {until}, attempts = attempts + 1, "
                f"content_id = NULL WHERE id IN ({_marks(ids)}) RETURNING id, raw_path, size, mtime_ns, attempts, root",
                (self.owner, *lease, *ids),
            ).fetchall()
        items = [
            WorkItem(int(i), from_raw(bytes(p)), int(s), int(m), int(a), None if r is None else from_raw(bytes(r)))
            for i, p, s, m, a, r in rows
        ]
        items.sort(key=lambda w: w.id)
        return Claim(items, stale)

    def _undo(self, con: Any, ids: list[int]) -> tuple[list[int], list[int]]:
        """Drop the pending contents (and regions) reserved under expired claims of ``ids``."""
        cids = [
            int(r[0])
            for r in con.execute(
                f"SELECT c.id FROM work AS w JOIN contents AS c ON c.id = w.content_id "
                f"WHERE w.id IN ({_marks(ids)}) AND c.state = 'pending'",
                ids,
            )
        ]
        if not cids:
            return [], []
        rids = [int(r[0]) for r in con.execute(f"SELECT id FROM regions WHERE content_id IN ({_marks(cids)})", cids)]
        con.execute(f"DELETE FROM regions WHERE content_id IN ({_marks(cids)})", cids)
        con.execute(f"DELETE FROM contents WHERE id IN ({_marks(cids)})", cids)
        return cids, rids

    def _hold(self, con: Any, items: Sequence[WorkItem]) -> None:
        """Raise :class:`ClaimLostError` unless this writer still holds every item (rows locked)."""
        if not items:
            return
        ids = [it.id for it in items]
        t = "now()" if self.catalog.pg else "?"
        params = (*ids, self.owner) if self.catalog.pg else (*ids, self.owner, to_sql_datetime(now()))
        held = con.execute(
            f"SELECT count(*) FROM (SELECT id FROM work WHERE id IN ({_marks(ids)}) AND owner = ? "
            f"AND state = 'claimed' AND lease_until >= {t}{' FOR UPDATE' if self.catalog.pg else ''}) AS h",
            params,
        ).fetchone()[0]
        if int(held) != len(ids):
            raise ClaimLostError(
                f"this writer's claim on {len(ids) - int(held)} of {len(ids)} files expired and another writer "
                "took them; nothing of this batch was committed (give the writers a longer lease)"
            )

    def extend(self, items: Sequence[WorkItem], lease_s: float) -> None:
        """Renew the lease of held items (a batch that takes longer than planned)."""
        pg = self.catalog.pg
        until = "now() + make_interval(secs => ?)" if pg else "?"
        lease = float(lease_s) if pg else to_sql_datetime(now() + timedelta(seconds=lease_s))
        with self.catalog.writing() as con:
            self._hold(con, items)
            ids = [it.id for it in items]
            con.execute(f"UPDATE work SET lease_until = {until} WHERE id IN ({_marks(ids)})", (lease, *ids))

    def renew(self, items: Sequence[WorkItem], lease_s: float) -> int:
        """Renew the lease of those of ``items`` this writer still holds (a heartbeat: items done,
        given back or taken by another writer meanwhile are left alone); returns how many were
        renewed. A lease that ran out while no other writer took the items is renewed too: they are
        still this writer's (the owner column says so), and nothing of theirs was undone."""
        if not items:
            return 0
        pg = self.catalog.pg
        until = "now() + make_interval(secs => ?)" if pg else "?"
        lease = float(lease_s) if pg else to_sql_datetime(now() + timedelta(seconds=lease_s))
        ids = [it.id for it in items]
        params = (lease, *ids, self.owner)
        with self.catalog.writing() as con:
            cur = con.execute(
                f"UPDATE work SET lease_until = {until} WHERE id IN ({_marks(ids)}) AND owner = ? "
                "AND state = 'claimed'",
                params,
            )
            return int(cur.rowcount or 0)

    def reserve(self, items: Sequence[WorkItem], contents: Sequence[dict[str, Any]]) -> Reservation:
        """Reserve pending content and region ids for held items (``contents[i]`` as
        :meth:`Catalog.reserve_contents` takes it, with ``sha256`` and ``boxes``), in one
        transaction that also records them on the items' rows. Items whose bytes are already in
        the catalog (indexed, or reserved by another writer or earlier in the batch) are copies."""
        sql_c = (
            "INSERT INTO contents (sha256, width, height, captured_at, state, created_at) "
            "VALUES (?, ?, ?, ?, 'pending', ?) ON CONFLICT (sha256) DO NOTHING RETURNING id"
        )
        sql_r = (
            "INSERT INTO regions (content_id, x1, y1, x2, y2, proposer, rank, score) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        got: list[WorkItem] = []
        cids: list[int] = []
        copies: list[tuple[WorkItem, str]] = []
        stamp = to_sql_datetime(now())
        kept: list[dict[str, Any]] = []
        # in hash order: two writers inserting the same bytes wait on each other in one order (no deadlock)
        pairs = sorted(zip(items, contents, strict=True), key=lambda pair: str(pair[1]["sha256"]))
        with self.catalog.writing() as con:
            self._hold(con, items)
            for it, c in pairs:
                row = con.execute(
                    sql_c, (c["sha256"], c["width"], c["height"], to_sql_datetime(c.get("captured_at")), stamp)
                ).fetchone()
                if row is None:
                    copies.append((it, c["sha256"]))
                else:
                    got.append(it)
                    cids.append(int(row[0]))
                    kept.append(c)
            regions = []
            for cid, c in zip(cids, kept, strict=True):
                scores = c.get("scores") or [None] * len(c["boxes"])
                for rank, (b, sc) in enumerate(zip(c["boxes"], scores, strict=True)):
                    regions.append((cid, float(b[0]), float(b[1]), float(b[2]), float(b[3]), c["proposer"], rank, sc))
            if regions:
                con.executemany(sql_r, regions)
            rids = self._region_ids(con, cids)
            marked = [(c, it.id) for c, it in zip(cids, got, strict=True)]
            con.executemany("UPDATE work SET content_id = ? WHERE id = ?", marked)
        return Reservation(got, cids, [rids.get(c, []) for c in cids], copies)

    @staticmethod
    def _region_ids(con: Any, cids: list[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        if cids:
            sql = f"SELECT content_id, id FROM regions WHERE content_id IN ({_marks(cids)}) ORDER BY content_id, rank"
            for cid, rid in con.execute(sql, cids):
                out.setdefault(int(cid), []).append(int(rid))
        return out

    def complete(self, res: Reservation, run_id: int) -> None:
        """The reservation's vectors are in the store: mark its contents ok, write the file rows and
        take the items off the queue, in one transaction (nothing, if the claim was lost)."""
        if not res.items:
            return
        with self.catalog.writing() as con:
            self._hold(con, res.items)
            con.execute(f"UPDATE contents SET state = 'ok' WHERE id IN ({_marks(res.content_ids)})", res.content_ids)
            rows = [
                (it.path, it.size, it.mtime_ns, cid, "ok", None, run_id)
                for it, cid in zip(res.items, res.content_ids, strict=True)
            ]
            upsert_files(con, rows)
            ids = [it.id for it in res.items]
            con.execute(f"DELETE FROM work WHERE id IN ({_marks(ids)})", ids)

    def link(self, copies: Sequence[tuple[WorkItem, str]], run_id: int) -> list[WorkItem]:
        """Point held files at the indexed content with their bytes and take them off the queue;
        returns those whose content is not indexed yet (reserved by a writer still at work): they
        are given back to the queue, for a later claim to link."""
        if not copies:
            return []
        later: list[WorkItem] = []
        with self.catalog.writing() as con:
            self._hold(con, [it for it, _ in copies])
            rows, done = [], []
            for it, sha in copies:
                found = con.execute("SELECT id FROM contents WHERE sha256 = ? AND state = 'ok'", (sha,)).fetchone()
                if found is None:
                    later.append(it)
                else:
                    rows.append((it.path, it.size, it.mtime_ns, int(found[0]), "ok", None, run_id))
                    done.append(it.id)
            upsert_files(con, rows)
            if done:
                con.execute(f"DELETE FROM work WHERE id IN ({_marks(done)})", done)
        self.release(later)
        return later

    def fail(self, item: WorkItem, reason: str, run_id: int) -> None:
        """Record a file that cannot be indexed (``reason``) and take it off the queue."""
        with self.catalog.writing() as con:
            self._hold(con, [item])
            upsert_files(con, [(item.path, item.size, item.mtime_ns, None, "failed", reason, run_id)])
            con.execute("DELETE FROM work WHERE id = ?", (item.id,))

    def release(self, items: Sequence[WorkItem]) -> None:
        """Give held items back to the queue (undoing nothing: call it before :meth:`reserve`)."""
        if not items:
            return
        ids = [it.id for it in items]
        with self.catalog.writing() as con:
            con.execute(
                f"UPDATE work SET state = 'queued', owner = NULL, lease_until = NULL "
                f"WHERE id IN ({_marks(ids)}) AND owner = ? AND content_id IS NULL",
                (*ids, self.owner),
            )


def _marks(ids: Sequence[Any]) -> str:
    return ",".join("?" * len(ids))
