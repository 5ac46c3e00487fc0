"""A library whose vectors live in PostgreSQL (pgvector) indexes, searches and reindexes like one
on the exact backend built from the same images (same model, same catalog ids)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _library_data import scene

from fgsearch.library import BackendSettings, Library
from fgsearch.regions import RegionSettings


def test_a_pgvector_library_returns_what_an_exact_one_does(
    tmp_path: Path, tiny_model_dir: Path, postgres_url: str
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        scene(i).save(photos / f"p{i}.png")
    grid = RegionSettings(proposer="grid")
    pg = BackendSettings("pgvector", {"url": postgres_url, "table": "lib"})
    hits = {}
    for name, bk in (("exact", BackendSettings("exact")), ("pgvector", pg)):
        with Library.open(tmp_path / name, model=str(tiny_model_dir), backend=bk, regions=grid) as lib:
            report = lib.index(photos)
            assert report.indexed == 6 and report.regions > 0
            hits[name] = [(h.path, h.box) for h in lib.search("a red square on grass", k=5)]
    assert hits["pgvector"] == hits["exact"]
    with Library.open(tmp_path / "pgvector", read_only=True) as reader:  # options come back from the catalog
        st = reader.status()
        assert st["backend"]["kind"] == "pgvector" and st["vectors"]["global"] == 6
        assert reader.doctor()["consistent"]
        assert [(h.path, h.box) for h in reader.search("a red square on grass", k=5)] == hits["exact"]
    with Library.open(tmp_path / "pgvector", model=str(tiny_model_dir), reindex=True) as lib:  # tables emptied
        assert lib.index(photos).indexed == 6
        assert lib.status()["vectors"]["global"] == 6


def test_the_catalog_database_is_the_default_for_pgvector_only(tmp_path: Path, postgres_url: str) -> None:
    """A pgvector library with no url puts its tables in the catalog's PostgreSQL database (given
    at open, never recorded); a backend that cannot live there ignores it."""
    from fgsearch.indexes import IndexInputError

    pg = BackendSettings("pgvector")
    assert pg.to_dict() == {"kind": "pgvector", "options": {}}
    with pg.open(tmp_path, "global", 8, read_only=False, create=True, database=postgres_url) as idx:
        assert idx.stats().location.endswith("(table fgsearch_global)") and len(idx) == 0
    with pytest.raises(IndexInputError, match=r"give the database.*catalog in PostgreSQL"):
        pg.open(tmp_path, "global", 8, read_only=True, create=False)
    with BackendSettings("exact").open(tmp_path, "global", 8, read_only=False, create=True, database=postgres_url) as e:
        assert e.kind == "exact"


def test_catalog_and_vectors_in_one_postgresql_database(
    tmp_path: Path, tiny_model_dir: Path, postgres_url: str
) -> None:
    """A library whose catalog is PostgreSQL and whose backend is pgvector with no url keeps its
    vectors in the catalog's database, commits each batch's rows and vectors in one transaction,
    and answers as a SQLite + exact library built from the same images."""
    import psycopg

    from fgsearch.ingest.commit import Committer

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        scene(i).save(photos / f"p{i}.png")
    kw: dict = {"model": str(tiny_model_dir), "regions": RegionSettings(proposer="grid")}
    with Library.open(tmp_path / "exact", backend=BackendSettings("exact"), **kw) as lib:
        lib.index(photos)
        want = [(h.path, h.box) for h in lib.search("a red square on grass", k=5)]
    with Library.open(tmp_path / "pg", catalog=postgres_url, backend=BackendSettings("pgvector"), **kw) as lib:
        store = lib.store  # the composition root's parts, to ask the committer what it will do
        assert Committer(store, 0, None, "grid").one_transaction()  # type: ignore[arg-type]
        assert lib.index(photos).indexed == 5
        assert [(h.path, h.box) for h in lib.search("a red square on grass", k=5)] == want
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"fgsearch_global", "fgsearch_regions", "contents"} <= tables
        assert conn.execute("SELECT count(*) FROM fgsearch_global").fetchone() == (5,)
        assert conn.execute("SELECT count(*) FROM contents WHERE state = 'pending'").fetchone() == (0,)
    with Library.open(tmp_path / "pg" / "library.json", read_only=True) as reader:  # by its description
        assert [(h.path, h.box) for h in reader.search("a red square on grass", k=5)] == want
