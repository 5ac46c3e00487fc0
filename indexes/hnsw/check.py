"""What fgsearch checks in a FAISS HNSW graph before its C kernel reads it (once per snapshot).

FAISS (from 1.14.2, the lower bound in pyproject.toml) refuses a graph file whose neighbour ids,
offsets or level table are out of range when it reads it. The kernel also relies on what FAISS
does not check, because FAISS's own search never reads it that way:

* the entry point's level is the graph's top level (the descent starts there and reads its links
  on every level down to 1), and no node's level is above it;
* ``max_level + 1`` indexes ``cum_nneighbor_per_level`` (the descent reads ``cum[level + 1]``);
* every link on an upper level ``l`` points to a node that has level ``l`` (the descent reads that
  node's list on level ``l``; in a file FAISS accepts, a link to a lower node reads past its list);
* the codes are ``ntotal * d`` bytes (8 bits per dimension), the trained vector is ``2 * d`` finite
  floats (``vmin`` then ``vdiff``), and the id map, graph, levels and codes agree on ``ntotal``.

:func:`check_graph` raises :class:`IndexCorruptError` with one line naming the first violation;
at 1M vectors it costs what ``bench/bench_indexes.py`` prints as ``graph check`` (a few passes
over the level table and the upper-level links: the base layer is FAISS's to check).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ..errors import IndexCorruptError
from .kernel import _view


def check_graph(ann: Any) -> None:
    """Raise :class:`IndexCorruptError` unless ``ann`` (``IndexIDMap(IndexHNSWSQ)``, 8-bit) is safe
    for the kernel to search (see the module docstring). Other structures are left to FAISS."""
    import faiss

    if not isinstance(ann, faiss.IndexIDMap):
        raise IndexCorruptError(f"the HNSW file holds a {type(ann).__name__}, not an id-mapped graph")
    inner: Any = faiss.downcast_index(ann.index)
    if not isinstance(inner, faiss.IndexHNSWSQ):
        raise IndexCorruptError(f"the HNSW file holds a {type(inner).__name__}, not an HNSW-SQ graph")
    h = inner.hnsw
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


def _check_sizes(ann: Any, h: Any, storage: Any, n: int, d: int, faiss: Any) -> None:
    """The sizes the kernel assumes: codes, trained vector, id map, level table."""
    sq = storage.sq
    if sq.qtype != faiss.ScalarQuantizer.QT_8bit:
        return  # 4-bit graphs are searched by FAISS
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
