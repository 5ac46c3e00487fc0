"""Level-0 link reinforcement of FAISS HNSW graphs, applied after a build (or after adds).

FAISS's neighbour selection keeps a link only when no kept neighbour is closer to the candidate
than the node is; on CLIP-like embeddings that leaves ~16 of the 48 level-0 slots used and a few
thousand nodes (per million) with one or two links that searches rarely reach.
:func:`reinforce_links` fills the free slots in two named passes (the HNSW paper's "keep pruned
connections"): :func:`_add_reverse_links`, then :func:`_fill_nearest`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np

from .kernel import HnswKernel, _view


class _LevelZero:
    """Writable view of a FAISS HNSW graph's level-0 neighbour lists (``-1`` marks a free slot)."""

    def __init__(self, hnsw: Any, faiss: Any) -> None:
        cum = faiss.vector_to_array(hnsw.cum_nneighbor_per_level)
        self.slots = int(cum[1] - cum[0])
        self.nb = _view(hnsw.neighbors, ctypes.c_int32, int(hnsw.neighbors.size()))  # written in place
        self.off = _view(hnsw.offsets, ctypes.c_uint64, int(hnsw.offsets.size())).astype(np.int64)
        self._cols = np.arange(self.slots, dtype=np.int64)

    def rows_of(self, p: np.ndarray) -> np.ndarray:
        return self.nb[self.off[p, None] + self._cols]

    def degree(self, p: np.ndarray) -> np.ndarray:
        return (self.rows_of(p) >= 0).sum(axis=1)  # FAISS lists are a prefix of links, then -1


def reinforce_links(
    ann: Any,
    vectors: np.ndarray,
    start: int,
    target: int,
    vectors_at: Callable[[np.ndarray], np.ndarray],
    *,
    ef: int = 64,
    chunk: int = 65536,
) -> int:
    """Give the graph positions ``start ..`` (whose vectors are ``vectors``, in order) more level-0 links.

    1. **reverse links**: for each link ``u -> v`` of a new node, ``v -> u`` is added where ``v``
       has a free slot, the most similar first (exact inner products of ``vectors_at(positions)``);
    2. **fill**: each new node's list is topped up to ``target`` links with its nearest
       neighbours, found by searching the graph itself (``ef``).

    The slots exist already (the file does not grow). 1M CLIP-like vectors (M=24): mean level-0
    links 16 -> 26, recall@10 at efSearch 384 0.9943 -> 0.9970 (image-like queries) and 0.968 ->
    0.977 (text-like) at the same search time. Returns the number of links added.
    """
    import faiss

    inner: Any = faiss.downcast_index(ann.index)
    new = np.arange(start, int(inner.ntotal), dtype=np.int64)
    graph = _LevelZero(inner.hnsw, faiss)
    target = min(int(target), graph.slots)
    if new.size == 0 or target <= 0:
        return 0
    added = _add_reverse_links(graph, new, vectors_at, chunk)
    return added + _fill_nearest(ann, inner, graph, new, vectors, target, ef, chunk)


def _add_reverse_links(
    graph: _LevelZero, new: np.ndarray, vectors_at: Callable[[np.ndarray], np.ndarray], chunk: int
) -> int:
    """Pass 1: the reverse of each new node's links, most similar first, into free slots."""
    added = 0
    for s in range(0, new.size, chunk):
        u = new[s : s + chunk]
        r = graph.rows_of(u)
        ui, j = np.nonzero(r >= 0)
        src, dst = r[ui, j].astype(np.int64), u[ui]  # candidate link src -> dst
        has = np.zeros(src.size, dtype=bool)
        for a in range(0, src.size, chunk):
            has[a : a + chunk] = (graph.rows_of(src[a : a + chunk]) == dst[a : a + chunk, None]).any(axis=1)
        src, dst = src[~has], dst[~has]
        if src.size == 0:
            continue
        sim = np.empty(src.size, dtype=np.float32)
        for a in range(0, src.size, chunk):
            sim[a : a + chunk] = np.einsum("ij,ij->i", vectors_at(src[a : a + chunk]), vectors_at(dst[a : a + chunk]))
        order = np.lexsort((-sim, src))
        src, dst = src[order], dst[order]
        rank = np.arange(src.size) - np.searchsorted(src, src, side="left")
        heads = np.unique(src)
        deg = graph.degree(heads)[np.searchsorted(heads, src)]
        keep = rank < graph.slots - deg
        graph.nb[graph.off[src[keep]] + deg[keep] + rank[keep]] = dst[keep].astype(np.int32)
        added += int(keep.sum())
    return added


def _fill_nearest(
    ann: Any, inner: Any, graph: _LevelZero, new: np.ndarray, vectors: np.ndarray, target: int, ef: int, chunk: int
) -> int:
    """Pass 2: top each new node up to ``target`` links with its nearest neighbours in the graph."""
    import faiss

    kernel = HnswKernel.for_index(ann)
    threads = max(1, int(faiss.omp_get_max_threads()))
    added = 0
    for s in range(0, new.size, chunk):
        u = new[s : s + chunk]
        q = np.ascontiguousarray(vectors[s : s + chunk], dtype=np.float32)
        if kernel is not None:
            cand = kernel.positions(q, target + 1, max(ef, target + 1), None, threads).astype(np.int64)
        else:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(ef, target + 1)
            _, cand = inner.search(q, target + 1, params=params)
        r = graph.rows_of(u)
        ok = (cand >= 0) & (cand != u[:, None])
        for c in range(cand.shape[1]):
            ok[:, c] &= ~(r == cand[:, c : c + 1]).any(axis=1)
        deg = (r >= 0).sum(axis=1)
        rank = np.cumsum(ok, axis=1) - 1
        take = ok & (rank < (target - deg)[:, None])
        qi, ci = np.nonzero(take)
        graph.nb[graph.off[u[qi]] + deg[qi] + rank[qi, ci]] = cand[qi, ci].astype(np.int32)
        added += int(qi.size)
    return added
