"""The approximate tiers of the FAISS backend: building an HNSW-SQ graph or an IVF-PQ index.

Each builder takes the snapshot's vectors (by ascending id) and the backend's config and returns
the FAISS structure with the manifest extras that describe it. Calibration of the search breadth
is separate (:mod:`.calibration`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..config import FaissConfig
from ..store.files import read_rows, release_pages
from ._lib import ADD_CHUNK, load_faiss

log = logging.getLogger(__name__)

#: PQ trains 256 centroids per sub-quantizer: below this many vectors the IVF tier is never used.
MIN_IVF_VECTORS = 1000


def derive_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: a power of two near ``2 * sqrt(n)``, in [64, 65536], <= n/39."""
    target = 2.0 * math.sqrt(max(n, 1))
    nlist = 2 ** round(math.log2(target))
    nlist = min(nlist, 65536, max(1, n // 39))
    return max(nlist, min(64, max(1, n // 39)))


def derive_pq_m(dim: int) -> int:
    """PQ sub-quantizers (bytes per vector): ``dim // 4``, adjusted to divide ``dim``.

    At 512-d that is 128 one-byte codes per vector: with 4 dimensions per sub-quantizer the PQ
    ranking is good enough that re-ranking ~100 candidates reaches recall@10 >= 0.95.
    """
    m = max(1, dim // 4)
    while dim % m:
        m -= 1
    return m


def build_hnsw(config: FaissConfig, vecs: np.ndarray, ids: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """An ``IndexIDMap(IndexHNSWSQ)`` over every row (graph position i holds row i)."""
    faiss = load_faiss()
    cfg = config
    n, dim = vecs.shape
    qtype = faiss.ScalarQuantizer.QT_4bit if cfg.hnsw_codes == "SQ4" else faiss.ScalarQuantizer.QT_8bit
    hnsw = faiss.IndexHNSWSQ(dim, qtype, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = cfg.hnsw_ef_construction
    rng = np.random.default_rng(cfg.seed)
    n_train = min(n, cfg.train_sample or 100_000)
    rows = np.sort(rng.choice(n, size=n_train, replace=False))
    hnsw.train(np.ascontiguousarray(read_rows(vecs, rows), dtype=np.float32))  # per-dimension value ranges
    ann = faiss.IndexIDMap(hnsw)
    ann.own_fields = True
    hnsw.this.disown()  # the IDMap owns (and frees) the graph
    log.info(
        "building HNSW%d,%s (efConstruction %d) over %d vectors",
        cfg.hnsw_m,
        cfg.hnsw_codes,
        cfg.hnsw_ef_construction,
        n,
    )
    release_pages(vecs)
    for s in range(0, n, ADD_CHUNK):
        ann.add_with_ids(np.ascontiguousarray(vecs[s : s + ADD_CHUNK]), np.asarray(ids[s : s + ADD_CHUNK]))
        release_pages(vecs)
    built = {"tier_built": "hnsw", "hnsw_m": cfg.hnsw_m, "hnsw_ef_construction": cfg.hnsw_ef_construction}
    return ann, {**built, "hnsw_codes": cfg.hnsw_codes}


#: A fold re-trains the codes' value ranges (a rebuild) when more than this fraction of the new
#: vectors' values fall outside the trained ranges widened by :data:`RANGE_MARGIN` of their width
#: (such values are clipped to the range's end by the 8-bit codes; the exact re-rank then has to
#: make up for a coarser candidate list). Same-distribution adds stay far below it: 1M CLIP-like
#: vectors folded into a graph trained on the first 50k put 0.0000 of their values there
#: (bench/README.md, "The FAISS default without the kernel").
OUT_OF_RANGE_MAX = 0.001
RANGE_MARGIN = 0.05


def out_of_range(ann: Any, vectors: np.ndarray) -> float:
    """The fraction of ``vectors``' values outside the SQ codes' trained ranges widened by
    :data:`RANGE_MARGIN` (0.0 for structures without such ranges)."""
    faiss = load_faiss()
    try:
        inner = faiss.downcast_index(ann.index)
        sq = faiss.downcast_index(inner.storage).sq
    except AttributeError:
        return 0.0
    trained = faiss.vector_to_array(sq.trained)
    d = vectors.shape[1]
    if trained.size != 2 * d or vectors.shape[0] == 0:
        return 0.0
    vmin, vdiff = trained[:d], trained[d:]
    lo, hi = vmin - RANGE_MARGIN * vdiff, vmin + (1 + RANGE_MARGIN) * vdiff
    outside = 0
    for s in range(0, vectors.shape[0], ADD_CHUNK):
        block = np.asarray(vectors[s : s + ADD_CHUNK])
        outside += int(np.count_nonzero((block < lo) | (block > hi)))
    return outside / (vectors.shape[0] * d)


def build_ivf(config: FaissConfig, vecs: np.ndarray, ids: np.ndarray, *, for_gpu: bool) -> tuple[Any, dict[str, Any]]:
    """An ``IndexIVFPQ`` trained on a sample and filled with every row (``for_gpu``: codes a GPU takes)."""
    faiss = load_faiss()
    cfg = config
    n, dim = vecs.shape
    nlist = cfg.nlist or derive_nlist(n)
    m = cfg.pq_m or derive_pq_m(dim)
    if cfg.pq_m is None and for_gpu:
        # FAISS's GPU IVF-PQ handles at most 96 bytes per code: use dim/8 codes there and let
        # the calibration deepen the re-rank instead
        m = derive_pq_m(max(1, dim // 2))
        while dim % m:
            m -= 1
    rng = np.random.default_rng(cfg.seed)
    n_train = min(n, cfg.train_sample or max(50 * nlist, 20_000))
    rows = np.sort(rng.choice(n, size=n_train, replace=False))
    sample = np.ascontiguousarray(read_rows(vecs, rows), dtype=np.float32)
    log.info("training IVF%d,PQ%d on %d of %d vectors", nlist, m, n_train, n)
    ivf = faiss.index_factory(dim, f"IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
    # PQ k-means on tiny sub-vectors is slow in FAISS: 64 points per centroid (16k residuals)
    # and 10 iterations train 128 sub-quantizers in seconds, with no measurable recall loss
    # after exact re-ranking.
    ivf.pq.cp.max_points_per_centroid = 64
    ivf.pq.cp.niter = 10
    ivf.do_polysemous_training = False  # on by default in index_factory; minutes at 128 codes
    ivf.train(sample)
    del sample
    for s in range(0, n, ADD_CHUNK):
        ivf.add_with_ids(np.ascontiguousarray(vecs[s : s + ADD_CHUNK]), np.asarray(ids[s : s + ADD_CHUNK]))
        release_pages(vecs)
    return ivf, {"tier_built": "ivf", "nlist": nlist, "pq_m": m}


def out_of_range_share(ann: Any, blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """:func:`out_of_range` over the live rows of ``(vectors, ids)`` blocks (ids -1: deleted), weighted
    by rows: the share of the new values outside the codes' widened trained ranges (0 when none)."""
    outside = total = 0.0
    for vecs, ids in blocks:
        live = ids >= 0
        if live.any():
            rows = int(live.sum())
            outside += out_of_range(ann, vecs[live]) * rows
            total += rows
    return outside / total if total else 0.0
