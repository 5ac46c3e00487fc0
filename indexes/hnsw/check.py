"""What fgsearch checks in a FAISS HNSW graph before FAISS searches it (once per snapshot).

FAISS (from 1.14.2, the lower bound in pyproject.toml) refuses a graph file whose neighbour ids,
offsets or level table are out of range when it reads it. Its search also relies on what its
reader does not check (a file that breaks these reads another node's lists, or past the end of the
link array, with no bounds check):

* the entry point's level is the graph's top level (the descent starts there and reads its links
  on every level down to 1), and no node's level is above it;
* ``max_level + 1`` indexes ``cum_nneighbor_per_level`` (the descent reads ``cum[level + 1]``);
* every link on an upper level ``l`` points to a node that has level ``l`` (the descent reads that
  node's list on level ``l``; in a file FAISS accepts, a link to a lower node reads past its list);
* the codes are ``ntotal * d`` bytes (8 bits per dimension), the trained vector is ``2 * d`` finite
  floats (``vmin`` then ``vdiff``), and the id map, graph, levels and codes agree on ``ntotal``
  (infinite or NaN ranges would decode every code to NaN: a search of it returns arbitrary ids).

:func:`check_graph` raises :class:`IndexCorruptError` with one line naming the first violation;
at 1M vectors it costs what ``bench/bench_indexes.py`` prints as ``graph check`` (a few passes
over the level table and the upper-level links: the base layer is FAISS's to check).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ..errors import IndexCorruptError

#: FAISS versions that validate a graph's neighbour ids and offsets when they read it (from 1.14.2)
#: and whose HNSW layout this check reads (``levels``, ``offsets``, ``neighbors``,
#: ``cum_nneighbor_per_level``, the SQ8 trained vector): the same bounds as the ``faiss-cpu``
#: requirement in pyproject.toml (tests/indexes/test_hnsw_layout.py checks both)
FAISS_RANGE = ((1, 14, 2), (2, 0, 0))


def faiss_version_reason(version: str | None = None) -> str | None:
    """Why the installed FAISS (or ``version``) is outside :data:`FAISS_RANGE`; None when inside."""
    if version is None:
        import faiss

        version = str(faiss.__version__)
    parts = tuple(int(p) for p in [*version.split("+")[0].split("."), "0", "0"][:3] if p.isdigit())
    lo, hi = FAISS_RANGE
    if len(parts) == 3 and lo <= parts < hi:
        return None
    return (
        f"FAISS {version} is outside {'.'.join(map(str, lo))} to <{hi[0]}, the versions that check a graph "
        "when they read it and whose layout fgsearch's graph check reads"
    )


def _view(vec: Any, ctype: Any, count: int) -> np.ndarray:
    """A numpy view (no copy) of a FAISS vector's memory; valid while the vector lives."""
    if count == 0:
        return np.zeros(0, dtype=np.dtype(ctype))
    return np.ctypeslib.as_array(ctypes.cast(int(vec.data()), ctypes.POINTER(ctype)), shape=(count,))


def check_graph(ann: Any) -> None:
    """Raise :class:`IndexCorruptError` unless ``ann`` (``IndexIDMap(IndexHNSWSQ)``) is safe for
    FAISS to search (see the module docstring)."""
    import faiss

    if not isinstance(ann, faiss.IndexIDMap):
        raise IndexCorruptError(f"the HNSW file holds a {type(ann).__name__}, not an id-mapped graph")
    inner: Any = faiss.downcast_index(ann.index)
    if not isinstance(inner, faiss.IndexHNSWSQ):
        raise IndexCorruptError(f"the HNSW file holds a {type(inner).__name__}, not an HNSW-SQ graph")
    h: Any = inner.hnsw
    storage: Any = faiss.downcast_index(inner.storage)
    n, d = int(inner.ntotal), int(inner.d)
    _check_sizes(ann, h, storage, n, d, faiss)
    if n == 0:
        return
    levels = _view(h.levels, ctypes.c_int32, n)
    cum = faiss.vector_to_array(h.cum_nneighbor_per_level).astype(np.int64)
    top, entry = int(h.max_level), int(h.entry_point)
    if not 0 <= top < cum.size - 1:
        raise IndexCorruptError(f"HNSW graph: top level {top} out of range [0, {cum.size - 1})")
    if not 0 <= entry < n:
        raise IndexCorruptError(f"HNSW graph: entry point {entry} out of range [0, {n})")
    if int(levels[entry]) != top + 1:
        raise IndexCorruptError(f"HNSW graph: the entry point's level {int(levels[entry]) - 1} is not the top {top}")
    if int(levels.max()) > top + 1 or int(levels.min()) < 1:
        raise IndexCorruptError(f"HNSW graph: node levels out of range [0, {top}]")
    _check_upper_links(h, levels, cum, n)
    if faiss_version_reason() is not None:  # a FAISS (e.g. faiss-gpu < 1.14.2) that reads ids unchecked
        nb = _view(h.neighbors, ctypes.c_int32, int(h.neighbors.size()))
        if nb.size and (int(nb.max()) >= n or int(nb.min()) < -1):
            raise IndexCorruptError(f"HNSW graph: a neighbour id out of range [0, {n})")


def _check_sizes(ann: Any, h: Any, storage: Any, n: int, d: int, faiss: Any) -> None:
    """The sizes a search assumes: codes, trained vector, id map, level table (8-bit codes; a
    4-bit graph's code sizes are FAISS's to check)."""
    sq = storage.sq
    if sq.qtype != faiss.ScalarQuantizer.QT_8bit:
        return
    if int(storage.d) != d or int(sq.d) != d or int(storage.code_size) != d or int(sq.code_size) != d:
        raise IndexCorruptError(f"HNSW graph: code size {int(storage.code_size)} for {d} dimensions (8-bit codes)")
    if int(storage.ntotal) != n or int(storage.codes.size()) != n * d:
        raise IndexCorruptError(f"HNSW graph: {int(storage.codes.size())} bytes of codes for {n} vectors of {d}")
    trained = faiss.vector_to_array(sq.trained)
    if trained.size != 2 * d or not np.isfinite(trained).all():
        raise IndexCorruptError(f"HNSW graph: the codes' value ranges ({trained.size} values) are not 2 x {d} numbers")
    if int(ann.ntotal) != n or int(ann.id_map.size()) != n or int(h.levels.size()) != n:
        raise IndexCorruptError(
            f"HNSW graph: {int(ann.id_map.size())} ids, {int(h.levels.size())} levels for {n} vectors"
        )


def _check_upper_links(h: Any, levels: np.ndarray, cum: np.ndarray, n: int) -> None:
    """Every link on level ``l >= 1`` points to a node present on level ``l`` (or is -1)."""
    upper = np.flatnonzero(levels >= 2)
    if upper.size == 0:
        return
    nb = _view(h.neighbors, ctypes.c_int32, int(h.neighbors.size()))
    off = _view(h.offsets, ctypes.c_uint64, n + 1)[upper].astype(np.int64)
    lv = levels[upper].astype(np.int64)
    for level in range(1, int(lv.max())):
        at = lv > level  # nodes present on this level
        cols = np.arange(cum[level], cum[level + 1], dtype=np.int64)
        links = nb[off[at, None] + cols]
        v = links[links >= 0]
        if v.size and int(v.max()) >= n:
            raise IndexCorruptError(f"HNSW graph: a link on level {level} points past the last node")
        if v.size and int(levels[v].min()) <= level:
            raise IndexCorruptError(f"HNSW graph: a link on level {level} points to a node below it")
