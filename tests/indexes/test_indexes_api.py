"""The VectorIndex contract, checked on every backend: adds, removes, search, get, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _indexes_data import BACKENDS, make, unit_vectors

from fgsearch.indexes import (
    DimensionMismatchError,
    DuplicateIdError,
    ExactConfig,
    FaissConfig,
    IndexBackendError,
    IndexClosedError,
    IndexExistsError,
    IndexInputError,
    IndexLockedError,
    IndexNotFoundError,
    IndexReadOnlyError,
    IndexSpec,
    InvalidVectorError,
    QdrantConfig,
    UnknownIdError,
    create_index,
    open_index,
)
from fgsearch.indexes.base import topk_rows
from fgsearch.indexes.faiss import FaissIndex

DIM = 16


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(kind: str, request: pytest.FixtureRequest) -> str | None:
    """pgvector: a fresh database on the tests' PostgreSQL (the other backends need none)."""
    return str(request.getfixturevalue("postgres_url")) if kind == "pgvector" else None


@pytest.fixture
def index(kind: str, url: str | None, tmp_path: Path):
    idx = make(kind, tmp_path / "idx", DIM, url=url)
    yield idx
    idx.close()


def test_add_search_get_ids_contains(index) -> None:
    x = unit_vectors(50, DIM)
    ids = np.arange(100, 150)
    index.add(ids, x)
    assert len(index) == 50 and index.count() == 50
    res = index.search(x[:3], 5)
    assert res.ids.shape == (3, 5) and res.scores.dtype == np.float32
    assert list(res.ids[:, 0]) == [100, 101, 102]  # each vector finds itself first
    np.testing.assert_allclose(res.scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(res.scores, axis=1) <= 1e-6)  # best first
    got = index.get([120, 100])
    np.testing.assert_allclose(got, x[[20, 0]], atol=1e-6)
    np.testing.assert_array_equal(index.ids(), ids)
    np.testing.assert_array_equal(index.contains([100, 5, 149]), [True, False, True])
    single_ids, _scores = index.search(x[7], 3)  # 1-D query = one query; result unpacks
    assert single_ids.shape == (1, 3) and single_ids[0, 0] == 107


def test_remove_and_upsert(index) -> None:
    x = unit_vectors(30, DIM)
    index.add(np.arange(30), x)
    assert index.remove([3, 4]) == 2
    assert len(index) == 28
    assert not index.contains([3]).any()
    assert 3 not in index.search(x[3], 10).ids
    with pytest.raises(UnknownIdError, match="3"):
        index.remove([3, 5])
    assert len(index) == 28  # the failing call removed nothing, not even id 5
    assert index.remove([3, 5], missing="ignore") == 1
    with pytest.raises(DuplicateIdError, match="upsert=True"):
        index.add([7], x[8])
    index.add([7], x[8], upsert=True)
    np.testing.assert_allclose(index.get([7])[0], x[8], atol=1e-6)
    assert len(index) == 27
    index.add([3], x[3])  # re-adding a removed id works
    assert index.search(x[3], 1).ids[0, 0] == 3


def test_allowed_ids_filter(index) -> None:
    x = unit_vectors(60, DIM)
    index.add(np.arange(60), x)
    allowed = np.arange(0, 60, 7)
    res = index.search(x[:4], 5, allowed_ids=allowed)
    assert np.isin(res.ids, allowed).all()
    res = index.search(x[:1], 20, allowed_ids=[1, 2, 999])  # fewer matches than k: padded
    assert sorted(res.ids[0, :2].tolist()) == [1, 2]
    assert (res.ids[0, 2:] == -1).all() and np.isneginf(res.scores[0, 2:]).all()
    assert (index.search(x[:2], 3, allowed_ids=[]).ids == -1).all()


def test_empty_index_and_k_larger_than_count(index) -> None:
    q = unit_vectors(2, DIM)
    assert (index.search(q, 4).ids == -1).all()
    index.add([1, 2], q)
    res = index.search(q, 4)
    assert sorted(res.ids[0, :2].tolist()) == [1, 2] and (res.ids[:, 2:] == -1).all()


def test_bad_input_errors_are_clear(index) -> None:
    x = unit_vectors(4, DIM)
    with pytest.raises(DimensionMismatchError, match=f"expected {DIM}-d vectors, got 8-d"):
        index.add([1], np.ones((1, 8), dtype=np.float32) / np.sqrt(8))
    bad = x.copy()
    bad[2, 0] = np.nan
    with pytest.raises(InvalidVectorError, match="id 12 contains NaN"):
        index.add([10, 11, 12, 13], bad)
    with pytest.raises(InvalidVectorError, match="norm"):
        index.add([1], x[:1] * 3)
    with pytest.raises(DuplicateIdError, match="repeats id 5"):
        index.add([5, 5], x[:2])
    with pytest.raises(IndexInputError, match="2 ids but 4 vectors"):
        index.add([1, 2], x)
    with pytest.raises(IndexInputError, match="non-negative"):
        index.add([-1], x[:1])
    with pytest.raises(IndexInputError, match="integers"):
        index.add([1.5], x[:1])
    with pytest.raises(IndexInputError, match="k must be"):
        index.search(x[0], 0)
    with pytest.raises(DimensionMismatchError, match="query"):
        index.search(np.ones(DIM + 1), 3)
    with pytest.raises(InvalidVectorError):
        index.search(np.full(DIM, np.inf), 3)
    with pytest.raises(IndexInputError, match="missing"):
        index.remove([1], missing="maybe")
    with pytest.raises(IndexInputError, match="payload column 'region'"):
        index.add([1], x[:1], payload={"region": [1, 2]})
    with pytest.raises(UnknownIdError, match="42"):
        index.get([42])
    assert len(index) == 0  # nothing half-applied
    for err in (DimensionMismatchError, InvalidVectorError, DuplicateIdError, UnknownIdError):
        assert issubclass(err, IndexBackendError) and issubclass(err, ValueError)


def test_closed_and_context_manager(kind: str, url: str | None, tmp_path: Path) -> None:
    with make(kind, tmp_path / "i", DIM, url=url) as idx:
        idx.add([1], unit_vectors(1, DIM))
    assert idx.closed
    with pytest.raises(IndexClosedError):
        idx.search(unit_vectors(1, DIM), 1)
    idx.close()  # idempotent


def test_stats(kind: str, url: str | None, tmp_path: Path) -> None:
    with make(kind, tmp_path / "i", DIM, url=url) as idx:
        idx.add(np.arange(10), unit_vectors(10, DIM))
        idx.flush()
        st = idx.stats()
    assert st.kind == kind and st.dim == DIM and st.count == 10
    assert st.bytes_on_disk and st.bytes_on_disk > 0
    assert st.bytes_in_memory is not None
    assert isinstance(st.params, dict) and st.params


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_read_only_and_lock(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "i"
    w = make(kind, path, DIM)
    w.add([1, 2], unit_vectors(2, DIM))
    w.flush()
    with pytest.raises(IndexLockedError, match="read_only=True"):
        open_index(kind, path)
    r = open_index(kind, path, read_only=True)
    assert len(r) == 2
    with pytest.raises(IndexReadOnlyError):
        r.add([3], unit_vectors(1, DIM))
    with pytest.raises(IndexReadOnlyError):
        r.remove([1])
    r.close()
    w.close()
    open_index(kind, path).close()  # lock released by close


def test_factory_rejects_conflicts(tmp_path: Path) -> None:
    with pytest.raises(
        IndexInputError, match=r"^unknown backend 'annoy'; choose one of exact, faiss, pgvector, qdrant, usearch$"
    ):
        create_index("annoy", tmp_path / "x", 8)
    with pytest.raises(IndexInputError, match="FaissConfig"):
        create_index("faiss", tmp_path / "x", 8, config=ExactConfig())
    with pytest.raises(IndexInputError, match="not both"):
        QdrantConfig(path="a", url="http://localhost:6333")
    with pytest.raises(IndexInputError, match="not both"):
        create_index("qdrant", tmp_path / "q", 8, config=QdrantConfig(url="http://localhost:6333"))
    with pytest.raises(IndexInputError, match="api_key"):
        QdrantConfig(path="a", api_key="k")
    with pytest.raises(IndexInputError, match="read_only"):
        open_index("exact", tmp_path / "x", create=True, dim=8, read_only=True)
    with pytest.raises(IndexInputError, match="recall_target"):
        FaissConfig(recall_target=1.5)
    with pytest.raises(IndexInputError, match="dim"):
        IndexSpec(kind="faiss", dim=0)
    with pytest.raises(IndexNotFoundError, match="create_index"):
        open_index("exact", tmp_path / "missing", read_only=True)
    with pytest.raises(IndexNotFoundError):
        open_index("faiss", tmp_path / "missing")


def test_open_checks_kind_dim_and_existing(tmp_path: Path) -> None:
    path = tmp_path / "i"
    create_index("exact", path, 8).close()
    with pytest.raises(IndexExistsError):
        create_index("exact", path, 8)
    with pytest.raises(IndexInputError, match="holds a 'exact' index"):
        open_index("faiss", path)
    with pytest.raises(DimensionMismatchError, match="8-d"):
        open_index("exact", path, dim=512)
    with open_index(None, path, read_only=True) as idx:  # kind read from the directory
        assert idx.kind == "exact" and idx.dim == 8
    with open_index("exact", tmp_path / "new", dim=4, create=True) as idx:
        assert idx.dim == 4
    with open_index("exact", tmp_path / "new", dim=4, create=True) as idx:  # exists: opened
        assert len(idx) == 0


def test_topk_rows_orders_ties_by_id() -> None:
    ids = np.array([[5, 3, 9, -1]])
    scores = np.array([[0.5, 0.5, 0.9, 0.1]], dtype=np.float32)
    i, s = topk_rows(ids, scores, 4)
    assert i.tolist() == [[9, 3, 5, -1]] and np.isneginf(s[0, 3])


def test_package_import_is_light() -> None:
    code = (
        "import sys, fgsearch.indexes as fi; "
        "bad = [m for m in ('torch', 'faiss', 'qdrant_client', 'fgsearch.model') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_library_calibrates_its_faiss_indexes_on_its_models_text_embeddings(tmp_path: Path) -> None:
    """The library hands its model's caption embeddings to the FAISS tiers; `status --json` shows them."""
    import dataclasses

    from fgsearch.library import Library

    with Library.open(tmp_path / "lib", model="demo") as lib:
        idx = getattr(lib.region_index, "inner", lib.region_index)  # the library shares it between threads
        assert isinstance(idx, FaissIndex)
        idx._config = dataclasses.replace(idx._config, flat_threshold=1000)  # build at a test's size
        idx.add(np.arange(1500), unit_vectors(1500, lib.global_index.dim, seed=2))
        idx.save()
        calib = lib.status()["index"]["regions"]["params"]["calibration"]
    assert calib["sets"]["text"]["source"] == "given by caller" and calib["sets"]["text"]["queries"] == 150
    assert calib["sets"]["image"]["source"].startswith("synthetic")


def test_topk_of_one_query_follows_the_batch_rule() -> None:
    """The one-query fast path of topk_rows orders, pads and drops invalid ids exactly as the batch
    path: score descending, ties by smaller id, -1 ids last and reported as -1 / -inf."""
    from fgsearch.indexes.base import topk_rows

    rng = np.random.default_rng(0)
    for _ in range(2000):
        m, k = int(rng.integers(0, 12)), int(rng.integers(1, 8))
        ids = rng.integers(-1, 6, size=(1, m)).astype(np.int64)
        scores = rng.integers(0, 3, size=(1, m)).astype(np.float32)  # many ties
        one = topk_rows(ids, scores, k)
        both = topk_rows(np.vstack([ids, ids]), np.vstack([scores, scores]), k)
        assert one[0].shape == (1, k)
        assert np.array_equal(one[0][0], both[0][0]) and np.array_equal(one[1][0], both[1][0])
