"""The descriptor shared by backends whose indexes are journaled directories (exact, faiss).

A library keeps such an index at ``<library>/index/<name>``; it counts as the backend's own
folder only once it holds a manifest, so ``--reindex`` never deletes a folder of someone else's.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import VectorIndex
from .errors import IndexExistsError, IndexInputError
from .registry import INDEX_NAMES, Backend, PathLike, check_config
from .store import MANIFEST


class FileBackend(Backend):
    """A backend whose indexes are directories of files (capability ``"files"``)."""

    capabilities: frozenset[str] = frozenset({"files"})

    @abc.abstractmethod
    def index_class(self) -> Any:
        """The :class:`~.exact.StoreBackedIndex` subclass (imported on first use)."""

    def open(
        self, home: Path, name: str, dim: int, options: Mapping[str, Any], *, read_only: bool, create: bool
    ) -> VectorIndex:
        from .api import open_index

        path = Path(home) / "index" / name
        config = self.make_config(options)
        return open_index(self.name, path, config=config, dim=dim, read_only=read_only, create=create)

    def owned_paths(self, home: Path, options: Mapping[str, Any]) -> dict[str, Path]:
        folders = {n: Path(home) / "index" / n for n in INDEX_NAMES}
        return {n: p for n, p in folders.items() if (p / MANIFEST).is_file()}

    def create_index(self, path: PathLike | None, dim: int, config: Any) -> VectorIndex:
        if path is None:
            raise IndexInputError(f"a {self.name} index needs a directory path")
        index: VectorIndex = self.index_class().create(path, dim, config)
        return index

    def open_index(
        self, path: PathLike | None, *, read_only: bool, config: Any, dim: int | None, create: bool
    ) -> VectorIndex:
        if path is None:
            raise IndexInputError(f"a {self.name} index needs a directory path")
        if config is not None:
            check_config(self.name, config)
        cls = self.index_class()
        if create and not (Path(path) / MANIFEST).exists():
            try:
                created: VectorIndex = cls.create(path, dim, config)
                return created
            except IndexExistsError:
                pass  # created concurrently: open it below
        index: VectorIndex = cls.open(path, read_only=read_only, config=config, dim=dim)
        return index
