"""Allowed-id filters on a store of float32 rows, shared by the exact and FAISS backends.

A filter that keeps few rows is answered exactly: its rows are read from the snapshot in blocks and
scored with one BLAS product per block (recall 1.0, cost ``a`` per row kept). A filter that keeps
more goes to the backend's graph search with a selector: FAISS's HNSW walks kept and other nodes
alike and returns only kept ones, so the walk must meet about as many kept nodes as the search
re-ranks (``r`` candidates; twice that for margin): its breadth is widened to
``max(B, 2 r / s)`` (``B``: the unfiltered breadth, ``s``: the share of the graph the filter
keeps), at a cost of ``b`` per unit of breadth. The exact path is taken while it is the cheaper::

    a * m <= b * max(B, 2 r n / m)   i.e.   m <= max(sqrt((b/a) * 2 r * n), (b/a) * B)

(``m``: rows kept, ``n``: nodes in the graph). ``b / a`` = :data:`GRAPH_TO_EXACT_COST`, measured
by ``bench/bench_query.py``'s sweep at 1M region vectors (bench/README.md, "Filtered and region
queries at 1M"). Widening by ``B / s`` instead (every allowed node found at the unfiltered rate)
cost 5-45x more there for no recall: at efSearch 1,536 the unwidened walk already returned the
exact top 10 of filters keeping 3-30 %; at small breadths (96 on 1,200 vectors) it returned half
of them for a 1 % filter, which the widening to ``2 r / s`` restores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .base import exact_topk

#: ``b / a`` of the module docstring: one unit of graph breadth costs as much as this many rows
#: scored exactly (at 1M region vectors, efSearch 1,536: 65 and 58 us per unit of breadth against
#: 25 and 22 us per row, on a loaded 2-core machine where the snapshot was read from disk).
GRAPH_TO_EXACT_COST = 2.5
#: The widened walk must meet this many times the re-ranked candidates among the kept nodes.
MEET_FACTOR = 2


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


def exact_max(breadth: int, n_graph: int, depth: int, cost_ratio: float = GRAPH_TO_EXACT_COST) -> int:
    """The most kept rows the exact path takes (``m*`` of the module docstring); ``depth``: the
    candidates the graph search re-ranks."""
    return int(max(math.sqrt(cost_ratio * MEET_FACTOR * depth * max(n_graph, 0)), cost_ratio * breadth))


def plan(
    n_allowed: int,
    n_graph: int,
    breadth: int,
    depth: int,
    *,
    in_graph: int | None = None,
    fixed_max: int | None = None,
) -> FilterPlan:
    """Exact over the allowed rows, or the graph at a breadth widened by the selectivity.

    ``n_allowed``: allowed ids the store holds; ``n_graph``: nodes in the graph (deleted ones
    included: the search walks them); ``breadth``: the unfiltered search's (calibrated) breadth;
    ``depth``: the candidates it re-ranks; ``in_graph``: how many of the allowed ids are nodes of
    the graph (default all; the others are searched exactly beside it); ``fixed_max``: a
    configured exact-path limit that replaces :func:`exact_max`."""
    nodes = n_allowed if in_graph is None else in_graph
    s = min(1.0, nodes / n_graph) if n_graph else 0.0
    limit = exact_max(breadth, n_graph, depth) if fixed_max is None else fixed_max
    if n_allowed <= limit or s == 0.0:
        return FilterPlan(exact=True, breadth=breadth, selectivity=s)
    wide = max(breadth, math.ceil(MEET_FACTOR * depth / s))
    return FilterPlan(exact=False, breadth=min(wide, max(n_graph, breadth)), selectivity=s)


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

    def blocks() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, rows.size, block_rows):
            yield store.read_rows(rows[s : s + block_rows]), ids[s : s + block_rows]

    return exact_topk(queries, blocks(), k)
