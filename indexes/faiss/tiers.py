"""The approximate tiers of the FAISS backend: building an HNSW-SQ graph or an IVF-PQ index.

Each builder takes the snapshot's vectors (by ascending id) and the backend's config and returns
the FAISS structure with the manifest extras that describe it. Calibration of the search breadth
is separate (:mod:`.calibration`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import FaissConfig
from ..hnsw import reinforce_links
from ..hnsw.kernel import faiss_version_reason
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


def snapshot_vectors_at(ann: Any, vecs: np.ndarray, ids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``positions -> vectors`` of an ``IndexIDMap`` graph, read from a snapshot (``vecs`` by
    ascending ``ids``); zeros for positions whose id the snapshot no longer holds (tombstones)."""
    id_map = load_faiss().vector_to_array(ann.id_map)

    def at(pos: np.ndarray) -> np.ndarray:
        want = id_map[pos]
        rows = np.minimum(np.searchsorted(ids, want), max(ids.size - 1, 0))
        found = ids[rows] == want
        out = np.zeros((pos.size, vecs.shape[1]), dtype=np.float32)
        out[found] = vecs[rows[found]]
        return out

    return at


def build_hnsw(config: FaissConfig, vecs: np.ndarray, ids: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """An ``IndexIDMap(IndexHNSWSQ)`` over every row (graph position i holds row i), reinforced."""
    faiss = load_faiss()
    cfg = config
    n, dim = vecs.shape
    qtype = faiss.ScalarQuantizer.QT_4bit if cfg.hnsw_codes == "SQ4" else faiss.ScalarQuantizer.QT_8bit
    hnsw = faiss.IndexHNSWSQ(dim, qtype, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = cfg.hnsw_ef_construction
    rng = np.random.default_rng(cfg.seed)
    n_train = min(n, cfg.train_sample or 100_000)
    rows = np.sort(rng.choice(n, size=n_train, replace=False))
    hnsw.train(np.ascontiguousarray(vecs[rows], dtype=np.float32))  # per-dimension value ranges
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
    for s in range(0, n, ADD_CHUNK):
        ann.add_with_ids(np.ascontiguousarray(vecs[s : s + ADD_CHUNK]), np.asarray(ids[s : s + ADD_CHUNK]))
    reinforce(cfg, ann, vecs, 0, lambda pos: np.asarray(vecs[pos], dtype=np.float32))  # position i is row i
    built = {"tier_built": "hnsw", "hnsw_m": cfg.hnsw_m, "hnsw_ef_construction": cfg.hnsw_ef_construction}
    return ann, {**built, "hnsw_codes": cfg.hnsw_codes, "hnsw_fill_links": cfg.hnsw_fill_links}


def reinforce(
    config: FaissConfig, ann: Any, vectors: np.ndarray, start: int, vectors_at: Callable[[np.ndarray], np.ndarray]
) -> None:
    """More level-0 links for graph positions ``start ..`` (see :func:`..hnsw.links.reinforce_links`)."""
    if config.hnsw_fill_links <= 0 or vectors.shape[0] == 0:
        return
    if (reason := faiss_version_reason()) is not None:  # it writes FAISS's link arrays in place
        log.warning("%s: HNSW links are not reinforced", reason)
        return
    t = time.perf_counter()
    added = reinforce_links(ann, vectors, start, config.hnsw_fill_links, vectors_at)
    log.info("HNSW: %d level-0 links added for %d vectors in %.1fs", added, vectors.shape[0], time.perf_counter() - t)


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
    sample = np.ascontiguousarray(vecs[rows], dtype=np.float32)
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
    return ivf, {"tier_built": "ivf", "nlist": nlist, "pq_m": m}
