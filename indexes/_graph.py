"""fgsearch's HNSW search kernel (``_hnsw_kernel.c``), for FAISS ``IndexHNSWSQ`` graphs with 8-bit codes.

The FAISS backend builds and stores its graph with FAISS; unfiltered searches of an 8-bit graph
run here instead of in ``faiss.IndexHNSW.search``: the same graph, codes and entry point, walked by
a kernel that scores a code with one integer dot product (the query folded into the codes'
scale and rounded to 16-bit integers: AVX-512 VNNI, AVX2 or portable C, chosen for the CPU;
integer sums are exact, so every variant returns the same candidates) and prefetches what it
reads next. At efSearch 512 over 1M vectors it is ~2x faster than FAISS's search of the same
graph at the same recall (``bench/bench_indexes.py`` searches our index both ways: rows ``faiss`` and ``faiss/fs``).
Candidates are re-ranked with exact inner products by the caller, as before, so scores stay exact.

The kernel is a C extension built by ``pip install`` (it needs a C compiler). Where it was not
built, :func:`kernel_isa` says so, the index logs a warning once and searches with FAISS, and
``fgsearch status --json`` shows ``search_kernel: "faiss"``. ``FGSEARCH_HNSW_KERNEL`` selects it:
``faiss`` (FAISS's search), ``generic``, ``avx2`` or ``avx512vnni`` (a variant the CPU runs).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

ENV = "FGSEARCH_HNSW_KERNEL"
ISAS = ("generic", "avx2", "avx512vnni")
#: the kernel's level-0 neighbour buffer: graphs with more links per vector search with FAISS
MAX_LEVEL0_LINKS = 1024

_lib: Any = None
_lib_error: str | None = None
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def _load() -> Any:
    """The kernel's shared library (ctypes), or None with ``_lib_error`` saying why."""
    global _lib, _lib_error
    with _lock:
        if _lib is not None or _lib_error is not None:
            return _lib
        try:
            from . import _hnsw_kernel  # type: ignore[attr-defined]
        except ImportError as e:
            _lib_error = f"the C extension fgsearch.indexes._hnsw_kernel is not built ({e})"
            return None
        lib = ctypes.CDLL(str(_hnsw_kernel.__file__))
        p = ctypes.c_void_p
        lib.fg_hnsw_isa.restype = ctypes.c_int
        lib.fg_hnsw_scratch_bytes.restype = ctypes.c_int64
        lib.fg_hnsw_scratch_bytes.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.fg_pread_rows.restype = ctypes.c_int64
        lib.fg_pread_rows.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, p]
        lib.fg_hnsw_search.restype = ctypes.c_int
        lib.fg_hnsw_search.argtypes = [
            ctypes.c_int,  # isa
            p, p, p,  # neighbors, offsets, cum_nneighbor_per_level
            ctypes.c_int32, ctypes.c_int32,  # entry point, max level
            p, ctypes.c_int64, ctypes.c_int,  # codes, n, d
            p, p, ctypes.c_int64,  # vdiff, queries, nq
            ctypes.c_int, ctypes.c_int,  # ef, r
            p, p, p,  # excluded, visited, scratch
            p, p,  # out ids, out scores
        ]  # fmt: skip
        _lib = lib
        return lib


def kernel_isa() -> str | None:
    """The variant unfiltered HNSW searches use (``generic``/``avx2``/``avx512vnni``), or None for FAISS's search."""
    lib = _load()
    if lib is None:
        return None
    best = int(lib.fg_hnsw_isa())
    want = os.environ.get(ENV, "").strip().lower()
    if want in ("", "auto"):
        return ISAS[best]
    if want == "faiss":
        return None
    if want not in ISAS:
        raise ValueError(f"{ENV}={want!r}: use faiss, auto, " + ", ".join(ISAS))
    if ISAS.index(want) > best:
        raise ValueError(f"{ENV}={want}: this CPU runs at most {ISAS[best]}")
    return want


def kernel_missing_reason() -> str | None:
    """Why the kernel is unavailable (None when it is built)."""
    _load()
    return _lib_error


def pread_rows(fd: int, base: int, rows: np.ndarray, out: np.ndarray) -> bool:
    """Read float32 rows ``rows`` of a file (row ``i`` at ``base + i * row bytes``) into ``out``.

    One C call instead of one ``os.preadv`` per row. Returns False when the kernel is not built
    (the caller reads them itself); raises OSError on a short read.
    """
    lib = _load()
    if lib is None or os.name == "nt":
        return False
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    row_bytes = out.shape[1] * out.itemsize
    got = lib.fg_pread_rows(fd, base, row_bytes, rows.ctypes.data, rows.size, out.ctypes.data)
    if got != rows.size:
        raise OSError(f"short read of row {int(rows[max(got, 0)])} ({row_bytes} bytes at offset {base})")
    return True


def _view(vec: Any, ctype: Any, count: int) -> np.ndarray:
    """A numpy view (no copy) of a FAISS vector's memory; valid while the vector lives."""
    if count == 0:
        return np.zeros(0, dtype=np.dtype(ctype))
    return np.ctypeslib.as_array(ctypes.cast(int(vec.data()), ctypes.POINTER(ctype)), shape=(count,))


class HnswKernel:
    """Searches one FAISS ``IndexIDMap(IndexHNSWSQ)`` (8-bit codes, inner product) with the C kernel.

    Thread-safe: each concurrent search takes its own visited array (``n + 1`` uint16) from a pool.
    """

    def __init__(self, ann: Any, isa: str) -> None:
        import faiss

        self._ann = ann  # keeps the graph and codes (and their mapping) alive
        inner: Any = faiss.downcast_index(ann.index)
        h = inner.hnsw
        storage: Any = faiss.downcast_index(inner.storage)
        self.n = int(inner.ntotal)
        self.d = int(inner.d)
        self.isa = isa
        self._isa_code = ISAS.index(isa)
        self._neighbors = _view(h.neighbors, ctypes.c_int32, int(h.neighbors.size()))
        self._offsets = _view(h.offsets, ctypes.c_uint64, int(h.offsets.size()))
        self._cum = np.ascontiguousarray(faiss.vector_to_array(h.cum_nneighbor_per_level), dtype=np.int32)
        self._codes = _view(storage.codes, ctypes.c_uint8, int(storage.codes.size()))
        self._vdiff = np.ascontiguousarray(faiss.vector_to_array(storage.sq.trained)[self.d :], dtype=np.float32)
        self._ids = _view(ann.id_map, ctypes.c_int64, int(ann.id_map.size()))
        self._entry = int(h.entry_point)
        self._max_level = int(h.max_level)
        self._buffers: list[tuple[np.ndarray, np.ndarray]] = []  # (visited, scratch) of idle searches
        self._vlock = threading.Lock()

    @classmethod
    def for_index(cls, ann: Any) -> HnswKernel | None:
        """A kernel for ``ann`` when it is an 8-bit inner-product HNSW graph and the kernel is built, else None."""
        import faiss

        isa = kernel_isa()
        if isa is None or not isinstance(ann, faiss.IndexIDMap):
            return None
        inner: Any = faiss.downcast_index(ann.index)
        if not isinstance(inner, faiss.IndexHNSWSQ) or inner.metric_type != faiss.METRIC_INNER_PRODUCT:
            return None
        storage: Any = faiss.downcast_index(inner.storage)
        if storage.sq.qtype != faiss.ScalarQuantizer.QT_8bit or inner.ntotal == 0 or inner.hnsw.entry_point < 0:
            return None
        cum = faiss.vector_to_array(inner.hnsw.cum_nneighbor_per_level)
        if cum.size < 2 or int(cum[1] - cum[0]) > MAX_LEVEL0_LINKS:
            return None
        return cls(ann, isa)

    def excluded_mask(self, ids: np.ndarray) -> np.ndarray | None:
        """One byte per graph node: 1 where the node's id is in ``ids`` (never returned). None if none is."""
        if ids.size == 0:
            return None
        # catalog ids are dense: a lookup table over their range is one pass over the graph's ids
        dense = int(ids.max()) - int(ids.min()) <= 8 * self.n + 1024
        mask = np.isin(self._ids, ids, kind="table" if dense else None).view(np.uint8)
        return mask if mask.any() else None

    def _take_buffers(self, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """A visited array and a scratch buffer (for ``ef``) no other search is using."""
        need = int(_lib.fg_hnsw_scratch_bytes(self.d, ef))
        with self._vlock:
            visited, scratch = self._buffers.pop() if self._buffers else (None, None)
        if visited is None:
            visited = np.zeros(self.n + 1, dtype=np.uint16)
        if scratch is None or scratch.size < need:
            scratch = np.empty(need, dtype=np.uint8)
        return visited, scratch

    def _search_rows(self, q: np.ndarray, ef: int, r: int, excluded: np.ndarray | None) -> np.ndarray:
        lib = _lib
        nq = q.shape[0]
        out_i = np.empty((nq, r), dtype=np.int32)
        out_s = np.empty((nq, r), dtype=np.float32)
        visited, scratch = self._take_buffers(ef)
        try:
            rc = lib.fg_hnsw_search(
                self._isa_code,
                self._neighbors.ctypes.data,
                self._offsets.ctypes.data,
                self._cum.ctypes.data,
                self._entry,
                self._max_level,
                self._codes.ctypes.data,
                self.n,
                self.d,
                self._vdiff.ctypes.data,
                q.ctypes.data,
                nq,
                ef,
                r,
                None if excluded is None else excluded.ctypes.data,
                visited.ctypes.data,
                scratch.ctypes.data,
                out_i.ctypes.data,
                out_s.ctypes.data,
            )
        finally:
            with self._vlock:
                self._buffers.append((visited, scratch))
        if rc != 0:
            raise RuntimeError(f"HNSW kernel rejected its arguments (ef {ef}, r {r}, n {self.n}, d {self.d})")
        return out_i

    @property
    def ids(self) -> np.ndarray:
        """The id of every graph position (a view of FAISS's id map)."""
        return self._ids

    def search(
        self, q: np.ndarray, r: int, ef: int, excluded: np.ndarray | None = None, threads: int = 1
    ) -> np.ndarray:
        """Top ``r`` ids ``[nq, r]`` (int64, -1 pads) by approximate inner product, best first.

        ``ef`` is the beam width (raised to ``r``); ``excluded`` a mask from :meth:`excluded_mask`.
        Batches are split over ``threads`` threads (the C call releases the GIL).
        """
        return self.ids_of(self.positions(q, r, ef, excluded, threads))

    def ids_of(self, pos: np.ndarray) -> np.ndarray:
        """The ids at graph positions ``pos`` (-1 stays -1)."""
        return np.where(pos >= 0, self._ids[np.maximum(pos, 0)], -1)

    def positions(
        self, q: np.ndarray, r: int, ef: int, excluded: np.ndarray | None = None, threads: int = 1
    ) -> np.ndarray:
        """Like :meth:`search`, but graph positions (int32, -1 pads) instead of ids."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.d:
            raise ValueError(f"queries must be [n, {self.d}], got {q.shape}")
        r = max(1, min(int(r), self.n))
        ef = max(int(ef), r)
        nq = q.shape[0]
        parts = max(1, min(int(threads), nq // 16))
        if parts == 1:
            pos = self._search_rows(q, ef, r, excluded)
        else:
            bounds = np.linspace(0, nq, parts + 1).astype(int)
            pool = _executor(parts)
            futs = [pool.submit(self._search_rows, q[a:b], ef, r, excluded) for a, b in itertools.pairwise(bounds)]
            pos = np.concatenate([f.result() for f in futs])
        return pos


def _executor(workers: int) -> ThreadPoolExecutor:
    """A shared pool for splitting batches (grown, never shrunk)."""
    global _pool, _pool_workers
    with _lock:
        if _pool is None or _pool_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fgsearch-hnsw")
            _pool_workers = workers
        return _pool


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

    FAISS's neighbour selection keeps a link only when no kept neighbour is closer to the candidate
    than the node is; on CLIP-like embeddings that leaves ~16 of the 48 level-0 slots used and a few
    thousand nodes (per million) with one or two links that searches rarely reach. Two passes
    (HNSW paper's "keep pruned connections", applied after the build):

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
    h = inner.hnsw
    n = int(inner.ntotal)
    new = np.arange(start, n, dtype=np.int64)
    cum = faiss.vector_to_array(h.cum_nneighbor_per_level)
    slots = int(cum[1] - cum[0])
    target = min(int(target), slots)
    if new.size == 0 or target <= 0:
        return 0
    nb = _view(h.neighbors, ctypes.c_int32, int(h.neighbors.size()))  # written in place
    off = _view(h.offsets, ctypes.c_uint64, int(h.offsets.size())).astype(np.int64)
    cols = np.arange(slots, dtype=np.int64)

    def rows_of(p: np.ndarray) -> np.ndarray:
        return nb[off[p, None] + cols]

    def degree(p: np.ndarray) -> np.ndarray:
        return (rows_of(p) >= 0).sum(axis=1)  # FAISS lists are a prefix of links, then -1

    added = 0
    # 1. reverse links of the new nodes' links, most similar first, into free slots
    for s in range(0, new.size, chunk):
        u = new[s : s + chunk]
        r = rows_of(u)
        ui, j = np.nonzero(r >= 0)
        src, dst = r[ui, j].astype(np.int64), u[ui]  # candidate link src -> dst
        has = np.zeros(src.size, dtype=bool)
        for a in range(0, src.size, chunk):
            has[a : a + chunk] = (rows_of(src[a : a + chunk]) == dst[a : a + chunk, None]).any(axis=1)
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
        deg = degree(heads)[np.searchsorted(heads, src)]
        keep = rank < slots - deg
        nb[off[src[keep]] + deg[keep] + rank[keep]] = dst[keep].astype(np.int32)
        added += int(keep.sum())
    # 2. top each new node up to ``target`` links with its nearest neighbours in the graph
    kernel = HnswKernel.for_index(ann)
    threads = max(1, int(faiss.omp_get_max_threads()))
    for s in range(0, new.size, chunk):
        u = new[s : s + chunk]
        q = np.ascontiguousarray(vectors[s : s + chunk], dtype=np.float32)
        if kernel is not None:
            cand = kernel.positions(q, target + 1, max(ef, target + 1), None, threads).astype(np.int64)
        else:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(ef, target + 1)
            _, cand = inner.search(q, target + 1, params=params)
        r = rows_of(u)
        ok = (cand >= 0) & (cand != u[:, None])
        for c in range(cand.shape[1]):
            ok[:, c] &= ~(r == cand[:, c : c + 1]).any(axis=1)
        deg = (r >= 0).sum(axis=1)
        rank = np.cumsum(ok, axis=1) - 1
        take = ok & (rank < (target - deg)[:, None])
        qi, ci = np.nonzero(take)
        nb[off[u[qi]] + deg[qi] + rank[qi, ci]] = cand[qi, ci].astype(np.int32)
        added += int(qi.size)
    return added
