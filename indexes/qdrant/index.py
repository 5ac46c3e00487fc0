"""Qdrant backend (``qdrant-client``): embedded files for small libraries, a server for large ones.

* Embedded mode (``QdrantConfig(path=...)``): qdrant-client's local mode keeps every vector in
  memory and searches by brute force; it is exact but slow past ~100k vectors (see the benchmark
  figures in README), and only one process may open the directory at a time.
* Server mode (``QdrantConfig(url=..., api_key=...)``): the collection is created with the vector
  size, ``Dot`` distance (inner product of unit vectors), on-disk vectors, HNSW and quantization
  settings and shard/replica counts from the config.

Point ids are the catalog ids (non-negative integers). Each point's payload carries the optional
columns given to :meth:`QdrantIndex.add`, e.g. ``image_id`` and ``region``. Upserts go in batches
with ``wait=True`` and bounded retries; if a batch still fails, the points this call inserted are
deleted again (best effort) and the error says exactly what state was left. Writes are durable when
the call returns, so :meth:`flush` and :meth:`save` have nothing to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..base import (
    IndexStats,
    MissingPolicy,
    Payload,
    SearchResult,
    VectorIndex,
    as_ids,
    as_k,
    as_queries,
    as_vectors,
    check_missing_policy,
    check_payload,
    empty_result,
    fmt_ids,
    topk_rows,
)
from ..config import QdrantConfig, config_to_dict
from ..errors import (
    CollectionMismatchError,
    DuplicateIdError,
    IndexBackendError,
    IndexExistsError,
    IndexNotFoundError,
    UnknownIdError,
)
from ..faults import faults
from .client import connect, dir_bytes, is_transient, one_line, qdrant

log = logging.getLogger(__name__)

T = TypeVar("T")
_RETRIEVE_BATCH = 1024
_SCROLL_BATCH = 10_000
_QUERY_BATCH = 64


class QdrantIndex(VectorIndex):
    """A Qdrant collection behind the :class:`VectorIndex` interface."""

    kind = "qdrant"

    def __init__(self, client: Any, config: QdrantConfig, dim: int, *, read_only: bool) -> None:
        super().__init__(dim, read_only=read_only)
        self._client = client
        self._config = config
        _, self._models = qdrant()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _where(config: QdrantConfig) -> str:
        return f"Qdrant at {config.url}" if config.url else f"embedded Qdrant at {config.path}"

    @classmethod
    def create(cls, config: QdrantConfig, dim: int, *, exist_ok: bool = False) -> QdrantIndex:
        """Create the collection (or, with ``exist_ok``, open a matching existing one)."""
        client = connect(config)
        try:
            name = config.collection
            if client.collection_exists(name):
                if not exist_ok:
                    raise IndexExistsError(
                        f"collection {name!r} already exists in {cls._where(config)}; open it instead"
                    )
                cls._check_collection(client, config, dim)
                return cls(client, config, dim, read_only=False)
            _, models = qdrant()
            quant: Any = None
            if config.quantization == "scalar":
                quant = models.ScalarQuantization(
                    scalar=models.ScalarQuantizationConfig(
                        type=models.ScalarType.INT8, always_ram=config.quantization_always_ram
                    )
                )
            elif config.quantization == "binary":
                quant = models.BinaryQuantization(
                    binary=models.BinaryQuantizationConfig(always_ram=config.quantization_always_ram)
                )
            client.create_collection(
                collection_name=name,
                vectors_config=models.VectorParams(size=dim, distance=cls._distance(config), on_disk=config.on_disk),
                hnsw_config=models.HnswConfigDiff(m=config.hnsw_m, ef_construct=config.hnsw_ef_construct),
                quantization_config=quant,
                shard_number=config.shard_number,
                replication_factor=config.replication_factor,
                write_consistency_factor=config.write_consistency_factor,
                on_disk_payload=config.on_disk_payload,
            )
            return cls(client, config, dim, read_only=False)
        except BaseException:
            client.close()
            raise

    @classmethod
    def open(cls, config: QdrantConfig, *, read_only: bool = False, dim: int | None = None) -> QdrantIndex:
        """Open an existing collection, checking its vector size and distance."""
        client = connect(config)
        try:
            if not client.collection_exists(config.collection):
                raise IndexNotFoundError(
                    f"no collection {config.collection!r} in {cls._where(config)}; create it with create_index()"
                )
            found_dim = cls._check_collection(client, config, dim)
            return cls(client, config, found_dim, read_only=read_only)
        except BaseException:
            client.close()
            raise

    @staticmethod
    def _distance(config: QdrantConfig) -> Any:
        _, models = qdrant()
        return models.Distance.DOT if config.distance == "dot" else models.Distance.COSINE

    @classmethod
    def _check_collection(cls, client: Any, config: QdrantConfig, dim: int | None) -> int:
        info = client.get_collection(config.collection)
        params = info.config.params.vectors
        if not hasattr(params, "size"):
            raise CollectionMismatchError(
                f"collection {config.collection!r} uses named vectors; fgsearch expects one unnamed vector"
            )
        if dim is not None and params.size != dim:
            raise CollectionMismatchError(
                f"collection {config.collection!r} holds {params.size}-d vectors, expected {dim}-d; "
                "use another collection (--backend-opt collection=NAME) or rebuild the library with --reindex"
            )
        expected = cls._distance(config)
        if params.distance != expected:
            raise CollectionMismatchError(
                f"collection {config.collection!r} uses distance {params.distance.value}, expected "
                f"{expected.value}; use another collection (--backend-opt collection=NAME) or set distance="
            )
        return int(params.size)

    # ------------------------------------------------------------------ helpers
    def _consistency(self) -> Any:
        """The read consistency asked for (None: the server's default, one replica)."""
        rc = self._config.read_consistency
        if rc is None:  # (local mode takes the parameter and has one copy to read)
            return None
        return int(rc) if rc.isdigit() else self._models.ReadConsistencyType(rc)

    def _ordering(self) -> Any:
        """The write ordering asked for (None: the server's default, weak)."""
        wo = self._config.write_ordering
        return None if wo is None else self._models.WriteOrdering(wo)

    def _read_kw(self) -> dict[str, Any]:
        rc = self._consistency()
        return {} if rc is None else {"consistency": rc}

    def _write_kw(self) -> dict[str, Any]:
        wo = self._ordering()
        return {} if wo is None else {"ordering": wo}

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        cfg = self._config
        for attempt in range(cfg.max_retries + 1):
            try:
                return fn()
            except Exception as e:
                if attempt >= cfg.max_retries or not is_transient(e):
                    raise
                delay = cfg.retry_backoff_s * (2**attempt)
                log.warning(
                    "%s failed (%s); retry %d/%d in %.1fs", what, one_line(e), attempt + 1, cfg.max_retries, delay
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which ids are stored."""
        found: set[int] = set()
        name = self._config.collection
        for s in range(0, ids.size, _RETRIEVE_BATCH):
            chunk = ids[s : s + _RETRIEVE_BATCH].tolist()
            recs = self._retry(
                "retrieve",
                partial(
                    self._client.retrieve,
                    name,
                    chunk,
                    with_payload=False,
                    with_vectors=False,
                    **self._read_kw(),
                ),
            )
            found.update(int(r.id) for r in recs)
        return np.fromiter((int(i) in found for i in ids.tolist()), dtype=bool, count=ids.size)

    # ------------------------------------------------------------------ reads
    def count(self) -> int:
        self._check_open()
        return int(self._client.count(self._config.collection, exact=True).count)

    def contains(self, ids: Any) -> np.ndarray:
        self._check_open()
        return self._existing(as_ids(ids, unique=False))

    def ids(self) -> np.ndarray:
        self._check_open()
        out: list[int] = []
        offset: Any = None
        while True:
            points, offset = self._client.scroll(
                self._config.collection,
                limit=_SCROLL_BATCH,
                offset=offset,
                with_payload=False,
                with_vectors=False,
                **self._read_kw(),
            )
            out.extend(int(p.id) for p in points)
            if offset is None:
                break
        return np.sort(np.asarray(out, dtype=np.int64))

    def get(self, ids: Any) -> np.ndarray:
        self._check_open()
        arr = as_ids(ids, unique=False)
        vecs: dict[int, Any] = {}
        name = self._config.collection
        for s in range(0, arr.size, _RETRIEVE_BATCH):
            chunk = np.unique(arr[s : s + _RETRIEVE_BATCH]).tolist()
            recs = self._client.retrieve(name, chunk, with_payload=False, with_vectors=True, **self._read_kw())
            vecs.update((int(r.id), r.vector) for r in recs)
        missing = np.array([int(i) not in vecs for i in arr.tolist()], dtype=bool)
        if missing.any():
            raise UnknownIdError(f"ids not in collection {name!r}: {fmt_ids(arr[missing])}")
        out = np.empty((arr.size, self.dim), dtype=np.float32)
        for j, i in enumerate(arr.tolist()):
            out[j] = vecs[int(i)]
        return out

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        self._check_open()
        q = as_queries(queries, self.dim)
        kk = as_k(k)
        models = self._models
        flt = None
        if allowed_ids is not None:
            allowed = np.unique(as_ids(allowed_ids, name="allowed_ids", unique=False))
            if allowed.size == 0:
                return empty_result(q.shape[0], kk)
            flt = models.Filter(must=[models.HasIdCondition(has_id=allowed.tolist())])
        if q.shape[0] == 0:
            return empty_result(0, kk)
        params = None
        if self._config.url is not None:
            quant = None
            if self._config.quantization != "none":
                quant = models.QuantizationSearchParams(rescore=True, oversampling=2.0)
            params = models.SearchParams(hnsw_ef=self._config.hnsw_ef, quantization=quant)
        out_i = np.full((q.shape[0], kk), -1, dtype=np.int64)
        out_s = np.full((q.shape[0], kk), -np.inf, dtype=np.float32)
        for s in range(0, q.shape[0], _QUERY_BATCH):
            reqs = [
                models.QueryRequest(query=row.tolist(), limit=kk, filter=flt, params=params, with_payload=False)
                for row in q[s : s + _QUERY_BATCH]
            ]
            resps = self._retry(
                "query",
                partial(self._client.query_batch_points, self._config.collection, requests=reqs, **self._read_kw()),
            )
            for j, resp in enumerate(resps):
                pts = resp.points
                out_i[s + j, : len(pts)] = [int(p.id) for p in pts]
                out_s[s + j, : len(pts)] = [p.score for p in pts]
        ids, scores = topk_rows(out_i, out_s, kk)
        return SearchResult(ids=ids, scores=scores)

    # ------------------------------------------------------------------ writes
    def add(
        self,
        ids: Any,
        vectors: Any,
        *,
        upsert: bool = False,
        payload: Payload | None = None,
    ) -> None:
        self._check_writable()
        arr = as_ids(ids)
        vecs = as_vectors(vectors, self.dim, arr.size, norm_tolerance=self._config.norm_tolerance, ids=arr)
        cols = check_payload(payload, arr.size)
        if arr.size == 0:
            return
        existing = self._existing(arr)
        if existing.any() and not upsert:
            # a batch sent again (a worker's retry) holds the same vectors: accepted, not a conflict
            stored = self.get(arr[existing])
            differs = ~np.all(np.abs(stored - vecs[existing]) <= 1e-6, axis=1)
            if differs.any():
                raise DuplicateIdError(
                    f"ids already in collection {self._config.collection!r} with other vectors: "
                    f"{fmt_ids(arr[existing][differs])}; pass upsert=True to replace them"
                )
        models = self._models
        bs = self._config.batch_size
        written = 0
        try:
            for s in range(0, arr.size, bs):
                e = min(s + bs, arr.size)
                payloads = None
                if cols:
                    payloads = [{key: col[i] for key, col in cols.items()} for i in range(s, e)]
                batch = models.Batch(ids=arr[s:e].tolist(), vectors=vecs[s:e].tolist(), payloads=payloads)
                self._retry("upsert", partial(self._upsert, batch))
                written = e
        except Exception as e:
            raise IndexBackendError(self._undo_partial_add(arr, existing, written, e)) from e

    def _upsert(self, batch: Any) -> None:
        faults.reach("qdrant.upsert", self._config.collection)
        self._client.upsert(self._config.collection, points=batch, wait=True, **self._write_kw())

    def _undo_partial_add(self, ids: np.ndarray, existing: np.ndarray, written: int, exc: Exception) -> str:
        """Delete the new points a failed add wrote; return a message saying what is left."""
        where = self._where(self._config)
        err = one_line(exc)
        if written == 0:
            return f"adding {ids.size} vectors to {where} failed, nothing was written: {err}"
        new = ids[:written][~existing[:written]]
        try:
            if new.size:
                self._client.delete(
                    self._config.collection,
                    points_selector=self._models.PointIdsList(points=new.tolist()),
                    wait=True,
                    **self._write_kw(),
                )
        except Exception as e2:
            return (
                f"adding {ids.size} vectors to {where} failed after {written} were written ({err}), and "
                f"removing them failed too ({one_line(e2)}); call remove(ids, missing='ignore') for these ids"
            )
        replaced = int(existing[:written].sum())
        tail = f"; {replaced} existing vectors were already replaced" if replaced else ""
        return (
            f"adding {ids.size} vectors to {where} failed ({err}); the {new.size} new ones written were removed{tail}"
        )

    def remove(self, ids: Any, *, missing: MissingPolicy = "error") -> int:
        self._check_writable()
        check_missing_policy(missing)
        arr = as_ids(ids)
        if arr.size == 0:
            return 0
        present = self._existing(arr)
        if not present.all() and missing == "error":
            raise UnknownIdError(
                f"cannot remove ids not in collection {self._config.collection!r}: "
                f"{fmt_ids(arr[~present])}; pass missing='ignore' to skip them"
            )
        arr = arr[present]
        for s in range(0, arr.size, self._config.batch_size):
            chunk = arr[s : s + self._config.batch_size].tolist()
            self._retry(
                "delete",
                partial(
                    self._client.delete,
                    self._config.collection,
                    points_selector=self._models.PointIdsList(points=chunk),
                    wait=True,
                    **self._write_kw(),
                ),
            )
        return int(arr.size)

    # ------------------------------------------------------------------ durability
    def flush(self) -> None:
        """Nothing to do: every write waited for Qdrant to apply and persist it."""
        self._check_open()

    def save(self) -> None:
        """Nothing to do (Qdrant optimizes its segments by itself)."""
        self._check_writable()

    def has_updates(self) -> bool:
        """Never: reads always see the collection's current state."""
        self._check_open()
        return False

    def reload(self) -> None:
        """Nothing to do: reads always see the collection's current state."""
        self._check_open()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        except Exception as e:  # closing must not mask the caller's own error
            log.warning("closing the Qdrant client failed: %s", e)

    def stats(self) -> IndexStats:
        self._check_open()
        cfg = self._config
        info = self._client.get_collection(cfg.collection)
        n = self.count()
        params: dict[str, Any] = {
            "mode": "server" if cfg.url else "embedded",
            "collection": cfg.collection,
            "status": str(getattr(info, "status", "")),
            "config": config_to_dict(cfg),
        }
        embedded = cfg.url is None
        return IndexStats(
            kind=self.kind,
            dim=self.dim,
            count=n,
            params=params,
            bytes_in_memory=n * (4 * self.dim + 8) if embedded else None,
            bytes_on_disk=dir_bytes(Path(cfg.path)) if embedded and cfg.path else None,
            location=cfg.url or cfg.path,
        )
