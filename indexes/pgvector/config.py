"""The pgvector backend's configuration (a frozen dataclass, one field per ``--backend-opt``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import IndexInputError


@dataclass(frozen=True)
class PgvectorConfig:
    """pgvector backend: vectors in a PostgreSQL table, searched by inner product.

    * ``url``: the database (``postgresql://`` or SQLAlchemy's ``postgresql+psycopg://``); the
      password comes from ``PGPASSWORD`` or ``~/.pgpass``, never the URL a library stores.
      ``table``: the table (a library's two indexes use ``<table>_global`` and ``<table>_regions``).
    * Every vector is stored as float32 (``vector(dim)``): what :meth:`get` returns and what the
      exact re-rank scores with. ``storage`` is what the HNSW graph indexes: ``"halfvec"`` (an
      expression index over ``embedding::halfvec(dim)``: half the index, measured within 0.04 of
      float32's recall, which the re-rank recovers) or ``"vector"`` (float32).
    * Below ``flat_threshold`` vectors search is exact (a scan); at or above it the next
      :meth:`save`/:meth:`flush` builds the HNSW index (``hnsw_m``, ``hnsw_ef_construction``; with
      ``build_memory_mb`` of ``maintenance_work_mem``, ``None``: sized from the collection, at
      most ``max_build_memory_mb``: a parallel build reserves it as shared memory at once, and
      ``build_workers`` parallel workers, ``None``: the server's setting).
    * ``ef_search``: ``None`` calibrates it like the FAISS default: the smallest ``hnsw.ef_search``
      (32, 48, 64, 96, ... up to ``max_ef_search``; pgvector allows 1000), then the shallowest exact
      re-rank depth (``rerank_factor * k``, doubling; at least ``min_rerank``) whose recall@10
      against exact search reaches ``recall_target + calibration_margin`` on image-like and
      text-like query sets; again when the table has grown ``recalibrate_growth`` times.
    * ``filter_exact_max``: allowed-id filters with at most this many ids are answered exactly.
    """

    url: str | None = None
    table: str = "fgsearch"
    storage: Literal["halfvec", "vector"] = "halfvec"
    flat_threshold: int = 50_000
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    build_memory_mb: int | None = None
    max_build_memory_mb: int = 4096
    build_workers: int | None = None
    ef_search: int | None = None
    max_ef_search: int = 1000
    recall_target: float = 0.97
    calibration_margin: float = 0.01
    calibration_queries: int = 400
    rerank_factor: int = 3
    min_rerank: int = 30
    recalibrate_growth: float = 1.25
    filter_exact_max: int = 20_000
    norm_tolerance: float = 0.01
    connect_timeout_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.storage not in ("halfvec", "vector"):
            raise IndexInputError(f"pgvector: storage must be halfvec or vector, got {self.storage!r}")
        if self.flat_threshold < 1:
            raise IndexInputError(f"pgvector: flat_threshold must be >= 1, got {self.flat_threshold}")
        if not 2 <= self.hnsw_m <= 100 or not 4 <= self.hnsw_ef_construction <= 1000:
            raise IndexInputError("pgvector: hnsw_m must be in [2, 100] and hnsw_ef_construction in [4, 1000]")
        if self.hnsw_ef_construction < 2 * self.hnsw_m:
            raise IndexInputError("pgvector: hnsw_ef_construction must be at least 2 * hnsw_m")
        for name in ("ef_search", "max_ef_search"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 1000:
                raise IndexInputError(f"pgvector: {name} must be in [1, 1000] (pgvector's limit), got {value}")
        if not 0.0 < self.recall_target <= 1.0:
            raise IndexInputError(f"pgvector: recall_target must be in (0, 1], got {self.recall_target}")
        if self.rerank_factor < 1 or self.min_rerank < 1:
            raise IndexInputError("pgvector: rerank_factor and min_rerank must be >= 1")
        if self.recalibrate_growth <= 1.0:
            raise IndexInputError(f"pgvector: recalibrate_growth must be > 1, got {self.recalibrate_growth}")
        for name in ("build_memory_mb", "build_workers"):
            value = getattr(self, name)
            if value is not None and value < (64 if name == "build_memory_mb" else 0):
                raise IndexInputError(f"pgvector: {name} is too small: {value}")
