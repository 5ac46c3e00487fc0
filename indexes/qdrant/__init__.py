"""The Qdrant backend: embedded files for small libraries, a Qdrant server or cluster for large ones.

:mod:`.index` holds :class:`QdrantIndex` (the collection behind the :class:`~..base.VectorIndex`
interface); this module holds its descriptor, :class:`QdrantBackend`, which decides where a
library's collections live. qdrant-client is imported only when an index is opened.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..base import VectorIndex
from ..config import QdrantConfig
from ..errors import IndexInputError
from ..registry import INDEX_NAMES, Backend, PathLike, check_config, option_fields, parse_fields
from .index import QdrantIndex

# ------------------------------------------------------------------------------ the descriptor
_PLACEMENT = ("url", "path", "collection")
_DEFAULT_COLLECTION = "fgsearch"


def qdrant_config(path: PathLike | None, config: Any) -> QdrantConfig:
    """The config to connect with: ``config`` (or the default) with ``path`` (embedded mode) merged in."""
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


class QdrantBackend(Backend):
    """Descriptor of the Qdrant backend: embedded files (``path``, default ``<library>/qdrant``) or a
    server (``url``, API key from the environment variable ``QDRANT_API_KEY``)."""

    name = "qdrant"
    config_type = QdrantConfig
    capabilities: frozenset[str] = frozenset()

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Keys: ``url``, ``path``, ``collection`` (default ``fgsearch``) and the other QdrantConfig fields."""
        if "api_key" in raw:
            raise IndexInputError("backend qdrant: the API key is read from QDRANT_API_KEY, never stored as an option")
        known = sorted(set(option_fields(QdrantConfig)) - {"api_key"})
        opts = parse_fields(self.name, QdrantConfig, raw, known)
        if opts.get("url") and opts.get("path"):
            raise IndexInputError("backend qdrant: give url (server) or path (embedded), not both")
        placement = {"url": opts.pop("url", None), "path": opts.pop("path", None)}
        placement["collection"] = opts.pop("collection", None) or _DEFAULT_COLLECTION
        QdrantConfig(**opts)  # the config's own checks
        return {**placement, **opts}

    def config_for(self, home: Path, name: str, options: Mapping[str, Any]) -> QdrantConfig:
        """Where the library's index ``name`` lives: its own collection, on the server or in a folder."""
        rest = {k: v for k, v in options.items() if k not in _PLACEMENT}
        collection = f"{options.get('collection') or _DEFAULT_COLLECTION}_{name}"
        if options.get("url"):
            api_key = os.environ.get("QDRANT_API_KEY")
            return QdrantConfig(url=options["url"], api_key=api_key, collection=collection, **rest)
        base = Path(options["path"]) if options.get("path") else Path(home) / "qdrant"
        return QdrantConfig(path=str(base / name), collection=collection, **rest)

    def open(
        self, home: Path, name: str, dim: int, options: Mapping[str, Any], *, read_only: bool, create: bool
    ) -> VectorIndex:
        from ..api import open_index

        cfg = self.config_for(home, name, options)
        return open_index(self.name, None, config=cfg, dim=dim, read_only=read_only, create=create)

    def owned_paths(self, home: Path, options: Mapping[str, Any]) -> dict[str, Path]:
        if options.get("path") or options.get("url"):  # the user's folder or server: never ours to delete
            return {}
        folders = {n: Path(home) / "qdrant" / n for n in INDEX_NAMES}
        return {n: p for n, p in folders.items() if p.is_dir()}

    def location(self, home: Path, options: Mapping[str, Any]) -> str:
        where = options.get("url") or str(Path(options.get("path") or Path(home) / "qdrant").resolve())
        collection = options.get("collection") or _DEFAULT_COLLECTION
        extra = f" (collection {collection})" if collection != _DEFAULT_COLLECTION else ""
        return f"qdrant at {where}{extra}"

    def create_index(self, path: PathLike | None, dim: int, config: Any) -> VectorIndex:
        return QdrantIndex.create(qdrant_config(path, config), dim)

    def open_index(
        self, path: PathLike | None, *, read_only: bool, config: Any, dim: int | None, create: bool
    ) -> VectorIndex:
        cfg = qdrant_config(path, config)
        if create:
            if dim is None:
                raise IndexInputError("create=True needs dim")
            return QdrantIndex.create(cfg, dim, exist_ok=True)
        return QdrantIndex.open(cfg, read_only=read_only, dim=dim)


__all__ = ["QdrantBackend", "QdrantIndex", "qdrant_config"]
