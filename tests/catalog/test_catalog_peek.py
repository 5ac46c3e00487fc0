"""fgsearch.catalog.peek: cheap read-only looks into a catalog file (meta values, build id, unfinished creation)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from _privileges import run_python_unprivileged, shared_tmp_dir

from fgsearch.catalog import Catalog, ModelInfo, peek_library_id, peek_meta, peek_unfinished

MODEL = ModelInfo(name="tiny", ref="sha-1", dim=8, image_size=(64, 64))


def _catalog(db: Path, *, init: bool = True, **meta: object) -> Path:
    with Catalog.open(db, create=True) as cat:
        if init:
            cat.init_library(MODEL, regions={"proposer": "grid"}, backend={"kind": "faiss"})
        if meta:
            cat.set_meta(**meta)
    return db


def _damaged(db: Path) -> Path:
    db.write_bytes(b"this is not sqlite" * 100)
    return db


def _alien(db: Path) -> Path:
    """An SQLite file that is not a catalog (no meta table)."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE other (x)")
    con.close()
    return db


def test_peek_meta_decodes_the_asked_keys(tmp_path: Path) -> None:
    db = _catalog(tmp_path / "catalog.sqlite", model_source="demo", library_id="abc")
    got = peek_meta(db, ["model_source", "regions", "dim", "not-there"])
    assert got == {"model_source": "demo", "regions": {"proposer": "grid"}, "dim": 8}
    assert peek_meta(db, []) == {}


@pytest.mark.parametrize("make", [lambda p: p, _damaged, _alien], ids=["missing", "damaged", "no-table"])
def test_peek_meta_is_empty_when_the_file_cannot_be_read(tmp_path: Path, make: object) -> None:
    db = make(tmp_path / "catalog.sqlite")  # type: ignore[operator]
    assert peek_meta(db, ["model_name"]) == {}


def test_peek_library_id(tmp_path: Path) -> None:
    assert peek_library_id(tmp_path / "catalog.sqlite") == ""  # no file: a --reindex is replacing it
    assert peek_library_id(_alien(tmp_path / "alien.sqlite")) == ""  # no table yet
    assert peek_library_id(_catalog(tmp_path / "old.sqlite")) is None  # a library older than ids
    assert peek_library_id(_catalog(tmp_path / "new.sqlite", library_id="b1d")) == "b1d"
    with pytest.raises(sqlite3.DatabaseError):
        peek_library_id(_damaged(tmp_path / "damaged.sqlite"))


def test_peek_unfinished(tmp_path: Path) -> None:
    assert peek_unfinished(_catalog(tmp_path / "bare.sqlite", init=False))  # created, no model recorded
    assert not peek_unfinished(_catalog(tmp_path / "done.sqlite"))
    db = _catalog(tmp_path / "with-image.sqlite", init=False)
    with Catalog.open(db) as cat:
        cat.reserve_contents([{"sha256": "a", "width": 9, "height": 9, "proposer": "grid", "boxes": []}])
    assert not peek_unfinished(db)  # it holds an image: never wiped
    assert not peek_unfinished(_alien(tmp_path / "alien.sqlite"))  # not ours
    assert not peek_unfinished(_damaged(tmp_path / "damaged.sqlite"))  # Catalog.open reports that
    assert not peek_unfinished(tmp_path / "missing.sqlite")


PEEK = """
import json, sys
from pathlib import Path
from fgsearch.catalog import peek_library_id, peek_meta, peek_unfinished
db = Path(sys.argv[1])
print(json.dumps([peek_meta(db, ["dim", "library_id"]), peek_library_id(db), peek_unfinished(db)]))
"""


def test_peeks_read_a_catalog_in_a_folder_that_cannot_be_written() -> None:
    """A read-only folder (or mount): SQLite cannot create the ``-shm`` file a WAL database needs,
    so the peeks open the file as immutable. As root, they run as user nobody."""
    with shared_tmp_dir() as base:
        lib = base / "lib"
        db = _catalog(lib / "catalog.sqlite", library_id="b1d")
        for p in [lib, *lib.iterdir()]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        r = run_python_unprivileged(PEEK, str(db), cwd=base)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == [{"dim": 8, "library_id": "b1d"}, "b1d", False]
        assert sorted(p.name for p in lib.iterdir()) == ["catalog.sqlite"]  # nothing written beside it
