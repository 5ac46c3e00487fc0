"""Vector index backends behind one interface (installed as ``fgsearch.indexes``).

``exact`` (brute-force numpy: the yardstick), ``faiss`` (the embedded default: exact while small,
IVF-PQ + exact re-ranking when large) and ``qdrant`` (embedded files or a Qdrant server/cluster).
Vectors are L2-normalized float32; scores are inner products; ids are non-negative int64.

This package never imports torch, the model or the rest of fgsearch; FAISS and qdrant-client are
imported only when an index of that kind is created or opened.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .base import IndexStats, SearchResult, VectorIndex
from .config import (
    KINDS,
    ExactConfig,
    FaissConfig,
    IndexSpec,
    JournalConfig,
    QdrantConfig,
    check_config,
    check_kind,
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

PathLike = str | Path


def _store_class(kind: str) -> Any:
    if kind == "exact":
        from .exact import ExactIndex

        return ExactIndex
    from .faiss_index import FaissIndex

    return FaissIndex


def _qdrant_config(path: PathLike | None, config: Any) -> QdrantConfig:
    cfg: QdrantConfig = check_config("qdrant", config)
    if path is not None:
        if cfg.url is not None:
            raise IndexInputError("qdrant: give a path (embedded mode) or QdrantConfig(url=...), not both")
        if cfg.path is not None and Path(cfg.path) != Path(path):
            raise IndexInputError(f"qdrant: path {path} conflicts with QdrantConfig(path={cfg.path!r})")
        cfg = dataclasses.replace(cfg, path=str(path))
    if cfg.path is None and cfg.url is None:
        raise IndexInputError("qdrant: give a path (embedded mode) or QdrantConfig(url=...) (server mode)")
    return cfg


def create_index(kind: str, path: PathLike | None, dim: int, *, config: Any = None) -> VectorIndex:
    """Create a new, empty index of ``kind`` at ``path`` for ``dim``-d vectors.

    ``path`` is a directory for ``exact``/``faiss`` and embedded ``qdrant``; it may be ``None`` for a
    Qdrant server (``config=QdrantConfig(url=...)``). Raises :class:`IndexExistsError` if one exists.
    """
    spec = IndexSpec(kind=kind, dim=dim, config=config)
    if kind == "qdrant":
        from .qdrant_index import QdrantIndex

        return QdrantIndex.create(_qdrant_config(path, spec.config), dim)
    if path is None:
        raise IndexInputError(f"a {kind} index needs a directory path")
    index: VectorIndex = _store_class(kind).create(path, dim, spec.config)
    return index


def open_index(
    kind: str | None,
    path: PathLike | None,
    *,
    read_only: bool = False,
    config: Any = None,
    dim: int | None = None,
    create: bool = False,
) -> VectorIndex:
    """Open the index of ``kind`` at ``path`` (``kind=None``: read it from the directory).

    ``config=None`` reuses the configuration stored with the index. ``dim`` (optional) is checked
    against the stored dimension. ``create=True`` creates the index when it does not exist yet (it
    then needs ``kind`` and ``dim``, and conflicts with ``read_only=True``).
    """
    if create and read_only:
        raise IndexInputError("create=True conflicts with read_only=True")
    if create and (kind is None or dim is None):
        raise IndexInputError("create=True needs both kind and dim")
    if dim is not None and (not isinstance(dim, int) or dim < 1):
        raise IndexInputError(f"dim must be a positive integer, got {dim!r}")
    if kind is None:
        if path is None:
            raise IndexInputError("open_index(kind=None) needs a path to read the kind from")
        from ._store import read_manifest

        kind = str(read_manifest(Path(path))["kind"])
    check_kind(kind)
    if kind == "qdrant":
        from .qdrant_index import QdrantIndex

        cfg = _qdrant_config(path, config)
        if create:
            assert dim is not None
            return QdrantIndex.create(cfg, dim, exist_ok=True)
        return QdrantIndex.open(cfg, read_only=read_only, dim=dim)
    if path is None:
        raise IndexInputError(f"a {kind} index needs a directory path")
    if config is not None:
        check_config(kind, config)
    cls = _store_class(kind)
    if create and not (Path(path) / "manifest.json").exists():
        assert dim is not None
        try:
            index: VectorIndex = cls.create(path, dim, config)
            return index
        except IndexExistsError:
            pass  # created concurrently: open it below
    index = cls.open(path, read_only=read_only, config=config, dim=dim)
    return index


def open_spec(spec: IndexSpec, path: PathLike | None, *, read_only: bool = False, create: bool = False) -> VectorIndex:
    """Open (or create) the index described by ``spec``."""
    return open_index(spec.kind, path, read_only=read_only, config=spec.config, dim=spec.dim, create=create)


__all__ = [
    "KINDS",
    "BackendUnavailableError",
    "CollectionMismatchError",
    "DimensionMismatchError",
    "DuplicateIdError",
    "ExactConfig",
    "FaissConfig",
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
    "QdrantConfig",
    "SearchResult",
    "UnknownIdError",
    "VectorIndex",
    "create_index",
    "open_index",
    "open_spec",
]
