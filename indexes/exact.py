"""The exact backend (brute-force inner products with numpy/BLAS) and the shared file-backed base.

:class:`StoreBackedIndex` implements the whole :class:`~.base.VectorIndex` contract on top of
:class:`~.store.JournaledStore` (snapshot + journal durability); :class:`ExactIndex` adds exact
search. It is the yardstick every other backend is tested against, and a usable backend for small
libraries and tests.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
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
    exact_topk,
    fmt_ids,
    merge_topk,
)
from .config import ExactConfig, config_from_dict, config_to_dict
from .errors import DimensionMismatchError, DuplicateIdError, IndexCorruptError, IndexInputError, UnknownIdError
from .file_backend import FileBackend
from .filtered import allowed_rows, exact_over_rows
from .store import JournaledStore

log = logging.getLogger(__name__)

_QUERY_CHUNK = 256


def chunked_queries(queries: np.ndarray, chunk: int = _QUERY_CHUNK) -> Iterable[tuple[int, np.ndarray]]:
    for s in range(0, queries.shape[0], chunk):
        yield s, queries[s : s + chunk]


class StoreBackedIndex(VectorIndex):
    """A :class:`VectorIndex` whose vectors live in a :class:`JournaledStore` directory."""

    kind = "abstract-store"
    config_type: type = ExactConfig
    #: the payload column ``"record"`` (bytes of one length per id) is kept in the snapshot
    keeps_records = True

    def __init__(self, store: JournaledStore, config: Any, *, read_only: bool) -> None:
        super().__init__(store.dim, read_only=read_only)
        self._store = store
        self._config = config

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | Path, dim: int, config: Any = None) -> StoreBackedIndex:
        """Create a new empty index directory at ``path``."""
        config = config if config is not None else cls.config_type()
        store = JournaledStore.create(Path(path), kind=cls.kind, dim=dim, config=config_to_dict(config))
        index = cls(store, config, read_only=False)
        index._after_load()
        return index

    @classmethod
    def open(
        cls, path: str | Path, *, read_only: bool = False, config: Any = None, dim: int | None = None
    ) -> StoreBackedIndex:
        """Open an existing index; ``config=None`` uses the configuration saved with it."""
        store = JournaledStore.open(Path(path), kind=cls.kind, read_only=read_only)
        try:
            if dim is not None and dim != store.dim:
                raise DimensionMismatchError(
                    f"index {path} holds {store.dim}-d vectors but {dim}-d were expected; "
                    "rebuild the index for this model"
                )
            if config is None:
                config = config_from_dict(cls.config_type, store.manifest.get("config", {}))
            elif not read_only:
                store.set_config(config_to_dict(config))
            index = cls(store, config, read_only=read_only)
            index._load_derived()
        except BaseException:
            store.close()
            raise
        return index

    def _after_load(self) -> None:
        """Hook: rebuild derived in-memory state after (re)loading the store."""

    def _load_derived(self) -> None:
        """:meth:`_after_load` for a snapshot on disk: a backend file its library cannot read (FAISS
        raises RuntimeError) is a damaged index, named as such."""
        try:
            self._after_load()
        except RuntimeError as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise IndexCorruptError(
                f"{self._store.path}: cannot read the backend files of generation {self._store.generation} ({reason})"
            ) from e

    # ------------------------------------------------------------------ reads
    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def config(self) -> Any:
        return self._config

    def count(self) -> int:
        self._check_open()
        return int(self._store.n_live)

    def ids(self) -> np.ndarray:
        self._check_open()
        return self._store.live_ids()

    def contains(self, ids: Any) -> np.ndarray:
        self._check_open()
        arr = as_ids(ids, unique=False)
        return self._store.lookup(arr) >= 0

    def get(self, ids: Any) -> np.ndarray:
        self._check_open()
        arr = as_ids(ids, unique=False)
        rows = self._store.lookup(arr)
        missing = rows < 0
        if missing.any():
            raise UnknownIdError(f"ids not in the index: {fmt_ids(arr[missing])}")
        return self._store.gather(rows)

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
        records = _records_column(cols, arr.size)
        if arr.size == 0:
            return
        existing = self._store.lookup(arr) >= 0
        if existing.any() and not upsert:
            raise DuplicateIdError(
                f"ids already in the index: {fmt_ids(arr[existing])}; pass upsert=True to replace them"
            )
        self._before_change(arr, vecs, existing)
        self._store.add(arr, vecs, records)

    def remove(self, ids: Any, *, missing: MissingPolicy = "error") -> int:
        self._check_writable()
        check_missing_policy(missing)
        arr = as_ids(ids)
        if arr.size == 0:
            return 0
        present = self._store.lookup(arr) >= 0
        if not present.all() and missing == "error":
            raise UnknownIdError(
                f"cannot remove ids not in the index: {fmt_ids(arr[~present])}; pass missing='ignore' to skip them"
            )
        arr = arr[present]
        if arr.size:
            self._before_change(arr, None, np.ones(arr.size, dtype=bool))
            self._store.remove(arr)
        return int(arr.size)

    def records(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Ids of the stored vectors, the record kept with each (uint8 ``[n, width]``, all zero
        where none was), and what the records were made with (see :meth:`set_record_meta`)."""
        self._check_open()
        ids, recs = self._store.live_records()
        return ids, recs, dict(self._store.record_meta)

    def set_record_meta(self, meta: dict[str, Any]) -> None:
        """Describe the records (e.g. the model that made the vectors); saved with the next snapshot."""
        self._check_writable()
        self._store.set_record_meta(meta)

    def _before_change(self, ids: np.ndarray, vecs: np.ndarray | None, existing: np.ndarray) -> None:
        """Hook called before an add (vecs given) or remove (vecs None) reaches the store."""

    # ------------------------------------------------------------------ durability
    def flush(self) -> None:
        self._check_open()
        if self._read_only:
            return
        self._store.flush()
        jc = self._config.journal
        if (jc.auto_compact and self._store.wants_compaction(jc.compact_min_bytes, jc.compact_ratio)) or (
            self._wants_snapshot(explicit=False)
        ):
            self.save()

    def _wants_rebuild(self) -> bool:
        """Hook: True when derived structures must be rebuilt at the next flush/close."""
        return False

    def _saved_unchanged(self) -> None:
        """Hook: what a ``save()`` that writes no snapshot still does (a record to delete)."""

    def _wants_snapshot(self, *, explicit: bool) -> bool:
        """Hook: True when a snapshot is due with no change journaled (a rebuild; a graph backend's
        check of the queries it served). ``explicit``: asked by ``save()``, not by a flush."""
        return self._wants_rebuild()

    def save(self) -> None:
        self._check_writable()
        self._store.flush()
        if self._store.unchanged and not self._wants_snapshot(explicit=True):
            self._saved_unchanged()
            return  # the snapshot on disk is what a compaction would write again
        self._compact()
        self._after_load()

    def _compact(self) -> None:
        self._store.compact()

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        """Add the seconds the block takes to ``build_seconds[part]``: what this process spent in
        each part of building snapshots (a graph backend's; bench_indexes.py prints them)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            seconds: dict[str, float] = self.__dict__.setdefault("build_seconds", {})
            seconds[part] = seconds.get(part, 0.0) + dt
            log.debug("%s snapshot build: %s %.2fs", self.kind, part, dt)

    def has_updates(self) -> bool:
        self._check_open()
        return self._read_only and self._store.has_updates()

    def reload(self) -> None:
        self._check_open()
        if not self._read_only:
            return
        generation = self._store.generation
        if self._store.reload() and self._store.generation != generation:
            self._load_derived()  # derived structures follow the snapshot; journal records need nothing

    def close(self) -> None:
        if self._closed:
            return
        try:
            if not self._read_only:
                self.flush()
        finally:
            self._store.close()
            self._closed = True

    def verify(self) -> tuple[list[str], np.ndarray]:
        self._check_open()
        return self._store.verify()

    # ------------------------------------------------------------------ stats
    def _params(self) -> dict[str, Any]:
        return {"generation": self._store.generation, "journal_bytes": self._store.journal_bytes}

    def stats(self) -> IndexStats:
        self._check_open()
        return IndexStats(
            kind=self.kind,
            dim=self.dim,
            count=self.count(),
            params=self._params(),
            bytes_in_memory=self._bytes_in_memory(),
            bytes_on_disk=self._store.bytes_on_disk(),
            location=str(self._store.path),
        )

    def _bytes_in_memory(self) -> int:
        return self._store.bytes_in_memory()

    # ------------------------------------------------------------------ search helpers
    def _exact_over_allowed(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` over the stored rows of ``allowed`` (see :mod:`.filtered`)."""
        rows, ids = allowed_rows(self._store, allowed)
        return exact_over_rows(self._store, queries, k, rows, ids, self._config.block_rows)

    def _with_delta(
        self, queries: np.ndarray, k: int, found: tuple[np.ndarray, np.ndarray], delta_allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``found`` (the top ``k`` of a structure over the snapshot) merged with the exact top ``k``
        of the rows added since it (under a filter: of ``delta_allowed``, those allowed)."""
        if delta_allowed is not None:
            if not delta_allowed.size:
                return found
            return merge_topk(*found, *self._exact_over_allowed(queries, k, delta_allowed), k)
        if not self._store.delta.n:
            return found
        return merge_topk(
            *found, *exact_topk(queries, self._store.iter_blocks(self._config.block_rows, base=False), k), k
        )

    def _prepare_search(self, queries: Any, k: Any, allowed_ids: Any) -> tuple[np.ndarray, int, Any]:
        self._check_open()
        q = as_queries(queries, self.dim)
        kk = as_k(k)
        allowed = None if allowed_ids is None else np.unique(as_ids(allowed_ids, name="allowed_ids", unique=False))
        return q, kk, allowed


def _records_column(cols: dict[str, list[Any]] | None, n: int) -> np.ndarray | None:
    """The payload column ``"record"`` as uint8 ``[n, width]`` (None when absent)."""
    if not cols or "record" not in cols:
        return None
    values = cols["record"]
    if not all(isinstance(v, bytes | bytearray) for v in values) or len({len(v) for v in values}) > 1:
        raise IndexInputError("payload column 'record' must hold bytes of one length per id")
    width = len(values[0]) if values else 0
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(n, width)


class ExactIndex(StoreBackedIndex):
    """Exact inner-product search over every stored vector (BLAS, blocked)."""

    kind = "exact"
    config_type = ExactConfig

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        q, kk, allowed = self._prepare_search(queries, k, allowed_ids)
        if q.shape[0] == 0 or self._store.n_live == 0:
            return empty_result(q.shape[0], kk)
        out_i = np.empty((q.shape[0], kk), dtype=np.int64)
        out_s = np.empty((q.shape[0], kk), dtype=np.float32)
        for s, chunk in chunked_queries(q):
            if allowed is not None:
                i, sc = self._exact_over_allowed(chunk, kk, allowed)
            else:
                i, sc = exact_topk(chunk, self._store.iter_blocks(self._config.block_rows), kk)
            out_i[s : s + chunk.shape[0]] = i
            out_s[s : s + chunk.shape[0]] = sc
        return SearchResult(ids=out_i, scores=out_s)

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "search": "exact"}


class ExactBackend(FileBackend):
    """Descriptor of the exact backend (registered through the ``fgsearch.backends`` entry points)."""

    name = "exact"
    config_type = ExactConfig

    def index_class(self) -> type[ExactIndex]:
        return ExactIndex
