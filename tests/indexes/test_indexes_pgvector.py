"""pgvector backend specifics, against a real PostgreSQL 18 + pgvector (tests/_postgres.py): one
transaction with a caller's SQLAlchemy connection, savepoints, what readers see, the HNSW index in
the plan, and the one-line errors (no extension and no right to create it, another dimension,
unreachable, wrong credentials, a password in a stored option)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from _indexes_data import unit_vectors

from fgsearch.indexes import (
    BackendUnavailableError,
    DimensionMismatchError,
    DuplicateIdError,
    IndexExistsError,
    IndexInputError,
    IndexNotFoundError,
    PgvectorConfig,
    create_index,
    get_backend,
    open_index,
)
from fgsearch.indexes.pgvector import PgvectorIndex

DIM = 8
_ROLES = itertools.count()


def _pg(url: str, **kw: Any) -> PgvectorConfig:
    return PgvectorConfig(url=url, **kw)


def _as_user(url: str, user: str) -> str:
    """``url`` (postgresql+psycopg://postgres@/db?host=...) logging in as ``user``."""
    return url.replace("://postgres@", f"://{user}@", 1)


def _superuser(url: str) -> psycopg.Connection:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)


def test_callers_transaction_holds_catalog_rows_and_vectors_together(postgres_url: str) -> None:
    index = create_index("pgvector", None, DIM, config=_pg(postgres_url))
    reader = open_index("pgvector", None, config=_pg(postgres_url), read_only=True)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE contents (id bigint PRIMARY KEY)")
    vecs = unit_vectors(4, DIM)

    def batch(conn: sa.Connection, ids: list[int]) -> None:
        conn.execute(sa.text("INSERT INTO contents (id) VALUES (:id)"), [{"id": i} for i in ids])
        index.add(ids, vecs[: len(ids)], connection=conn)

    def rows() -> int:
        with engine.connect() as c:
            return int(c.exec_driver_sql("SELECT count(*) FROM contents").scalar_one())

    with engine.connect() as conn:  # rolled back: neither the rows nor the vectors
        conn.begin()
        batch(conn, [1, 2])
        assert len(reader) == 0  # not committed yet
        conn.rollback()
    assert rows() == 0 and len(reader) == 0 and len(index) == 0

    with engine.connect() as conn:  # a failed add inside the transaction leaves it usable
        conn.begin()
        batch(conn, [1, 2])
        with pytest.raises(DuplicateIdError, match="ids already in table fgsearch: 2"):
            index.add([2, 3], vecs[:2], connection=conn)
        conn.commit()
    assert rows() == 2 and reader.ids().tolist() == [1, 2]
    np.testing.assert_array_equal(reader.get([2, 1]), vecs[[1, 0]])
    assert reader.search(vecs[1], 1).ids[0, 0] == 2

    with engine.connect() as conn:  # removals too
        conn.begin()
        conn.exec_driver_sql("DELETE FROM contents WHERE id = 1")
        assert index.remove([1], connection=conn) == 1
        conn.commit()
    assert rows() == 1 and reader.ids().tolist() == [2]
    engine.dispose()
    reader.close()
    index.close()


def test_a_connection_it_cannot_join_is_refused(postgres_url: str, postgres_server: Any) -> None:
    from _postgres import create_database

    with create_index("pgvector", None, DIM, config=_pg(postgres_url)) as index:
        with pytest.raises(IndexInputError, match="connection= takes a SQLAlchemy Connection"):
            index.add([1], unit_vectors(1, DIM), connection=object())
        other = sa.create_engine(create_database(postgres_server, f"other{next(_ROLES)}"))
        with other.connect() as conn, pytest.raises(IndexInputError, match="connection= reaches database other"):
            conn.begin()
            index.add([1], unit_vectors(1, DIM), connection=conn)
        other.dispose()
        raw = psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True)
        with raw, pytest.raises(IndexInputError, match="must be in a transaction"):
            index.add([1], unit_vectors(1, DIM), connection=raw)
        assert len(index) == 0


def test_writes_are_one_transaction_until_flush(postgres_url: str) -> None:
    writer = create_index("pgvector", None, DIM, config=_pg(postgres_url))
    reader = open_index("pgvector", None, config=_pg(postgres_url), read_only=True)
    x = unit_vectors(3, DIM)
    writer.add([1, 2], x[:2])
    with pytest.raises(DuplicateIdError):
        writer.add([2, 3], x[1:])  # undone alone (a savepoint): 1 and 2 stay pending
    assert writer.ids().tolist() == [1, 2] and len(reader) == 0
    writer.flush()
    assert reader.ids().tolist() == [1, 2]
    writer.add([3], x[2:])
    writer.close()  # close commits like flush
    assert reader.ids().tolist() == [1, 2, 3]
    reader.close()


def test_the_search_runs_on_the_hnsw_index(postgres_url: str) -> None:
    """The search query's ORDER BY matches the index expression (else the planner could never use
    it); the table is small, so sequential scans are switched off to see that."""
    data = unit_vectors(1200, DIM, seed=4)
    for storage in ("halfvec", "vector"):
        cfg = _pg(postgres_url, table=f"t_{storage}", storage=storage, flat_threshold=1000, calibration_queries=50)
        with create_index("pgvector", None, DIM, config=cfg) as index:
            index.add(np.arange(1200), data)
            index.flush()  # crossed flat_threshold: the flush builds the index and calibrates
            p = index.stats().params
            assert p["tier"] == "hnsw" and p["storage"] == storage and p["calibration"]["reached"]
            assert isinstance(index, PgvectorIndex)
            probe = ("[" + ",".join(["0.1"] * DIM) + "]", 30)
            with _superuser(postgres_url) as conn:
                conn.execute("SET enable_seqscan = off")
                plan = conn.execute("EXPLAIN " + index.search_sql(exact=False, filtered=False), probe).fetchall()
                assert any(f"t_{storage}_hnsw" in row[0] for row in plan), plan
                exact = conn.execute("EXPLAIN " + index.search_sql(exact=True, filtered=False), probe).fetchall()
                assert not any("_hnsw" in row[0] for row in exact), exact
            index.remove(np.arange(800))
            index.flush()  # fell below half of flat_threshold: back to exact search
            assert index.stats().params["tier"] == "exact"


def test_no_extension_and_no_right_to_create_it(postgres_url: str) -> None:
    role = f"plain{next(_ROLES)}"
    with _superuser(postgres_url) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    with pytest.raises(BackendUnavailableError) as e:
        create_index("pgvector", None, DIM, config=_pg(_as_user(postgres_url, role)))
    msg = str(e.value)
    assert "has no pgvector extension and user " + role + " may not create it" in msg
    assert "CREATE EXTENSION vector" in msg and "\n" not in msg


def test_a_table_of_another_dimension(postgres_url: str) -> None:
    create_index("pgvector", None, DIM, config=_pg(postgres_url)).close()
    with pytest.raises(DimensionMismatchError, match=r"holds 8-d vectors, expected 16-d; use another table"):
        open_index("pgvector", None, config=_pg(postgres_url), dim=16)
    with pytest.raises(DimensionMismatchError, match=r"--reindex"):
        open_index("pgvector", None, config=_pg(postgres_url), dim=16, create=True)
    with pytest.raises(IndexExistsError, match="table fgsearch already exists"):
        create_index("pgvector", None, DIM, config=_pg(postgres_url))
    with pytest.raises(IndexNotFoundError, match="no table other"):
        open_index("pgvector", None, config=_pg(postgres_url, table="other"))


def test_unreachable_server(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@/db?host={quote(str(tmp_path / 'nowhere'), safe='/')}"
    with pytest.raises(BackendUnavailableError) as e:
        create_index("pgvector", None, DIM, config=_pg(url, connect_timeout_s=2))
    assert str(e.value).startswith("cannot reach PostgreSQL at ") and "\n" not in str(e.value)
    assert "check the URL" in str(e.value) and "server is running" in str(e.value)


def test_wrong_credentials(postgres_url: str, postgres_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    role = f"pw{next(_ROLES)}"
    with _superuser(postgres_url) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password'")
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    monkeypatch.setenv("PGPASSWORD", "wrong-password")
    with pytest.raises(BackendUnavailableError) as e:
        create_index("pgvector", None, DIM, config=_pg(_as_user(postgres_url, role)))
    msg = str(e.value)
    assert "refused the login" in msg and "PGPASSWORD" in msg and "\n" not in msg
    assert "wrong-password" not in msg
    monkeypatch.setenv("PGPASSWORD", "right-password")  # the same URL logs in with the right one
    with _superuser(postgres_url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    create_index("pgvector", None, DIM, config=_pg(_as_user(postgres_url, role))).close()
    with pytest.raises(BackendUnavailableError, match=f'role "nobody{os.getpid()}" does not exist.*PGPASSWORD'):
        create_index("pgvector", None, DIM, config=_pg(_as_user(postgres_url, f"nobody{os.getpid()}")))


def test_library_options_never_store_a_password() -> None:
    backend = get_backend("pgvector")
    with pytest.raises(IndexInputError) as e:
        backend.parse_options({"url": "postgresql://me:s3cret@db.example/photos"})
    assert "PGPASSWORD" in str(e.value) and "s3cret" not in str(e.value) and "***" in str(e.value)
    with pytest.raises(IndexInputError, match="give the database"):
        backend.open(Path("."), "global", DIM, backend.parse_options({"table": "photos"}), read_only=True, create=False)
    with pytest.raises(IndexInputError, match="lower-case letters"):
        backend.parse_options({"url": "postgresql://me@db/photos", "table": "Photos; DROP TABLE x"})
    opts = backend.parse_options({"url": "postgresql://me@db/photos", "storage": "vector", "hnsw_m": "24"})
    assert opts == {"url": "postgresql://me@db/photos", "storage": "vector", "hnsw_m": 24}
    assert "(tables fgsearch_global, fgsearch_regions)" in backend.location(Path("."), opts)


def test_a_reader_connects_again_after_losing_its_connection(postgres_url: str) -> None:
    """A server restart (here: the server ending the reader's session) costs a reader nothing: its
    next search connects again; a writer's lost transaction is an error saying what was lost."""
    x = unit_vectors(20, DIM)
    writer = create_index("pgvector", None, DIM, config=_pg(postgres_url))
    writer.add(np.arange(20), x)
    writer.flush()
    reader = open_index("pgvector", None, config=_pg(postgres_url), read_only=True)
    assert reader.search(x[3], 1).ids[0, 0] == 3
    writer.add([100], unit_vectors(1, DIM, seed=5))  # pending, not flushed
    with _superuser(postgres_url) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND pid <> pg_backend_pid()")  # fmt: skip
    assert reader.search(x[4], 1).ids[0, 0] == 4
    with pytest.raises(BackendUnavailableError, match=r"lost the connection.*changes since the last flush are lost"):
        writer.add([101], unit_vectors(1, DIM, seed=6))
    reader.close()
    writer.close()
    with open_index("pgvector", None, config=_pg(postgres_url), read_only=True) as again:
        assert again.ids().tolist() == list(range(20))  # the flushed state, nothing half-written


def test_build_memory_is_sized_from_the_collection() -> None:
    """maintenance_work_mem is set on purpose: the graph's estimate (+10 %), capped; a parallel
    build reserves all of it as shared memory at once."""
    from fgsearch.indexes.pgvector.build import build_memory_mb

    half = build_memory_mb(PgvectorConfig(), 512, 1_000_000)
    assert 1300 <= half <= 1800  # measured: 1.37 GB of halfvec(512) index at m 16 for 1M vectors
    assert build_memory_mb(PgvectorConfig(storage="vector"), 512, 1_000_000) > half
    assert build_memory_mb(PgvectorConfig(), 512, 100_000_000) == 4096  # max_build_memory_mb
    assert build_memory_mb(PgvectorConfig(), 512, 1000) == 64
    assert build_memory_mb(PgvectorConfig(build_memory_mb=2048), 512, 10) == 2048
