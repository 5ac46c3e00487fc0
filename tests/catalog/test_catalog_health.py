"""Catalog health: SQLite's checks see damaged pages, the salvage recovers every row that is not on
a damaged page (and no row that is), the writer lock on a full disk, and what an error on opening
a catalog is taken for (full disk, failing disk, damage)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import sqlite3
from pathlib import Path

import pytest

from fgsearch.catalog import Catalog, ModelInfo, WriteLock
from fgsearch.catalog.health import check_catalog, open_error_message
from fgsearch.catalog.salvage import salvage_catalog
from fgsearch.diskfull import full_disk_message, is_full_disk
from fgsearch.errors import LibraryError

MODEL = ModelInfo(name="m", ref="abc", dim=8, image_size=(64, 64))
N = 240  # images, 3 regions each; pages of 1 KiB: several leaf pages per table
PAGE = 1024


def _catalog(tmp_path: Path) -> Path:
    path = tmp_path / "lib" / "catalog.sqlite"
    cat = Catalog.open(path, create=True)
    cat.init_library(MODEL, regions={"proposer": "grid"}, backend={"kind": "exact"})
    run = cat.begin_run()
    for start in range(0, N, 60):
        items = [
            {"sha256": hashlib.sha256(str(i).encode()).hexdigest(), "width": 10 + i, "height": 20, "captured_at": None,
             "proposer": "grid", "boxes": [(0.0, 0.0, 0.5, 0.5)] * 3}
            for i in range(start, start + 60)
        ]  # fmt: skip
        cids, _ = cat.reserve_contents(items)
        cat.confirm_contents(cids, [(f"/photos/img_{c:04d}.jpg", 100 + c, 7 * c) for c in cids], run)
    cat.end_run(run, {"indexed": N})
    cat.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute(f"PRAGMA page_size={PAGE}")
    con.execute("VACUUM")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    return path


def _rows(path: Path, table: str) -> dict[int, tuple]:
    con = sqlite3.connect(path)
    try:
        return {r[0]: r for r in con.execute(f"SELECT * FROM {table}")}
    finally:
        con.close()


def _leaf_pages(path: Path, name: str) -> list[tuple[int, int]]:
    """(page number, cells) of the leaf pages of a table or index, in page order."""
    con = sqlite3.connect(path)
    try:
        sql = "SELECT pageno, ncell FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno"
        return [(int(p), int(n)) for p, n in con.execute(sql, (name,))]
    finally:
        con.close()


def _garble(path: Path, pageno: int, seed: int = 0) -> None:
    rnd = random.Random(seed)
    with open(path, "r+b") as f:
        f.seek((pageno - 1) * PAGE)
        f.write(bytes(rnd.randrange(256) for _ in range(PAGE)))


def test_a_healthy_catalog_passes_both_checks(tmp_path: Path) -> None:
    path = _catalog(tmp_path)
    for full in (False, True):
        chk = check_catalog(path, full=full)
        assert chk.ok and chk.method == ("integrity_check" if full else "quick_check"), chk.problems


@pytest.mark.parametrize("name", ["contents", "regions", "files", "ix_files_path", "sqlite_autoindex_contents_1"])
def test_both_checks_see_a_damaged_page_of_any_table_or_index(tmp_path: Path, name: str) -> None:
    path = _catalog(tmp_path)
    pages = _leaf_pages(path, name)
    _garble(path, pages[len(pages) // 2][0])
    for full in (False, True):
        chk = check_catalog(path, full=full)
        assert not chk.ok and not chk.full_disk and chk.problems


@pytest.mark.parametrize(
    ("table", "which"),
    [("contents", 0), ("contents", -1), ("regions", 1), ("files", 2), ("files", -1), ("ix_files_path", 1)],
)
def test_salvage_recovers_every_row_not_on_the_damaged_page(tmp_path: Path, table: str, which: int) -> None:
    path = _catalog(tmp_path)
    before = {t: _rows(path, t) for t in ("contents", "regions", "files", "meta", "runs")}
    pageno, cells = _leaf_pages(path, table)[which]
    _garble(path, pageno)
    damaged_bytes = path.read_bytes()

    rep = salvage_catalog(path)

    assert rep.kept_aside.read_bytes() == damaged_bytes  # the damaged catalog is kept, untouched
    assert check_catalog(path, full=True).ok
    after = {t: _rows(path, t) for t in before}
    assert after["meta"] == before["meta"] and after["runs"] == before["runs"]
    lost = {t: set(before[t]) - set(after[t]) for t in before}
    if table in before:  # exactly the rows on the damaged page are lost (dbstat counted them)
        assert len(lost[table]) == cells and rep.recovered[table] == len(before[table]) - cells
        assert rep.before[table] == len(before[table])  # counted by the table's intact indexes
    else:  # an index page: every row is recovered, and the index is rebuilt
        assert all(not v for v in lost.values())
    lost_contents = lost["contents"]
    # regions go with their image; files of a lost image are re-queued (mtime -1, no content)
    assert lost["regions"] == (lost["regions"] if table == "regions" else {
        rid for rid, r in before["regions"].items() if r[1] in lost_contents
    })  # fmt: skip
    requeued = {fid for fid, r in after["files"].items() if r[4] == -1 and r[5] is None}
    assert requeued == {fid for fid, r in before["files"].items() if r[5] in lost_contents and fid in after["files"]}
    assert rep.files_requeued == len(requeued)
    for t in before:  # every recovered row is the row that was stored (files re-queued aside)
        for rid, row in after[t].items():
            assert row == before[t][rid] or (t == "files" and rid in requeued)
    con = sqlite3.connect(path)
    seq = dict(con.execute("SELECT name, seq FROM sqlite_sequence"))
    con.close()
    assert seq["contents"] >= N and seq["regions"] >= 3 * N  # ids of lost rows are never given again
    with Catalog.open(path, read_only=True) as cat:
        assert cat.counts()["images"] == N - len(lost_contents)


def test_salvage_of_a_catalog_truncated_to_half_keeps_what_the_first_half_holds(tmp_path: Path) -> None:
    path = _catalog(tmp_path)
    tables = ("contents", "regions", "files")
    before = {t: _rows(path, t) for t in tables}
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate((size // PAGE // 2) * PAGE)
    assert not check_catalog(path).ok
    rep = salvage_catalog(path)
    after = {t: _rows(path, t) for t in tables}
    total = sum(len(v) for v in before.values())
    assert 0 < sum(rep.recovered[t] for t in tables) == sum(len(v) for v in after.values()) < total
    for t in tables:
        assert all(before[t][k][:4] == v[:4] for k, v in after[t].items())
    assert check_catalog(path, full=True).ok


# ---- the writer lock on a full disk --------------------------------------------------------------
def test_a_full_disk_at_the_lock_is_one_line_naming_the_disk_and_leaves_the_lock_free(tmp_path: Path) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(LibraryError, match=r"the disk holding library .* \(mounted at /.*\) is full \(.*No space"):
        WriteLock(tmp_path, pwrite=full).acquire()
    lock = WriteLock(tmp_path)  # the failed writer did not keep the lock
    lock.acquire()
    assert WriteLock(tmp_path).holder() == str(os.getpid())
    lock.release()
    assert WriteLock(tmp_path).holder() is None


# ---- what an error opening a catalog is taken for ------------------------------------------------
def test_an_io_error_on_a_full_disk_is_a_full_disk_and_never_a_rebuild(tmp_path: Path, monkeypatch) -> None:
    import shutil

    path = tmp_path / "catalog.sqlite"
    io = sqlite3.OperationalError("disk I/O error")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4096))
    assert is_full_disk(io, tmp_path)
    msg = open_error_message(path, io)
    assert "is full" in msg and "free some space" in msg and "--reindex" not in msg and "damaged" in msg
    monkeypatch.setattr(shutil, "disk_usage", real)
    msg = open_error_message(path, io)  # space left: a disk that fails to read, not a damaged catalog
    assert "may be intact" in msg and "--reindex" not in msg and "is full" not in msg
    msg = open_error_message(path, sqlite3.DatabaseError("database disk image is malformed"))
    assert f"fgsearch doctor --repair --library {tmp_path}" in msg and "is damaged" in msg
    assert "free some space" in full_disk_message(tmp_path, OSError(errno.ENOSPC, "No space left on device"))
