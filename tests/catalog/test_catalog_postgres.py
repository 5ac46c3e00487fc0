"""fgsearch.catalog on PostgreSQL: its column types, the advisory writer lock (dies with its holder)
and the shared work queue (claims under a lease, SKIP LOCKED, reclaimed after a kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fgsearch.catalog import Catalog, ModelInfo
from fgsearch.catalog.claims import ClaimLostError, WorkQueue
from fgsearch.catalog.lock import AdvisoryLock
from fgsearch.catalog.postgres import connect_url, glob_regex, public_url, redact
from fgsearch.errors import LibraryError, LibraryLockedError

MODEL = ModelInfo(name="tiny", ref="sha-1", dim=8, image_size=(64, 64))
ROOT = Path(__file__).resolve().parents[2]


def _new(target: Any) -> Catalog:
    cat = Catalog.open(target, create=True)
    cat.init_library(MODEL, regions={"proposer": "grid"}, backend={"kind": "exact"})
    return cat


def _content(sha: str, n_boxes: int = 2) -> dict[str, Any]:
    return {"sha256": sha, "width": 4, "height": 4, "proposer": "grid", "boxes": [(0.0, 0.0, 0.5, 0.5)] * n_boxes}


def test_postgres_columns_are_identity_timestamptz_jsonb_bytea(postgres_url: str) -> None:
    _new(postgres_url).close()
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT table_name, column_name, data_type, is_identity FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        ).fetchall()
    engine.dispose()
    cols = {(t, c): (d, i) for t, c, d, i in rows}
    for table in ("contents", "regions", "files", "runs"):
        assert cols[(table, "id")] == ("bigint", "YES")
    assert cols[("contents", "created_at")][0] == "timestamp with time zone"
    assert cols[("meta", "value")][0] == cols[("runs", "summary")][0] == "jsonb"
    assert cols[("files", "raw_path")][0] == "bytea" and cols[("files", "mtime_ns")][0] == "bigint"


def test_a_postgres_catalog_is_refused_where_it_is_not_ours(postgres_url: str) -> None:
    with pytest.raises(LibraryError, match="holds no fgsearch catalog; create the library"):
        Catalog.open(postgres_url)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE files (x int)")
    engine.dispose()
    with pytest.raises(LibraryError, match=r"tables named like the catalog's \(files\).*its own database"):
        Catalog.open(postgres_url, create=True)


def test_glob_patterns_mean_what_sqlite_glob_means() -> None:
    import re

    cases = {"*/y/*": ("/p/y/a.jpg", "/p/x/a.jpg"), "a?[bc]": ("axc", "axd"), "[^x]z": ("yz", "xz")}
    cases |= {"[]a]": ("]", "b"), "a[": ("a[", "a"), "a.b": ("a.b", "axb"), "100%": ("100%", "100")}
    for glob, (yes, no) in cases.items():
        rx = glob_regex(glob)
        assert re.search(rx, yes) and not re.search(rx, no), glob


def test_a_password_in_the_url_is_neither_recorded_nor_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://ann:s3cr%40t@db.example:5433/photos"
    assert public_url(url) == "postgresql+psycopg://ann@db.example:5433/photos"
    shown = redact(f"failed for {url} (s3cr@t)", url)
    assert shown == "failed for postgresql+psycopg://ann:***@db.example:5433/photos (***)"
    monkeypatch.setenv("PHOTOS_PW", "from-env")
    assert connect_url(public_url(url), "PHOTOS_PW").password == "from-env"
    monkeypatch.delenv("PHOTOS_PW")
    with pytest.raises(LibraryError, match=r"\$PHOTOS_PW, which is not set; export PHOTOS_PW"):
        connect_url(public_url(url), "PHOTOS_PW")


_HOLDER = """
import sys, time
from fgsearch.catalog.lock import AdvisoryLock
from fgsearch.catalog.postgres import connect_url
lock = AdvisoryLock(connect_url(sys.argv[1]), "lib", shared=sys.argv[2] == "shared")
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _hold(url: str, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, url, mode], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _acquire_within(lock: AdvisoryLock, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            lock.acquire()
            return
        except LibraryLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_advisory_lock_names_its_holder_and_dies_with_it(postgres_url: str) -> None:
    _new(postgres_url).close()
    holder = _hold(postgres_url, "exclusive")
    try:
        mine = AdvisoryLock(connect_url(postgres_url), "lib")
        with pytest.raises(LibraryLockedError, match=rf"library lib is locked by fgsearch pid {holder.pid} on "):
            mine.acquire()
        with pytest.raises(LibraryLockedError, match="a writer that indexes alone"):
            AdvisoryLock(connect_url(postgres_url), "lib", shared=True).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        _acquire_within(mine, 10)  # PostgreSQL ends the dead client's session, and its lock with it
        assert mine.alive()
        mine.release()
        assert not mine.alive()
    finally:
        holder.kill()
        holder.wait()


def test_shared_writers_exclude_a_lone_writer(postgres_url: str) -> None:
    a = AdvisoryLock(connect_url(postgres_url), "lib", shared=True)
    b = AdvisoryLock(connect_url(postgres_url), "lib", shared=True)
    a.acquire()
    b.acquire()  # writers of a shared store index together
    with pytest.raises(LibraryLockedError, match=r"being indexed by 2 writer\(s\)"):
        AdvisoryLock(connect_url(postgres_url), "lib").acquire()
    a.release()
    b.release()
    lone = AdvisoryLock(connect_url(postgres_url), "lib")
    lone.acquire()
    lone.release()


def test_work_queue_claims_reserves_completes_and_links(catalog_target: Any) -> None:
    """The queue works on both dialects (SQLite: one writer, e.g. the local runner)."""
    cat = _new(catalog_target)
    run = cat.begin_run()
    q = WorkQueue.open(cat, create=True)
    assert q.enqueue([("/p/a.jpg", 1, 10), ("/p/b.jpg", 2, 20), ("/p/a-copy.jpg", 1, 30)]) == 3
    assert q.enqueue([("/p/a.jpg", 1, 10)]) == 0  # queued already
    claim = q.claim(2, lease_s=60)
    assert [it.path for it in claim.items] == ["/p/a.jpg", "/p/b.jpg"] and claim.undo == ([], [])
    assert q.counts() == {"queued": 1, "claimed": 2, "expired": 0, "total": 3}
    res = q.reserve(claim.items, [_content("A"), _content("B", 3)])
    assert [len(r) for r in res.region_ids] == [2, 3] and res.copies == []
    assert cat.counts()["images"] == 0  # pending until complete
    q.complete(res, run)
    assert cat.counts()["images"] == 2 and q.counts()["total"] == 1
    (copy,) = q.claim(5, lease_s=60).items
    res2 = q.reserve([copy], [_content("A")])
    assert res2.items == [] and [sha for _, sha in res2.copies] == ["A"]
    assert q.link(res2.copies, run) == []
    assert q.counts()["total"] == 0
    assert cat.contents_by_ids([res.content_ids[0]])[0].paths == ("/p/a-copy.jpg", "/p/a.jpg")
    assert q.claim(5, lease_s=60).items == []
    cat.close()


def test_a_claim_outlived_by_its_writer_is_undone_and_taken_over(postgres_url: str) -> None:
    cat = _new(postgres_url)
    run = cat.begin_run()
    slow, other = WorkQueue.open(cat, create=True, owner="slow"), WorkQueue.open(cat, owner="other")
    slow.enqueue([("/p/a.jpg", 1, 10)])
    items = slow.claim(1, lease_s=0.3).items
    res = slow.reserve(items, [_content("A")])
    assert other.claim(1, lease_s=60).items == []  # held: SKIP LOCKED / lease running
    time.sleep(0.5)
    taken = other.claim(1, lease_s=60)
    assert [it.path for it in taken.items] == ["/p/a.jpg"] and taken.items[0].attempts == 2
    assert taken.undo == (res.content_ids, res.region_ids[0])  # the vectors to remove from the store
    assert cat.pending_contents() == ([], [])  # the stale reservation is gone from the catalog
    with pytest.raises(ClaimLostError, match="expired and another writer took them; nothing of this batch"):
        slow.complete(res, run)
    res2 = other.reserve(taken.items, [_content("A")])
    other.complete(res2, run)
    assert cat.counts()["images"] == 1 and res2.content_ids[0] > res.content_ids[0]  # ids never reused
    cat.close()


def test_renew_keeps_only_what_this_writer_still_holds(catalog_target: Any) -> None:
    """The heartbeat's renewal: held items (even past their lease, while no one took them) are
    renewed; items another writer took, or that are done, are left alone."""
    cat = _new(catalog_target)
    run = cat.begin_run()
    mine, other = WorkQueue.open(cat, create=True, owner="mine"), WorkQueue.open(cat, owner="other")
    mine.enqueue([("/p/a.jpg", 1, 10), ("/p/b.jpg", 2, 20)])
    a, b = mine.claim(2, lease_s=0.3).items
    time.sleep(0.5)  # both leases ran out; no one took them yet
    assert mine.renew([a], lease_s=60) == 1  # a: still mine
    taken = other.claim(2, lease_s=60).items  # b's lease is over: the other writer takes it
    assert [it.path for it in taken] == ["/p/b.jpg"]
    assert mine.renew([a, b], lease_s=60) == 1  # b is the other's now
    mine.complete(mine.reserve([a], [_content("A")]), run)
    assert mine.renew([a], lease_s=60) == 0  # done: off the queue
    assert other.counts() == {"queued": 0, "claimed": 1, "expired": 0, "total": 1}
    cat.close()


_WORKER = """
import sys, time
from fgsearch.catalog import Catalog
from fgsearch.catalog.claims import WorkQueue
url, name, mode = sys.argv[1:4]
cat = Catalog.open(url)
q = WorkQueue.open(cat, owner=name)
run = cat.begin_run()

def store(con, ids, path):  # the shared vector store: an upsert by id (idempotent), every write logged
    sql = "INSERT INTO store (id, path) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET path = excluded.path"
    con.execute(sql, (ids, path))
    con.execute("INSERT INTO store_log (id) VALUES (%s)", (ids,))

import psycopg
con = psycopg.connect(sys.argv[4], autocommit=True)
while q.counts()["total"]:
    claim = q.claim(3, lease_s=1.5)
    if claim.undo[0]:
        con.execute("DELETE FROM store WHERE id = ANY(%s)", (claim.undo[0],))
    if not claim.items:
        time.sleep(0.1)
        continue
    contents = [{"sha256": it.path[-5:], "width": 1, "height": 1, "proposer": "-", "boxes": []} for it in claim.items]
    res = q.reserve(claim.items, contents)
    for it, cid in zip(res.items, res.content_ids):
        store(con, cid, it.path)
    if mode == "victim":
        print("reserved", flush=True)
        time.sleep(600)
    q.complete(res, run)
    q.link(res.copies, run)
print("done", flush=True)
"""


def test_writers_share_the_work_and_a_killed_ones_batch_is_reclaimed(postgres_url: str) -> None:
    """Three writers on one catalog (one is killed -9 after writing vectors, before completing):
    every file ends up indexed once, and the store holds exactly the catalog's images."""
    cat = _new(postgres_url)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE store (id bigint PRIMARY KEY, path text)")
        conn.exec_driver_sql("CREATE TABLE store_log (id bigint)")
    q = WorkQueue.open(cat, create=True)
    files = [(f"/p/{i:05d}", 1, i) for i in range(40)]
    q.enqueue(files)
    libpq = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    args = [sys.executable, "-c", _WORKER, postgres_url]
    victim = subprocess.Popen([*args, "victim", "victim", libpq], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert victim.stdout is not None and victim.stdout.readline().strip() == "reserved"
    workers = [
        subprocess.Popen([*args, f"w{i}", "ok", libpq], stdout=subprocess.PIPE, text=True, cwd=ROOT) for i in range(2)
    ]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    for w in workers:
        out, _ = w.communicate(timeout=120)
        assert w.returncode == 0 and out.strip() == "done"
    with engine.connect() as conn:
        stored = dict(conn.exec_driver_sql("SELECT id, path FROM store").fetchall())
        writes = [r[0] for r in conn.exec_driver_sql("SELECT id FROM store_log").fetchall()]
    engine.dispose()
    cids, _ = cat.all_vector_ids()
    assert sorted(stored) == sorted(cids) and len(cids) == len(files)  # each image once in the store
    assert cat.pending_contents() == ([], []) and cat.counts()["files_ok"] == len(files)
    assert sorted(r.path for r in cat.contents_by_ids(cids)) == [p for p, _, _ in files]
    assert len(writes) == len(files) + 3  # the victim's batch of 3 was written twice: once undone
    cat.close()
