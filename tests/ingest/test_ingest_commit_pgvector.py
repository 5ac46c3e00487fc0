"""The commit stage when the catalog and the vectors share one PostgreSQL database (pgvector): a
batch's catalog rows and vectors commit in ONE transaction, so a failure half way leaves neither
(the three-step protocol of other stores leaves ``pending`` rows and vectors for the next writer's
recovery), and a batch that succeeds is visible whole."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from _indexes_data import unit_vectors

from fgsearch.catalog import Catalog
from fgsearch.indexes import DimensionMismatchError, PgvectorConfig, open_index
from fgsearch.ingest.commit import Committer
from fgsearch.ingest.embed import Embedded
from fgsearch.ingest.options import IndexReport
from fgsearch.ingest.prepare import Prepared

DIM = 8


def _store(url: str, catalog_url: str | None = None) -> Any:
    catalog = Catalog.open(catalog_url or url, create=True)
    gidx, ridx = (
        open_index("pgvector", None, config=PgvectorConfig(url=url, table=t), dim=DIM, create=True)
        for t in ("v_global", "v_regions")
    )
    return SimpleNamespace(catalog=catalog, global_index=gidx, region_index=ridx)


def _batch(n: int, regions: int, dim: int = DIM) -> tuple[list[Prepared], Embedded]:
    preps = [
        Prepared("new", f"/photos/p{i}.jpg", 100 + i, 10**9 + i, sha256=f"{i:064x}", width=4, height=3)
        for i in range(n)
    ]
    boxes = [np.tile(np.asarray([[0, 0, 1, 1]], np.float32), (regions, 1)) for _ in range(n)]
    region_vecs = [unit_vectors(regions, dim, seed=2 + i) for i in range(n)]
    return preps, Embedded(images=unit_vectors(n, DIM, seed=1), regions=region_vecs, boxes=boxes)


def _states(catalog: Catalog) -> list[str]:
    with catalog.reading() as con:
        return sorted(r[0] for r in con.execute("SELECT state FROM contents").fetchall())


def _committed(url: str, table: str) -> int:
    with open_index("pgvector", None, config=PgvectorConfig(url=url, table=table), read_only=True) as reader:
        return len(reader)


def test_a_batch_commits_rows_and_vectors_in_one_transaction(postgres_url: str) -> None:
    store = _store(postgres_url)
    committer = Committer(store, store.catalog.begin_run(), IndexReport(), "grid")
    assert committer.one_transaction()

    preps, emb = _batch(3, regions=2, dim=DIM + 1)  # the region vectors are refused after the global ones
    with pytest.raises(DimensionMismatchError):
        committer.store_batch(preps, emb)
    assert _states(store.catalog) == []  # no pending rows ...
    assert _committed(postgres_url, "v_global") == 0 and len(store.global_index) == 0  # ... and no vectors

    preps, emb = _batch(3, regions=2)
    committer.store_batch(preps, emb)
    assert _states(store.catalog) == ["ok", "ok", "ok"]
    assert _committed(postgres_url, "v_global") == 3 and _committed(postgres_url, "v_regions") == 6
    cids = sorted(store.global_index.ids().tolist())
    with store.catalog.reading() as con:
        assert sorted(r[0] for r in con.execute("SELECT id FROM contents").fetchall()) == cids
    np.testing.assert_allclose(store.global_index.get(cids), emb.images, atol=1e-6)
    for idx in (store.global_index, store.region_index):
        idx.close()
    store.catalog.close()


def test_vectors_in_another_database_keep_the_three_step_protocol(
    postgres_url: str, postgres_server: Any, tmp_path: Path
) -> None:
    from _postgres import create_database

    other = create_database(postgres_server, "catalog_elsewhere")
    for catalog_url in (other, str(tmp_path / "catalog.sqlite")):
        store = _store(postgres_url, catalog_url)
        committer = Committer(store, store.catalog.begin_run(), IndexReport(), "grid")
        assert not committer.one_transaction()
        preps, emb = _batch(2, regions=1, dim=DIM + 1)
        with pytest.raises(DimensionMismatchError):
            committer.store_batch(preps, emb)
        assert _states(store.catalog) == ["pending", "pending"]  # for the next writer's recovery
        for idx in (store.global_index, store.region_index):
            idx.remove(idx.ids(), missing="ignore")
            idx.close()
        store.catalog.close()
