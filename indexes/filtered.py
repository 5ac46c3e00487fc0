"""Allowed-id filters on a store of float32 rows, shared by the exact and FAISS backends.

A filter that keeps few rows is answered exactly: its rows are read from the snapshot in blocks and
scored with one BLAS product per block (recall 1.0, cost linear in the rows kept). A filter that
keeps many rows goes to the backend's graph search with a selector, at a breadth widened by the
selectivity: FAISS's HNSW walks allowed and other nodes alike but returns only allowed ones, so to
meet as many allowed nodes as an unfiltered search at breadth ``B`` it must expand about ``B / s``
nodes (``s``: the share of the graph the filter keeps). The graph's cost grows as ``1 / s``, the
exact path's as ``s``; they are equal where::

    a * s * n = b * B / s      i.e.   m* = s * n = sqrt((b / a) * B * n)   allowed rows

(``a``: seconds per row scored exactly, ``b``: seconds per node the graph expands). :func:`plan`
takes the exact path up to ``m*``, with ``b / a`` = :data:`GRAPH_TO_EXACT_COST` as measured by
``bench/bench_query.py --filter-sweep`` (figures in docs/search.md, "Filters at scale").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: ``b / a`` of the module docstring: one node the graph search expands (SQ8 codes of its ~48
#: neighbours, the heaps) costs as much as this many rows scored exactly (read + one BLAS row).
#: Measured at 1M region vectors (bench_query.py --filter-sweep).
GRAPH_TO_EXACT_COST = 8.0


class Rows(Protocol):
    """What the exact path needs of a store (:class:`~.store.JournaledStore`)."""

    def lookup(self, ids: np.ndarray) -> np.ndarray: ...

    def read_rows(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class FilterPlan:
    """How one allowed-id filter is searched: ``exact`` over its rows, or the graph at ``breadth``.

    ``selectivity``: the share of the graph's nodes the filter keeps."""

    exact: bool
    breadth: int
    selectivity: float


def exact_max(breadth: int, n_graph: int, cost_ratio: float = GRAPH_TO_EXACT_COST) -> int:
    """The most allowed rows the exact path takes (``m*`` of the module docstring)."""
    return int(math.sqrt(cost_ratio * max(breadth, 1) * max(n_graph, 0)))


def plan(
    n_allowed: int, n_graph: int, breadth: int, *, in_graph: int | None = None, fixed_max: int | None = None
) -> FilterPlan:
    """Exact over the allowed rows, or the graph at a breadth widened by the selectivity.

    ``n_allowed``: allowed ids the store holds; ``n_graph``: nodes in the graph (deleted ones
    included: the search walks them); ``in_graph``: how many of the allowed ids are nodes of the
    graph (default all; the others are searched exactly beside it); ``breadth``: the unfiltered
    search's (calibrated) breadth; ``fixed_max``: a configured exact-path limit that replaces
    :func:`exact_max`."""
    nodes = n_allowed if in_graph is None else in_graph
    s = min(1.0, nodes / n_graph) if n_graph else 0.0
    limit = exact_max(breadth, n_graph) if fixed_max is None else fixed_max
    if n_allowed <= limit or s == 0.0:
        return FilterPlan(exact=True, breadth=breadth, selectivity=s)
    return FilterPlan(exact=False, breadth=min(max(breadth, math.ceil(breadth / s)), max(n_graph, 1)), selectivity=s)


def allowed_rows(store: Rows, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, ids)`` of the allowed ids the store holds (unknown and deleted ids dropped), by row."""
    rows = store.lookup(allowed)
    keep = rows >= 0
    rows, ids = rows[keep], allowed[keep]
    if rows.size > 1 and (np.diff(rows) < 0).any():
        order = np.argsort(rows, kind="stable")  # read the snapshot front to back
        rows, ids = rows[order], ids[order]
    return rows, ids


def exact_over_rows(
    store: Rows, queries: np.ndarray, k: int, rows: np.ndarray, ids: np.ndarray, block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` over the given rows of ``store``, read ``block_rows`` at a time with
    ``pread`` (the rows come from the page cache without becoming resident pages of the process)."""

    from .exact import exact_topk  # here: exact.py imports this module

    def blocks() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, rows.size, block_rows):
            yield store.read_rows(rows[s : s + block_rows]), ids[s : s + block_rows]

    return exact_topk(queries, blocks(), k)
