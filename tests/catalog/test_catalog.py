"""Catalog, walker and decoder: migrations, locking, ids, bad files and odd folders."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _library_data import V2_NOT_UTF8, catalog_as_v2, png_bomb_header, scene
from PIL import Image

from fgsearch.catalog import SCHEMA_VERSION, Catalog, ModelInfo, WriteLock
from fgsearch.decode import load_image
from fgsearch.errors import ImageError, InputError, LibraryError, LibraryLockedError
from fgsearch.library_paths import data_home, resolve_library_dir
from fgsearch.scan import walk

MODEL = ModelInfo(name="m", ref="abc", dim=8, image_size=(64, 64))


def _new(target: Path | str) -> Catalog:
    """A new catalog: in the folder ``target`` (SQLite), or the PostgreSQL database it names."""
    cat = Catalog.open(target if isinstance(target, str) else target / "catalog.sqlite", create=True)
    cat.init_library(MODEL, regions={"proposer": "grid"}, backend={"kind": "exact"})
    return cat


def _item(sha: str, n_boxes: int = 2) -> dict:
    return {
        "sha256": sha,
        "width": 10,
        "height": 10,
        "captured_at": None,
        "proposer": "grid",
        "boxes": [(0.0, 0.0, 0.5, 0.5)] * n_boxes,
    }


def test_ids_are_never_reused_and_pending_is_recoverable(catalog_dir: Any) -> None:
    cat = _new(catalog_dir)
    run = cat.begin_run()
    cids, rids = cat.reserve_contents([_item("a"), _item("b", 3)])
    assert [len(r) for r in rids] == [2, 3]
    assert cat.pending_contents() == (cids, [r for rr in rids for r in rr])
    cat.drop_contents(cids)
    cids2, rids2 = cat.reserve_contents([_item("a")])
    assert cids2[0] > max(cids) and rids2[0][0] > max(r for rr in rids for r in rr)
    cat.confirm_contents(cids2, [("/p/a.jpg", 1, 2)], run)
    assert cat.pending_contents() == ([], [])
    assert cat.content_hashes() == {"a"}
    assert [r.path for r in cat.contents_by_ids(cids2)] == ["/p/a.jpg"]


def test_links_sweep_and_filters(catalog_dir: Any) -> None:
    cat = _new(catalog_dir)
    run = cat.begin_run()
    cids, _ = cat.reserve_contents([_item("a"), _item("b")])
    cat.confirm_contents(cids, [("/p/x/a.jpg", 1, 10), ("/p/b.jpg", 1, 20)], run)
    cat.link_file("/p/y/a-copy.jpg", 1, 30, "a", run)
    cat.record_failure("/p/bad.jpg", 0, 40, "file is empty", run)
    cat.commit()
    row = cat.contents_by_ids([cids[0]])[0]
    assert row.paths == ("/p/x/a.jpg", "/p/y/a-copy.jpg")
    assert cat.filter_contents(path_glob="*/y/*") == [cids[0]]
    assert sorted(cat.filter_contents(path_prefix="/p")) == sorted(cids)
    assert cat.failures() == [("/p/bad.jpg", "file is empty")]
    # a new run that sees only the copy and b: a.jpg and bad.jpg are swept, content a survives via the copy
    run2 = cat.begin_run()
    cat.mark_seen(["/p/y/a-copy.jpg", "/p/b.jpg"], run2)
    cat.commit()
    removed = cat.sweep(run2, ["/p"])
    assert removed == ([], []) and cat.last_sweep_files == 2
    run3 = cat.begin_run()
    cat.mark_seen(["/p/b.jpg"], run3)
    cat.commit()
    gone_c, gone_r = cat.sweep(run3, ["/p/y"])  # only files under the swept root are touched
    assert gone_c == [cids[0]] and len(gone_r) == 2
    assert cat.counts()["images"] == 1


def test_model_check_and_schema_versions(tmp_path: Path) -> None:
    cat = _new(tmp_path)
    cat.check_model(MODEL)
    with pytest.raises(LibraryError, match="--reindex"):
        cat.check_model(ModelInfo(name="other", ref="zzz", dim=8, image_size=(64, 64)))
    cat.close()
    db = tmp_path / "catalog.sqlite"
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (json.dumps(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(LibraryError, match="newer than this fgsearch"):
        Catalog.open(db)


def test_step_migration_from_v1(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    cat = _new(tmp_path)
    cat.close()
    con = sqlite3.connect(db)  # turn it into a v1 catalog: no regions.score
    con.executescript("ALTER TABLE regions DROP COLUMN score; UPDATE meta SET value='1' WHERE key='schema_version';")
    con.close()
    with pytest.raises(LibraryError, match="upgrade it"):
        Catalog.open(db, read_only=True)
    cat = Catalog.open(db)
    assert cat.get_meta()["schema_version"] == SCHEMA_VERSION
    cols = [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(regions)")]
    assert "score" in cols
    cids, _ = cat.reserve_contents([{**_item("z"), "scores": [0.5, 0.25]}])
    assert cids


def test_files_are_keyed_by_their_exact_name(catalog_dir: Any) -> None:
    """Issue 23.3: a name that is not UTF-8 (``caf<e9>.png``) and a file literally called by its
    ``\\xNN`` escape (``caf\\xe9.png``) are two file rows with their own contents; the catalog
    gives each path back exactly (filters, lookups, failures)."""
    cat = _new(catalog_dir)
    run = cat.begin_run()
    latin1, escaped = os.fsdecode(b"/p/caf\xe9.png"), "/p/caf\\xe9.png"
    cids, _ = cat.reserve_contents([_item("a"), _item("b")])
    cat.confirm_contents(cids, [(latin1, 1, 10), (escaped, 2, 20)], run)
    assert cat.content_of_path(latin1) == cids[0] and cat.content_of_path(escaped) == cids[1]
    assert [(r.path, r.paths) for r in cat.contents_by_ids(cids)] == [(latin1, (latin1,)), (escaped, (escaped,))]
    states = cat.file_states([latin1, escaped])
    assert (states[latin1].size, states[escaped].size) == (1, 2)
    assert sorted(cat.filter_contents(path_prefix="/p")) == sorted(cids)
    assert cat.matching_paths(cids, path_prefix="/p") == {cids[0]: [latin1], cids[1]: [escaped]}
    assert sorted(cat.filter_contents(path_glob="*caf\\xe9*")) == sorted(cids)  # a glob matches the shown text
    assert sorted(cat.filter_contents(path_glob=os.fsdecode(b"*caf\xe9*"))) == sorted(cids)  # also as typed in Latin-1
    cat.mark_seen([latin1], run + 1)
    cat.commit()
    assert cat.unseen_paths(run + 1, ["/p"]) == [escaped]
    cat.record_failure(escaped, 3, 30, "truncated", run)
    cat.commit()
    assert cat.failures() == [(escaped, "truncated")] and cat.content_of_path(latin1) == cids[0]
    cat.record_failure(latin1, 1, 11, f"cannot read {latin1}", run)  # a reason quoting the name
    cat.commit()
    assert cat.failures() == [(escaped, "truncated"), (latin1, "cannot read /p/caf\\xe9.png")]
    cat.close()


def test_step_migration_from_v2_keys_files_by_their_bytes(tmp_path: Path) -> None:
    """A v2 catalog (one text ``path`` per file, unique) migrates to v3: its files keep their ids,
    contents and states under their exact names; the failures v2 recorded for names that were not
    UTF-8 (whose path was an escape, not the name) are dropped so the next run indexes those files."""
    db = tmp_path / "catalog.sqlite"
    cat = _new(tmp_path)
    run = cat.begin_run()
    cids, _ = cat.reserve_contents([_item("a")])
    cat.confirm_contents(cids, [("/p/caf\u00e9.png", 1, 10)], run)
    cat.record_failure("/p/caf\\xe9.png", 0, 0, V2_NOT_UTF8, run)
    cat.record_failure("/p/bad.png", 5, 50, "not an image", run)
    cat.commit()
    cat.close()
    catalog_as_v2(db)
    with pytest.raises(LibraryError, match="upgrade it to v3"):
        Catalog.open(db, read_only=True)
    with Catalog.open(db) as cat:
        assert cat.get_meta()["schema_version"] == SCHEMA_VERSION == 3
        assert cat.content_of_path("/p/caf\u00e9.png") == cids[0]
        assert cat.failures() == [("/p/bad.png", "not an image")]
        latin1 = os.fsdecode(b"/p/caf\xe9.png")
        cat.record_failure(latin1, 1, 1, "truncated", run)
        cat.record_failure("/p/caf\\xe9.png", 2, 2, "truncated", run)
        cat.commit()
        assert len(cat.failures()) == 3 and set(cat.file_states([latin1, "/p/caf\\xe9.png"])) == {
            latin1,
            "/p/caf\\xe9.png",
        }
    con = sqlite3.connect(db)
    rows = sorted(con.execute("SELECT raw_path, path FROM files"))
    assert rows == [
        (b"/p/bad.png", "/p/bad.png"),
        (b"/p/caf\\xe9.png", "/p/caf\\xe9.png"),
        ("/p/caf\u00e9.png".encode(), "/p/caf\u00e9.png"),
        (b"/p/caf\xe9.png", "/p/caf\\xe9.png"),  # shown as its escape, keyed by its byte
    ]
    con.close()


def test_corrupt_catalog_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LibraryError, match="not a readable SQLite database"):
        Catalog.open(db)


HOLD = """
import sys, time
from pathlib import Path
from fgsearch.catalog import WriteLock
WriteLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_write_lock_names_the_holder_and_dies_with_it(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    with pytest.raises(LibraryLockedError, match=f"PID {proc.pid}"):
        WriteLock(tmp_path).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = WriteLock(tmp_path)
    lock.acquire()  # the kernel released the dead holder's lock
    lock.release()


def test_walk_rules(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hid").mkdir()
    for p in (
        root / "x.JPG",
        root / "a" / "y.png",
        root / "a" / "b" / "z.webp",
        root / ".hid" / "h.png",
        root / "a" / "raw.tiff",
    ):
        scene(1).save(p, format="PNG")
    (root / "a" / "doc.pdf").write_bytes(b"%PDF")
    os.symlink(root, root / "a" / "loop")  # a cycle back to the root
    os.symlink(root / "missing.png", root / "dangling.png")
    bad_name = os.fsdecode(b"bad-\xff.png")
    scene(2).save(
        os.path.join(os.fsencode(root), os.fsencode(bad_name)).decode("utf-8", "surrogateescape"), format="PNG"
    )
    entries = list(walk([root]))
    names = [os.path.relpath(e.path, root) for e in entries if not e.error]
    assert names == ["a/b/z.webp", "a/raw.tiff", "a/y.png", bad_name, "x.JPG"]  # a name that is not UTF-8 too
    errors = {os.path.basename(e.path): e.error for e in entries if e.error}
    assert "broken symbolic link" in errors["dangling.png"]
    assert list(errors) == ["dangling.png"]
    assert [os.path.basename(e.path) for e in walk([root], include=["*.png"]) if not e.error] == ["y.png", bad_name]
    kept = [os.path.basename(e.path) for e in walk([root], exclude=["a/**"]) if not e.error]
    assert kept == [bad_name, "x.JPG"]
    assert len([e for e in walk([root], hidden=True) if not e.error]) == 6
    with pytest.raises(InputError, match="does not exist"):
        list(walk([tmp_path / "nope"]))


def test_decode_failures_and_modes(tmp_path: Path) -> None:
    good = tmp_path / "g.jpg"
    scene(3).save(good, quality=90)
    data = good.read_bytes()
    img = load_image(data)
    assert (img.width, img.height) == (160, 120) and img.image.mode == "RGB"
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        load_image(data[: len(data) // 2])
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"\x00garbage" * 50)
    with pytest.raises(ImageError, match="--max-megapixels"):
        load_image(png_bomb_header())
    with pytest.raises(ImageError, match="too small"):
        buf = tmp_path / "t.png"
        Image.new("RGB", (8, 8)).save(buf)
        load_image(buf.read_bytes())
    for mode in ("RGBA", "LA", "P", "L", "CMYK", "I;16"):
        p = tmp_path / f"m.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
        src = scene(4).convert("L").convert(mode) if mode == "I;16" else scene(4).convert(mode)
        src.save(p)
        assert load_image(p.read_bytes()).image.mode == "RGB"
    gif = tmp_path / "anim.gif"
    frames = [scene(i) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert load_image(gif.read_bytes()).width == 160
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0x9003] = "2021:05:04 10:11:12"
    rot = tmp_path / "rot.jpg"
    scene(5).save(rot, exif=exif.tobytes())
    out = load_image(rot.read_bytes())
    assert (out.width, out.height) == (120, 160)
    assert out.captured_at is not None and out.captured_at.year == 2021


def test_search_lookups_read_rows_as_stored(catalog_dir: Any) -> None:
    """contents_by_ids / contents_of_regions (raw SQLite on the search path) return what the
    SQLAlchemy columns hold: datetimes with microseconds, every ok path in order, owners in order."""
    from datetime import datetime

    cat = _new(catalog_dir)
    run = cat.begin_run()
    when = datetime(2021, 5, 4, 10, 11, 12, 345678)
    items = [_item("a"), {**_item("b", 3), "captured_at": when}, _item("c")]
    cids, rids = cat.reserve_contents(items)
    cat.confirm_contents(cids, [("/p/a.jpg", 1, 10), ("/p/b.jpg", 1, 20), ("/p/c.jpg", 1, 30)], run)
    cat.link_file("/p/0/b-copy.jpg", 1, 30, "b", run)
    cat.record_failure("/p/bad.jpg", 0, 40, "file is empty", run)
    cat.commit()
    rows = cat.contents_by_ids([cids[1], 999, cids[0]])
    assert [r.id for r in rows] == [cids[1], cids[0]]
    assert rows[0].captured_at == when and rows[1].captured_at is None
    assert rows[0].paths == ("/p/0/b-copy.jpg", "/p/b.jpg") and rows[0].path == "/p/0/b-copy.jpg"
    assert (rows[0].width, rows[0].height) == (10, 10)
    assert cat.contents_of_regions([rids[2][0], rids[1][2], 10_000, rids[1][0], rids[2][1]]) == [cids[2], cids[1]]
    assert cat.contents_of_regions([]) == [] and cat.contents_by_ids([]) == []


def test_fgsearch_home_sets_the_default_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGSEARCH_HOME", str(tmp_path / "home"))
    assert data_home() == tmp_path / "home"
    assert resolve_library_dir(None) == (tmp_path / "home" / "default").resolve()


def test_explicit_library_wins_and_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert resolve_library_dir("libs/../mine") == (tmp_path / "mine").resolve()
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert resolve_library_dir("~/lib") == (tmp_path / "user" / "lib").resolve()


def test_without_fgsearch_home_the_platform_data_dir_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from platformdirs import user_data_dir

    monkeypatch.delenv("FGSEARCH_HOME", raising=False)
    expected = Path(user_data_dir("fgsearch", appauthor=False))
    assert data_home() == expected
    assert resolve_library_dir(None) == (expected / "default").resolve()
    monkeypatch.setenv("FGSEARCH_HOME", "")  # empty counts as unset
    assert data_home() == expected
