"""Where the FAISS default's graph search starts: entry pivots.

FAISS's HNSW search descends the upper layers greedily, one node per layer, and starts the
base-layer search where the descent stops. An image-like query lands near its answers. A text query
sits far from every image vector (its best match has cosine ~0.3): the greedy descent often stops in
the wrong region, and the base-layer search needs a very wide breadth to walk from there to the
answers. Measured on a 1M graph of the generator the project never tuned to (bench/README.md,
"Entry pivots"): FAISS's search needs efSearch 2048 for recall@10 0.962 on its text queries (p50
5.6 ms), where a search started at the best of 4,096 pivots reaches 0.965 at efSearch 256.

The pivots are a fixed random sample of the graph's nodes (:func:`pivot_count` of them, drawn with
the config's seed, so a snapshot's pivots follow from its size and need no file), their vectors
decoded from the graph's own 8-bit codes (no read of the store). A query is scored exactly against
every pivot (one matrix product: a greedy walk over the pivots would stop in the wrong region as
FAISS's descent does) and FAISS's base-layer search (``search_level_0``) starts at the best one.
Only the start changes: the walk, the breadth, the id selector and the exact re-rank are FAISS's
and the backend's as before, and the calibration measures this search as it runs.

Only queries outside the collection's cone start at a pivot: those whose cosine with the pivots'
mean direction is below the 1st percentile of the pivots' own (:data:`OUTSIDE_QUANTILE`). A query
inside it (an image query) lands near its answers by the descent, and scoring 4,096 pivots (an
8 MB matrix-vector product, ~0.16-0.27 ms per query) would cost it more than it saves; measured on
both generators (bench/README.md, "Entry pivots"). On data without a cone (no common direction)
about 1 % of queries fall below the floor: the pivots then neither help nor harm.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._lib import load_faiss

#: Pivots per vector, and the bounds: scoring 4,096 float32 pivots is one 8 MB matrix-vector
#: product (~0.16-0.3 ms for one query on this machine), the cost that stops the count there;
#: 1,024 or 2,048 pivots start the unseen generator's text queries far worse (recall 0.896 / 0.927
#: against 0.964 at efSearch 256, 1M).
PER_PIVOT = 256
MIN_PIVOTS = 1024
MAX_PIVOTS = 4096
#: A query whose cosine with the pivots' mean direction is below this quantile of the pivots' own
#: starts at a pivot; the others start where FAISS's descent stops.
OUTSIDE_QUANTILE = 0.01


def pivot_count(n: int, configured: int | None = None) -> int:
    """Pivots for a graph of ``n`` nodes: ``configured`` when set (0: none, FAISS's own descent),
    else ``n / 256`` within [1024, 4096], at most ``n``."""
    if configured is not None:
        return max(0, min(int(configured), n))
    return min(n, max(MIN_PIVOTS, min(MAX_PIVOTS, n // PER_PIVOT)))


def is_graph(ann: Any) -> bool:
    """True when ``ann`` (an ``IndexIDMap``) holds an HNSW graph, whose search can start at pivots."""
    faiss = load_faiss()
    inner = getattr(ann, "index", None)
    return inner is not None and isinstance(faiss.downcast_index(inner), faiss.IndexHNSW)


def pivot_positions(n: int, count: int, seed: int) -> np.ndarray:
    """The graph positions of the pivots (sorted, distinct, in ``[0, n)``)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False)).astype(np.int64)


class EntryPivots:
    """The pivots of one graph (an ``IndexIDMap(IndexHNSWSQ)``) and its base-layer search from them."""

    def __init__(self, ann: Any, count: int, seed: int) -> None:
        faiss = load_faiss()
        self._faiss = faiss
        self.graph = faiss.downcast_index(ann.index)
        n = int(self.graph.ntotal)
        if count <= 0 or n == 0:  # the index builds none then: its search keeps FAISS's descent
            raise ValueError(f"entry pivots need a count >= 1 and a non-empty graph, got {count} of {n}")
        self.positions = pivot_positions(n, count, seed)
        self.vectors = np.ascontiguousarray(self.graph.storage.reconstruct_batch(self.positions), dtype=np.float32)
        self._id_map = ann.id_map
        mean = self.vectors.mean(axis=0)
        self.direction = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        #: queries whose cosine with :attr:`direction` is below this start at a pivot
        self.floor = float(np.quantile(self.vectors @ self.direction, OUTSIDE_QUANTILE))
        self._ids = faiss.rev_swig_ptr(ann.id_map.data(), n)
        # how FAISS's search orders an inner-product graph's nodes: by the inner product itself
        # (``is_similarity``, FAISS >= 1.12) or by its negation (older FAISS); a start given with
        # the wrong sign is a start FAISS believes to be the worst node it has seen
        self._sign = 1.0 if getattr(self.graph.hnsw, "is_similarity", False) else -1.0

    @property
    def count(self) -> int:
        return int(self.positions.size)

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.positions.nbytes)

    def starts(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best pivot of each query: graph positions ``[nq, 1]`` (int32) and the value FAISS's
        search orders them by (the inner product, or its negation in older FAISS)."""
        scores = q @ self.vectors.T
        best = np.argmax(scores, axis=1)
        nearest = self.positions[best].astype(np.int32).reshape(-1, 1)
        dist = (self._sign * scores[np.arange(q.shape[0]), best]).astype(np.float32).reshape(-1, 1)
        return np.ascontiguousarray(nearest), np.ascontiguousarray(dist)

    def outside(self, q: np.ndarray) -> np.ndarray:
        """Which queries lie outside the collection's cone: they start at a pivot (:meth:`from_pivots`),
        the others where FAISS's descent stops (``.search.ann_candidates`` splits them)."""
        norms = np.maximum(np.linalg.norm(q, axis=1), 1e-12)
        return np.asarray((q @ self.direction) / norms < self.floor)

    def from_pivots(self, q: np.ndarray, r: int, ef_search: int, sel: Any) -> np.ndarray:
        """Ids ``[nq, r]`` (-1: none) of FAISS's base-layer search at ``ef_search`` started at each
        query's best pivot, skipping the ids ``sel`` refuses (as ``IndexIDMap`` would)."""
        faiss = self._faiss
        nq = q.shape[0]
        nearest, dist = self.starts(q)
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(ef_search)
        translated = None
        if sel is not None:  # the selector speaks ids; the graph's search speaks positions
            translated = faiss.IDSelectorTranslated(self._id_map, sel)
            params.sel = translated
        d = np.empty((nq, r), dtype=np.float32)
        pos = np.empty((nq, r), dtype=np.int64)
        self.graph.search_level_0(
            nq,
            faiss.swig_ptr(q),
            r,
            faiss.swig_ptr(nearest),
            faiss.swig_ptr(dist),
            faiss.swig_ptr(d),
            faiss.swig_ptr(pos),
            1,
            1,
            params,
        )
        del translated, sel  # kept alive through the call above
        return np.where(pos >= 0, self._ids[np.maximum(pos, 0)], -1)
