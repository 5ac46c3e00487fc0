"""fgsearch.catalog: odd library paths, sweep roots, migration atomicity, model checks, links, lock, SQL errors."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fgsearch.catalog import MIGRATIONS, SCHEMA_VERSION, Catalog, ModelInfo, WriteLock
from fgsearch.errors import LibraryError, LibraryLockedError

MODEL = ModelInfo(name="tiny", ref="sha-1", dim=8, image_size=(64, 64))


def _new(db: Path | str) -> Catalog:
    cat = Catalog.open(db, create=True)
    cat.init_library(MODEL, regions={"proposer": "grid", "max_regions": 4}, backend={"kind": "faiss"})
    return cat


def _item(sha: str, n_boxes: int = 2, **kw: Any) -> dict[str, Any]:
    boxes = [(0.1 * i, 0.0, 0.1 * i + 0.5, 0.5) for i in range(n_boxes)]
    return {"sha256": sha, "width": 40, "height": 30, "proposer": "grid", "boxes": boxes, **kw}


def _index(cat: Catalog, files: dict[str, str], run: int) -> dict[str, int]:
    """Reserve and confirm one content per distinct hash; returns sha -> content id."""
    shas = sorted(set(files.values()))
    cids, _ = cat.reserve_contents([_item(s) for s in shas])
    ids = dict(zip(shas, cids, strict=True))
    first = {sha: path for path, sha in sorted(files.items(), reverse=True)}
    cat.confirm_contents([ids[s] for s in shas], [(first[s], 1, 1) for s in shas], run)
    for path, sha in files.items():
        if first[sha] != path:
            cat.link_file(path, 1, 1, sha, run)
    cat.commit()
    return ids


@pytest.mark.parametrize("name", ["lib?x", "lib#x", "lib%20x", "lib 100%", "ünï"])
def test_library_dirs_with_url_special_characters(tmp_path: Path, name: str) -> None:
    db = tmp_path / name / "catalog.sqlite"
    with _new(db) as cat:
        run = cat.begin_run()
        _index(cat, {"/p/a.jpg": "a"}, run)
    assert db.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written elsewhere
    with Catalog.open(db, read_only=True) as ro:
        assert ro.get_meta()["dim"] == 8 and ro.counts()["files_ok"] == 1


def test_read_only_catalog_cannot_write_and_sees_committed_rows(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    writer = _new(db)
    run = writer.begin_run()
    reader = Catalog.open(db, read_only=True)
    assert reader.counts()["images"] == 0
    _index(writer, {"/p/a.jpg": "a", "/p/b.jpg": "b"}, run)
    assert reader.counts()["images"] == 2  # WAL: a reader opened before the commit sees it after
    with pytest.raises(sa.exc.OperationalError, match="readonly"):
        reader.set_meta(dim=9)
    reader.close()
    writer.close()


def test_reader_works_while_the_writer_holds_a_transaction(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    writer = _new(db)
    _index(writer, {"/p/a.jpg": "a"}, writer.begin_run())
    with writer.engine.begin() as conn:
        conn.execute(sa.text("UPDATE contents SET width = 99"))  # uncommitted write lock held
        with Catalog.open(db, read_only=True) as reader:
            (row,) = reader.contents_by_ids([1])
            assert row.width == 40
    with Catalog.open(db, read_only=True) as reader:
        assert reader.contents_by_ids([1])[0].width == 99
    writer.close()


@pytest.mark.parametrize("root", ["/", "/p", "/p/", "/p/sub"])
def test_sweep_only_touches_files_under_the_root(tmp_path: Path, root: str) -> None:
    cat = _new(tmp_path / "catalog.sqlite")
    files = {"/p/a.jpg": "a", "/p/sub/b.jpg": "b", "/p/subway/c.jpg": "c", "/q/d.jpg": "d", "/p": "e"}
    ids = _index(cat, files, cat.begin_run())
    run2 = cat.begin_run()
    removed, removed_regions = cat.sweep(run2, [root])  # nothing seen this run
    expected = {
        "/": {"a", "b", "c", "d", "e"},
        "/p": {"a", "b", "c", "e"},
        "/p/": {"a", "b", "c", "e"},
        "/p/sub": {"b"},
    }[root]
    assert sorted(removed) == sorted(ids[s] for s in expected)
    assert len(removed_regions) == 2 * len(expected) and cat.last_sweep_files == len(expected)
    assert cat.counts()["images"] == 5 - len(expected)


def test_filter_prefix_respects_folder_boundaries(catalog_target: Any) -> None:
    cat = _new(catalog_target)
    ids = _index(cat, {"/p/sub/b.jpg": "b", "/p/subway/c.jpg": "c", "/q/d.jpg": "d"}, cat.begin_run())
    assert cat.filter_contents(path_prefix="/p/sub") == [ids["b"]]
    assert sorted(cat.filter_contents(path_prefix="/")) == sorted(ids.values())
    assert cat.filter_contents(path_glob="/p/sub*/*.jpg") == sorted([ids["b"], ids["c"]])


def test_duplicates_share_one_content_and_survive_until_the_last_copy_goes(catalog_target: Any) -> None:
    cat = _new(catalog_target)
    ids = _index(cat, {"/p/1.jpg": "a", "/p/x/2.jpg": "a", "/p/b.jpg": "b"}, cat.begin_run())
    assert cat.counts()["images"] == 2 and cat.counts()["files_ok"] == 3
    (row,) = cat.contents_by_ids([ids["a"]])
    assert row.paths == ("/p/1.jpg", "/p/x/2.jpg") and row.path == "/p/1.jpg"
    run2 = cat.begin_run()
    cat.mark_seen(["/p/x/2.jpg", "/p/b.jpg"], run2)
    cat.commit()
    assert cat.sweep(run2, ["/p"]) == ([], [])
    assert cat.contents_by_ids([ids["a"]])[0].paths == ("/p/x/2.jpg",)
    run3 = cat.begin_run()
    cat.mark_seen(["/p/b.jpg"], run3)
    cat.commit()
    removed, _ = cat.sweep(run3, ["/p"])
    assert removed == [ids["a"]] and cat.contents_by_ids([ids["a"]]) == []


def test_a_file_that_turns_bad_releases_its_content(catalog_target: Any) -> None:
    cat = _new(catalog_target)
    ids = _index(cat, {"/p/a.jpg": "a"}, cat.begin_run())
    run2 = cat.begin_run()
    cat.record_failure("/p/a.jpg", 5, 9, "truncated image data", run2)
    cat.commit()
    assert cat.failures() == [("/p/a.jpg", "truncated image data")]
    assert cat.contents_by_ids([ids["a"]]) == []  # no ok file shows it any more
    removed, regions = cat.sweep(run2, ["/p"])
    assert removed == [ids["a"]] and len(regions) == 2
    assert cat.failures() == [("/p/a.jpg", "truncated image data")]  # the failure row itself stays


def test_link_to_missing_content_is_a_failure_not_a_dangling_row(catalog_target: Any) -> None:
    cat = _new(catalog_target)
    run = cat.begin_run()
    cat.link_file("/p/ghost.jpg", 1, 1, "no-such-sha", run)
    cat.commit()
    assert cat.failures() == [("/p/ghost.jpg", "content vanished during indexing; run again")]


def test_ids_stay_unique_across_reopen_after_dropping_the_newest(catalog_target: Any) -> None:
    db = catalog_target
    cat = _new(db)
    cids, rids = cat.reserve_contents([_item("a"), _item("b", 3)])
    assert cat.drop_contents([cids[1]]) == ([cids[1]], rids[1])
    cat.close()
    cat = Catalog.open(db)
    new_c, new_r = cat.reserve_contents([_item("c", 1)])
    assert new_c[0] > cids[1] and new_r[0][0] > max(rids[1])
    assert cat.pending_contents() == ([cids[0], new_c[0]], rids[0] + new_r[0])


def test_region_lookups(catalog_target: Any) -> None:
    cat = _new(catalog_target)
    run = cat.begin_run()
    cids, rids = cat.reserve_contents([_item("a", 3, scores=[0.9, 0.5, 0.1]), _item("b", 1)])
    cat.confirm_contents(cids, [("/p/a.jpg", 1, 1), ("/p/b.jpg", 1, 1)], run)
    per = cat.regions_for_contents(cids)
    assert [r for r, _ in per[cids[0]]] == rids[0]
    box = per[cids[0]][1][1]
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((0.1, 0.0, 0.6, 0.5))
    assert cat.contents_of_regions([rids[1][0], rids[0][2], rids[0][0], 10**9]) == [cids[1], cids[0]]
    by_id = cat.regions_by_ids([rids[0][1], 10**9])
    assert list(by_id) == [rids[0][1]] and by_id[rids[0][1]][1].path == "/p/a.jpg"
    assert cat.all_vector_ids() == (cids, rids[0] + rids[1])


def test_drop_for_reindex_forces_files_to_be_embedded_again(catalog_target: Any) -> None:
    cat = _new(catalog_target)
    ids = _index(cat, {"/p/a.jpg": "a"}, cat.begin_run())
    cat.drop_contents([ids["a"]], keep_files_for_reindex=True)
    state = cat.file_states(["/p/a.jpg"])["/p/a.jpg"]
    assert state.mtime_ns == -1  # never equal to a real mtime: the fast path will not skip it
    assert cat.counts()["images"] == 0


@pytest.mark.parametrize(
    ("other", "ok"),
    [
        (MODEL, True),
        (ModelInfo(name="alias-of-tiny", ref="sha-1", dim=8, image_size=(64, 64)), True),  # same weights
        (ModelInfo(name="tiny", ref="sha-2", dim=8, image_size=(64, 64)), False),  # retrained checkpoint
        (ModelInfo(name="tiny", ref="sha-1", dim=16, image_size=(64, 64)), False),
        (ModelInfo(name="other", ref="", dim=8, image_size=(64, 64)), False),
    ],
)
def test_check_model(tmp_path: Path, other: ModelInfo, ok: bool) -> None:
    cat = _new(tmp_path / "catalog.sqlite")
    if ok:
        cat.check_model(other)
    else:
        with pytest.raises(LibraryError, match=r"built with model tiny \(dim 8, ref sha-1\).*--reindex"):
            cat.check_model(other)


def test_failed_migration_leaves_the_old_catalog_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "catalog.sqlite"
    _new(db).close()
    con = sqlite3.connect(db)
    con.executescript("ALTER TABLE regions DROP COLUMN score; UPDATE meta SET value='1' WHERE key='schema_version';")
    con.close()

    real_step = MIGRATIONS[1]

    def half_done(con: sqlite3.Connection) -> None:
        real_step(con)
        raise RuntimeError("power cut in the middle of a migration")

    monkeypatch.setitem(MIGRATIONS, 1, half_done)
    with pytest.raises(RuntimeError, match="power cut"):
        Catalog.open(db)
    cols = [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(regions)")]
    assert "score" not in cols  # the step rolled back with its version bump
    monkeypatch.undo()
    with Catalog.open(db) as cat:  # and the real migration still applies afterwards
        assert cat.get_meta()["schema_version"] == SCHEMA_VERSION


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="no catalog at"):
        Catalog.open(tmp_path / "missing.sqlite")
    (tmp_path / "empty.sqlite").write_bytes(b"")
    with pytest.raises(LibraryError, match="is empty"):
        Catalog.open(tmp_path / "empty.sqlite", read_only=True)


def test_write_lock_is_exclusive_within_one_process_and_reusable(tmp_path: Path) -> None:
    first = WriteLock(tmp_path)
    first.acquire()
    assert (tmp_path / "lock").read_text().strip().isdigit()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            WriteLock(tmp_path).acquire()
        except LibraryLockedError as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and "is locked by PID" in str(errors[0])
    first.release()
    first.release()  # idempotent
    second = WriteLock(tmp_path)
    second.acquire()
    second.release()


def test_write_lock_on_a_missing_library_dir_is_a_library_error(tmp_path: Path) -> None:
    with pytest.raises(LibraryError):
        WriteLock(tmp_path / "not-there").acquire()


def test_filesystem_without_locks_is_not_reported_as_locked(tmp_path: Path) -> None:
    import errno

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    with pytest.raises(LibraryError, match=r"cannot lock .*No locks available.*local disk") as info:
        WriteLock(tmp_path, flock=no_locks).acquire()
    assert not isinstance(info.value, LibraryLockedError)


def test_a_failed_statement_is_a_dbapi_error_and_its_transaction_rolls_back(tmp_path: Path) -> None:
    """Every statement runs as plain SQL; a failure still leaves as SQLAlchemy's DBAPIError family
    (``.orig`` the sqlite error), and a write block commits all of its statements or none."""
    cat = _new(tmp_path / "catalog.sqlite")
    cat.reserve_contents([_item("a")])
    with pytest.raises(sa.exc.IntegrityError, match="UNIQUE") as info:
        cat.reserve_contents([_item("b"), _item("a")])  # the second one repeats a hash
    assert isinstance(info.value.orig, sqlite3.IntegrityError)
    assert cat.content_sha256(2) is None and cat.pending_contents()[0] == [1]  # "b" rolled back too
    con = sqlite3.connect(tmp_path / "catalog.sqlite")
    con.execute("DROP TABLE regions")
    con.commit()
    con.close()
    with pytest.raises(sa.exc.OperationalError, match="no such table: regions") as lookup:
        cat.region_ids_by_content([1])
    assert isinstance(lookup.value.orig, sqlite3.OperationalError)
    cat.close()


def test_content_sha256(catalog_target: Any) -> None:
    cat = _new(catalog_target)
    ids = _index(cat, {"/p/a.jpg": "a" * 64}, cat.begin_run())
    assert cat.content_sha256(ids["a" * 64]) == "a" * 64 and cat.content_sha256(10**9) is None


def test_capture_and_modification_filters_compare_stored_times(catalog_target: Any) -> None:
    from datetime import datetime, timezone

    cat = _new(catalog_target)
    run = cat.begin_run()
    when = datetime(2021, 5, 4, 10, 11, 12)  # stored with six zero microseconds
    cids, _ = cat.reserve_contents([_item("a", captured_at=when), _item("b")])
    mtime = int(datetime(2022, 1, 1, tzinfo=timezone.utc).timestamp() * 1e9)
    cat.confirm_contents(cids, [("/p/a.jpg", 1, mtime), ("/p/b.jpg", 1, mtime + 1)], run)
    assert cat.filter_contents(captured_after=when) == [cids[0]]
    assert cat.filter_contents(captured_before=when) == []
    assert cat.filter_contents(captured_before=when.replace(microsecond=1)) == [cids[0]]
    at = datetime(2022, 1, 1, tzinfo=timezone.utc)
    assert sorted(cat.filter_contents(modified_after=at)) == cids
    assert sorted(cat.filter_contents(modified_before=datetime(2300, 1, 1))) == cids  # past 2262: clamped
    assert cat.matching_paths(cids, modified_after=at, path_glob="*/b.jpg") == {cids[1]: ["/p/b.jpg"]}
