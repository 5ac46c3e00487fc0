"""The FAISS index (the embedded default): exact while small, HNSW over 8-bit codes + exact re-ranking when large.

How search works (see :class:`~.config.FaissConfig` for every knob):

* **flat tier** (fewer than ``flat_threshold`` = 50k vectors): exact brute force over the stored
  float32 vectors (BLAS), identical to the exact backend.
* **hnsw tier** (default ``structure="hnsw"``): when a flush/save/close finds the collection at or
  past ``flat_threshold``, the next snapshot builds ``IndexHNSWSQ`` (8-bit scalar-quantised codes
  by default, ``hnsw_codes="SQ4"`` for 4-bit; ``hnsw_m`` = 24 links per vector, 48 on the base
  layer: 512 B of codes + ~220 B of graph and ids per 512-d vector) under the
  catalog ids, searched with FAISS's own HNSW search (``SearchParametersHNSW``: ``efSearch`` and an
  id selector for removed ids) started at the best of the graph's entry pivots (:mod:`.entry`: a
  text query far from every image vector is found from there at a fraction of the breadth FAISS's
  greedy descent needs), and calibrates the search: the smallest ``efSearch`` (32, 48, 64,
  96, ...) and re-rank depth
  (``3·k`` doubling up to ``48·k``, at least 30) whose recall@10 against exact search reaches
  ``recall_target`` + 0.01 on every calibration set: image-like queries (stored vectors plus
  noise) AND text-like queries (the caller's real text embeddings, or synthetic cross-modal ones,
  see :mod:`.calibration_queries`). Text queries sit far from every image vector, where an approximate
  index loses most; calibrating on image-like queries alone under-sizes the search.
* **ivf tier** (``structure="ivfpq"``): ``IndexIVFPQ`` (``nlist`` ≈ 2·√n cells; ``dim/4`` one-byte
  PQ codes), calibrated the same way on ``nprobe``; kept for GPU search and comparison.
* Either way a query fetches that many candidates and re-scores them with exact inner products
  read from the memory-mapped float32 snapshot, so scores are exact and only the candidate list is
  approximate. What was calibrated, on which query sets, and the recall each set reached are in
  ``stats().params["calibration"]``.
* Changes since the snapshot never touch the FAISS file: removed or replaced ids are excluded with a
  FAISS ``IDSelector``; new vectors are searched exactly and merged, so adds are searchable at
  once. Each snapshot (``save()``, or a flush when the journal is large, see
  :class:`~.config.JournalConfig`) folds them into a new FAISS file: IVF drops removed ids; the
  HNSW graph keeps them as tombstones (excluded from every search) until they pass
  ``max_tombstones`` of the collection or an id comes back, then the graph is rebuilt. The
  search is calibrated again when a snapshot finds the collection ``recalibrate_growth`` (1.25×)
  larger than at the last calibration. An HNSW graph takes every later add (FAISS inserts a vector
  the same way whether the graph is being built or grown): it is rebuilt only when the new vectors
  no longer fit the 8-bit codes' trained value ranges (see :func:`.tiers.out_of_range`), never for
  growth alone; IVF is re-trained when the collection has grown ``retrain_growth`` (4×) since it
  was trained. Either is dropped back to flat below ``flat_threshold / 2``.
* Allowed-id filters (:mod:`..filtered`): a filter that keeps few rows (up to ``max(sqrt(5 * r *
  n), 2.5 * efSearch)``, ``r`` the re-ranked candidates, or ``filter_exact_max``) is answered
  exactly from their vectors; a larger one runs the graph search with a bitmap selector at
  ``max(efSearch, 2 * r / selectivity)``.
* With ``mmap=True`` (the default) the FAISS file of a snapshot is searched memory-mapped, not
  read into memory: the IVF lists (``IO_FLAG_MMAP``), or the HNSW graph and its codes
  (``IO_FLAG_MMAP_IFC``). Snapshots are immutable and a build reads its own copy, so the mapped
  pages are shared with the page cache and with every other process that searches the same index;
  opening costs no read of the file. With ``fgsearch[gpu]`` and a GPU, unfiltered IVF searches
  run on a GPU clone; filtered ones on CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np

from ..base import SearchResult, empty_result
from ..config import FaissConfig
from ..errors import IndexCorruptError
from ..faults import faults
from ..hnsw.check import check_graph
from ..store.files import RowReader, fsync_file, read_rows
from ..store.journaled import KEPT_FILES
from . import tiers
from ._lib import ADD_CHUNK, excluding, load_faiss, mmap_flags, prefetch, read_faiss_file
from .calibration import CalibrationSource, calibrate, calibration_sets, drawn_set, exact_truths
from .calibration_queries import recall_at_k
from .entry import EntryPivots, is_graph, pivot_count
from .gpu import clone_to_gpu, gpu_wanted
from .search import ann_candidates, filter_plan, hnsw_bytes
from .served import FILE as SERVED_FILE
from .served import ServedIndex, check_served

log = logging.getLogger(__name__)

#: A snapshot whose collection has grown this much since the graph's last calibration (but less
#: than ``recalibrate_growth``) measures the set that bound that calibration again, and calibrates
#: again when it misses the goal (see ``FaissIndex._calibration_holds``).
RECHECK_GROWTH = 1.1

KEPT_FILES.add(SERVED_FILE)  # the served-query record outlives snapshots


class FaissIndex(ServedIndex):
    """FAISS-backed index: flat below ``flat_threshold``; HNSW-SQ or IVF-PQ with exact re-ranking above."""

    kind = "faiss"
    config_type = FaissConfig
    _config: FaissConfig
    _calibration_source: CalibrationSource | None = None

    def _after_load(self) -> None:
        load_faiss()  # a missing extra is named before anything is read
        extra = self._store.manifest.get("extra", {})
        self._ann: Any = None
        self._mapped = False  # the FAISS file is memory-mapped, not read into memory
        self._gpu_ivf: Any = None
        self._sel_cache: tuple[int, Any] | None = None
        self._extra = extra
        self._tombstones = np.zeros(0, dtype=np.int64)
        self._entry: EntryPivots | None = None
        #: a graph being built, the size and pivot count, and its pivots (see _build_entry)
        self._building_entry: tuple[Any, tuple[int, int], EntryPivots] | None = None
        if getattr(self, "build_seconds", None) is None:
            #: seconds this process spent in each part of building snapshots (for bench_indexes.py)
            self.build_seconds: dict[str, float] = {}
        self._open_served()
        tier = extra.get("tier")
        if tier in ("ivf", "hnsw"):
            fpath = self._store.path / extra["faiss_file"]
            flags = mmap_flags(tier) if self._config.mmap else 0
            self._ann, self._mapped = read_faiss_file(fpath, flags, self._store.generation)
            if self._mapped:
                prefetch(fpath)
            if extra.get("tombstones_file"):
                tpath = self._store.path / extra["tombstones_file"]
                try:
                    self._tombstones = np.load(tpath)
                except (OSError, ValueError, EOFError) as e:
                    raise IndexCorruptError(f"{tpath} is damaged ({type(e).__name__})") from e
            if tier == "ivf":
                self._maybe_gpu()
            else:
                self._check_graph(fpath)
                if int(extra.get("entry_pivots", 0)) > 0:  # snapshots before them search from FAISS's descent
                    self._entry = EntryPivots(self._ann, int(extra["entry_pivots"]), int(extra.get("entry_seed", 0)))

    def _check_graph(self, fpath: Any) -> None:
        """Refuse a graph FAISS's search must not walk (see :func:`..hnsw.check.check_graph`). (Ids
        that are not the snapshot's are safe to read: a search that meets one is an error.)"""
        try:
            check_graph(self._ann)
        except IndexCorruptError as e:
            raise IndexCorruptError(
                f"cannot read the backend files of generation {self._store.generation}: {fpath} is damaged ({e})"
            ) from e

    def set_calibration_queries(self, source: CalibrationSource | None) -> None:
        """Queries of the kinds this index will serve, used the next time it builds its structure.

        ``source`` maps a set name (e.g. ``"text"``) to ``[n, dim]`` query vectors, or is a callable
        returning such a mapping (called only when a build happens, so encoding costs nothing until
        then). Image-like queries are always added. Without a text-like set, synthetic cross-modal
        queries stand in (see :mod:`.calibration_queries`). ``None`` clears it.
        """
        self._calibration_source = source

    def _maybe_gpu(self) -> None:
        clone = clone_to_gpu(self._config, self._store.path / self._extra["faiss_file"], self._breadth())
        if clone is not None:
            self._gpu_ivf, self._gpu_res = clone

    # ------------------------------------------------------------------ tiers
    @property
    def tier(self) -> str:
        """``"flat"`` (exact), ``"hnsw"`` (HNSW-SQ + exact re-rank) or ``"ivf"`` (IVF-PQ + re-rank)."""
        return str(self._extra.get("tier", "flat")) if self._ann is not None else "flat"

    def _structure(self) -> str:
        """The approximate structure the next build makes (``"hnsw"`` or ``"ivf"``)."""
        return "ivf" if self._config.structure == "ivfpq" else "hnsw"

    def _same_structure(self) -> bool:
        """True when the loaded structure is what the config builds (kind, and HNSW code size)."""
        if self.tier != self._structure():
            return False
        return self.tier != "hnsw" or self._extra.get("hnsw_codes", "SQ8") == self._config.hnsw_codes

    def _configured_breadth(self, tier: str) -> int | None:
        return self._config.nprobe if tier == "ivf" else self._config.ef_search

    def _breadth(self) -> int:
        """Search breadth of the loaded structure: ``nprobe`` (ivf) or ``efSearch`` (hnsw)."""
        fixed = self._configured_breadth(self.tier)
        if fixed is not None:
            return int(fixed)
        key = "nprobe" if self.tier == "ivf" else "ef_search"
        return int(self._extra.get(key, 16 if self.tier == "ivf" else 128))

    def _rerank_factor(self) -> int:
        if self._configured_breadth(self.tier) is not None and "rerank_factor" not in self._extra:
            return self._config.rerank_factor
        return int(self._extra.get("rerank_factor", self._config.rerank_factor))

    def _ivf_threshold(self) -> int:
        return max(self._config.flat_threshold, tiers.MIN_IVF_VECTORS)

    def _wants_rebuild(self) -> bool:
        n = self._store.n_live
        cfg = self._config
        if self._ann is None:
            return n >= self._ivf_threshold()
        if n < self._ivf_threshold() / 2 or not self._same_structure():
            return True
        return self.tier == "ivf" and n >= cfg.retrain_growth * int(self._extra.get("trained_n", n))

    def _build_extra(self, generation: int, vecs: np.ndarray, ids: np.ndarray) -> tuple[dict[str, Any], list[str]]:
        """Build the FAISS file of a new snapshot (called before the snapshot is committed)."""
        try:
            return self._build_files(generation, vecs, ids)
        finally:
            self._building_entry = None  # the graph built in memory goes with the build

    def _build_files(self, generation: int, vecs: np.ndarray, ids: np.ndarray) -> tuple[dict[str, Any], list[str]]:
        n = int(ids.size)
        if self._served.capacity == 0:
            self._served.remove()  # turned off: what was recorded goes
        old = self._ann is not None and self._same_structure()
        threshold = self._ivf_threshold()
        if n < threshold and not (old and n >= threshold / 2):
            return {"tier": "flat"}, []
        trained_n = int(self._extra.get("trained_n", 0))
        # IVF cells are trained on the collection as it was: re-train them as it grows. An HNSW
        # graph takes adds as it took its first vectors (rebuilt only when the adds no longer fit
        # its codes' value ranges, see _adds_fit_codes)
        grown = self._structure() == "ivf" and n >= self._config.retrain_growth * max(trained_n, 1)
        retrain = (not old) or grown
        with self._timed("read"):
            ann, tombstones = (None, np.zeros(0, dtype=np.int64)) if retrain else self._reopen_for_update(n)
        with self._timed("range check"):
            if ann is not None and self.tier == "hnsw" and not self._adds_fit_codes(ann):
                ann, tombstones = None, tombstones[:0]
        if ann is None:
            ann, extra = self._train(vecs, ids)
            tombstones = tombstones[:0]
        else:
            extra = self._fold_delta(ann, vecs, ids, tombstones)
        if str(extra.get("tier_built", self.tier)) == "hnsw":
            extra.update(entry_pivots=self._entry_count(ann, "hnsw"), entry_seed=self._config.seed)
        if ann.ntotal != n + tombstones.size:
            raise RuntimeError(f"faiss index holds {ann.ntotal} vectors, snapshot {n}")  # internal bug
        with self._timed("served check"):
            extra["served"] = self._check_served(ann, vecs, ids, tombstones, extra)
        with self._timed("write"):
            return self._write_snapshot_files(generation, ann, tombstones, extra, n)

    def _check_served(
        self, ann: Any, vecs: np.ndarray, ids: np.ndarray, tombstones: np.ndarray, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """Recall@10 of the search as calibrated, on the queries this index served (see
        :func:`.served.check_served`). Updates ``extra`` and returns the ``served`` record."""
        tier = str(extra.get("tier_built", self.tier))
        configured = self._configured_breadth(tier)
        breadth = int(configured or extra.get("nprobe" if tier == "ivf" else "ef_search", 128))
        candidates = self._candidates_fn(ann, vecs, ids, tier, tombstones)
        known: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # the served queries' exact top 10: one pass per check

        def truth(queries: np.ndarray) -> np.ndarray:
            if "served" not in known or not np.array_equal(known["served"][0], queries):
                with self._timed("calibration truths"):
                    found = exact_truths({"served": (queries, "served")}, vecs, ids, self._config.block_rows)
                known["served"] = (queries, found["served"])
            return known["served"][1]

        def measure(queries: np.ndarray, breadth: int, factor: int) -> float:
            return recall_at_k(candidates(queries, breadth, factor), truth(queries))

        def recalibrate(queries: np.ndarray) -> dict[str, Any]:
            known_truths = {"served": (queries, truth(queries))}
            return self._calibrate(ann, vecs, ids, tier, exclude=tombstones, served=queries, known=known_truths)

        return check_served(
            self._served,
            self._config,
            extra,
            self._extra,
            breadth=breadth,
            fixed=configured is not None,
            measure=measure,
            recalibrate=recalibrate,
        )

    def _reopen_for_update(self, n: int) -> tuple[Any, np.ndarray]:
        """The current structure, read again, with the snapshot's removals applied; ``(None, _)``
        when a rebuild is due instead (too many HNSW tombstones, or a tombstoned id came back)."""
        faiss = load_faiss()
        ann = faiss.read_index(str(self._store.path / self._extra["faiss_file"]))
        dead = self._store.base_dead_ids()
        tombstones = np.zeros(0, dtype=np.int64)
        if self.tier == "hnsw":
            # FAISS graphs cannot delete: dead ids stay in the graph as tombstones, excluded from
            # every search, until there are too many or an id comes back (then rebuild)
            tombstones = np.union1d(self._tombstones, dead)
            back = [d[d >= 0] for _, d in self._store.iter_blocks(ADD_CHUNK, base=False)]
            if tombstones.size > self._config.max_tombstones * n or any(np.isin(b, tombstones).any() for b in back):
                return None, tombstones
        elif dead.size:
            ann.remove_ids(faiss.IDSelectorBatch(dead))
        return ann, tombstones

    def _adds_fit_codes(self, ann: Any) -> bool:
        """True when the rows since the snapshot fit the HNSW codes' trained value ranges (see
        :func:`.tiers.out_of_range`); False: re-train the codes, i.e. rebuild the graph."""
        share = tiers.out_of_range_share(ann, self._store.iter_blocks(ADD_CHUNK, base=False))
        if share > tiers.OUT_OF_RANGE_MAX:
            log.info("HNSW: %.4f of the new vectors' values fall outside the codes' ranges: rebuilding", share)
            return False
        return True

    def _fold_delta(self, ann: Any, vecs: np.ndarray, ids: np.ndarray, tombstones: np.ndarray) -> dict[str, Any]:
        """Add the rows since the snapshot to ``ann``, recalibrating when the collection has grown
        enough since the last calibration; returns the manifest extras."""
        with self._timed("graph"):
            for dvecs, dids in self._store.iter_blocks(ADD_CHUNK, base=False):
                live = dids >= 0
                if live.any():
                    ann.add_with_ids(np.ascontiguousarray(dvecs[live]), dids[live])
        extra = {k: v for k, v in self._extra.items() if k not in ("files", "tombstones_file")}
        n = int(ids.size)
        calibrated_n = int(self._extra.get("calibrated_n", self._extra.get("trained_n", 0)))
        # a graph searched from FAISS's descent before, and now from entry pivots (or back): the
        # calibrated breadth was measured on another search, so measure again
        had = bool(self._extra.get("entry_pivots"))
        entry_changed = self.tier == "hnsw" and had != bool(self._entry_count(ann, "hnsw"))
        grown = n >= self._config.recalibrate_growth * max(calibrated_n, 1)
        holds, known = True, None
        if not (entry_changed or grown) and n >= RECHECK_GROWTH * max(calibrated_n, 1):
            holds, known = self._calibration_holds(ann, vecs, ids, tombstones)
        if entry_changed or grown or not holds:
            # adds since the calibration make the graph (or the IVF lists) larger: the breadth
            # that reached the goal then may not reach it now, so measure again at this size
            previous = None
            if self.tier == "hnsw" and "ef_search" in self._extra:  # the graph grew: start from its last breadth
                previous = (int(self._extra["ef_search"]), int(self._extra.get("rerank_factor", 1)))
            extra.update(self._calibrate(ann, vecs, ids, self.tier, exclude=tombstones, previous=previous, known=known))
            extra["calibrated_n"] = n
        return extra

    def _calibration_holds(
        self, ann: Any, vecs: np.ndarray, ids: np.ndarray, tombstones: np.ndarray
    ) -> tuple[bool, dict[str, tuple[np.ndarray, np.ndarray]] | None]:
        """Whether the graph's search as calibrated still reaches the goal on the set that bound its
        last calibration (the lowest recall), measured at this snapshot: recall at a fixed breadth
        falls as the graph grows (a search calibrated at 800k vectors and grown to 1M gave text
        recall 0.966 against 0.98 at calibration), and a calibration comes only at
        ``recalibrate_growth``. One exact pass over that set and one search of it (1M vectors, a
        set of 200-400 queries: 2-3 s, where a calibration takes 8-10 s). Also returns that set's
        exact top 10 for the calibration that follows a miss. The caller's set (a library's
        captions) is taken as the calibration takes it, a set the index draws is drawn again at this
        size; the served queries are left to the served check, which measures them at every snapshot."""
        record = self._extra.get("calibration") or {}
        sets = record.get("sets") or {}
        if self.tier != "hnsw" or not sets or self._configured_breadth("hnsw") is not None:
            return True, None
        name = min(sets, key=lambda k: float(sets[k]["recall10"]))
        source = str(sets[name].get("source", ""))
        rows = cast(np.ndarray, RowReader(vecs))
        q: np.ndarray | None = None
        if source.startswith("given"):  # the caller's set (a library's captions): as calibration_sets takes it
            given = calibration_sets(rows, self._config, self._calibration_source, self.dim)
            q = given[name][0] if name in given and given[name][1] == source else None
        elif source.startswith("synthetic"):
            q = drawn_set(rows, self._config, name)
        if q is None or "ef_search" not in self._extra:  # served: the served check measures those
            return True, None
        with self._timed("calibration truths"):
            truth = exact_truths({name: (q, name)}, vecs, ids, self._config.block_rows)[name]
        with self._timed("calibration"):
            candidates = self._candidates_fn(ann, vecs, ids, "hnsw", tombstones)
            breadth, factor = int(self._extra["ef_search"]), int(self._extra.get("rerank_factor", 1))
            recall = recall_at_k(candidates(q, breadth, factor), truth)
        goal = float(record.get("goal_recall10", self._config.recall_target + self._config.calibration_margin))
        log.info("hnsw: %s recall@10 %.3f at ef_search=%d after growth (goal %.3f)", name, recall, breadth, goal)
        return recall >= goal, {name: (q, truth)}

    def _write_snapshot_files(
        self, generation: int, ann: Any, tombstones: np.ndarray, extra: dict[str, Any], n: int
    ) -> tuple[dict[str, Any], list[str]]:
        """Write the FAISS file (and the tombstones) of ``generation``; returns (extras, files)."""
        faiss = load_faiss()
        name = f"faiss.{generation}.index"
        files = [name]
        self._write_file(name, lambda tmp: faiss.write_index(ann, str(tmp)))
        if tombstones.size:
            tname = f"faiss_tombstones.{generation}.npy"
            self._write_file(tname, lambda tmp: np.save(tmp, tombstones))
            files.append(tname)
            extra["tombstones_file"] = tname
        extra.update(tier=self._structure(), faiss_file=name, count=n, tombstones=int(tombstones.size))
        return extra, files

    def _write_file(self, name: str, write: Callable[[Any], None]) -> None:
        """Write ``name`` in the index directory: to a temp file, fsync, rename."""
        tmp = self._store.path / (name + ".tmp")
        with open(tmp, "wb") as f:
            write(f if name.endswith(".npy") else tmp)
        faults.reach("faiss.before_fsync", tmp)
        fsync_file(tmp)
        os.replace(tmp, self._store.path / name)

    def _train(self, vecs: np.ndarray, ids: np.ndarray) -> tuple[Any, dict[str, Any]]:
        """Build the configured structure over every vector and calibrate its search."""
        with self._timed("graph"):
            if self._structure() == "hnsw":
                ann, extra = tiers.build_hnsw(self._config, vecs, ids)
            else:
                ann, extra = tiers.build_ivf(self._config, vecs, ids, for_gpu=gpu_wanted(self._config))
        extra["trained_n"] = extra["calibrated_n"] = int(ids.size)
        extra.update(self._calibrate(ann, vecs, ids, extra["tier_built"]))
        c = extra["calibration"]
        log.info(
            "%s: %s=%d, re-rank depth %d gives recall@10 %s",
            extra["tier_built"],
            c["breadth_name"],
            c["breadth"],
            c["rerank_depth_k10"],
            ", ".join(f"{k} {v['recall10']:.3f}" for k, v in c["sets"].items()),
        )
        return ann, extra

    def _calibrate(
        self,
        ann: Any,
        vecs: np.ndarray,
        ids: np.ndarray,
        tier: str,
        *,
        exclude: np.ndarray | None = None,
        served: np.ndarray | None = None,
        previous: tuple[int, int] | None = None,
        known: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> dict[str, Any]:
        """Calibrate the search of ``ann`` as this index will run it (see :func:`.calibration.calibrate`;
        ``previous``: the breadth and re-rank factor of the last calibration of this graph;
        ``known``: ``{set name: (queries, exact top 10)}`` already found, reused for a set of the
        same queries, e.g. the served check's)."""
        if served is None and self._served.capacity:
            self._served.flush()
            served = self._served.recent(max(self._config.calibration_queries, self._config.served_min))
        candidates = self._candidates_fn(ann, vecs, ids, tier, exclude)
        with self._timed("calibration"):
            # the synthetic sets sample rows all over the snapshot: read them, do not map them
            rows = cast(np.ndarray, RowReader(vecs))
            sets = calibration_sets(rows, self._config, self._calibration_source, self.dim, served)
        with self._timed("calibration truths"):  # the exact pass over every row, timed apart from the trials
            truths = {
                name: top
                for name, (q, top) in (known or {}).items()
                if name in sets and np.array_equal(sets[name][0], q)
            }
            rest = {name: s for name, s in sets.items() if name not in truths}
            truths.update(exact_truths(rest, vecs, ids, self._config.block_rows))
        with self._timed("calibration"):
            fixed = self._configured_breadth(tier)
            return calibrate(
                ann, tier, vecs, ids, self._config, sets, candidates, fixed=fixed, truths=truths, previous=previous
            )

    def _candidates_fn(
        self, ann: Any, vecs: np.ndarray, ids: np.ndarray, tier: str, exclude: np.ndarray | None
    ) -> Callable[[np.ndarray, int, int], np.ndarray]:
        """``(queries, breadth, rerank factor) -> top-10 ids`` as a search of ``ann`` runs."""
        dead = exclude if exclude is not None and exclude.size else None
        sel = excluding(dead) if dead is not None else None
        entry = self._build_entry(ann, tier)

        def gather(cand: np.ndarray) -> np.ndarray:
            # read, not mapped: a calibration's re-ranks touch rows all over the snapshot (see read_rows)
            return read_rows(vecs, np.searchsorted(ids, cand))

        def candidates(q: np.ndarray, breadth: int, factor: int) -> np.ndarray:
            return self._ann_candidates(ann, tier, q, 10, breadth, sel, gather, rerank_factor=factor, entry=entry)[0]

        return candidates

    def _build_entry(self, ann: Any, tier: str) -> EntryPivots | None:
        """The entry pivots of a graph being built, made once per build for its calibration and its
        served check (kept until the build ends: see :meth:`_build_extra`)."""
        count = self._entry_count(ann, tier)
        if not count:
            return None
        held = self._building_entry
        if held is not None and held[0] is ann and held[1] == (int(ann.ntotal), count):
            return held[2]
        entry = EntryPivots(ann, count, self._config.seed)
        self._building_entry = (ann, (int(ann.ntotal), count), entry)
        return entry

    def _entry_count(self, ann: Any, tier: str) -> int:
        """Entry pivots of a graph this index builds (see :mod:`.entry`; 0: FAISS's own descent)."""
        if tier != "hnsw" or not is_graph(ann):
            return 0
        return pivot_count(int(ann.ntotal), self._config.hnsw_entry_pivots)

    # ------------------------------------------------------------------ search
    def _ann_candidates(
        self, ann: Any, tier: str, q: np.ndarray, k: int, breadth: int, sel: Any, gather: Any, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`.search.ann_candidates` with this index's re-rank floor (and GPU copy of an IVF)."""
        gpu = self._gpu_ivf if kw.pop("use_gpu", False) else None
        return ann_candidates(ann, tier, q, k, breadth, sel, gather, min_rerank=self._config.min_rerank, gpu=gpu, **kw)

    def _store_gather(self, cand: np.ndarray) -> np.ndarray:
        rows = self._store.lookup(cand)
        if (rows < 0).any():  # the FAISS file and the snapshot disagree: never expected
            raise IndexCorruptError(
                f"{self._store.path}: the FAISS index returned ids missing from the snapshot; rebuild it with save()"
            )
        return self._store.read_rows(rows)

    def _dead_ids(self) -> np.ndarray:
        """Ids in the graph that no search may return: removed/replaced since the snapshot, and tombstones."""
        dead = self._store.base_dead_ids()
        return np.union1d(dead, self._tombstones) if self._tombstones.size else dead

    def _unfiltered_selector(self) -> Any:
        """FAISS selector excluding :meth:`_dead_ids` (cached per change)."""
        version = self._store.version
        if self._sel_cache is not None and self._sel_cache[0] == version:
            return self._sel_cache[1]
        dead = self._dead_ids()
        sel = excluding(dead) if dead.size else None
        self._sel_cache = (version, sel)
        return sel

    def _filter(
        self, allowed: np.ndarray, breadth: int, k: int
    ) -> tuple[tuple[np.ndarray, np.ndarray] | None, Any, np.ndarray | None, int]:
        """How an allowed-id filter is searched (:func:`.search.filter_plan`)."""
        depth = max(k * self._rerank_factor(), self._config.min_rerank)
        return filter_plan(self._store, self._ann, self.tier, allowed, breadth, depth, self._config.filter_exact_max)

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        q, kk, allowed = self._prepare_search(queries, k, allowed_ids)
        self._served.record(q)
        if q.shape[0] == 0 or self._store.n_live == 0:
            return empty_result(q.shape[0], kk)
        sel: Any = None
        delta_allowed: np.ndarray | None = None
        breadth = self._breadth() if self._ann is not None else 0
        exact_rows: tuple[np.ndarray, np.ndarray] | None = None
        if allowed is not None:  # see .filtered: exact over few rows, else the graph, widened
            exact_rows, sel, delta_allowed, breadth = self._filter(allowed, breadth, kk)
        elif self._ann is not None:
            sel = self._unfiltered_selector()
        ann, tier, factor, entry = self._ann, self.tier, self._rerank_factor(), self._entry

        def structure(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self._ann_candidates(
                ann, tier, chunk, kk, breadth, sel, self._store_gather, rerank_factor=factor, use_gpu=True, entry=entry
            )

        return self._search_chunks(q, kk, exact_rows, delta_allowed, structure)

    # ------------------------------------------------------------------ stats
    def _params(self) -> dict[str, Any]:
        p: dict[str, Any] = {**super()._params(), "tier": self.tier, "served": self._served_status()}
        if self._ann is None:
            return p
        e = self._extra
        if self.tier == "ivf":
            p.update(nlist=int(self._ann.nlist), pq_m=int(e.get("pq_m", 0)), nprobe=self._breadth())
            p.update(gpu=self._gpu_ivf is not None)
        else:
            p.update(hnsw_m=e.get("hnsw_m"), hnsw_ef_construction=e.get("hnsw_ef_construction"))
            p.update(codes=e.get("hnsw_codes", "SQ8"), ef_search=self._breadth(), tombstones=int(self._tombstones.size))
            p.update(search="faiss")  # FAISS's own HNSW search (issue 24 removed fgsearch's C kernel)
            p.update(entry=f"pivots ({self._entry.count})" if self._entry is not None else "descent")
        p.update(
            mmap=self._mapped,
            calibrated_recall=e.get("calibrated_recall"),
            trained_n=e.get("trained_n"),
            calibrated_n=e.get("calibrated_n", e.get("trained_n")),
            rerank_depth_k10=max(10 * self._rerank_factor(), self._config.min_rerank),
            calibration=e.get("calibration"),
        )
        return p

    def _bytes_in_memory(self) -> int:
        """Store memory plus the FAISS structure: codes, ids, graph links or IVF centroids."""
        total = super()._bytes_in_memory()
        ann = self._ann
        if ann is None:
            return total
        if self.tier == "ivf":
            return total + int(ann.ntotal) * (int(ann.code_size) + 8) + int(ann.nlist) * self.dim * 4
        return total + hnsw_bytes(ann) + (self._entry.nbytes if self._entry is not None else 0)
