"""The usearch backend's configuration (a frozen dataclass, one field per ``--backend-opt``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import FaissConfig, JournalConfig
from ..errors import IndexInputError

DTYPES = ("i8", "f16")


@dataclass(frozen=True)
class UsearchConfig:
    """usearch backend: the FAISS default's store, journal and calibration around a usearch HNSW graph.

    * Below ``flat_threshold`` vectors search is exact (BLAS over the stored float32 vectors); at
      or above it the next snapshot builds a usearch ``Index(metric="ip")`` over codes of
      ``dtype`` (``"i8"``: one byte per dimension, the default; ``"f16"``: two), with
      ``connectivity`` links per node (twice that on the base layer) and ``expansion_add`` (the
      build's breadth), adding the snapshot's vectors in blocks on ``threads`` threads (0: all).
    * The graph file is searched memory-mapped (``mmap``; ``Index.restore(view=True)``); the top
      ``max(k * rerank_factor, min_rerank)`` candidates are re-scored with exact inner products
      from the stored float32 vectors.
    * ``expansion_search``: ``None`` calibrates it as the FAISS default calibrates efSearch (the
      smallest of 32, 48, 64, 96, ... up to ``max_expansion_search``, then the shallowest re-rank
      depth, reaching ``recall_target + calibration_margin`` on every calibration set), again at a
      snapshot that finds the collection ``recalibrate_growth`` times larger, and on the queries
      the index served (``served_queries``, ``served_min``; see :mod:`..faiss.served`).
    * ``max_tombstones``: removed ids are deleted from the graph (usearch ``remove``) at each
      snapshot; once the deleted nodes pass this share of the collection the graph is rebuilt.
    * ``filter_exact_max``: allowed-id filters with at most this many stored ids are answered
      exactly; ``None`` derives the limit as the FAISS default does (:mod:`..filtered`).
    """

    journal: JournalConfig = field(default_factory=JournalConfig)
    norm_tolerance: float = 0.01
    block_rows: int = 32768
    flat_threshold: int = 50_000
    dtype: Literal["i8", "f16"] = "i8"
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int | None = None
    max_expansion_search: int = 2048
    threads: int = 0
    recall_target: float = 0.97
    calibration_margin: float = 0.01
    calibration_queries: int = 400
    rerank_factor: int = 3
    min_rerank: int = 30
    recalibrate_growth: float = 1.25
    max_tombstones: float = 0.1
    filter_exact_max: int | None = None
    mmap: bool = True
    served_queries: int = 2000
    served_min: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise IndexInputError(f"usearch: dtype must be 'i8' or 'f16', got {self.dtype!r}")
        if isinstance(self.connectivity, bool) or not 2 <= self.connectivity <= 256:
            raise IndexInputError(f"usearch: connectivity must be in [2, 256], got {self.connectivity}")
        if not 1 <= self.expansion_add <= 65536:
            raise IndexInputError(f"usearch: expansion_add must be in [1, 65536], got {self.expansion_add}")
        if self.expansion_search is not None and not 1 <= self.expansion_search <= 65536:
            raise IndexInputError(
                f"usearch: expansion_search must be in [1, 65536] or None (calibrated), got {self.expansion_search}"
            )
        if not 1 <= self.max_expansion_search <= 65536:
            raise IndexInputError(
                f"usearch: max_expansion_search must be in [1, 65536], got {self.max_expansion_search}"
            )
        if self.flat_threshold < 1:
            raise IndexInputError(f"usearch: flat_threshold must be >= 1, got {self.flat_threshold}")
        if self.threads < 0:
            raise IndexInputError(f"usearch: threads must be >= 0 (0: all cores), got {self.threads}")
        if not 0.0 < self.recall_target <= 1.0:
            raise IndexInputError(f"usearch: recall_target must be in (0, 1], got {self.recall_target}")
        if self.rerank_factor < 1 or self.min_rerank < 1:
            raise IndexInputError("usearch: rerank_factor and min_rerank must be >= 1")
        if self.recalibrate_growth <= 1.0:
            raise IndexInputError(f"usearch: recalibrate_growth must be > 1, got {self.recalibrate_growth}")
        if not 0.0 <= self.max_tombstones < 1.0:
            raise IndexInputError(f"usearch: max_tombstones must be in [0, 1), got {self.max_tombstones}")
        if self.served_queries < 0 or self.served_min < 1:
            raise IndexInputError("usearch: served_queries must be >= 0 (0: off) and served_min >= 1")
        if self.filter_exact_max is not None and self.filter_exact_max < 0:
            raise IndexInputError(f"usearch: filter_exact_max must be >= 0 or None, got {self.filter_exact_max}")

    def calibration_config(self) -> FaissConfig:
        """The calibration settings in the form :mod:`..faiss.calibration` takes."""
        return FaissConfig(
            block_rows=self.block_rows,
            recall_target=self.recall_target,
            calibration_margin=self.calibration_margin,
            calibration_queries=self.calibration_queries,
            rerank_factor=self.rerank_factor,
            min_rerank=self.min_rerank,
            max_ef_search=self.max_expansion_search,
            served_min=self.served_min,
            seed=self.seed,
        )
