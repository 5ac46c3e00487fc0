"""Entry pivots (:mod:`fgsearch.indexes.faiss.entry`): the FAISS default's graph search starts at the
best of a fixed sample of its nodes, not where FAISS's greedy descent stops."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from _indexes_data import near_queries, text_like_queries, unit_vectors

from fgsearch.indexes import FaissConfig, IndexInputError, create_index, open_index
from fgsearch.indexes.faiss.calibration_queries import recall_at_k
from fgsearch.indexes.faiss.entry import EntryPivots, pivot_count, pivot_positions
from fgsearch.indexes.faiss.search import ann_candidates
from fgsearch.indexes.registry import get_backend

DIM = 32
CFG = FaissConfig(flat_threshold=1000, calibration_queries=100)


def _truth(q: np.ndarray, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]


def _graph(x: np.ndarray, ids: np.ndarray) -> faiss.IndexIDMap:
    hnsw = faiss.IndexHNSWSQ(x.shape[1], faiss.ScalarQuantizer.QT_8bit, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.train(x)
    ann = faiss.IndexIDMap(hnsw)
    ann.own_fields = True
    hnsw.this.disown()
    ann.add_with_ids(x, ids)
    return ann


def test_pivot_count_follows_the_graph_size_within_bounds_and_the_positions_are_a_seeded_sample() -> None:
    assert [pivot_count(n) for n in (10, 1000, 50_000, 400_000, 1_000_000, 9_000_000)] == [
        10,
        1000,
        1024,
        1562,
        3906,
        4096,
    ]
    assert (pivot_count(1_000_000, 0), pivot_count(500, 2000), pivot_count(5000, 64)) == (0, 500, 64)
    a, b = pivot_positions(5000, 300, seed=3), pivot_positions(5000, 300, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.size == np.unique(a).size == 300 and a.min() >= 0 and a.max() < 5000 and (np.diff(a) > 0).all()
    assert not np.array_equal(a, pivot_positions(5000, 300, seed=4))
    assert pivot_positions(5000, 0, seed=3).size == 0


def test_a_query_at_a_pivot_finds_that_pivot_first() -> None:
    """The search starts at the best pivot with the value FAISS orders nodes by: given with the wrong
    sign (FAISS >= 1.12 orders an inner-product graph by the product itself), the start entered the
    results as the worst node seen and, being visited, was never scored again: a query equal to a
    pivot lost its own exact match."""
    x = unit_vectors(3000, DIM, seed=21, clusters=30)
    ids = np.arange(x.shape[0], dtype=np.int64) * 5 + 7
    ann = _graph(x, ids)
    entry = EntryPivots(ann, 200, seed=1)
    q = np.ascontiguousarray(x[entry.positions])
    got = entry.from_pivots(q, 30, 64, None)
    assert (got[:, :1] >= 0).all()
    top = np.array([row[np.argmax(q[i] @ x[(row[row >= 0] - 7) // 5].T)] for i, row in enumerate(got)])
    np.testing.assert_array_equal(top, ids[entry.positions])


def _cone(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors in a cone around a common direction (as CLIP's images are), image-like queries and
    text-like ones: a direction the images do not share plus a little of a stored vector."""
    r = np.random.default_rng(seed)
    common = np.zeros(DIM, dtype=np.float32)
    common[0] = 1.0
    gap = np.zeros(DIM, dtype=np.float32)
    gap[1] = 1.0
    centres = r.standard_normal((20, DIM)).astype(np.float32)
    x = 1.2 * common + centres[r.integers(0, 20, n)] * 0.2 + r.standard_normal((n, DIM)).astype(np.float32) * 0.05
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    images = x[r.integers(0, n, 60)] + r.standard_normal((60, DIM)).astype(np.float32) * 0.05
    texts = gap + 0.4 * x[r.integers(0, n, 60)] + r.standard_normal((60, DIM)).astype(np.float32) * 0.05
    texts[:, 0] = 0.0  # none of the images' common direction
    norm = lambda a: np.ascontiguousarray(a / np.linalg.norm(a, axis=1, keepdims=True), dtype=np.float32)  # noqa: E731
    return np.ascontiguousarray(x, dtype=np.float32), norm(images), norm(texts)


def test_only_queries_outside_the_collections_cone_start_at_a_pivot(monkeypatch: pytest.MonkeyPatch) -> None:
    x, images, texts = _cone(4000, seed=31)
    ids = np.arange(x.shape[0], dtype=np.int64) + 100
    ann = _graph(x, ids)
    entry = EntryPivots(ann, 500, seed=2)
    assert entry.outside(texts).all() and entry.outside(images).mean() <= 0.1
    assert abs(float(np.mean(entry.outside(x))) - 0.01) < 0.01  # the floor: the stored vectors' 1st percentile
    walked: list[int] = []
    real = EntryPivots.from_pivots

    def spy(self: EntryPivots, q: np.ndarray, *a: object) -> np.ndarray:
        walked.append(q.shape[0])
        return real(self, q, *a)

    monkeypatch.setattr(EntryPivots, "from_pivots", spy)
    q = np.concatenate([images, texts])
    got, _ = ann_candidates(
        ann, "hnsw", q, 10, 256, None, lambda c: x[c - 100], rerank_factor=3, min_rerank=30, entry=entry
    )
    assert walked == [int(entry.outside(q).sum())]
    top = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    assert recall_at_k(got, top) >= 0.95


def test_the_entry_search_skips_removed_ids_even_where_it_starts(tmp_path: Path) -> None:
    x = unit_vectors(3000, DIM, seed=22, clusters=30)
    ids = np.arange(x.shape[0], dtype=np.int64) * 2 + 1
    with create_index("faiss", tmp_path / "f", DIM, config=CFG) as idx:
        idx.add(ids, x)
        idx.save()
        assert idx.stats().params["entry"] == f"pivots ({pivot_count(3000)})"
        assert idx._entry is not None
        starts = ids[idx._entry.positions[:40]]
        gone = np.union1d(starts, ids[:60])
        idx.remove(gone)  # since the snapshot: excluded through the id selector, translated to positions
        q = np.concatenate([x[idx._entry.positions[:40]], near_queries(x, 40, seed=5)])
        got = idx.search(q, 10)
        assert not np.isin(got.ids, gone).any()
        live = ~np.isin(ids, gone)
        assert recall_at_k(got.ids, _truth(q, x[live], ids[live])) >= 0.95


def test_text_like_queries_are_found_from_the_pivots(tmp_path: Path) -> None:
    x = unit_vectors(4000, DIM, seed=23, clusters=40)
    ids = np.arange(x.shape[0], dtype=np.int64)
    q = text_like_queries(x, 120, seed=24)
    with create_index("faiss", tmp_path / "f", DIM, config=CFG) as idx:
        idx.add(ids, x)
        idx.save()
        p = idx.stats().params
        assert p["entry"].startswith("pivots") and p["calibration"]["sets"]
        assert recall_at_k(idx.search(q, 10).ids, _truth(q, x, ids)) >= 0.95
        # the pivots' vectors count in the index's memory
        assert idx._entry is not None and idx._entry.nbytes >= pivot_count(4000) * DIM * 4


def test_a_snapshot_from_before_pivots_searches_from_the_descent_until_its_next_fold_recalibrates(
    tmp_path: Path,
) -> None:
    x = unit_vectors(3000, DIM, seed=25, clusters=30)
    ids = np.arange(x.shape[0], dtype=np.int64)
    folder = tmp_path / "f"
    with create_index("faiss", folder, DIM, config=CFG) as idx:
        idx.add(ids[:2600], x[:2600])
        idx.save()
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key in ("entry_pivots", "entry_seed"):  # what the code before pivots wrote
        manifest["extra"].pop(key)
    manifest["config"].pop("hnsw_entry_pivots")
    manifest_path.write_text(json.dumps(manifest))
    q = near_queries(x[:2600], 50, seed=26)
    with open_index("faiss", folder) as idx:
        p = idx.stats().params
        assert (p["entry"], idx._entry) == ("descent", None)
        assert recall_at_k(idx.search(q, 10).ids, _truth(q, x[:2600], ids[:2600])) >= 0.95
        idx.add(ids[2600:], x[2600:])  # 1.15x: below recalibrate_growth, but the search changes
        idx.save()
        p = idx.stats().params
        assert p["entry"] == f"pivots ({pivot_count(3000)})"
        assert p["calibrated_n"] == 3000 and p["trained_n"] == 2600


def test_pivots_can_be_turned_off_and_the_option_is_checked(tmp_path: Path) -> None:
    x = unit_vectors(2000, DIM, seed=27, clusters=20)
    ids = np.arange(x.shape[0], dtype=np.int64)
    off = FaissConfig(flat_threshold=1000, hnsw_entry_pivots=0)
    with create_index("faiss", tmp_path / "f", DIM, config=off) as idx:
        idx.add(ids, x)
        idx.save()
        assert (idx.stats().params["entry"], idx._extra["entry_pivots"]) == ("descent", 0)
    hundred = FaissConfig(flat_threshold=1000, hnsw_entry_pivots=100)
    with create_index("faiss", tmp_path / "g", DIM, config=hundred) as g:
        g.add(ids, x)
        g.save()
        assert g.stats().params["entry"] == "pivots (100)"
    with pytest.raises(IndexInputError, match=r"^hnsw_entry_pivots must be >= 0 or None, got -1$"):
        FaissConfig(hnsw_entry_pivots=-1)
    parse = get_backend("faiss").parse_options
    assert parse({"hnsw_entry_pivots": "0"}) == {"hnsw_entry_pivots": 0}
    assert parse({"hnsw_entry_pivots": "none"}) == {"hnsw_entry_pivots": None}
