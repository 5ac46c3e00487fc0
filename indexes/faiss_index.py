"""FAISS backend (the embedded default): exact while small, HNSW over 8-bit codes + exact re-ranking when large.

How search works (see :class:`~.config.FaissConfig` for every knob):

* **flat tier** (fewer than ``flat_threshold`` = 50k vectors): exact brute force over the stored
  float32 vectors (BLAS), identical to the exact backend.
* **hnsw tier** (default ``structure="hnsw"``): when a flush/save/close finds the collection at or
  past ``flat_threshold``, the next snapshot builds ``IndexHNSWSQ`` (8-bit scalar-quantised codes
  by default, ``hnsw_codes="SQ4"`` for 4-bit; ``hnsw_m`` = 24 links per vector, 48 on the base
  layer: 512 B of codes + ~220 B of graph and ids per 512-d vector) under the
  catalog ids, tops every vector's base-layer list up to ``hnsw_fill_links`` links with its nearest
  neighbours and adds reverse links (:func:`._graph.reinforce_links`; vectors folded in later get
  the same), and calibrates the search: the smallest ``efSearch`` (32, 48, 64, 96, ...) and re-rank depth
  (``3·k`` doubling up to ``48·k``, at least 30) whose recall@10 against exact search reaches
  ``recall_target`` + 0.01 on every calibration set: image-like queries (stored vectors plus
  noise) AND text-like queries (the caller's real text embeddings, or synthetic cross-modal ones,
  see :mod:`.calibration`). Text queries sit far from every image vector, where an approximate
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
  larger than at the last calibration, and the structure is rebuilt from scratch when the
  collection has grown ``retrain_growth`` (4×) since it
  was built, and dropped back to flat below ``flat_threshold / 2``.
* Allowed-id filters: up to ``filter_exact_max`` ids are answered exactly from their vectors;
  larger filters run the approximate search with an ``IDSelectorBatch``.
* With ``mmap=True`` (the default) the FAISS file of a snapshot is searched memory-mapped, not
  read into memory: the IVF lists (``IO_FLAG_MMAP``), or the HNSW graph and its codes
  (``IO_FLAG_MMAP_IFC``). Snapshots are immutable and a build reads its own copy, so the mapped
  pages are shared with the page cache and with every other process that searches the same index;
  opening costs no read of the file. With ``fgsearch[gpu]`` and a GPU, unfiltered IVF searches
  run on a GPU clone; filtered ones on CPU.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._graph import HnswKernel, kernel_missing_reason, reinforce_links
from ._store import fsync_file
from .base import SearchResult, as_queries, empty_result, merge_topk, topk_rows
from .calibration import cross_modal_queries, in_distribution_queries, recall_at_k
from .config import FaissConfig
from .errors import BackendUnavailableError, IndexCorruptError, IndexInputError
from .exact import StoreBackedIndex, chunked_queries, exact_topk

log = logging.getLogger(__name__)

_ADD_CHUNK = 65536
#: Candidate rows re-scored at once (a batch of queries is re-ranked in slices of this many rows).
_RERANK_ROWS = 1024
#: PQ trains 256 centroids per sub-quantizer: below this many vectors the IVF tier is never used.
MIN_IVF_VECTORS = 1000


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
        raise BackendUnavailableError(
            "the faiss backend needs FAISS: pip install faiss-cpu (or fgsearch[gpu] for GPU FAISS)"
        ) from e
    return faiss


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


def _mmap_flags(tier: str) -> int:
    """FAISS read flags that map a snapshot's file instead of reading it: the IVF lists, or the
    codes and graph of an HNSW index (``IO_FLAG_MMAP_IFC``; 0 on a FAISS build without it)."""
    faiss = _faiss()
    return int(faiss.IO_FLAG_MMAP if tier == "ivf" else getattr(faiss, "IO_FLAG_MMAP_IFC", 0))


def _prefetch(path: Any) -> None:
    """Have the kernel read a mapped file into the page cache, in the background. Mapped, a file
    that is not cached (after a reboot) is read page by page as searches touch it, each a random
    read (1M vectors: the first searches took ~140 ms instead of ~8); one sequential read ahead
    brings it in at disk speed while searches already run."""
    if not hasattr(os, "posix_fadvise"):
        return

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except OSError as e:  # only a hint: searches read what they need anyway
            log.debug("read-ahead of %s failed: %s", path, e)

    threading.Thread(target=run, name="fgsearch-prefetch", daemon=True).start()


def _excluding(ids: np.ndarray) -> Any:
    """A FAISS selector that lets every id through except ``ids``."""
    faiss = _faiss()
    batch = faiss.IDSelectorBatch(ids)
    sel = faiss.IDSelectorNot(batch)
    sel._keep = batch  # keep the wrapped selector alive as long as the outer one
    return sel


def _ef_ladder(depth: int) -> list[int]:
    """efSearch values to try for a re-rank depth: powers of two and 1.5x between them
    (32, 48, 64, 96, ...), from the first one at or above ``depth``; the half steps matter at
    large collections, where doubling efSearch doubles the cost of every query."""
    steps = sorted({m * 2**e for e in range(4, 17) for m in (2, 3)})
    return [b for b in steps if b >= depth]


_warned_no_kernel = False


def _kernel_for(ann: Any) -> HnswKernel | None:
    """fgsearch's search kernel for an HNSW graph (see :mod:`._graph`); None: FAISS's search (warned once)."""
    global _warned_no_kernel
    kernel = HnswKernel.for_index(ann)
    if kernel is None and not _warned_no_kernel and (missing := kernel_missing_reason()):
        _warned_no_kernel = True
        log.warning(
            "%s: HNSW searches use FAISS's own search (~1.5x slower); reinstall fgsearch with a C compiler "
            "(pip install -e . / pip install fgsearch --no-binary fgsearch) to build it",
            missing,
        )
    return kernel


def calibration_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Image-like queries near stored vectors (see :func:`.calibration.in_distribution_queries`)."""
    return in_distribution_queries(vectors, n, seed)


CalibrationSource = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def _snapshot_vectors_at(ann: Any, vecs: np.ndarray, ids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``positions -> vectors`` of an ``IndexIDMap`` graph, read from a snapshot (``vecs`` by
    ascending ``ids``); zeros for positions whose id the snapshot no longer holds (tombstones)."""
    id_map = _faiss().vector_to_array(ann.id_map)

    def at(pos: np.ndarray) -> np.ndarray:
        want = id_map[pos]
        rows = np.minimum(np.searchsorted(ids, want), max(ids.size - 1, 0))
        found = ids[rows] == want
        out = np.zeros((pos.size, vecs.shape[1]), dtype=np.float32)
        out[found] = vecs[rows[found]]
        return out

    return at


class FaissIndex(StoreBackedIndex):
    """FAISS-backed index: flat below ``flat_threshold``; HNSW-SQ or IVF-PQ with exact re-ranking above."""

    kind = "faiss"
    config_type = FaissConfig
    _config: FaissConfig
    _calibration_source: CalibrationSource | None = None

    def _after_load(self) -> None:
        faiss = _faiss()
        extra = self._store.manifest.get("extra", {})
        self._ann: Any = None
        self._mapped = False  # the FAISS file is memory-mapped, not read into memory
        self._gpu_ivf: Any = None
        self._sel_cache: tuple[int, Any] | None = None
        self._mask_cache: tuple[int, np.ndarray | None] | None = None
        self._kernel: HnswKernel | None = None
        self._positions_are_rows = False  # graph position i holds the snapshot's row i
        self._extra = extra
        self._tombstones = np.zeros(0, dtype=np.int64)
        tier = extra.get("tier")
        if tier in ("ivf", "hnsw"):
            fpath = self._store.path / extra["faiss_file"]
            flags = _mmap_flags(tier) if self._config.mmap else 0
            try:
                self._ann = faiss.read_index(str(fpath), flags)
                self._mapped = bool(flags)
                if self._mapped:
                    _prefetch(fpath)
            except RuntimeError as e:
                if not flags:
                    raise
                log.warning("cannot memory-map %s (%s); reading it into memory", fpath, e)
                self._ann = faiss.read_index(str(fpath))
            if extra.get("tombstones_file"):
                self._tombstones = np.load(self._store.path / extra["tombstones_file"])
            if tier == "ivf":
                self._maybe_gpu()
            else:
                self._kernel = _kernel_for(self._ann)
                if self._kernel is not None:  # then candidates need no id -> row lookup
                    self._positions_are_rows = bool(np.array_equal(self._kernel.ids, self._store.base_ids))

    def set_calibration_queries(self, source: CalibrationSource | None) -> None:
        """Queries of the kinds this index will serve, used the next time it builds its structure.

        ``source`` maps a set name (e.g. ``"text"``) to ``[n, dim]`` query vectors, or is a callable
        returning such a mapping (called only when a build happens, so encoding costs nothing until
        then). Image-like queries are always added. Without a text-like set, synthetic cross-modal
        queries stand in (see :mod:`.calibration`). ``None`` clears it.
        """
        self._calibration_source = source

    def _calibration_sets(self, vecs: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
        """Named query sets (queries, where they came from) the calibration must satisfy."""
        cfg = self._config
        sets: dict[str, tuple[np.ndarray, str]] = {
            "image": (
                in_distribution_queries(vecs, cfg.calibration_queries, cfg.seed + 1),
                "synthetic: stored vectors plus noise",
            )
        }
        given: Mapping[str, Any] = {}
        if self._calibration_source is not None:
            src = self._calibration_source
            given = src() if callable(src) else src
        for name, queries in given.items():
            try:
                q = as_queries(queries, self.dim)
            except IndexInputError as e:
                raise IndexInputError(f"calibration query set {name!r}: {e}") from e
            if q.shape[0] == 0:
                continue
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            sets[str(name)] = (np.ascontiguousarray(q[: cfg.calibration_queries], dtype=np.float32), "given by caller")
        if len(sets) == 1:
            sets["text"] = (
                cross_modal_queries(vecs, cfg.calibration_queries, cfg.seed + 2),
                "synthetic cross-modal (no text queries given)",
            )
        return sets

    def _gpu_wanted(self) -> bool:
        """True when GPU FAISS should be used: allowed by config, and FAISS sees a GPU."""
        if self._config.use_gpu is False:
            return False
        faiss = _faiss()
        return bool(faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)

    def _maybe_gpu(self) -> None:
        faiss = _faiss()
        want = self._config.use_gpu
        if want is False:
            return
        if not self._gpu_wanted():
            if want is True:
                raise BackendUnavailableError(
                    "use_gpu=True but FAISS sees no GPU; install fgsearch[gpu] on a CUDA machine or set use_gpu=None"
                )
            return
        try:
            res = faiss.StandardGpuResources()
            co = faiss.GpuClonerOptions()
            co.useFloat16 = True  # float16 lookup tables: 32-bit ones overflow shared memory at 64 codes
            ram = faiss.read_index(str(self._store.path / self._extra["faiss_file"]))
            gpu = faiss.index_cpu_to_gpu(res, 0, ram, co)
            faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", self._breadth())
            self._gpu_ivf = gpu
            self._gpu_res = res
            log.info("faiss index cloned to GPU 0 for unfiltered searches")
        except Exception as e:  # GPU problems must never break search: fall back to CPU
            if want is True:
                raise BackendUnavailableError(f"cannot move the FAISS index to the GPU: {e}") from e
            log.warning("GPU FAISS unavailable (%s); searching on CPU", e)
            self._gpu_ivf = None

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
        return max(self._config.flat_threshold, MIN_IVF_VECTORS)

    def _wants_rebuild(self) -> bool:
        n = self._store.n_live
        cfg = self._config
        if self._ann is None:
            return n >= self._ivf_threshold()
        if n < self._ivf_threshold() / 2 or not self._same_structure():
            return True
        return n >= cfg.retrain_growth * int(self._extra.get("trained_n", n))

    def _compact(self) -> None:
        self._store.compact(build_extra=self._build_extra)

    def _build_extra(self, generation: int, vecs: np.ndarray, ids: np.ndarray) -> tuple[dict[str, Any], list[str]]:
        """Build the FAISS file of a new snapshot (called before the snapshot is committed)."""
        faiss = _faiss()
        cfg = self._config
        n = int(ids.size)
        old = self._ann is not None and self._same_structure()
        threshold = self._ivf_threshold()
        if n < threshold and not (old and n >= threshold / 2):
            return {"tier": "flat"}, []
        trained_n = int(self._extra.get("trained_n", 0))
        retrain = (not old) or n >= cfg.retrain_growth * max(trained_n, 1)
        tombstones = np.zeros(0, dtype=np.int64)
        ann: Any = None
        extra: dict[str, Any] = {}
        if not retrain:
            ann = faiss.read_index(str(self._store.path / self._extra["faiss_file"]))
            dead = self._store.base_dead_ids()
            if self.tier == "hnsw":
                # FAISS graphs cannot delete: dead ids stay in the graph as tombstones, excluded from
                # every search, until there are too many or an id comes back (then rebuild)
                tombstones = np.union1d(self._tombstones, dead)
                back = [d[d >= 0] for _, d in self._store.iter_blocks(_ADD_CHUNK, base=False)]
                if tombstones.size > cfg.max_tombstones * n or any(np.isin(b, tombstones).any() for b in back):
                    retrain, ann = True, None
            elif dead.size:
                ann.remove_ids(faiss.IDSelectorBatch(dead))
        if retrain:
            ann, extra = self._train(vecs, ids)
            tombstones = tombstones[:0]
        else:
            start = int(ann.ntotal)
            added: list[np.ndarray] = []
            for dvecs, dids in self._store.iter_blocks(_ADD_CHUNK, base=False):
                live = dids >= 0
                if live.any():
                    ann.add_with_ids(np.ascontiguousarray(dvecs[live]), dids[live])
                    if self.tier == "hnsw":
                        added.append(np.asarray(dvecs[live], dtype=np.float32))
            if added:
                self._reinforce(ann, np.concatenate(added), start, _snapshot_vectors_at(ann, vecs, ids))
            extra = {k: v for k, v in self._extra.items() if k not in ("files", "tombstones_file")}
            calibrated_n = int(self._extra.get("calibrated_n", trained_n))
            if n >= cfg.recalibrate_growth * max(calibrated_n, 1):
                # adds since the calibration make the graph (or the IVF lists) larger: the breadth
                # that reached the goal then may not reach it now, so measure again at this size
                extra.update(self._calibrate(ann, vecs, ids, self.tier, exclude=tombstones))
                extra["calibrated_n"] = n
        if ann.ntotal != n + tombstones.size:
            raise RuntimeError(f"faiss index holds {ann.ntotal} vectors, snapshot {n}")  # internal bug
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
        fsync_file(tmp)
        os.replace(tmp, self._store.path / name)

    def _train(self, vecs: np.ndarray, ids: np.ndarray) -> tuple[Any, dict[str, Any]]:
        """Build the configured structure over every vector and calibrate its search."""
        if self._structure() == "hnsw":
            ann, extra = self._build_hnsw(vecs, ids)
        else:
            ann, extra = self._build_ivf(vecs, ids)
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

    def _build_hnsw(self, vecs: np.ndarray, ids: np.ndarray) -> tuple[Any, dict[str, Any]]:
        faiss = _faiss()
        cfg = self._config
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
        for s in range(0, n, _ADD_CHUNK):
            ann.add_with_ids(np.ascontiguousarray(vecs[s : s + _ADD_CHUNK]), np.asarray(ids[s : s + _ADD_CHUNK]))
        self._reinforce(ann, vecs, 0, lambda pos: np.asarray(vecs[pos], dtype=np.float32))  # position i is row i
        built = {"tier_built": "hnsw", "hnsw_m": cfg.hnsw_m, "hnsw_ef_construction": cfg.hnsw_ef_construction}
        return ann, {**built, "hnsw_codes": cfg.hnsw_codes, "hnsw_fill_links": cfg.hnsw_fill_links}

    def _reinforce(
        self, ann: Any, vectors: np.ndarray, start: int, vectors_at: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        """More level-0 links for graph positions ``start ..`` (see :func:`._graph.reinforce_links`)."""
        if self._config.hnsw_fill_links <= 0 or vectors.shape[0] == 0:
            return
        t = time.perf_counter()
        added = reinforce_links(ann, vectors, start, self._config.hnsw_fill_links, vectors_at)
        log.info(
            "HNSW: %d level-0 links added for %d vectors in %.1fs", added, vectors.shape[0], time.perf_counter() - t
        )

    def _build_ivf(self, vecs: np.ndarray, ids: np.ndarray) -> tuple[Any, dict[str, Any]]:
        faiss = _faiss()
        cfg = self._config
        n, dim = vecs.shape
        nlist = cfg.nlist or derive_nlist(n)
        m = cfg.pq_m or derive_pq_m(dim)
        if cfg.pq_m is None and self._gpu_wanted():
            # FAISS's GPU IVF-PQ handles at most 96 bytes per code: use dim/8 codes there and let
            # the calibration below deepen the re-rank instead
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
        for s in range(0, n, _ADD_CHUNK):
            ivf.add_with_ids(np.ascontiguousarray(vecs[s : s + _ADD_CHUNK]), np.asarray(ids[s : s + _ADD_CHUNK]))
        return ivf, {"tier_built": "ivf", "nlist": nlist, "pq_m": m}

    def _calibrate(
        self, ann: Any, vecs: np.ndarray, ids: np.ndarray, tier: str, *, exclude: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Pick the search breadth and re-rank depth reaching the recall goal on every query set.

        For each re-rank depth ``rerank_factor * k`` (doubling up to 16x the configured factor), find
        the smallest breadth (``nprobe``: powers of two up to ``nlist / 4``; ``efSearch``: 32, 48,
        64, 96, ... from the depth up to ``max_ef_search``) whose recall@10 against exact search reaches the goal on the
        worst query set. The narrowest breadth wins (the breadth is what a search costs), then the
        shallowest depth: a deeper re-rank is only tried with breadths narrower than the best so
        far. A configured breadth is kept and only measured. Returns the manifest extras
        (``nprobe``/``ef_search``, ``rerank_factor`` and a ``calibration`` record of what was
        measured and why).
        """
        cfg = self._config
        sets = self._calibration_sets(vecs)
        block = cfg.block_rows
        # measured with the search the index will run: fgsearch's kernel on an 8-bit graph
        kernel = _kernel_for(ann) if tier == "hnsw" else None
        dead = exclude if exclude is not None and exclude.size else None
        sel = _excluding(dead) if dead is not None else None
        mask = kernel.excluded_mask(dead) if kernel is not None and dead is not None else None
        truths = {
            name: exact_topk(
                q, ((vecs[s : s + block], np.asarray(ids[s : s + block])) for s in range(0, ids.size, block)), 10
            )[0]
            for name, (q, _) in sets.items()
        }

        def gather(cand: np.ndarray) -> np.ndarray:
            return np.asarray(vecs[np.searchsorted(ids, cand)])

        def measure(breadth: int, factor: int) -> dict[str, float]:
            return {
                name: recall_at_k(
                    self._ann_candidates(
                        ann, tier, q, 10, breadth, sel, gather, rerank_factor=factor, kernel=kernel, excluded=mask
                    )[0],
                    truths[name],
                )
                for name, (q, _) in sets.items()
            }

        goal = min(1.0, cfg.recall_target + cfg.calibration_margin)
        factors = [cfg.rerank_factor * f for f in (1, 2, 4, 8, 16)]
        fixed = self._configured_breadth(tier)
        best: tuple[int, int, dict[str, float]] = (0, cfg.rerank_factor, {"-": -1.0})
        chosen: tuple[int, int, dict[str, float]] | None = None
        for factor in factors:
            depth = max(10 * factor, cfg.min_rerank)
            if fixed is not None:
                breadths = [fixed]
            elif tier == "ivf":
                cap = max(1, int(ann.nlist) // 4)
                breadths = sorted({min(2**i, cap) for i in range(0, cap.bit_length() + 1)})
            else:
                breadths = [b for b in _ef_ladder(depth) if b <= cfg.max_ef_search] or [depth]
            if chosen is not None:  # a deeper re-rank only wins with a narrower (cheaper) search
                breadths = [b for b in breadths if b < chosen[0]]
            for breadth in breadths:
                recalls = measure(breadth, factor)
                if min(recalls.values()) > min(best[2].values()):
                    best = (breadth, factor, recalls)
                if min(recalls.values()) >= goal:
                    chosen = (breadth, factor, recalls)
                    break
        reached = chosen is not None
        if chosen is not None:
            best = chosen
        breadth, factor, recalls = best
        name = "nprobe" if tier == "ivf" else "ef_search"
        if not reached:
            log.warning(
                "recall target %.3f not reached on calibration queries (worst set %.3f); %s",
                goal,
                min(recalls.values()),
                "raise pq_m or nlist" if tier == "ivf" else "raise hnsw_m, hnsw_ef_construction or max_ef_search",
            )
        record = {
            "goal_recall10": goal,
            "reached": reached,
            "breadth_name": name,
            "breadth": breadth,
            "rerank_depth_k10": max(10 * factor, cfg.min_rerank),
            "rule": (
                f"smallest {name}{' (configured)' if fixed is not None else ''}, then smallest "
                f"re-rank depth, whose recall@10 against exact search reaches {goal:.3f} on every query set"
            ),
            "sets": {
                k: {"queries": int(sets[k][0].shape[0]), "source": sets[k][1], "recall10": round(v, 4)}
                for k, v in recalls.items()
            },
        }
        worst = min(recalls.values())
        return {name: breadth, "rerank_factor": factor, "calibrated_recall": worst, "calibration": record}

    # ------------------------------------------------------------------ search
    def _ann_candidates(
        self,
        ann: Any,
        tier: str,
        q: np.ndarray,
        k: int,
        breadth: int,
        sel: Any,
        gather: Any,
        *,
        rerank_factor: int,
        use_gpu: bool = False,
        kernel: HnswKernel | None = None,
        excluded: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate candidates re-ranked by exact inner products; ``gather(ids) -> vectors``.

        With ``kernel`` (an HNSW graph, no allowed-id filter) fgsearch's kernel walks the graph,
        skipping the nodes set in ``excluded``; otherwise FAISS searches with ``sel``.
        """
        faiss = _faiss()
        r = min(max(k * rerank_factor, self._config.min_rerank), max(int(ann.ntotal), 1))
        src: np.ndarray | None = None  # what gather() reads: candidate ids, or snapshot rows
        if kernel is not None:
            pos = kernel.positions(q, r, max(int(breadth), r), excluded, threads=faiss.omp_get_max_threads())
            cand = kernel.ids_of(pos)
            if kernel is self._kernel and self._positions_are_rows:  # position i is row i: no id lookup
                src, gather = pos, self._store.read_rows
        elif use_gpu and sel is None and self._gpu_ivf is not None:
            _, cand = self._gpu_ivf.search(q, r)
        else:
            if tier == "ivf":
                params = faiss.SearchParametersIVF()
                params.nprobe = int(breadth)
            else:
                params = faiss.SearchParametersHNSW()
                params.efSearch = max(int(breadth), r)
            if sel is not None:
                params.sel = sel
            _, cand = ann.search(q, r, params=params)
        scores = np.full(cand.shape, -np.inf, dtype=np.float32)
        step = max(1, _RERANK_ROWS // max(cand.shape[1], 1))  # bounded buffers for a large batch
        for s in range(0, cand.shape[0], step):
            part = cand[s : s + step]
            qi, ci = np.nonzero(part >= 0)
            if qi.size:
                v = gather((part if src is None else src[s : s + step])[qi, ci])
                scores[s + qi, ci] = np.einsum("ij,ij->i", v, q[s + qi])
        return topk_rows(cand, scores, k)

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
        sel = _excluding(dead) if dead.size else None
        self._sel_cache = (version, sel)
        return sel

    def _unfiltered_mask(self) -> np.ndarray | None:
        """The kernel's mask of :meth:`_dead_ids` (cached per change)."""
        version = self._store.version
        if self._mask_cache is not None and self._mask_cache[0] == version:
            return self._mask_cache[1]
        assert self._kernel is not None
        mask = self._kernel.excluded_mask(self._dead_ids())
        self._mask_cache = (version, mask)
        return mask

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        q, kk, allowed = self._prepare_search(queries, k, allowed_ids)
        if q.shape[0] == 0 or self._store.n_live == 0:
            return empty_result(q.shape[0], kk)
        out_i = np.empty((q.shape[0], kk), dtype=np.int64)
        out_s = np.empty((q.shape[0], kk), dtype=np.float32)
        exact_filter = allowed is not None and (self._ann is None or allowed.size <= self._config.filter_exact_max)
        sel: Any = None
        mask: np.ndarray | None = None
        kernel = self._kernel if allowed is None else None
        delta_allowed: np.ndarray | None = None
        if self._ann is not None and not exact_filter:
            if kernel is not None:
                mask = self._unfiltered_mask()
            elif allowed is None:
                sel = self._unfiltered_selector()
            else:
                faiss = _faiss()
                rows = self._store.lookup(allowed)
                nb = self._store.n_base
                sel = faiss.IDSelectorBatch(allowed[(rows >= 0) & (rows < nb)])
                delta_allowed = allowed[rows >= nb]
        for s, chunk in chunked_queries(q):
            if exact_filter:
                i, sc = self._exact_over_allowed(chunk, kk, allowed)
            elif self._ann is None:
                i, sc = exact_topk(chunk, self._store.iter_blocks(self._config.block_rows), kk)
            else:
                i, sc = self._ann_candidates(
                    self._ann,
                    self.tier,
                    chunk,
                    kk,
                    self._breadth(),
                    sel,
                    self._store_gather,
                    rerank_factor=self._rerank_factor(),
                    use_gpu=True,
                    kernel=kernel,
                    excluded=mask,
                )
                if delta_allowed is not None:
                    if delta_allowed.size:
                        di, ds = self._exact_over_allowed(chunk, kk, delta_allowed)
                        i, sc = merge_topk(i, sc, di, ds, kk)
                elif self._store.delta.n:
                    di, ds = exact_topk(chunk, self._store.iter_blocks(self._config.block_rows, base=False), kk)
                    i, sc = merge_topk(i, sc, di, ds, kk)
            out_i[s : s + chunk.shape[0]] = i
            out_s[s : s + chunk.shape[0]] = sc
        return SearchResult(ids=out_i, scores=out_s)

    # ------------------------------------------------------------------ stats
    def _params(self) -> dict[str, Any]:
        p: dict[str, Any] = {**super()._params(), "tier": self.tier}
        if self._ann is None:
            return p
        e = self._extra
        if self.tier == "ivf":
            p.update(nlist=int(self._ann.nlist), pq_m=int(e.get("pq_m", 0)), nprobe=self._breadth())
            p.update(gpu=self._gpu_ivf is not None)
        else:
            p.update(hnsw_m=e.get("hnsw_m"), hnsw_ef_construction=e.get("hnsw_ef_construction"))
            p.update(codes=e.get("hnsw_codes", "SQ8"), ef_search=self._breadth(), tombstones=int(self._tombstones.size))
            p.update(fill_links=int(e.get("hnsw_fill_links", 0)))
            p.update(search_kernel=f"fgsearch-{self._kernel.isa}" if self._kernel is not None else "faiss")
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
        faiss = _faiss()
        graph = faiss.downcast_index(ann.index)
        code_size = int(faiss.downcast_index(graph.storage).code_size)
        links = int(graph.hnsw.neighbors.size()) * 4 + int(graph.hnsw.offsets.size()) * 8
        return total + int(ann.ntotal) * (code_size + 8 + 4) + links
