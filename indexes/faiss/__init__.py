"""The FAISS backend: exact while small, HNSW-SQ (or IVF-PQ) with exact re-ranking when large.

* :mod:`.index`: :class:`FaissIndex` (search, snapshots, what it reports);
* :mod:`.tiers`: building the approximate structures (HNSW graph, IVF-PQ);
* :mod:`.calibration`: tuning the search breadth and re-rank depth against exact search
  (:class:`Calibratable`: the "calibration" capability), on the query sets of
  :mod:`.calibration_queries`;
* :mod:`.gpu`: GPU FAISS for the IVF tier; :mod:`._lib`: FAISS itself, imported lazily.
"""

from __future__ import annotations

from ..config import FaissConfig
from ..file_backend import FileBackend
from .calibration import Calibratable, CalibrationSource
from .index import FaissIndex


class FaissBackend(FileBackend):
    """Descriptor of the FAISS backend (registered through the ``fgsearch.backends`` entry points)."""

    name = "faiss"
    config_type = FaissConfig
    capabilities: frozenset[str] = frozenset({"files", "tunable_breadth", "calibration"})

    def index_class(self) -> type[FaissIndex]:
        return FaissIndex


__all__ = ["Calibratable", "CalibrationSource", "FaissBackend", "FaissIndex"]
