"""Vector index backends behind one interface (installed as ``fgsearch.indexes``).

``exact`` (brute-force numpy: the yardstick), ``faiss`` (the embedded default: exact while small,
HNSW-SQ or IVF-PQ + exact re-ranking when large) and ``qdrant`` (embedded files or a Qdrant
server/cluster). Vectors are L2-normalized float32; scores are inner products; ids are
non-negative int64.

This package never imports torch, the model or the rest of fgsearch; FAISS and qdrant-client are
imported only when an index of that kind is created or opened.

Layout, by concern::

    base.py          VectorIndex (the one interface), SearchResult, IndexStats, input checks
    config.py        frozen config dataclasses (ExactConfig, FaissConfig, QdrantConfig, JournalConfig)
    errors.py        IndexBackendError and its subclasses (one-line, actionable messages)
    registry.py      Backend descriptors by name; KINDS and each kind's config type come from here
    api.py           create_index / open_index / open_spec: look the kind up, call its descriptor
    file_backend.py  the descriptor shared by directory-backed backends (exact, faiss)
    faults.py        named fault-injection points (the test seam for crashes and failed requests)
    store/           the journaled snapshot store: files, journal, rows in memory, JournaledStore
    exact.py         StoreBackedIndex (the store behind VectorIndex) + ExactIndex + its descriptor
    hnsw/            the check of a FAISS HNSW graph before FAISS searches it (check.py)
    faiss/           FaissIndex, its tiers (HNSW, IVF-PQ), calibration of the search, GPU
    qdrant/          QdrantIndex (embedded or server) + its descriptor
    pgvector/        PgvectorIndex (a PostgreSQL table), its HNSW build + calibration, its descriptor
    usearch/         UsearchIndex (the store + a usearch HNSW graph, checked, memory-mapped), its descriptor

How to add a backend (a third party does exactly what the built-ins do):

1. Implement :class:`VectorIndex` (``count/add/remove/search/get/ids/contains/flush/save/reload/
   stats/close``) and a frozen config dataclass; test it with the congruence suite
   (``tests/indexes/test_indexes_congruence.py``): every backend must agree with ``exact``.
2. Write a :class:`Backend` descriptor: ``name``, ``config_type``, ``capabilities``
   (``"files"``, ``"tunable_breadth"``, ``"calibration"``), ``create_index``/``open_index``
   (by path and config) and ``open``/``owned_paths``/``location`` (a library's index ``name`` under
   its folder ``home``). Subclass :class:`~.file_backend.FileBackend` if its indexes are directories.
3. Register it: declare ``[project.entry-points."fgsearch.backends"] mine = "pkg.module:MyBackend"``
   in the package's pyproject (the built-ins are declared the same way in fgsearch's), or call
   :func:`register_backend` from code. ``KINDS``, ``--backend`` and the option parsing follow.
"""

from __future__ import annotations

from .api import create_index, open_index, open_spec
from .base import Calibratable, CalibrationSource, IndexStats, SearchResult, VectorIndex
from .config import (
    ExactConfig,
    FaissConfig,
    IndexSpec,
    JournalConfig,
    QdrantConfig,
)
from .errors import (
    BackendUnavailableError,
    CollectionMismatchError,
    DimensionMismatchError,
    DuplicateIdError,
    IndexBackendError,
    IndexClosedError,
    IndexCorruptError,
    IndexExistsError,
    IndexInputError,
    IndexLockedError,
    IndexNotFoundError,
    IndexReadOnlyError,
    InvalidVectorError,
    UnknownIdError,
)
from .faults import FaultPoints, faults
from .pgvector.config import PgvectorConfig
from .registry import (
    CAPABILITIES,
    INDEX_NAMES,
    Backend,
    backend_names,
    check_config,
    check_kind,
    get_backend,
    register_backend,
    unregister_backend,
)
from .store import MANIFEST
from .usearch.config import UsearchConfig


def __getattr__(name: str) -> tuple[str, ...]:
    """``KINDS``: the registered backend names, read from the registry when first asked for (the
    entry points are scanned then, not when this package is imported)."""
    if name == "KINDS":
        return backend_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAPABILITIES",
    "INDEX_NAMES",
    "KINDS",
    "MANIFEST",
    "Backend",
    "BackendUnavailableError",
    "Calibratable",
    "CalibrationSource",
    "CollectionMismatchError",
    "DimensionMismatchError",
    "DuplicateIdError",
    "ExactConfig",
    "FaissConfig",
    "FaultPoints",
    "IndexBackendError",
    "IndexClosedError",
    "IndexCorruptError",
    "IndexExistsError",
    "IndexInputError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexReadOnlyError",
    "IndexSpec",
    "IndexStats",
    "InvalidVectorError",
    "JournalConfig",
    "PgvectorConfig",
    "QdrantConfig",
    "SearchResult",
    "UnknownIdError",
    "UsearchConfig",
    "VectorIndex",
    "backend_names",
    "check_config",
    "check_kind",
    "create_index",
    "faults",
    "get_backend",
    "open_index",
    "open_spec",
    "register_backend",
    "unregister_backend",
]
