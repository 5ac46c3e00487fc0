"""fgsearch's HNSW search kernel (``_hnsw_kernel.c``, loaded by :mod:`..native`), for FAISS
``IndexHNSWSQ`` graphs with 8-bit codes.

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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..native import load_library, missing_reason

ENV = "FGSEARCH_HNSW_KERNEL"
ISAS = ("generic", "avx2", "avx512vnni")
#: FAISS versions whose internals the kernel and link reinforcement read (the SQ8 trained vector
#: ``[vmin, vdiff]``, the ``neighbors``/``offsets``/``cum_nneighbor_per_level`` arrays) and that
#: validate a graph's neighbour ids and offsets when they read it (from 1.14.2); the same bounds as
#: the ``faiss-cpu`` requirement in pyproject.toml (tests/indexes/test_hnsw_layout.py checks both)
FAISS_RANGE = ((1, 14, 2), (2, 0, 0))
#: the kernel's level-0 neighbour buffer: graphs with more links per vector search with FAISS
MAX_LEVEL0_LINKS = 1024

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def faiss_version_reason(version: str | None = None) -> str | None:
    """Why the installed FAISS (or ``version``) must not be read by the kernel; None when it may."""
    if version is None:
        import faiss

        version = str(faiss.__version__)
    parts = tuple(int(p) for p in [*version.split("+")[0].split("."), "0", "0"][:3] if p.isdigit())
    lo, hi = FAISS_RANGE
    if len(parts) == 3 and lo <= parts < hi:
        return None
    return (
        f"FAISS {version} is outside {'.'.join(map(str, lo))} to <{hi[0]}, the versions that check a graph "
        "when they read it and whose layout fgsearch's kernel reads"
    )


def kernel_isa() -> str | None:
    """The variant unfiltered HNSW searches use (``generic``/``avx2``/``avx512vnni``), or None for FAISS's search."""
    lib = load_library()
    if lib is None or faiss_version_reason() is not None:
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
    """Why the kernel is unavailable (None when it is built and FAISS is in :data:`FAISS_RANGE`)."""
    return missing_reason() or faiss_version_reason()


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
        need = int(load_library().fg_hnsw_scratch_bytes(self.d, ef))
        with self._vlock:
            visited, scratch = self._buffers.pop() if self._buffers else (None, None)
        if visited is None:
            visited = np.zeros(self.n + 1, dtype=np.uint16)
        if scratch is None or scratch.size < need:
            scratch = np.empty(need, dtype=np.uint8)
        return visited, scratch

    def _search_rows(self, q: np.ndarray, ef: int, r: int, excluded: np.ndarray | None) -> np.ndarray:
        lib = load_library()
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
    with _pool_lock:
        if _pool is None or _pool_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fgsearch-hnsw")
            _pool_workers = workers
        return _pool
