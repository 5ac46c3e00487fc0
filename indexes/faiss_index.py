"""FAISS backend (the embedded default): exact while small, IVF-PQ + exact re-ranking when large.

How search works (see :class:`~.config.FaissConfig` for every knob):

* **flat tier** (fewer than ``flat_threshold`` = 50k vectors): exact brute force over the stored
  float32 vectors (BLAS), identical to the exact backend.
* **ivf tier**: when a flush/save/close finds the collection at or past ``flat_threshold``, the
  next snapshot trains ``IndexIVFPQ`` (``nlist`` ≈ 2·√n cells; ``dim/4`` one-byte PQ codes, so
  128 B + an 8 B id per vector at 512-d) on a sample, adds every vector under its catalog id, and
  calibrates the search: the smallest power-of-two ``nprobe`` (up to ``nlist/4``) and re-rank depth
  (``10·k`` doubling up to ``80·k``, at least 100) whose recall@10 on sample queries near stored
  vectors, measured against exact search, reaches ``recall_target`` + 0.02. A query fetches that
  many PQ candidates and re-scores them with exact inner products read from the memory-mapped
  float32 snapshot, so scores are exact and only the candidate list is approximate.
* Changes since the snapshot never touch the IVF file: removed or replaced ids are excluded with a
  FAISS ``IDSelector``; new vectors are searched exactly and merged. Each snapshot (``save()``, or
  a flush when the journal is large, see :class:`~.config.JournalConfig`) folds them into a new
  IVF file; the IVF is retrained from scratch when the collection has grown ``retrain_growth``
  (4×) since training, and dropped back to flat below ``flat_threshold / 2``.
* Allowed-id filters: up to ``filter_exact_max`` ids are answered exactly from their vectors;
  larger filters run the IVF search with an ``IDSelectorBatch``.
* The IVF file is loaded memory-mapped (``IO_FLAG_MMAP``) when ``mmap=True``. With
  ``fgsearch[gpu]`` and a GPU, unfiltered IVF searches run on a GPU clone; filtered ones on CPU.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from ._store import fsync_file
from .base import SearchResult, empty_result, merge_topk, topk_rows
from .config import FaissConfig
from .errors import BackendUnavailableError, IndexCorruptError
from .exact import StoreBackedIndex, chunked_queries, exact_topk

log = logging.getLogger(__name__)

_ADD_CHUNK = 65536
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


def calibration_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries near stored vectors: a stored vector plus Gaussian noise of norm ~0.5, normalized."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(vectors.shape[0], size=min(n, vectors.shape[0]), replace=False))
    q = np.asarray(vectors[rows], dtype=np.float32)
    q = q + rng.standard_normal(q.shape).astype(np.float32) * (0.5 / math.sqrt(q.shape[1]))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ids, -1 ignored) present in ``found``."""
    hits = 0
    total = 0
    for f, t in zip(found, truth, strict=True):
        t = t[t >= 0]
        total += t.size
        hits += np.isin(t, f).sum()
    return float(hits / total) if total else 1.0


class FaissIndex(StoreBackedIndex):
    """FAISS-backed index: flat below ``flat_threshold``, IVF-PQ with exact re-ranking above."""

    kind = "faiss"
    config_type = FaissConfig
    _config: FaissConfig

    def _after_load(self) -> None:
        faiss = _faiss()
        extra = self._store.manifest.get("extra", {})
        self._ivf: Any = None
        self._gpu_ivf: Any = None
        self._sel_cache: tuple[int, Any] | None = None
        self._extra = extra
        if extra.get("tier") == "ivf":
            fpath = self._store.path / extra["faiss_file"]
            flags = faiss.IO_FLAG_MMAP if self._config.mmap else 0
            try:
                self._ivf = faiss.read_index(str(fpath), flags)
            except RuntimeError:
                if not flags:
                    raise
                self._ivf = faiss.read_index(str(fpath))
            self._maybe_gpu()

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
            faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", self._nprobe())
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
        """``"flat"`` (exact) or ``"ivf"`` (IVF-PQ + exact re-rank)."""
        return "ivf" if self._ivf is not None else "flat"

    def _nprobe(self) -> int:
        if self._config.nprobe is not None:
            return int(self._config.nprobe)
        return int(self._extra.get("nprobe", 16))

    def _rerank_factor(self) -> int:
        if self._config.nprobe is not None and "rerank_factor" not in self._extra:
            return self._config.rerank_factor
        return int(self._extra.get("rerank_factor", self._config.rerank_factor))

    def _ivf_threshold(self) -> int:
        return max(self._config.flat_threshold, MIN_IVF_VECTORS)

    def _wants_rebuild(self) -> bool:
        n = self._store.n_live
        cfg = self._config
        if self._ivf is None:
            return n >= self._ivf_threshold()
        if n < self._ivf_threshold() / 2:
            return True
        return n >= cfg.retrain_growth * int(self._extra.get("trained_n", n))

    def _compact(self) -> None:
        self._store.compact(build_extra=self._build_extra)

    def _build_extra(self, generation: int, vecs: np.ndarray, ids: np.ndarray) -> tuple[dict[str, Any], list[str]]:
        """Build the IVF file of a new snapshot (called before the snapshot is committed)."""
        faiss = _faiss()
        cfg = self._config
        n = int(ids.size)
        old_ivf = self._ivf is not None
        threshold = self._ivf_threshold()
        if n < threshold and not (old_ivf and n >= threshold / 2):
            return {"tier": "flat"}, []
        trained_n = int(self._extra.get("trained_n", 0))
        retrain = (not old_ivf) or n >= cfg.retrain_growth * max(trained_n, 1)
        extra: dict[str, Any]
        if retrain:
            ivf, extra = self._train(vecs, ids)
        else:
            ivf = faiss.read_index(str(self._store.path / self._extra["faiss_file"]))
            dead = self._store.base_dead_ids()
            if dead.size:
                ivf.remove_ids(faiss.IDSelectorBatch(dead))
            for dvecs, dids in self._store.iter_blocks(_ADD_CHUNK, base=False):
                live = dids >= 0
                if live.any():
                    ivf.add_with_ids(np.ascontiguousarray(dvecs[live]), dids[live])
            extra = {k: v for k, v in self._extra.items() if k != "files"}
        if ivf.ntotal != n:
            raise RuntimeError(f"faiss index holds {ivf.ntotal} vectors, snapshot {n}")  # internal bug
        name = f"faiss.{generation}.index"
        tmp = self._store.path / (name + ".tmp")
        faiss.write_index(ivf, str(tmp))
        fsync_file(tmp)
        os.replace(tmp, self._store.path / name)
        extra.update(tier="ivf", faiss_file=name, count=n)
        return extra, [name]

    def _train(self, vecs: np.ndarray, ids: np.ndarray) -> tuple[Any, dict[str, Any]]:
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
        nprobe, factor, recall = self._calibrate(ivf, vecs, ids)
        extra = {
            "nlist": nlist,
            "pq_m": m,
            "nprobe": nprobe,
            "rerank_factor": factor,
            "calibrated_recall": recall,
            "trained_n": n,
        }
        log.info(
            "IVF%d,PQ%d: nprobe=%d, re-rank %dx gives recall@10=%.3f on sample queries",
            nlist,
            m,
            nprobe,
            factor,
            recall,
        )
        return ivf, extra

    def _calibrate(self, ivf: Any, vecs: np.ndarray, ids: np.ndarray) -> tuple[int, int, float]:
        """Pick ``(nprobe, rerank_factor)`` reaching the recall target (plus margin) cheaply.

        For re-rank depth ``rerank_factor * k`` (doubling up to 8x the configured factor), find the
        smallest power-of-two nprobe up to ``nlist / 4`` whose recall@10 on sample queries (stored
        vectors plus noise, truth from exact search) reaches the goal; the first depth that gets
        there wins. A configured ``nprobe`` is kept and only measured.
        """
        cfg = self._config
        nlist = int(ivf.nlist)
        q = calibration_queries(vecs, cfg.calibration_queries, cfg.seed + 1)
        block = cfg.block_rows
        truth, _ = exact_topk(
            q, ((vecs[s : s + block], np.asarray(ids[s : s + block])) for s in range(0, ids.size, block)), 10
        )

        def gather(cand: np.ndarray) -> np.ndarray:
            return np.asarray(vecs[np.searchsorted(ids, cand)])

        def measure(nprobe: int, factor: int) -> float:
            found, _ = self._ivf_candidates(ivf, q, 10, nprobe, None, gather, rerank_factor=factor)
            return recall_at_k(found, truth)

        goal = min(1.0, cfg.recall_target + cfg.calibration_margin)
        factors = [cfg.rerank_factor * f for f in (1, 2, 4, 8)]
        best = (0, cfg.rerank_factor, -1.0)
        if cfg.nprobe is not None:
            for factor in factors:
                recall = measure(cfg.nprobe, factor)
                if recall > best[2]:
                    best = (cfg.nprobe, factor, recall)
                if recall >= goal:
                    break
            return best
        cap = max(1, nlist // 4)
        for factor in factors:
            nprobe = 1
            while True:
                recall = measure(nprobe, factor)
                if recall > best[2]:
                    best = (nprobe, factor, recall)
                if recall >= goal:
                    return nprobe, factor, recall
                if nprobe >= cap:
                    break
                nprobe = min(nprobe * 2, cap)
        log.warning(
            "recall target %.3f not reached on sample queries (best %.3f); raise pq_m or nlist",
            goal,
            best[2],
        )
        return best

    # ------------------------------------------------------------------ search
    def _ivf_candidates(
        self,
        ivf: Any,
        q: np.ndarray,
        k: int,
        nprobe: int,
        sel: Any,
        gather: Any,
        *,
        rerank_factor: int,
        use_gpu: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """IVF-PQ candidates re-ranked by exact inner products; ``gather(ids) -> vectors``."""
        faiss = _faiss()
        r = min(max(k * rerank_factor, self._config.min_rerank), max(int(ivf.ntotal), 1))
        if use_gpu and sel is None and self._gpu_ivf is not None:
            _, cand = self._gpu_ivf.search(q, r)
        else:
            params = faiss.SearchParametersIVF()
            params.nprobe = int(nprobe)
            if sel is not None:
                params.sel = sel
            _, cand = ivf.search(q, r, params=params)
        valid = cand >= 0
        scores = np.full(cand.shape, -np.inf, dtype=np.float32)
        if valid.any():
            qi, ci = np.nonzero(valid)
            v = gather(cand[qi, ci])
            scores[qi, ci] = np.einsum("ij,ij->i", v, q[qi])
        return topk_rows(cand, scores, k)

    def _store_gather(self, cand: np.ndarray) -> np.ndarray:
        rows = self._store.lookup(cand)
        if (rows < 0).any():  # the IVF file and the snapshot disagree: never expected
            raise IndexCorruptError(
                f"{self._store.path}: the FAISS index returned ids missing from the snapshot; rebuild it with save()"
            )
        return self._store.read_rows(rows)

    def _unfiltered_selector(self) -> Any:
        """Selector excluding ids removed/replaced since the IVF snapshot (cached per change)."""
        version = self._store.version
        if self._sel_cache is not None and self._sel_cache[0] == version:
            return self._sel_cache[1]
        faiss = _faiss()
        dead = self._store.base_dead_ids()
        sel = None
        if dead.size:
            batch = faiss.IDSelectorBatch(dead)
            sel = faiss.IDSelectorNot(batch)
            sel._keep = batch  # keep the wrapped selector alive as long as the outer one
        self._sel_cache = (version, sel)
        return sel

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        q, kk, allowed = self._prepare_search(queries, k, allowed_ids)
        if q.shape[0] == 0 or self._store.n_live == 0:
            return empty_result(q.shape[0], kk)
        out_i = np.empty((q.shape[0], kk), dtype=np.int64)
        out_s = np.empty((q.shape[0], kk), dtype=np.float32)
        exact_filter = allowed is not None and (self._ivf is None or allowed.size <= self._config.filter_exact_max)
        sel: Any = None
        delta_allowed: np.ndarray | None = None
        if self._ivf is not None and not exact_filter:
            if allowed is None:
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
            elif self._ivf is None:
                i, sc = exact_topk(chunk, self._store.iter_blocks(self._config.block_rows), kk)
            else:
                i, sc = self._ivf_candidates(
                    self._ivf,
                    chunk,
                    kk,
                    self._nprobe(),
                    sel,
                    self._store_gather,
                    rerank_factor=self._rerank_factor(),
                    use_gpu=True,
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
        if self._ivf is not None:
            p.update(
                nlist=int(self._ivf.nlist),
                pq_m=int(self._extra.get("pq_m", 0)),
                nprobe=self._nprobe(),
                calibrated_recall=self._extra.get("calibrated_recall"),
                trained_n=self._extra.get("trained_n"),
                rerank_depth_k10=max(10 * self._rerank_factor(), self._config.min_rerank),
                gpu=self._gpu_ivf is not None,
                mmap=self._config.mmap,
            )
        return p

    def _bytes_in_memory(self) -> int:
        """Store memory plus the IVF's codes, ids and centroids (mapped pages included)."""
        total = super()._bytes_in_memory()
        if self._ivf is not None:
            ivf = self._ivf
            total += int(ivf.ntotal) * (int(ivf.code_size) + 8) + int(ivf.nlist) * self.dim * 4
        return total
