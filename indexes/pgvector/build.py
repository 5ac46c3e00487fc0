"""Building the pgvector HNSW index and calibrating its search (called by :meth:`.index.PgvectorIndex.save`).

The calibration is the FAISS default's (:func:`..faiss.calibration.calibrate`: the narrowest
``hnsw.ef_search``, then the shallowest exact re-rank depth, reaching recall@10 0.98 against exact
search on every query set: image-like queries drawn from the table, and the library's text
queries or synthetic cross-modal ones), measured with the search the index runs (SQL through
pgvector's HNSW index, re-ranked exactly from the stored float32 vectors). The exact top 10 comes
from one streamed pass over the table, so a collection never has to fit in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from ..base import CalibrationSource
from ..config import FaissConfig
from ..exact import exact_topk
from ..faiss.calibration import calibrate, calibration_sets
from .config import PgvectorConfig
from .sql import decode_rows

log = logging.getLogger(__name__)


class Calibrated(Protocol):
    """What the calibration reads of a pgvector index (:class:`.index.PgvectorIndex`)."""

    @property
    def dim(self) -> int: ...

    @property
    def config(self) -> PgvectorConfig: ...

    @property
    def calibration_source(self) -> CalibrationSource | None: ...

    def calibration_candidates(self, q: np.ndarray, breadth: int, factor: int) -> np.ndarray: ...

    def iter_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def read_rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]: ...

    def count(self) -> int: ...


def build_memory_mb(cfg: PgvectorConfig, dim: int, n: int) -> int:
    """``maintenance_work_mem`` for the build: the graph's estimated size (+10 %), capped.

    pgvector builds fastest when the graph fits in it, and a parallel build reserves all of it as
    shared memory when it starts (measured: 8 GB set, 8.35 GB of Shmem at once for 100k rows), so
    it is sized from the collection, never set high "just in case"."""
    if cfg.build_memory_mb is not None:
        return cfg.build_memory_mb
    vec = (2 if cfg.storage == "halfvec" else 4) * dim + 8
    per_vector = vec + 24 * cfg.hnsw_m + 64  # element tuple, neighbour tids (2m + upper layers), headers
    return int(max(64, min(cfg.max_build_memory_mb, 1.1 * n * per_vector / 2**20)))


def index_name(table: str) -> str:
    return f"{table}_hnsw"


def build_index(conn: Any, cfg: PgvectorConfig, table: str, dim: int, n: int) -> dict[str, Any]:
    """CREATE INDEX ... USING hnsw (inner product) in one transaction; returns the metadata."""
    mem = build_memory_mb(cfg, dim, n)
    if cfg.storage == "halfvec":
        column, ops = f"(embedding::halfvec({dim}))", "halfvec_ip_ops"
    else:
        column, ops = "embedding", "vector_ip_ops"
    start = time.perf_counter()
    conn.execute(f"SET LOCAL maintenance_work_mem = '{mem}MB'")
    if cfg.build_workers is not None:
        conn.execute(f"SET LOCAL max_parallel_maintenance_workers = {int(cfg.build_workers)}")
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS {index_name(table)} ON {table} USING hnsw ({column} {ops}) "
        f"WITH (m = {int(cfg.hnsw_m)}, ef_construction = {int(cfg.hnsw_ef_construction)})"
    )
    seconds = time.perf_counter() - start
    log.info("pgvector: built the HNSW index of %s over %d vectors in %.1f s (%d MB)", table, n, seconds, mem)
    return {
        "indexed": True,
        "storage": cfg.storage,
        "hnsw_m": cfg.hnsw_m,
        "hnsw_ef_construction": cfg.hnsw_ef_construction,
        "indexed_n": n,
        "build_seconds": round(seconds, 2),
        "build_memory_mb": mem,
    }


def drop_index(conn: Any, table: str) -> None:
    conn.execute(f"DROP INDEX IF EXISTS {index_name(table)}")


def calibrate_search(index: Calibrated, n: int) -> dict[str, Any]:
    """Calibrate ``hnsw.ef_search`` and the re-rank depth of ``index`` (see the module docstring)."""
    fcfg = faiss_style_config(index.config)
    sample = draw_sample(index, 20_000)
    sets = calibration_sets(sample, fcfg, index.calibration_source, index.dim)
    truths = exact_truths(index, sets)
    extra = calibrate(
        None,
        "hnsw",
        sample,
        sample[:0, 0].astype("int64"),
        fcfg,
        sets,
        index.calibration_candidates,
        fixed=index.config.ef_search,
        truths=truths,
    )
    extra["calibrated_n"] = n
    c = extra["calibration"]
    log.info(
        "pgvector %s: ef_search=%d, re-rank depth %d gives recall@10 %s",
        index.config.table,
        c["breadth"],
        c["rerank_depth_k10"],
        ", ".join(f"{k} {v['recall10']:.3f}" for k, v in c["sets"].items()),
    )
    return extra


def exact_truths(index: Calibrated, sets: dict[str, tuple[np.ndarray, str]]) -> dict[str, np.ndarray]:
    """Each query set's exact top-10 over every stored vector (one streamed pass)."""
    names = list(sets)
    allq = np.concatenate([sets[n][0] for n in names])
    top = exact_topk(allq, index.iter_blocks(), 10)[0]
    out, s = {}, 0
    for n in names:
        m = sets[n][0].shape[0]
        out[n] = top[s : s + m]
        s += m
    return out


def draw_sample(index: Calibrated, n: int) -> np.ndarray:
    """About ``n`` stored vectors drawn at random (repeatably), for calibration queries."""
    pct = min(100.0, 100.0 * 1.3 * n / max(index.count(), 1))
    rows = index.read_rows(
        f"SELECT id, embedding FROM {index.config.table} TABLESAMPLE BERNOULLI (%s) REPEATABLE (%s) LIMIT %s",
        (pct, index.config.seed, n),
    )
    return decode_rows(rows, index.dim)[1]


def faiss_style_config(c: PgvectorConfig) -> FaissConfig:
    """The calibration settings in the form :mod:`..faiss.calibration` takes."""
    return FaissConfig(
        recall_target=c.recall_target,
        calibration_margin=c.calibration_margin,
        calibration_queries=c.calibration_queries,
        rerank_factor=c.rerank_factor,
        min_rerank=c.min_rerank,
        max_ef_search=c.max_ef_search,
        seed=c.seed,
    )
