"""The usearch index: the FAISS default's store and calibration around a usearch HNSW graph.

How it works (see :class:`.config.UsearchConfig` for every knob):

* **store**: the float32 vectors, the journal, snapshots, crash safety, deletes and ``get`` are
  :class:`~..exact.StoreBackedIndex`'s, exactly as for the FAISS default; only the graph is usearch's.
* **flat tier** (fewer than ``flat_threshold`` vectors): exact search over the stored vectors.
* **hnsw tier**: a snapshot at or past ``flat_threshold`` builds a usearch ``Index(metric="ip")``
  over ``i8`` (or ``f16``) codes from the snapshot's vectors, added in blocks of 65,536, saves it
  as the snapshot's file ``usearch.<generation>.index`` (fsynced, checksummed by the manifest),
  and calibrates ``expansion_search`` with :func:`..faiss.calibration.calibrate` exactly as the
  FAISS default calibrates efSearch (synthetic image-like and cross-modal sets, the caller's sets,
  the queries the index served). A search asks the graph for the top ``max(k * rerank_factor,
  min_rerank)`` keys (usearch widens its beam to at least the keys asked for) and re-scores them
  with exact inner products read from the float32 snapshot, so scores are exact.
* **opening**: the graph file is checked (:func:`.check.check_graph_file`: usearch does not check
  a file's links, and a garbled one crashes its search) and then memory-mapped
  (``Index.restore(view=True)``); a file that fails is :class:`IndexCorruptError`, which a library
  reports naming ``fgsearch doctor --repair``.
* **changes between snapshots**: added vectors are searched exactly and merged; removed or replaced
  ids are excluded at search time (the mapped graph is read-only: a view cannot ``remove``), the
  graph asked for proportionally more keys so that ``depth`` live ones remain. **At a snapshot**
  the graph is loaded writable (``Index.restore(view=False)``), the removed ids are deleted from it
  with usearch's ``remove`` (its search skips deleted nodes, and a later add reuses their slots,
  so nothing is excluded at search time for them), the new rows are added, and it is saved as the
  new snapshot's file; it is rebuilt when deleted nodes would pass ``max_tombstones`` of the
  collection, when the code type or connectivity changes, and dropped to flat below half of
  ``flat_threshold``. The search is calibrated again at a snapshot that finds the collection
  ``recalibrate_growth`` times larger than at its last calibration.
* **allowed-id filters** follow the FAISS default (:mod:`..filtered`): few allowed rows are scored
  exactly; more go to the graph, asked for ``max(expansion, 2 * depth / selectivity)`` keys
  (usearch's Python API has no filter predicate), of which the allowed ones are re-ranked.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..base import SearchResult, empty_result
from ..errors import IndexCorruptError
from ..faiss.calibration import CalibrationSource, calibrate, calibration_sets, measure_sets
from ..faiss.search import rerank
from ..faiss.served import FILE as SERVED_FILE
from ..faiss.served import ServedIndex, check_served
from ..faults import faults
from ..filtered import allowed_rows, plan
from ..store.files import RowReader, fsync_file, read_rows, release_pages
from ..store.journaled import KEPT_FILES
from ._lib import load_usearch
from .check import check_graph_file
from .config import UsearchConfig

log = logging.getLogger(__name__)

KEPT_FILES.add(SERVED_FILE)  # the served-query record outlives snapshots
#: Vectors added to the graph per call (the build reads the snapshot in blocks of this many rows).
ADD_CHUNK = 65536
#: Candidate rows re-scored at once (a batch of queries is re-ranked in slices of this many rows).
#: Queries per call from which a search uses ``threads`` threads (a single query uses one).
_THREADED_QUERIES = 16

Candidates = Callable[[np.ndarray, int, int], np.ndarray]


class UsearchIndex(ServedIndex):
    """usearch-backed index: exact below ``flat_threshold``; a usearch HNSW graph with exact re-ranking above."""

    kind = "usearch"
    config_type = UsearchConfig
    _config: UsearchConfig
    _calibration_source: CalibrationSource | None = None

    def _after_load(self) -> None:
        load_usearch()  # a missing extra is named before anything is read
        self._extra: dict[str, Any] = self._store.manifest.get("extra", {})
        self._ann: Any = None
        self._mapped = False
        self._dead_cache: tuple[int, np.ndarray] | None = None
        if getattr(self, "build_seconds", None) is None:
            #: seconds this process spent in each part of building and opening snapshots (bench_indexes.py)
            self.build_seconds: dict[str, float] = {}
        self._open_served()
        if self._extra.get("tier") == "hnsw":
            path = self._store.path / self._extra["graph_file"]
            with self._timed("graph check"):
                self._check_file(path)
            self._ann = self._open_graph(path)

    def _damaged(self, path: Path, why: str) -> IndexCorruptError:
        return IndexCorruptError(
            f"cannot read the backend files of generation {self._store.generation}: {path} is damaged ({why})"
        )

    def _check_file(self, path: Path) -> None:
        """Refuse a graph file usearch must not map (see :mod:`.check`)."""
        e = self._extra
        try:
            check_graph_file(
                path,
                dim=self.dim,
                dtype=str(e["dtype"]),
                connectivity=int(e["connectivity"]),
                ids=np.asarray(self._store.base_ids),
                deleted=int(e.get("deleted", 0)),
            )
        except IndexCorruptError as err:
            raise self._damaged(path, str(err)) from err
        except (OSError, KeyError, ValueError) as err:
            raise self._damaged(path, f"{type(err).__name__}: {err}") from err

    def _open_graph(self, path: Path) -> Any:
        """The checked graph file, memory-mapped (``mmap``) or read, searching at the calibrated breadth."""
        u = load_usearch()
        try:
            ann = u.Index.restore(str(path), view=self._config.mmap)
        except (RuntimeError, ValueError) as err:
            raise self._damaged(path, f"usearch: {str(err).strip()[:200]}") from err
        if ann is None:
            raise self._damaged(path, "usearch does not recognise it")
        self._mapped = bool(self._config.mmap)
        ann.expansion_search = self._breadth()  # set once: searches widen by asking for more keys
        return ann

    def set_calibration_queries(self, source: CalibrationSource | None) -> None:
        """Queries of the kinds this index will serve, used the next time it calibrates (see
        :meth:`..faiss.FaissIndex.set_calibration_queries`); ``None`` clears it."""
        self._calibration_source = source

    # ------------------------------------------------------------------ tiers
    @property
    def tier(self) -> str:
        """``"flat"`` (exact) or ``"hnsw"`` (the usearch graph + exact re-rank)."""
        return "hnsw" if self._ann is not None else "flat"

    def _same_structure(self) -> bool:
        e, cfg = self._extra, self._config
        return e.get("dtype") == cfg.dtype and int(e.get("connectivity", 0)) == cfg.connectivity

    def _breadth(self) -> int:
        """``expansion_search``: configured, or as calibrated."""
        if self._config.expansion_search is not None:
            return int(self._config.expansion_search)
        return int(self._extra.get("expansion_search", 128))

    def _rerank_factor(self) -> int:
        if self._config.expansion_search is not None and "rerank_factor" not in self._extra:
            return self._config.rerank_factor
        return int(self._extra.get("rerank_factor", self._config.rerank_factor))

    def _depth(self, k: int) -> int:
        return max(k * self._rerank_factor(), self._config.min_rerank)

    def _wants_rebuild(self) -> bool:
        n = self._store.n_live
        threshold = self._config.flat_threshold
        if self._ann is None:
            return n >= threshold
        return n < threshold / 2 or not self._same_structure()

    # ------------------------------------------------------------------ snapshots
    def _build_extra(self, generation: int, vecs: np.ndarray, ids: np.ndarray) -> tuple[dict[str, Any], list[str]]:
        """Build or update the graph of a new snapshot (called before the snapshot is committed)."""
        n = int(ids.size)
        cfg = self._config
        if self._served.capacity == 0:
            self._served.remove()  # turned off: what was recorded goes
        old = self._ann is not None and self._same_structure()
        if n < cfg.flat_threshold and not (old and n >= cfg.flat_threshold / 2):
            return {"tier": "flat"}, []
        with self._timed("read"):
            ann = self._reopen_for_update(n) if old else None
        if ann is None:
            with self._timed("graph"):
                ann = self._build(vecs, ids)
            extra: dict[str, Any] = {"trained_n": n, "calibrated_n": n}
            extra.update(self._calibrate(ann, vecs, ids))
        else:
            extra = self._fold_delta(ann, vecs, ids)
        if int(ann.size) != n:
            raise RuntimeError(f"usearch graph holds {int(ann.size)} vectors, snapshot {n}")  # internal bug
        with self._timed("served check"):
            extra["served"] = self._check_served(ann, vecs, ids, extra)
        with self._timed("write"):
            name = f"usearch.{generation}.index"
            tmp = self._store.path / (name + ".tmp")
            ann.save(str(tmp))
            faults.reach("usearch.before_fsync", tmp)
            fsync_file(tmp)
            deleted = int(load_usearch().Index.metadata(str(tmp))["count_deleted"])
            os.replace(tmp, self._store.path / name)
        cfg_keys = {"dtype": cfg.dtype, "connectivity": cfg.connectivity, "expansion_add": cfg.expansion_add}
        extra.update(tier="hnsw", graph_file=name, count=n, deleted=deleted, **cfg_keys)
        return extra, [name]

    def _reopen_for_update(self, n: int) -> Any:
        """The current graph, loaded writable, with the snapshot's removals deleted from it; None
        when a rebuild is due instead (deleted nodes would pass ``max_tombstones``)."""
        dead = self._store.base_dead_ids()
        if int(self._extra.get("deleted", 0)) + dead.size > self._config.max_tombstones * n:
            return None
        path = self._store.path / self._extra["graph_file"]
        try:
            ann = load_usearch().Index.restore(str(path), view=False)
        except (RuntimeError, ValueError) as err:
            raise self._damaged(path, f"usearch: {str(err).strip()[:200]}") from err
        if dead.size:
            ann.remove(dead.astype(np.uint64))
        ann.expansion_add = self._config.expansion_add
        return ann

    def _build(self, vecs: np.ndarray, ids: np.ndarray) -> Any:
        """A new graph over every vector of the snapshot, added in blocks."""
        cfg = self._config
        ann = load_usearch().Index(
            ndim=self.dim,
            metric="ip",
            dtype=cfg.dtype,
            connectivity=cfg.connectivity,
            expansion_add=cfg.expansion_add,
        )
        for s in range(0, ids.size, ADD_CHUNK):
            block = np.ascontiguousarray(vecs[s : s + ADD_CHUNK], dtype=np.float32)
            release_pages(vecs)  # never all of the snapshot resident beside the graph
            ann.add(np.asarray(ids[s : s + ADD_CHUNK]).astype(np.uint64), block, threads=cfg.threads)
        return ann

    def _fold_delta(self, ann: Any, vecs: np.ndarray, ids: np.ndarray) -> dict[str, Any]:
        """Add the rows since the snapshot to ``ann``, recalibrating when the collection has grown
        enough since the last calibration; returns the manifest extras."""
        with self._timed("graph"):
            for dvecs, dids in self._store.iter_blocks(ADD_CHUNK, base=False):
                live = dids >= 0
                if live.any():
                    keys = dids[live].astype(np.uint64)
                    ann.add(keys, np.ascontiguousarray(dvecs[live]), threads=self._config.threads)
        extra = {k: v for k, v in self._extra.items() if k not in ("files", "graph_file")}
        n = int(ids.size)
        if n >= self._config.recalibrate_growth * max(int(self._extra.get("calibrated_n", 0)), 1):
            previous = None  # the graph grew: the search for the breadth starts at its last one
            if "expansion_search" in self._extra:
                previous = (int(self._extra["expansion_search"]), int(self._extra.get("rerank_factor", 1)))
            extra.update(self._calibrate(ann, vecs, ids, previous=previous))
            extra["calibrated_n"] = n
        return extra

    # ------------------------------------------------------------------ calibration
    def _calibrate(
        self,
        ann: Any,
        vecs: np.ndarray,
        ids: np.ndarray,
        served: np.ndarray | None = None,
        previous: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """``expansion_search`` and the re-rank depth reaching the goal (:func:`..faiss.calibration.calibrate`)."""
        cfg = self._config
        if served is None and self._served.capacity:
            self._served.flush()
            served = self._served.recent(max(cfg.calibration_queries, cfg.served_min))
        ccfg = cfg.calibration_config()
        with self._timed("calibration"):
            # the synthetic sets sample rows all over the snapshot: read them, do not map them
            sets = calibration_sets(cast(np.ndarray, RowReader(vecs)), ccfg, self._calibration_source, self.dim, served)
            out = calibrate(
                ann,
                "hnsw",
                vecs,
                ids,
                ccfg,
                sets,
                self._candidates_fn(ann, vecs, ids),
                fixed=cfg.expansion_search,
                previous=previous,
                breadth_name="expansion_search",
                hint="raise connectivity, expansion_add or max_expansion_search",
            )
        record = out["calibration"]
        log.info(
            "usearch: expansion_search=%d, re-rank depth %d gives recall@10 %s",
            record["breadth"],
            record["rerank_depth_k10"],
            ", ".join(f"{k} {v['recall10']:.3f}" for k, v in record["sets"].items()),
        )
        return out

    def _candidates_fn(self, ann: Any, vecs: np.ndarray, ids: np.ndarray) -> Candidates:
        """``(queries, breadth, rerank factor) -> top-10 ids`` as a search of ``ann`` runs (the graph
        being built has its removals deleted, so nothing is excluded)."""

        def gather(cand: np.ndarray) -> np.ndarray:
            # read, not mapped: a calibration's re-ranks touch rows all over the snapshot (see read_rows)
            return read_rows(vecs, np.searchsorted(ids, cand))

        def candidates(q: np.ndarray, breadth: int, factor: int) -> np.ndarray:
            ann.expansion_search = int(breadth)  # the graph being built: no search shares it
            depth = max(10 * factor, self._config.min_rerank)
            cand = graph_candidates(ann, q, depth, depth, threads=self._config.threads)
            return rerank(cand, q, 10, gather)[0]

        return candidates

    def _check_served(self, ann: Any, vecs: np.ndarray, ids: np.ndarray, extra: dict[str, Any]) -> dict[str, Any]:
        """Recall@10 of the search as calibrated on the queries this index served (see
        :func:`..faiss.served.check_served`). Updates ``extra``; returns the manifest's ``served`` record."""
        cfg = self._config
        candidates = self._candidates_fn(ann, vecs, ids)

        def measure(queries: np.ndarray, breadth: int, factor: int) -> float:
            sets = {"served": (queries, "served")}
            return measure_sets(sets, vecs, ids, cfg.calibration_config(), candidates, breadth, factor)["served"]

        return check_served(
            self._served,
            cfg,
            extra,
            self._extra,
            breadth=int(cfg.expansion_search or extra.get("expansion_search", 128)),
            fixed=cfg.expansion_search is not None,
            measure=measure,
            recalibrate=lambda queries: self._calibrate(ann, vecs, ids, served=queries),
        )

    # ------------------------------------------------------------------ search
    def _store_gather(self, cand: np.ndarray) -> np.ndarray:
        rows = self._store.lookup(cand)
        if (rows < 0).any():  # the graph and the snapshot disagree: the file check rules this out
            raise IndexCorruptError(
                f"{self._store.path}: the usearch graph returned ids missing from the snapshot; "
                "run `fgsearch doctor --repair` (or save() the index)"
            )
        return self._store.read_rows(rows)

    def _dead_ids(self) -> np.ndarray:
        """Snapshot ids removed or replaced since the snapshot (sorted; cached per change)."""
        version = self._store.version
        if self._dead_cache is None or self._dead_cache[0] != version:
            self._dead_cache = (version, np.sort(self._store.base_dead_ids()))
        return self._dead_cache[1]

    def _graph_search(
        self, q: np.ndarray, k: int, *, keep: np.ndarray | None, count: int, dead: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        depth = self._depth(k)
        threads = self._config.threads if q.shape[0] >= _THREADED_QUERIES else 1
        cand = graph_candidates(self._ann, q, depth, count, keep=keep, drop=dead, threads=threads)
        return rerank(cand, q, k, self._store_gather)

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        q, kk, allowed = self._prepare_search(queries, k, allowed_ids)
        self._served.record(q)
        if q.shape[0] == 0 or self._store.n_live == 0:
            return empty_result(q.shape[0], kk)
        exact_rows: tuple[np.ndarray, np.ndarray] | None = None
        keep: np.ndarray | None = None
        delta_allowed: np.ndarray | None = None
        count = 0
        if self._ann is not None:
            dead = self._dead_ids()
            n_graph = int(self._ann.size) + int(self._extra.get("deleted", 0))
            depth = min(self._depth(kk), max(n_graph, 1))
            if allowed is not None:  # see ..filtered: exact over few rows, else the graph, widened
                rows, aids = allowed_rows(self._store, allowed)
                in_base = rows < self._store.n_base
                how = plan(
                    aids.size,
                    n_graph,
                    self._breadth(),
                    depth,
                    in_graph=int(in_base.sum()),
                    fixed_max=self._config.filter_exact_max,
                )
                if how.exact:
                    exact_rows = (rows, aids)
                else:
                    keep, delta_allowed, count = np.sort(aids[in_base]), aids[~in_base], min(n_graph, how.breadth)
            else:  # ask for more keys as removed ids are skipped
                live_share = max(1.0 - dead.size / max(int(self._ann.size), 1), 0.02)
                count = min(n_graph, math.ceil(depth / live_share) + (8 if dead.size else 0))
        elif allowed is not None:
            exact_rows = allowed_rows(self._store, allowed)
        return self._search_chunks(
            q,
            kk,
            exact_rows,
            delta_allowed,
            lambda chunk: self._graph_search(chunk, kk, keep=keep, count=count, dead=dead),
        )

    # ------------------------------------------------------------------ stats
    def _params(self) -> dict[str, Any]:
        p: dict[str, Any] = {**super()._params(), "tier": self.tier, "served": self._served_status()}
        if self._ann is None:
            return p
        e = self._extra
        p.update(
            dtype=e.get("dtype"),
            connectivity=e.get("connectivity"),
            expansion_add=e.get("expansion_add"),
            expansion_search=self._breadth(),
            deleted_nodes=int(e.get("deleted", 0)),
            mmap=self._mapped,
            calibrated_recall=e.get("calibrated_recall"),
            trained_n=e.get("trained_n"),
            calibrated_n=e.get("calibrated_n", e.get("trained_n")),
            rerank_depth_k10=self._depth(10),
            calibration=e.get("calibration"),
        )
        return p

    def _bytes_in_memory(self) -> int:
        """Store memory plus the graph (codes, links, keys: usearch's own count)."""
        total = super()._bytes_in_memory()
        if self._ann is None:
            return total
        return total + int(self._ann.memory_usage)


def graph_candidates(
    ann: Any,
    q: np.ndarray,
    depth: int,
    count: int,
    *,
    keep: np.ndarray | None = None,
    drop: np.ndarray | None = None,
    threads: int = 1,
) -> np.ndarray:
    """The first ``depth`` keys (graph order, ``-1`` padded) of the ``count`` nearest that usearch's
    search of ``ann`` returns per query, keeping only ids in ``keep`` (sorted) and none in ``drop``."""
    count = max(int(count), depth)
    m = ann.search(q, count, threads=threads)
    keys = np.asarray(m.keys).reshape(q.shape[0], -1).astype(np.int64)
    counts = np.asarray(m.counts if hasattr(m, "counts") else [len(m)]).reshape(-1)
    valid = np.arange(keys.shape[1]) < counts[:, None]
    if keep is not None:
        valid &= np.isin(keys, keep)
    if drop is not None and drop.size:
        valid &= ~np.isin(keys, drop)
    rank = np.cumsum(valid, axis=1)
    valid &= rank <= depth
    out = np.full((q.shape[0], depth), -1, dtype=np.int64)
    qi, ci = np.nonzero(valid)
    out[qi, rank[qi, ci] - 1] = keys[qi, ci]
    return out
