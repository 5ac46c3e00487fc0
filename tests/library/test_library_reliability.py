"""A library folder is never mixed with the user's files; --reindex keeps the library's settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from _library_data import make_folder, scene
from _privileges import unprivileged
from typer.testing import CliRunner

from fgsearch.errors import LibraryError
from fgsearch.library import BackendSettings, Library
from fgsearch.regions import RegionSettings


def test_a_folder_of_the_users_files_is_refused_and_nothing_is_written(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    (home / "index").mkdir(parents=True)
    (home / "index" / "thesis.txt").write_text("years of work")
    scene(1).save(home / "holiday.jpg")
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    with pytest.raises(LibraryError, match=r"is not empty \(holiday.jpg, index\) and is not an fgsearch library"):
        Library.open(home, model=str(tiny_model_dir))
    with pytest.raises(LibraryError, match="not an fgsearch library"):
        Library.open(home, model=str(tiny_model_dir), reindex=True)
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before  # no lock, no catalog
    assert (home / "index" / "thesis.txt").read_text() == "years of work"


def test_an_empty_folder_or_the_lock_of_a_failed_creation_is_fine(tmp_path: Path, tiny_model_dir: Path) -> None:
    for name in ("empty", "after-failure"):
        (tmp_path / name).mkdir()
    (tmp_path / "after-failure" / "lock").write_text("")
    for name in ("empty", "after-failure"):
        with Library.open(tmp_path / name, model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
            assert lib.catalog.counts()["images"] == 0


def test_reindex_deletes_only_what_the_library_created(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=3, bad=False)
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        lib.index(root)
    # files the user put into the library folder later, inside and beside the index folder
    (lib_dir / "index" / "notes").mkdir()
    (lib_dir / "index" / "notes" / "keep.txt").write_text("mine")
    (lib_dir / "index" / "keep.txt").write_text("mine too")
    (lib_dir / "qdrant").mkdir()
    (lib_dir / "qdrant" / "keep.txt").write_text("not a qdrant store")
    with Library.open(lib_dir, reindex=True) as lib:
        assert lib.catalog.counts()["images"] == 0 and lib.global_index.count() == 0
        assert lib.index(root).indexed == 3
    assert (lib_dir / "index" / "notes" / "keep.txt").read_text() == "mine"
    assert (lib_dir / "index" / "keep.txt").read_text() == "mine too"
    assert (lib_dir / "qdrant" / "keep.txt").read_text() == "not a qdrant store"


def test_reindex_keeps_the_backend_and_region_settings_unless_new_ones_are_given(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=2, bad=False)
    lib_dir = tmp_path / "lib"
    grid = RegionSettings(proposer="grid", max_regions=3)
    with Library.open(lib_dir, model=str(tiny_model_dir), backend="exact", regions=grid) as lib:
        lib.index(root)
    with Library.open(lib_dir, reindex=True) as lib:
        assert lib.backend == BackendSettings(kind="exact") and lib.region_settings == grid
        assert lib.index(root).regions == 6
    with Library.open(lib_dir, read_only=True) as lib:  # recorded, not only used
        assert lib.backend.kind == "exact" and lib.region_settings == grid
        assert lib.global_index.kind == "exact"
    none = RegionSettings(proposer="none")
    with Library.open(lib_dir, reindex=True, backend="faiss", regions=none) as lib:  # new ones given: used
        assert lib.backend.kind == "faiss" and lib.region_settings == none


def test_a_library_recorded_with_the_old_backend_format_opens_searches_and_reindexes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Catalogs written before backend options kept qdrant's fields beside every kind
    (``{"kind": "faiss", "qdrant_url": null, ..., "qdrant_collection": "fgsearch"}``): they open as
    they did, and the fields mean qdrant's options only for a qdrant library."""
    import json
    import sqlite3

    root = tmp_path / "photos"
    make_folder(root, n_good=2, bad=False)
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model=str(tiny_model_dir), backend="exact") as lib:
        lib.index(root)
    old = {"kind": "exact", "qdrant_url": None, "qdrant_path": None, "qdrant_collection": "fgsearch"}
    with sqlite3.connect(lib_dir / "catalog.sqlite") as con:
        con.execute("UPDATE meta SET value=? WHERE key='backend'", (json.dumps(old),))
    with Library.open(lib_dir, read_only=True) as reader:
        assert reader.backend == BackendSettings("exact") and len(reader.search("a photo", k=2)) == 2
    with Library.open(lib_dir) as lib:
        assert lib.index(root).unchanged == 2
    with Library.open(lib_dir, reindex=True) as lib:
        assert lib.backend == BackendSettings("exact") and lib.index(root).indexed == 2
    legacy = {"kind": "qdrant", "qdrant_url": None, "qdrant_path": "/srv/q", "qdrant_collection": "photos"}
    assert BackendSettings.from_dict(legacy).options["path"] == "/srv/q"
    assert BackendSettings.from_dict(legacy).options["collection"] == "photos"


def test_doctor_on_a_folder_without_a_library_refuses_and_writes_nothing(tmp_path: Path) -> None:
    from fgsearch.console.cli import app

    empty = tmp_path / "nothing-here"
    empty.mkdir()
    for args in (["doctor", "--repair"], ["doctor"]):
        r = CliRunner().invoke(app, [*args, "--library", str(empty)])
        assert r.exit_code == 1 and f"no library at {empty}" in r.output, r.output
        assert "Traceback" not in r.output
    assert list(empty.iterdir()) == []  # no lock file, no catalog


WRITER = """
import sys
from fgsearch.library import Library
with Library.open(sys.argv[1], model=sys.argv[2]) as lib:
    lib.index(sys.argv[3], batch_size=2, workers=1)
"""


def _photos(root: Path, n: int, seed: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"p{i:03d}.png" for i in range(n)]
    for i, p in enumerate(paths):
        scene(seed * 1000 + i).save(p)
    return paths


def _check_hits(hits: list, want: Path) -> None:
    """A query by an indexed image: a hit scoring as that very image must be that image."""
    for h in hits:
        if h.global_score > 0.9999:
            assert h.path == str(want), f"{h.path} scored {h.global_score} for {want}"


@pytest.mark.slow
def test_readers_see_one_consistent_state_while_another_process_indexes(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    root = tmp_path / "photos"
    paths = _photos(root, 90)
    lib_dir = tmp_path / "lib"
    grid = RegionSettings(proposer="grid", max_regions=4)
    with Library.open(lib_dir, model="demo", regions=grid) as lib:
        lib.index(paths[:3])  # readers have something to find from the start
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(lib_dir), "demo", str(root)])
    errors: list[str] = []
    fresh = long_lived = doctors = 0
    probe = paths[0]
    with Library.open(lib_dir, read_only=True) as reader:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            try:
                _check_hits(reader.search(image=probe, k=5), probe)
                long_lived += 1
                with Library.open(lib_dir, read_only=True) as one:
                    _check_hits(one.search(image=probe, k=5), probe)
                    fresh += 1
                    if fresh % 3 == 0:
                        rep = one.doctor()
                        doctors += 1
                        if not rep["consistent"]:
                            errors.append(f"doctor: {rep}")
            except Exception as e:  # every failure is counted, none may happen
                errors.append(f"{type(e).__name__}: {e}")
        assert proc.wait(timeout=60) == 0
        assert reader.status()["counts"]["images"] == 90  # and the long-lived reader sees the end state
        assert reader.doctor()["consistent"]
    assert fresh >= 5 and doctors >= 1, (fresh, doctors)
    assert not errors, f"{len(errors)} failures in {fresh} fresh and {long_lived} long-lived queries: {errors[:3]}"


@pytest.mark.slow
def test_a_writable_library_searched_from_other_threads_while_it_indexes(tmp_path: Path) -> None:
    import threading

    root = tmp_path / "photos"
    paths = _photos(root, 24)
    errors: list[str] = []
    searches = 0
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index(paths[:2])
        done = threading.Event()

        def search_loop() -> None:
            nonlocal searches
            while not done.is_set():
                try:
                    _check_hits(lib.search(image=paths[0], k=5), paths[0])
                    searches += 1
                except Exception as e:
                    errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=search_loop) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            lib.index(root, batch_size=2, workers=1)
            for _ in range(30):  # compactions swap an index's whole state: as a long run does now and then
                lib.global_index.save()
                lib.region_index.save()
        finally:
            done.set()
            for t in threads:
                t.join()
        assert lib.doctor()["consistent"] and lib.global_index.count() == 24
    assert searches >= 10 and not errors, (searches, errors[:3])


def test_a_long_lived_reader_follows_a_reindex_and_never_mixes_the_two_builds(tmp_path: Path) -> None:
    first = _photos(tmp_path / "first", 6, seed=1)
    second = _photos(tmp_path / "second", 6, seed=2)
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model="demo", regions=RegionSettings(proposer="none")) as lib:
        lib.index(tmp_path / "first")
    with Library.open(lib_dir, read_only=True) as reader:
        hits = reader.search(image=first[3], k=1)
        assert hits[0].path == str(first[3]) and hits[0].global_score == pytest.approx(1.0, abs=1e-4)
        with Library.open(lib_dir, reindex=True) as lib:  # ids start again at 1, for other files
            lib.index(list(reversed(second)))
        hits = reader.search(image=second[3], k=1)
        assert hits[0].path == str(second[3]) and hits[0].global_score == pytest.approx(1.0, abs=1e-4)
        assert all(h.global_score < 0.9999 for h in reader.search(image=first[3], k=6))
        assert reader.status()["counts"]["images"] == 6
        assert reader.doctor()["consistent"]


def _snapshot_file(lib_dir: Path, name: str, key: str) -> Path:
    import json

    folder = lib_dir / "index" / name
    return folder / json.loads((folder / "manifest.json").read_text())[key]


def _damage_rows(path: Path, how: str) -> None:
    import numpy as np

    arr = np.load(path, mmap_mode="r+")
    if how == "garble":
        arr[1, :8] = arr[1, :8] + np.float32(0.25)
    elif how == "permute":
        arr[[0, 1]] = arr[[1, 0]]
    else:  # ids out of order
        arr[[0, 1]] = arr[[1, 0]]
    arr.flush()
    del arr


def _cli(*args: str) -> tuple[int, str]:
    from fgsearch.console.cli import app

    r = CliRunner().invoke(app, list(args))
    assert "Traceback" not in r.output
    return r.exit_code, r.output


@pytest.fixture()
def built(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    root = tmp_path / "photos"
    make_folder(root, n_good=6, bad=False)
    lib_dir = tmp_path / "lib"
    with Library.open(
        lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="grid", max_regions=2)
    ) as lib:
        lib.index(root)
    return lib_dir, root


@pytest.mark.parametrize("how", ["garble", "permute"])
def test_doctor_detects_damaged_vectors_and_repair_plus_index_re_embeds_them(built, tiny_model_dir, how) -> None:
    lib_dir, root = built
    _damage_rows(_snapshot_file(lib_dir, "global", "vectors"), how)
    with Library.open(lib_dir, read_only=True) as lib:
        rep = lib.doctor()
        assert not rep["consistent"] and rep["global"]["damaged_vectors"] == 6
        assert rep["damaged_files"] == [f"global/{_snapshot_file(lib_dir, 'global', 'vectors').name}"]
    code, out = _cli("doctor", "--library", str(lib_dir))
    assert code == 1 and "damaged file (checksum mismatch): global/vectors." in out
    code, out = _cli("doctor", "--repair", "--library", str(lib_dir))
    assert code == 0 and "repaired" in out
    with Library.open(lib_dir, model=str(tiny_model_dir)) as lib:
        assert lib.index(root).indexed == 6  # every image of the damaged block is embedded again
        rep = lib.doctor()
        assert rep["consistent"] and rep["global"]["index"] == 6 and not rep["damaged_files"]


def _unsorted_ids(lib_dir: Path) -> None:
    _damage_rows(_snapshot_file(lib_dir, "global", "ids"), "ids")


def _truncated_vectors(lib_dir: Path) -> None:
    p = _snapshot_file(lib_dir, "global", "vectors")
    p.write_bytes(p.read_bytes()[:-100])


def _garbled_journal_header(lib_dir: Path) -> None:
    p = _snapshot_file(lib_dir, "global", "journal")
    p.write_bytes(b"garbage!" + p.read_bytes()[8:])


def _garbage_manifest(lib_dir: Path) -> None:
    (lib_dir / "index" / "global" / "manifest.json").write_bytes(b"\x00\xff not json")


@pytest.mark.parametrize("damage", [_unsorted_ids, _truncated_vectors, _garbled_journal_header, _garbage_manifest])
def test_an_index_that_cannot_be_opened_names_the_repair_and_the_repair_works(built, tiny_model_dir, damage) -> None:
    lib_dir, root = built
    damage(lib_dir)
    for args in (["status"], ["doctor"], ["index", str(root), "--model", str(tiny_model_dir)]):
        code, out = _cli(*args, "--library", str(lib_dir))
        assert code == 1 and "global vector index is damaged" in out, out
        assert (
            f"run `fgsearch doctor --repair --library {lib_dir}`, then `fgsearch index {root} --library {lib_dir}`"
            in out
        )
        assert len(out.strip().splitlines()) == 1
    code, out = _cli("doctor", "--repair", "--library", str(lib_dir))
    assert code == 0 and "repaired" in out, out
    with Library.open(lib_dir, model=str(tiny_model_dir)) as lib:
        assert lib.index(root).indexed == 6
        assert lib.doctor()["consistent"]
    with Library.open(lib_dir, read_only=True) as lib:
        assert len(lib.search("a red circle", k=6)) == 6


def test_an_empty_catalog_names_the_rebuild(built, tiny_model_dir) -> None:
    lib_dir, root = built
    (lib_dir / "catalog.sqlite").write_bytes(b"")
    for f in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        (lib_dir / f).unlink(missing_ok=True)
    code, out = _cli("status", "--library", str(lib_dir))
    assert code == 1 and "is empty (its records are lost)" in out
    assert f"`fgsearch index {root} --library {lib_dir} --model {tiny_model_dir} --reindex`" in out
    code, out = _cli("index", str(root), "--library", str(lib_dir), "--reindex", "--model", str(tiny_model_dir), "-q")
    assert code == 0, out
    with Library.open(lib_dir, read_only=True) as lib:
        assert lib.status()["counts"]["images"] == 6 and lib.doctor()["consistent"]


RO_QUERY = """
import sys
from fgsearch.console.cli import app
sys.argv = ["fgsearch", *sys.argv[1:]]
app()
"""


def test_a_read_only_library_can_be_queried(tmp_path: Path) -> None:
    """Files and folders without write permission (as on a read-only mount): query, status and doctor
    work; indexing says the library is read-only. As root, the commands run as user nobody."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="fgsearch-ro-"))  # pytest's tmp_path is private to root
    try:
        base.chmod(0o755)
        make_folder(base / "photos", n_good=3, bad=False)
        lib_dir = base / "lib"
        with Library.open(lib_dir, model="demo", regions=RegionSettings(proposer="grid", max_regions=2)) as lib:
            lib.index(base / "photos")
        for p in [lib_dir, *lib_dir.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        (base / "photos").chmod(0o755)
        script = base / "run.py"
        script.write_text(RO_QUERY)
        script.chmod(0o644)
        as_nobody = unprivileged()  # root may write anything: drop to nobody
        env = {**os.environ, "HOME": str(base)}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*as_nobody, sys.executable, str(script), *args, "--library", str(lib_dir)],
                capture_output=True,
                text=True,
                env=env,
                cwd=base,
                timeout=120,
            )

        r = run("query", "a red circle", "--json")
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["results"]) == 3
        for args in (("status",), ("doctor",)):
            r = run(*args)
            assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        r = run("index", str(base / "photos"))
        assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert "reindex" not in r.stderr, r.stderr
        assert sorted(p.name for p in lib_dir.iterdir()) == ["catalog.sqlite", "index", "lock", "rebuild.json"]
    finally:
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(base)


def test_a_full_disk_is_one_line_and_the_library_keeps_what_was_committed(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import sqlite3

    import sqlalchemy

    from fgsearch.catalog import Catalog
    from fgsearch.indexes.store import JournaledStore

    root = tmp_path / "photos"
    make_folder(root, n_good=6, bad=False)
    lib_dir = tmp_path / "lib"
    real_flush = JournaledStore.flush
    calls = {"n": 0}

    def flush_until_full(self: JournaledStore) -> int:
        calls["n"] += 1
        if calls["n"] > 4:  # two batches of two indexes go through, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_flush(self)

    def catalog_full(*a: object, **k: object) -> None:
        raise sqlalchemy.exc.OperationalError("UPDATE", {}, sqlite3.OperationalError("database or disk is full"))

    for patch in (("flush", flush_until_full), ("catalog", catalog_full)):
        calls["n"] = 0
        with monkeypatch.context() as m:
            if patch[0] == "flush":
                m.setattr(JournaledStore, "flush", flush_until_full)
            else:
                m.setattr(Catalog, "confirm_contents", catalog_full)
            lib = Library.open(lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="none"))
            with lib, pytest.raises(LibraryError, match=r"is full .*; free some space and run the same command again"):
                lib.index(root, batch_size=2, workers=1)
        with Library.open(lib_dir, model=str(tiny_model_dir)) as lib:  # opens with what was committed
            assert lib.doctor()["consistent"]
    with Library.open(lib_dir, model=str(tiny_model_dir)) as lib:
        lib.index(root)
        assert lib.catalog.counts()["images"] == 6 and lib.doctor()["consistent"]


def test_an_unwritable_parent_for_a_new_library_is_one_line(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(LibraryError, match=r"cannot create the library folder .*a-file/lib: Not a directory"):
        Library.open(tmp_path / "a-file" / "lib", model=str(tiny_model_dir))

    def denied(self: Path, *a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(LibraryError, match=r"cannot create the library folder .*: Permission denied; give --library"):
        Library.open(tmp_path / "no-access" / "lib", model=str(tiny_model_dir))


def test_damaged_catalog_pages_are_one_line(built) -> None:
    lib_dir, _ = built
    cat = lib_dir / "catalog.sqlite"
    data = bytearray(cat.read_bytes())
    page = 4096
    for off in range(2 * page, len(data), page):  # keep the header page, garble every other
        data[off : off + 200] = b"\xa5" * 200
    cat.write_bytes(bytes(data))
    for args in (["status"], ["query", "a red circle"]):
        code, out = _cli(*args, "--library", str(lib_dir))
        assert code == 1 and f"`fgsearch doctor --repair --library {lib_dir}`" in out, out
        assert len(out.strip().splitlines()) == 1, out
    code, out = _cli("doctor", "--library", str(lib_dir))  # what SQLite's check found, and the salvage
    assert code == 1 and "quick_check DAMAGED" in out and f"`fgsearch doctor --repair --library {lib_dir}`" in out


def test_reindex_of_a_qdrant_library_stays_qdrant_and_starts_from_an_empty_store(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    pytest.importorskip("qdrant_client")
    root = tmp_path / "photos"
    make_folder(root, n_good=3, bad=False)
    lib_dir = tmp_path / "lib"
    bk = BackendSettings(kind="qdrant", options={"path": str(tmp_path / "my-qdrant")})
    none = RegionSettings(proposer="none")
    with Library.open(lib_dir, model=str(tiny_model_dir), backend=bk, regions=none) as lib:
        lib.index(root)
    with Library.open(lib_dir, reindex=True) as lib:
        assert lib.backend == bk and lib.region_settings == none
        assert lib.global_index.count() == 0  # the old build's vectors do not come back under new ids
        assert lib.index(root).indexed == 3 and lib.doctor()["consistent"]
    with pytest.raises(LibraryError, match="already holds 3 vectors"):  # another library, same store
        Library.open(tmp_path / "other", model=str(tiny_model_dir), backend=bk, regions=none)


def test_a_reader_given_an_encoder_keeps_it_across_a_reindex_with_the_same_model(tmp_path: Path) -> None:
    """`fgsearch serve` hands the library its batching encoder: a --reindex must not drop it for a
    fresh unbatched one (it did: batching was lost until the server restarted)."""
    from fgsearch.library import shared_encoder

    first = _photos(tmp_path / "first", 4, seed=1)
    _photos(tmp_path / "second", 4, seed=2)
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model="demo", regions=RegionSettings(proposer="none")) as lib:
        lib.index(tmp_path / "first")

    class Wrapped:  # stands in for serve's BatchingEncoder: an Encoder in all but name
        def __init__(self) -> None:
            self.inner = shared_encoder("demo", "cpu")

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    given = Wrapped()
    with Library.open(lib_dir, read_only=True, encoder=given) as reader:  # type: ignore[arg-type]
        assert reader.search(image=first[0], k=1)[0].path == str(first[0])
        with Library.open(lib_dir, reindex=True) as lib:
            lib.index(tmp_path / "second")
        assert len(reader.search(text="a photo", k=3)) == 3
        assert reader.encoder is given


def test_a_reader_takes_the_write_lock_only_when_the_writer_has_committed(built, monkeypatch) -> None:
    """Every search of a reader refreshes first. With nothing new it must not wait for the searches
    in flight (it did: a write lock per request put all of serve's requests in lock-step), and it
    must not open a catalog connection each time to check the build; with something new it
    reloads under the write lock, after the search in flight."""
    import threading
    import time

    lib_dir, root = built
    with Library.open(lib_dir, read_only=True) as reader:
        reader.refresh()
        before = reader.store.build_probe.catalog_reads
        for _ in range(5):
            reader.refresh()
        reads = reader.store.build_probe.catalog_reads
        assert reads == before, "the build id was read from the catalog on every refresh"

        entered, release = threading.Event(), threading.Event()

        def search_in_flight() -> None:
            reader.consistent(lambda: (entered.set(), release.wait(30)))

        holder = threading.Thread(target=search_in_flight)
        holder.start()
        assert entered.wait(10)
        try:
            quick = threading.Thread(target=reader.refresh)
            quick.start()
            quick.join(5)
            assert not quick.is_alive(), "a refresh with nothing new waited for a search in flight"
            before = reader.global_index.count()
            with Library.open(lib_dir) as writer:
                writer.index(_photos(root / "more", 2, seed=7))
            assert reader.global_index.count() == before  # not picked up yet
            slow = threading.Thread(target=reader.refresh)
            slow.start()
            # event-driven: the reload is seen waiting for the write lock (a timing window passed
            # unchecked on a slow machine, where the thread had not yet reached the lock)
            deadline = time.monotonic() + 30
            while reader.store.writers_waiting == 0:
                assert slow.is_alive(), "a reload ran while a search was reading the indexes"
                assert time.monotonic() < deadline, "the reload never asked for the write lock"
                time.sleep(0.005)
            assert slow.is_alive()  # it waits for the search in flight: nothing reloaded yet
        finally:
            release.set()
            holder.join(10)
        slow.join(10)
        assert not slow.is_alive() and reader.global_index.count() == before + 2


def test_a_damaged_faiss_hnsw_file_is_one_line_naming_library_file_and_repair(tmp_path, tiny_model_dir, caplog) -> None:
    from _library_data import build_hnsw_library, garble_hnsw_graph

    lib_dir, root, faiss_file = build_hnsw_library(tmp_path, tiny_model_dir)
    garble_hnsw_graph(faiss_file)
    want = (
        f"library {lib_dir}: the regions vector index is damaged "
        f"(cannot read the backend files of generation {faiss_file.name.split('.')[1]}: "
        f"FAISS cannot read {faiss_file}); "
        f"run `fgsearch doctor --repair --library {lib_dir}`, then `fgsearch index {root} --library {lib_dir}`"
    )
    with pytest.raises(LibraryError) as err:  # the library API
        Library.open(lib_dir, read_only=True)
    assert str(err.value) == want
    for args in (["status"], ["query", "a red square"], ["doctor"], ["index", str(root)]):  # the CLI
        code, out = _cli(*args, "--library", str(lib_dir))
        assert code == 1 and out.strip() == f"error: {want}", out
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG and "faiss::" in r.getMessage()]
    code, out = _cli("doctor", "--repair", "--library", str(lib_dir))
    assert code == 0 and "repaired" in out, out
    code, out = _cli("index", str(root), "--library", str(lib_dir))
    assert code == 0, out
    with Library.open(lib_dir, read_only=True) as lib:
        assert lib.search("a red square")
