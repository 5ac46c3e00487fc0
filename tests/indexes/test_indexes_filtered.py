"""Allowed-id filters (:mod:`fgsearch.indexes.filtered`): a filter that keeps few rows is answered
exactly over its rows (the same results as the exact backend), a larger one by the graph at a
breadth widened by its selectivity; never an id outside the filter, never a deleted id."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _indexes_data import ann_config, near_queries, recall, text_like_queries, unit_vectors

import fgsearch.indexes.faiss.index as faiss_index
import fgsearch.indexes.faiss.served as graph_base  # the search loop of both graph backends
from fgsearch.indexes import create_index, open_index
from fgsearch.indexes.faiss import _lib
from fgsearch.indexes.filtered import exact_max, plan

DIM = 32
N = 2000
REMOVED = np.arange(0, N, 7)  # removed after the snapshot: still in the FAISS graph
DELTA = np.arange(10_000, 10_150)  # added after the snapshot: searched exactly, merged


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A FAISS index with an HNSW graph and an exact index holding the same vectors, each with
    removals and additions since its snapshot."""
    root = tmp_path_factory.mktemp("filtered")
    data = unit_vectors(N, DIM, seed=31)
    for kind, cfg in (("faiss", ann_config(calibration_queries=20)), ("exact", None)):
        with create_index(kind, root / kind, DIM, config=cfg) as idx:
            idx.add(np.arange(N), data)
            idx.save()
            idx.remove(REMOVED)
            idx.add(DELTA, unit_vectors(DELTA.size, DIM, seed=32))
            idx.flush()
    with open_index("faiss", root / "faiss", read_only=True) as idx:
        assert idx.stats().params["tier"] == "hnsw"
    return root / "faiss", root / "exact"


def _queries() -> np.ndarray:
    data = unit_vectors(N, DIM, seed=31)
    return np.concatenate([near_queries(data, 20, seed=3), text_like_queries(data, 20, seed=4)])


def _allowed(share: float, seed: int) -> np.ndarray:
    """A random filter: ``share`` of the snapshot's ids, some added ids, some ids never stored."""
    rng = np.random.default_rng(seed)
    base = rng.choice(N, int(share * N), replace=False)
    return np.concatenate([base, DELTA[::3], [50_000, 50_001]])


@pytest.mark.parametrize("share", [0.002, 0.05, 0.2])
def test_small_filters_are_answered_exactly(indexes: tuple[Path, Path], share: float) -> None:
    fpath, epath = indexes
    q = _queries()
    allowed = _allowed(share, seed=int(share * 1000))
    with open_index("faiss", fpath, read_only=True) as idx, open_index("exact", epath, read_only=True) as ref:
        p = idx.stats().params
        assert allowed.size <= exact_max(p["ef_search"], N, p["rerank_depth_k10"])  # the exact path
        got, want = idx.search(q, 10, allowed_ids=allowed), ref.search(q, 10, allowed_ids=allowed)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    returned = got.ids[got.ids >= 0]
    assert np.isin(returned, allowed).all() and not np.isin(returned, REMOVED).any()


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_large_filters_search_the_graph_widened(
    indexes: tuple[Path, Path], share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    fpath, epath = indexes
    q = _queries()
    allowed = _allowed(share, seed=7)
    breadths: list[int] = []
    real = faiss_index.FaissIndex._ann_candidates

    def spy(self, ann, tier, qq, k, breadth, *a, **kw):  # type: ignore[no-untyped-def]
        breadths.append(breadth)
        return real(self, ann, tier, qq, k, breadth, *a, **kw)

    monkeypatch.setattr(faiss_index.FaissIndex, "_ann_candidates", spy)
    with (
        open_index("faiss", fpath, read_only=True, config=ann_config(filter_exact_max=0)) as idx,
        open_index("exact", epath, read_only=True) as ref,
    ):
        ef, depth = idx.stats().params["ef_search"], idx.stats().params["rerank_depth_k10"]
        got, want = idx.search(q, 10, allowed_ids=allowed), ref.search(q, 10, allowed_ids=allowed)
    in_graph = np.isin(allowed, np.setdiff1d(np.arange(N), REMOVED)).sum()
    assert set(breadths) == {min(N, max(ef, math.ceil(2 * depth / (in_graph / N))))}  # 2 r / selectivity
    returned = got.ids[got.ids >= 0]
    assert np.isin(returned, allowed).all() and not np.isin(returned, REMOVED).any()
    assert recall(got.ids, want.ids) >= 0.97


def test_threshold_boundary(indexes: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact path takes filters of up to ``filter_exact_max`` STORED ids; one more goes to the graph."""
    fpath, _ = indexes
    calls: list[int] = []
    real = graph_base.exact_over_rows

    def spy(store, queries, k, rows, ids, block_rows):  # type: ignore[no-untyped-def]
        calls.append(ids.size)
        return real(store, queries, k, rows, ids, block_rows)

    monkeypatch.setattr(graph_base, "exact_over_rows", spy)
    stored = np.setdiff1d(np.arange(N), REMOVED)[:100]
    unknown = np.array([60_000, 60_001, *REMOVED[:5]])  # never stored, or deleted: not counted
    with open_index("faiss", fpath, read_only=True, config=ann_config(filter_exact_max=100)) as idx:
        idx.search(_queries()[:1], 10, allowed_ids=np.concatenate([stored, unknown]))
        assert calls == [100]
        idx.search(_queries()[:1], 10, allowed_ids=np.concatenate([stored, [DELTA[0]], unknown]))
        assert calls == [100]  # 101 stored ids: the graph (the added id exactly, merged: not this path)


def test_plan_rule() -> None:
    n, ef, r = 1_000_000, 128, 30
    m = exact_max(ef, n, r)
    assert m == int(math.sqrt(2.5 * 2 * r * n))  # the re-rank depth decides at this breadth
    assert exact_max(8192, n, r) == int(2.5 * 8192)  # a wide walk costs its breadth
    assert plan(m, n, ef, r).exact and not plan(m + 1, n, ef, r).exact
    wide = plan(m + 1, n, ef, r)
    assert wide.breadth == math.ceil(2 * r / ((m + 1) / n)) and wide.selectivity == (m + 1) / n
    assert plan(n, n, ef, r, fixed_max=0).breadth == max(ef, 2 * r)  # everything allowed
    assert plan(0, n, ef, r).exact  # nothing of the graph allowed: nothing to walk
    assert plan(50, 100, 64, r, fixed_max=0).breadth == 100  # never wider than the graph


@pytest.mark.parametrize("bitmap_max", [_lib.BITMAP_MAX_ID, 64])
def test_allowed_selector(monkeypatch: pytest.MonkeyPatch, bitmap_max: int) -> None:
    """A bitmap for ids below :data:`BITMAP_MAX_ID`, a hash set above; both let exactly the ids through."""
    import faiss

    monkeypatch.setattr(_lib, "BITMAP_MAX_ID", bitmap_max)
    ids = np.array([0, 3, 8, 9, 63, 64, 100, 1000], dtype=np.int64)
    sel = _lib.allowed_selector(ids)
    assert isinstance(sel, faiss.IDSelectorBitmap if bitmap_max > 1000 else faiss.IDSelectorBatch)
    members = [i for i in range(1200) if sel.is_member(i)]
    assert members == ids.tolist()
