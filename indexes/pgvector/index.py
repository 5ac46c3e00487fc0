"""The pgvector backend: a PostgreSQL table of (id, float32 vector) behind :class:`VectorIndex`.

* **Storage.** ``<table> (id bigint PRIMARY KEY, embedding vector(dim))``, stored in line (no
  TOAST); the backend's own state (dimension, whether the graph is built, the calibrated search)
  is one row of ``fgsearch_pgvector_meta``.
* **Transactions.** A writer holds one connection; its adds and removes run in a transaction that
  :meth:`flush` commits (so a ``kill -9`` leaves the state of the last flush, as the file backends
  do), each inside a savepoint (a failed call leaves the earlier ones pending). ``add``/``remove``
  take ``connection=``: a caller's SQLAlchemy (psycopg driver) or psycopg connection, whose open
  transaction then holds the vectors, so the caller's catalog rows and the vectors commit, or roll
  back, together. Readers use autocommit connections and see what writers committed.
* **Search.** Exact (a scan ordered by inner product) below ``flat_threshold`` vectors or for
  small allowed-id filters; above it an HNSW index (inner product, over ``halfvec`` or ``vector``),
  searched with a calibrated ``hnsw.ef_search``, returns a candidate list that is re-scored exactly
  from the stored float32 vectors (see :class:`~.config.PgvectorConfig`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..base import (
    CalibrationSource,
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
from ..errors import (
    BackendUnavailableError,
    DuplicateIdError,
    IndexExistsError,
    IndexInputError,
    IndexNotFoundError,
    UnknownIdError,
)
from .config import PgvectorConfig
from .sql import (
    candidate_sql,
    check_dim,
    check_table_name,
    connect,
    copy_rows,
    create_tables,
    decode_rows,
    ensure_extension,
    psycopg_module,
    redact,
    table_dim,
    vector_literal,
)
from .tx import caller_connection, commit_pending, in_savepoint, joins_database

log = logging.getLogger(__name__)

META = "fgsearch_pgvector_meta"
_BLOCK = 20_000
_SAMPLE = 20_000


class PgvectorIndex(VectorIndex):
    """A PostgreSQL table of vectors (pgvector) behind the :class:`VectorIndex` interface."""

    kind = "pgvector"

    def __init__(self, conn: Any, config: PgvectorConfig, dim: int, *, read_only: bool) -> None:
        super().__init__(dim, read_only=read_only)
        self._conn = conn
        self._config = config
        self._table = config.table
        self._where = redact(config.url or "")
        self._lock = threading.RLock()
        self._gucs: dict[str, str] = {}
        self._calibration_source: CalibrationSource | None = None
        self._generation = 0
        self._counted: int | None = None  # rows at the last save (None: not counted yet)
        self._grown = 0  # this writer's adds minus removes since
        self._meta: dict[str, Any] = {}
        self._load_meta()

    # ------------------------------------------------------------------ construction
    @classmethod
    def _connect(cls, config: PgvectorConfig, *, read_only: bool) -> Any:
        if not config.url:
            raise IndexInputError("the pgvector backend needs a database: PgvectorConfig(url='postgresql://...')")
        check_table_name(config.table)
        conn = connect(config.url, autocommit=True, timeout_s=config.connect_timeout_s)
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
        return conn

    @classmethod
    def create(cls, config: PgvectorConfig, dim: int, *, exist_ok: bool = False) -> PgvectorIndex:
        """Create the table (or, with ``exist_ok``, open a matching existing one)."""
        conn = cls._connect(config, read_only=False)
        try:
            where, table = redact(config.url or ""), config.table
            ensure_extension(conn, where)
            found = table_dim(conn, table)
            if found is not None and not exist_ok:
                raise IndexExistsError(f"table {table} already exists in {where}; open it instead")
            if found is None:
                create_tables(conn, META, table, dim)
            else:
                check_dim(table, where, found, dim)
            conn.autocommit = False
            return cls(conn, config, dim, read_only=False)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def open(cls, config: PgvectorConfig, *, read_only: bool = False, dim: int | None = None) -> PgvectorIndex:
        """Open an existing table, checking its dimension."""
        conn = cls._connect(config, read_only=read_only)
        try:
            where = redact(config.url or "")
            found = table_dim(conn, config.table)
            if found is None:
                raise IndexNotFoundError(f"no table {config.table} in {where}; create it with create_index()")
            check_dim(config.table, where, found, dim)
            if not read_only:
                conn.autocommit = False
            return cls(conn, config, found, read_only=read_only)
        except BaseException:
            conn.close()
            raise

    # ------------------------------------------------------------------ metadata
    def _load_meta(self) -> None:
        row = self._conn.execute(
            f"SELECT generation, params FROM {META} WHERE table_name = %s", (self._table,)
        ).fetchone()
        self._generation, self._meta = (int(row[0]), dict(row[1] or {})) if row is not None else (0, {})

    def _save_meta(self) -> None:
        self._generation += 1
        self._conn.execute(
            f"INSERT INTO {META} (table_name, dim, generation, params) VALUES (%s, %s, %s, %s::jsonb) "
            "ON CONFLICT (table_name) DO UPDATE SET generation = EXCLUDED.generation, params = EXCLUDED.params",
            (self._table, self.dim, self._generation, json.dumps(self._meta)),
        )

    @property
    def config(self) -> PgvectorConfig:
        return self._config

    @property
    def indexed(self) -> bool:
        """Whether the HNSW index is built (else search is exact)."""
        return bool(self._meta.get("indexed"))

    def set_calibration_queries(self, source: CalibrationSource | None) -> None:
        """Text queries (set name -> vectors, or a callable returning them) to calibrate on."""
        self._calibration_source = source

    # ------------------------------------------------------------------ connections
    def joins(self, connection: Any) -> bool:
        """Whether writes can go on ``connection`` (``add(..., connection=...)``): a psycopg
        connection (or a SQLAlchemy one on psycopg) to this table's database."""
        return not self._read_only and joins_database(self._conn, connection)

    def _session(self, connection: Any) -> Any:
        """The psycopg connection a write goes to: ours, or the caller's (inside its transaction)."""
        if connection is None:
            return self._conn
        raw = caller_connection(self._conn, connection)
        # our own pending changes first, so the caller's transaction never waits on our row locks
        self._commit()
        return raw

    def _commit(self) -> None:
        if not self._read_only:
            commit_pending(self._conn, self._table, self._where)

    def _in_savepoint(self, conn: Any, what: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` on ``conn`` so that a failure undoes it alone (the transaction stays usable)."""
        try:
            in_savepoint(conn, f"{what} in table {self._table} at {self._where}", fn)
        except BaseException:
            self._gucs.clear()
            raise

    def _existing(self, conn: Any, ids: np.ndarray) -> np.ndarray:
        found = conn.execute(f"SELECT id FROM {self._table} WHERE id = ANY(%s)", (ids.tolist(),)).fetchall()
        return np.isin(ids, np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found)))

    # ------------------------------------------------------------------ writes
    def add(
        self,
        ids: Any,
        vectors: Any,
        *,
        upsert: bool = False,
        payload: Payload | None = None,
        connection: Any = None,
    ) -> None:
        """Store vectors (see :class:`VectorIndex`); ``connection=``: inside the caller's transaction."""
        self._check_writable()
        arr = as_ids(ids)
        vecs = as_vectors(vectors, self.dim, arr.size, norm_tolerance=self._config.norm_tolerance, ids=arr)
        check_payload(payload, arr.size)
        if arr.size == 0:
            return
        with self._lock:
            conn = self._session(connection)

            def write() -> None:
                existing = self._existing(conn, arr)
                if existing.any():
                    if not upsert:
                        raise DuplicateIdError(
                            f"ids already in table {self._table}: {fmt_ids(arr[existing])}; "
                            "pass upsert=True to replace them"
                        )
                    conn.execute(f"DELETE FROM {self._table} WHERE id = ANY(%s)", (arr[existing].tolist(),))
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY {self._table} (id, embedding) FROM STDIN (FORMAT BINARY)") as cp,
                ):
                    cp.write(copy_rows(arr, vecs))
                self._grown += int(arr.size - existing.sum())

            self._in_savepoint(conn, f"adding {arr.size} vectors", write)

    def remove(self, ids: Any, *, missing: MissingPolicy = "error", connection: Any = None) -> int:
        """Delete ids (see :class:`VectorIndex`); ``connection=``: inside the caller's transaction."""
        self._check_writable()
        check_missing_policy(missing)
        arr = as_ids(ids)
        if arr.size == 0:
            return 0
        removed = [0]
        with self._lock:
            conn = self._session(connection)

            def delete() -> None:
                present = self._existing(conn, arr)
                if not present.all() and missing == "error":
                    raise UnknownIdError(
                        f"cannot remove ids not in table {self._table}: {fmt_ids(arr[~present])}; "
                        "pass missing='ignore' to skip them"
                    )
                if present.any():
                    conn.execute(f"DELETE FROM {self._table} WHERE id = ANY(%s)", (arr[present].tolist(),))
                removed[0] = int(present.sum())
                self._grown -= removed[0]

            self._in_savepoint(conn, f"removing {arr.size} vectors", delete)
        return removed[0]

    # ------------------------------------------------------------------ reads
    def count(self) -> int:
        self._check_open()
        with self._lock:
            return int(self._conn.execute(f"SELECT count(*) FROM {self._table}").fetchone()[0])

    def ids(self) -> np.ndarray:
        self._check_open()
        with self._lock:
            rows = self._conn.execute(f"SELECT id FROM {self._table} ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def contains(self, ids: Any) -> np.ndarray:
        self._check_open()
        arr = as_ids(ids, unique=False)
        if arr.size == 0:
            return np.zeros(0, dtype=bool)
        with self._lock:
            return self._existing(self._conn, arr)

    def get(self, ids: Any) -> np.ndarray:
        self._check_open()
        arr = as_ids(ids, unique=False)
        with self._lock, self._conn.cursor(binary=True) as cur:
            cur.execute(f"SELECT id, embedding FROM {self._table} WHERE id = ANY(%s)", (np.unique(arr).tolist(),))
            found, vecs = decode_rows(cur.fetchall(), self.dim)
        order = np.argsort(found)
        found, vecs = found[order], vecs[order]
        pos = np.searchsorted(found, arr)
        ok = (pos < found.size) & (found[np.minimum(pos, max(found.size - 1, 0))] == arr) if found.size else arr < 0
        if not ok.all():
            raise UnknownIdError(f"ids not in table {self._table}: {fmt_ids(arr[~ok])}")
        return vecs[pos]

    def read_rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of a query on this index's connection (binary: vectors as raw bytes)."""
        with self._lock, self._conn.cursor(binary=True) as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def iter_blocks(self, block: int = _BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored (vectors, ids), ``block`` rows at a time (a server-side cursor)."""
        with self._lock, self._conn.transaction(), self._conn.cursor(name="fgsearch_scan", binary=True) as cur:
            cur.itersize = block
            cur.execute(f"SELECT id, embedding FROM {self._table}")
            while rows := cur.fetchmany(block):
                ids, vecs = decode_rows(rows, self.dim)
                yield vecs, ids

    # ------------------------------------------------------------------ search
    def _set(self, name: str, value: str) -> None:
        if self._gucs.get(name) != value:
            self._conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            self._gucs[name] = value

    def search_sql(self, *, exact: bool, filtered: bool) -> str:
        """The candidate query (see :func:`.sql.candidate_sql`)."""
        return candidate_sql(self._table, self.dim, self._meta.get("storage"), exact=exact, filtered=filtered)

    def _candidates(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None, breadth: int | None = None, factor: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate (ids, float32 vectors) for one query: exact, or from the HNSW index."""
        cfg, lit = self._config, vector_literal(q)
        params = [allowed.tolist()] if allowed is not None else []
        exact = not self.indexed or (allowed is not None and allowed.size <= cfg.filter_exact_max)
        if exact:
            limit = 2 * k + 10  # a margin for ties rounded differently by the server
        else:
            ef = breadth or cfg.ef_search or int(self._meta.get("ef_search", 40))
            rf = factor or int(self._meta.get("rerank_factor", cfg.rerank_factor))
            limit = max(k * rf, cfg.min_rerank)
            self._set("hnsw.ef_search", str(min(max(ef, limit), 1000)))
            self._set("hnsw.iterative_scan", "relaxed_order" if allowed is not None or limit > 1000 else "off")
        sql = self.search_sql(exact=exact, filtered=allowed is not None)
        with self._conn.cursor(binary=True) as cur:
            cur.execute(sql, (*params, lit, limit))
            return decode_rows(cur.fetchall(), self.dim)

    def _search_one(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None, breadth: int | None = None, factor: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        ids, vecs = self._candidates(q, k, allowed, breadth, factor)
        scores = vecs @ q if ids.size else np.zeros(0, dtype=np.float32)
        return topk_rows(ids[None, :], scores[None, :].astype(np.float32), k)

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        self._check_open()
        q = as_queries(queries, self.dim)
        kk = as_k(k)
        allowed = None if allowed_ids is None else np.unique(as_ids(allowed_ids, name="allowed_ids", unique=False))
        if q.shape[0] == 0 or (allowed is not None and allowed.size == 0):
            return empty_result(q.shape[0], kk)
        out_i = np.full((q.shape[0], kk), -1, dtype=np.int64)
        out_s = np.full((q.shape[0], kk), -np.inf, dtype=np.float32)
        psycopg = psycopg_module()
        with self._lock:
            for attempt in (0, 1):
                try:
                    for j in range(q.shape[0]):
                        out_i[j], out_s[j] = (a[0] for a in self._search_one(q[j], kk, allowed))
                    break
                except psycopg.OperationalError as e:
                    self._gucs.clear()
                    # a reader holds nothing uncommitted: after a server restart (or a dropped
                    # connection) it connects again once; a writer's lost transaction is an error
                    if attempt == 0 and self._read_only and self._conn.broken:
                        log.warning("pgvector %s: connection lost (%s); connecting again", self._table, e)
                        self._reconnect()
                        continue
                    raise BackendUnavailableError(
                        f"searching table {self._table} at {self._where} failed: {' '.join(str(e).split())}; "
                        "check that the server is running"
                    ) from e
        return SearchResult(ids=out_i, scores=out_s)

    def _reconnect(self) -> None:
        try:
            self._conn.close()
        except Exception as e:  # it is broken already
            log.debug("closing a broken connection: %s", e)
        self._conn = self._connect(self._config, read_only=True)
        self._gucs.clear()

    # ------------------------------------------------------------------ durability
    def flush(self) -> None:
        """Commit every change since the last flush; build or re-calibrate the index when due."""
        self._check_open()
        if self._read_only:
            return
        with self._lock:
            self._commit()
            if self._wants_save():
                self.save()

    def _wants_save(self) -> bool:
        """Whether the graph is due (built, dropped, calibrated again), judged on the count at the
        last save plus this writer's adds and removes since (a count(*) per flush would scan the
        table); :meth:`save` counts exactly before it acts."""
        if self._counted is None:
            self._counted, self._grown = self.count(), 0
        n = self._counted + self._grown
        if not self.indexed:
            return n >= self._config.flat_threshold
        if n < self._config.flat_threshold // 2:
            return True
        calibrated = int(self._meta.get("calibrated_n", 0))
        return n >= self._config.recalibrate_growth * max(calibrated, 1)

    def save(self) -> None:
        """Commit; build the HNSW index when the table reached ``flat_threshold`` (drop it when it
        fell below half of that), and calibrate its search when built or grown enough."""
        self._check_writable()
        from .build import build_index, calibrate_search, drop_index

        with self._lock:
            self._commit()
            n = self.count()
            self._counted, self._grown = n, 0
            cfg = self._config
            if not self.indexed and n >= cfg.flat_threshold:
                self._meta.update(build_index(self._conn, cfg, self._table, self.dim, n))
                self._meta.pop("calibrated_n", None)
                self._commit()  # the graph is there; the calibration below only reads
            elif self.indexed and n < cfg.flat_threshold // 2:
                drop_index(self._conn, self._table)
                self._meta = {}
            if self.indexed and n >= cfg.recalibrate_growth * max(int(self._meta.get("calibrated_n", 0)), 1) / 1.0001:
                self._meta.update(calibrate_search(self, n))
            self._save_meta()
            self._commit()

    def calibration_candidates(self, q: np.ndarray, breadth: int, factor: int) -> np.ndarray:
        """Top-10 ids for each query as a search at (``breadth``, ``factor``) returns them."""
        return np.stack([self._search_one(row, 10, None, breadth, factor)[0][0] for row in q])

    @property
    def calibration_source(self) -> CalibrationSource | None:
        return self._calibration_source

    def has_updates(self) -> bool:
        """Readers: whether a writer saved new search settings since (rows are always current)."""
        self._check_open()
        with self._lock:
            row = self._conn.execute(f"SELECT generation FROM {META} WHERE table_name = %s", (self._table,)).fetchone()
        return row is not None and int(row[0]) != self._generation

    def reload(self) -> None:
        """Readers: pick up the search settings a writer saved (rows are always current)."""
        self._check_open()
        with self._lock:
            self._load_meta()

    def close(self) -> None:
        if self._closed:
            return
        try:
            if not self._read_only and not self._conn.broken:  # broken: the failed call said what was lost
                with self._lock:
                    self._commit()
        finally:
            self._closed = True
            try:
                self._conn.close()
            except Exception as e:  # closing must not mask the caller's own error
                log.warning("closing the PostgreSQL connection failed: %s", e)

    def stats(self) -> IndexStats:
        self._check_open()
        with self._lock:
            size = int(self._conn.execute("SELECT pg_total_relation_size(%s)", (self._table,)).fetchone()[0])
        params: dict[str, Any] = {
            "table": self._table,
            "tier": "hnsw" if self.indexed else "exact",
            "storage": self._meta.get("storage", self._config.storage),
            **{k: v for k, v in self._meta.items() if k not in ("storage", "indexed")},
        }
        return IndexStats(
            kind=self.kind,
            dim=self.dim,
            count=self.count(),
            params=params,
            bytes_in_memory=0,  # the vectors live in the server, none in this process
            bytes_on_disk=size,
            location=f"{self._where} (table {self._table})",
        )
