"""Create and open an index by backend name: the entry points that go through the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import VectorIndex
from .config import IndexSpec
from .errors import IndexInputError
from .registry import PathLike, check_config, get_backend


def create_index(kind: str, path: PathLike | None, dim: int, *, config: Any = None) -> VectorIndex:
    """Create a new, empty index of ``kind`` at ``path`` for ``dim``-d vectors.

    ``path`` is a directory for ``exact``/``faiss`` and embedded ``qdrant``; it may be ``None`` for a
    Qdrant server (``config=QdrantConfig(url=...)``). Raises :class:`IndexExistsError` if one exists.
    """
    spec = IndexSpec(kind=kind, dim=dim, config=config)
    return get_backend(kind).create_index(path, dim, spec.config)


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
        from .store import read_manifest

        kind = str(read_manifest(Path(path))["kind"])
    backend = get_backend(kind)
    if config is not None:
        check_config(kind, config)
    return backend.open_index(path, read_only=read_only, config=config, dim=dim, create=create)


def open_spec(spec: IndexSpec, path: PathLike | None, *, read_only: bool = False, create: bool = False) -> VectorIndex:
    """Open (or create) the index described by ``spec``."""
    return open_index(spec.kind, path, read_only=read_only, config=spec.config, dim=spec.dim, create=create)
