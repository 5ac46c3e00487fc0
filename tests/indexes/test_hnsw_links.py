"""Level-0 link reinforcement of the FAISS backend's HNSW graphs (``hnsw.reinforce_links``).

FAISS's neighbour selection leaves most level-0 slots empty on clustered embeddings and some
vectors with one or two links; the backend adds reverse links and tops every list up with nearest
neighbours after a build and for the vectors a snapshot folds in. What must hold: lists stay valid
FAISS lists (links first, then -1; no self-links, no duplicates, nothing FAISS linked is dropped),
recall at a given efSearch goes up (on a graph sparse enough to show it), and folded-in vectors
get the same treatment.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from _indexes_data import near_queries, text_like_queries, unit_vectors

from fgsearch.indexes import FaissConfig, IndexInputError, create_index, hnsw
from fgsearch.indexes.faiss.calibration_queries import recall_at_k


def _graph_index(x: np.ndarray, m: int = 8) -> faiss.Index:
    h = faiss.IndexHNSWSQ(x.shape[1], faiss.ScalarQuantizer.QT_8bit, m, faiss.METRIC_INNER_PRODUCT)
    h.hnsw.efConstruction = 40
    h.train(x)
    ann = faiss.IndexIDMap(h)
    ann.own_fields = True
    h.this.disown()
    ann.add_with_ids(x, np.arange(x.shape[0], dtype=np.int64))
    return ann


def _level0(ann: faiss.Index) -> np.ndarray:
    """``[n, 2M]`` level-0 lists of an ``IndexIDMap(IndexHNSW*)`` (-1: empty slot)."""
    h = faiss.downcast_index(ann.index).hnsw
    nb = faiss.vector_to_array(h.neighbors)
    off = faiss.vector_to_array(h.offsets).astype(np.int64)
    slots = int(faiss.vector_to_array(h.cum_nneighbor_per_level)[1])
    return nb[off[:-1, None] + np.arange(slots)]


def _assert_valid(rows: np.ndarray) -> None:
    linked = rows >= 0
    assert (np.diff(linked.astype(np.int8), axis=1) <= 0).all(), "a link after an empty slot"
    assert not (rows == np.arange(rows.shape[0])[:, None]).any(), "a self-link"
    assert rows.max() < rows.shape[0]
    srt = np.sort(np.where(linked, rows, -1 - np.arange(rows.shape[1])), axis=1)
    assert (np.diff(srt, axis=1) != 0).all(), "a duplicate link"


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return unit_vectors(20_000, 48, seed=3, clusters=60)


@pytest.mark.parametrize("search", ["auto", "faiss"])  # neighbours found by our kernel, or by FAISS
def test_lists_stay_valid_supersets_and_fill_up(data: np.ndarray, search: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hnsw.ENV, search)
    ann = _graph_index(data)
    before = _level0(ann)
    added = hnsw.reinforce_links(ann, data, 0, 12, lambda p: data[p])
    after = _level0(ann)
    _assert_valid(after)
    assert added == int((after >= 0).sum() - (before >= 0).sum()) > 0
    for b, a in zip(before[::97], after[::97], strict=True):  # nothing FAISS linked is dropped
        assert set(b[b >= 0]) <= set(a[a >= 0])
    deg = (after >= 0).sum(axis=1)
    assert (deg >= 12).mean() >= 0.95, np.bincount(deg)
    assert (before >= 0).sum(axis=1).mean() < 12  # FAISS alone leaves the slots mostly empty


def test_more_of_the_true_neighbours_are_found_at_the_same_breadth(data: np.ndarray) -> None:
    flat = faiss.IndexFlatIP(data.shape[1])
    flat.add(data)
    queries = {"image": near_queries(data, 300, seed=4), "text": text_like_queries(data, 300, seed=5)}
    ann = _graph_index(data)
    plain = hnsw.HnswKernel.for_index(ann)
    assert plain is not None
    before = {k: recall_at_k(plain.search(q, 10, 16), flat.search(q, 10)[1]) for k, q in queries.items()}
    hnsw.reinforce_links(ann, data, 0, 12, lambda p: data[p])
    kernel = hnsw.HnswKernel.for_index(ann)
    assert kernel is not None
    after = {k: recall_at_k(kernel.search(q, 10, 16), flat.search(q, 10)[1]) for k, q in queries.items()}
    assert after["image"] >= before["image"] + 0.015, (before, after)
    assert after["text"] >= before["text"], (before, after)


def test_the_faiss_backend_reinforces_built_and_folded_in_graphs(tmp_path: Path) -> None:
    dim = 32
    x = unit_vectors(6000, dim, seed=7, clusters=40)
    ids = np.arange(x.shape[0], dtype=np.int64) * 5 + 2
    q = np.concatenate([near_queries(x[:5000], 150, seed=1), text_like_queries(x[:5000], 150, seed=2)])
    truth = ids[:5000][np.argsort(-(q @ x[:5000].T), axis=1)[:, :10]]
    got = {}
    for fill in (0, 12):
        cfg = FaissConfig(flat_threshold=1000, hnsw_m=8, hnsw_fill_links=fill, ef_search=16, min_rerank=10)
        with create_index("faiss", tmp_path / f"f{fill}", dim, config=cfg) as idx:
            idx.add(ids[:5000], x[:5000])
            idx.save()
            p = idx.stats().params
            assert p["fill_links"] == fill
            rows = _level0(idx._ann)
            _assert_valid(rows)
            deg = (rows >= 0).sum(axis=1)
            got[fill] = (recall_at_k(idx.search(q, 10).ids, truth), deg.mean())
            if fill:
                assert (deg >= fill).mean() >= 0.95
            if fill:
                idx.add(ids[5000:], x[5000:])
                idx.save()  # folds the new vectors into the same graph (no rebuild at this growth)
                assert idx.stats().params["trained_n"] == 5000
                rows = _level0(idx._ann)
                _assert_valid(rows)
                new = rows[5000:]
                assert ((new >= 0).sum(axis=1) >= 12).mean() >= 0.95
                assert (rows[:5000] >= 5000).any(), "no reverse link from the graph to a folded-in vector"
                found = idx.search(x[5000:], 1).ids[:, 0]
                assert (found == ids[5000:]).mean() >= 0.99
    assert got[12][1] > got[0][1] + 1, got  # mean level-0 links
    assert min(got[0][0], got[12][0]) >= 0.97, got  # recall@10 (a small graph: both find nearly all)


def test_a_negative_fill_is_refused() -> None:
    with pytest.raises(IndexInputError, match="hnsw_fill_links must be >= 0"):
        FaissConfig(hnsw_fill_links=-1)
