"""The FAISS backend's approximate search: candidates from the structure re-ranked exactly, and how
an allowed-id filter is searched (:mod:`..filtered`). Functions of the structure and the store, so
the search and the calibration (which measures the same search) share them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..base import topk_rows
from ..filtered import allowed_rows, plan
from ._lib import allowed_selector, load_faiss
from .entry import EntryPivots

#: Candidate rows re-scored at once (a batch of queries is re-ranked in slices of this many rows).
RERANK_ROWS = 1024


def ann_candidates(
    ann: Any,
    tier: str,
    q: np.ndarray,
    k: int,
    breadth: int,
    sel: Any,
    gather: Any,
    *,
    rerank_factor: int,
    min_rerank: int,
    gpu: Any = None,
    entry: EntryPivots | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of ``max(k * rerank_factor, min_rerank)`` candidates that FAISS's search of ``ann``
    (``"hnsw"``: efSearch ``breadth``, a query outside the collection's cone started at the best of
    the ``entry`` pivots when given (see :mod:`.entry`); ``"ivf"``: nprobe ``breadth``; ``gpu``: a
    GPU copy of an IVF, used when nothing is excluded) returns, skipping the ids ``sel`` refuses,
    re-ranked by exact inner products with the vectors ``gather(ids)`` returns."""
    r = min(max(k * rerank_factor, min_rerank), max(int(ann.ntotal), 1))
    if gpu is not None and sel is None:
        _, cand = gpu.search(q, r)
        return rerank(cand, q, k, gather)
    outside = entry.outside(q) if entry is not None and tier == "hnsw" else np.zeros(q.shape[0], dtype=bool)
    if entry is None or not outside.any():
        return rerank(_faiss_search(ann, tier, q, r, breadth, sel), q, k, gather)
    cand = np.empty((q.shape[0], r), dtype=np.int64)
    cand[outside] = entry.from_pivots(np.ascontiguousarray(q[outside]), r, max(int(breadth), r), sel)
    if not outside.all():
        cand[~outside] = _faiss_search(ann, tier, np.ascontiguousarray(q[~outside]), r, breadth, sel)
    return rerank(cand, q, k, gather)


def _faiss_search(ann: Any, tier: str, q: np.ndarray, r: int, breadth: int, sel: Any) -> np.ndarray:
    """``r`` candidate ids per query (-1: none) of FAISS's own search of ``ann`` at ``breadth``."""
    faiss = load_faiss()
    if tier == "ivf":
        params = faiss.SearchParametersIVF()
        params.nprobe = int(breadth)
    else:
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(int(breadth), r)
    if sel is not None:
        params.sel = sel
    return np.asarray(ann.search(q, r, params=params)[1])


def rerank(
    cand: np.ndarray, q: np.ndarray, k: int, gather: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of the candidate ids (-1: none) by exact inner product with the float32 vectors
    ``gather(ids)`` returns, in bounded blocks of ``RERANK_ROWS`` for a large batch (a graph
    backend's re-rank: the FAISS default's and usearch's)."""
    if cand.shape[0] == 1:  # one query (a user's search): the same rule without the batch's bookkeeping
        keep = cand[0] >= 0
        scores = np.full(cand.shape, -np.inf, dtype=np.float32)
        if keep.any():
            scores[0, keep] = gather(cand[0, keep]) @ q[0]
        return topk_rows(cand, scores, k)
    scores = np.full(cand.shape, -np.inf, dtype=np.float32)
    step = max(1, RERANK_ROWS // max(cand.shape[1], 1))
    for s in range(0, cand.shape[0], step):
        part = cand[s : s + step]
        qi, ci = np.nonzero(part >= 0)
        if qi.size:
            v = gather(part[qi, ci])
            scores[s + qi, ci] = np.einsum("ij,ij->i", v, q[s + qi])
    return topk_rows(cand, scores, k)


def filter_plan(
    store: Any, ann: Any, tier: str, allowed: np.ndarray, breadth: int, depth: int, fixed_max: int | None
) -> tuple[tuple[np.ndarray, np.ndarray] | None, Any, np.ndarray | None, int]:
    """How an allowed-id filter is searched (:func:`..filtered.plan`): ``(rows, ids)`` for the exact
    path, or the graph's selector over the snapshot's allowed ids, the allowed ids added since (searched
    exactly and merged) and the widened breadth. ``depth``: the candidates a search re-ranks."""
    rows, ids = allowed_rows(store, allowed)
    if ann is None:
        return (rows, ids), None, None, breadth
    in_base = rows < store.n_base
    n_graph = int(ann.ntotal)
    how = plan(
        ids.size, n_graph, breadth, min(depth, max(n_graph, 1)), in_graph=int(in_base.sum()), fixed_max=fixed_max
    )
    if how.exact:
        return (rows, ids), None, None, breadth
    widened = how.breadth if tier == "hnsw" else breadth  # IVF: the lists probed are the cost
    return None, allowed_selector(ids[in_base]), ids[~in_base], widened


def hnsw_bytes(ann: Any) -> int:
    """Memory of an ``IndexIDMap(IndexHNSWSQ)``: codes, ids (+ the id map), level-0 and upper links."""
    faiss = load_faiss()
    graph = faiss.downcast_index(ann.index)
    code_size = int(faiss.downcast_index(graph.storage).code_size)
    links = int(graph.hnsw.neighbors.size()) * 4 + int(graph.hnsw.offsets.size()) * 8
    return int(ann.ntotal) * (code_size + 8 + 4) + links
