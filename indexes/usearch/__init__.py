"""The usearch backend (``--backend usearch``): the FAISS default's store, journal and calibration
around a usearch HNSW graph over 8-bit (or 16-bit float) codes, searched memory-mapped.

* :mod:`.index`: :class:`UsearchIndex` (snapshots, search, what it reports);
* :mod:`.check`: what fgsearch checks in a graph file before usearch maps it;
* :mod:`.config`: :class:`UsearchConfig`; :mod:`._lib`: usearch itself, imported lazily (the
  ``fgsearch[usearch]`` extra).
"""

from __future__ import annotations

from typing import Any

from ..file_backend import FileBackend
from .config import UsearchConfig


class UsearchBackend(FileBackend):
    """Descriptor of the usearch backend (registered through the ``fgsearch.backends`` entry points)."""

    name = "usearch"
    config_type = UsearchConfig
    capabilities: frozenset[str] = frozenset({"files", "tunable_breadth", "calibration"})

    def index_class(self) -> Any:
        from .index import UsearchIndex

        return UsearchIndex


__all__ = ["UsearchBackend", "UsearchConfig"]
