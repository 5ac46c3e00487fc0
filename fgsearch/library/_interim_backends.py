"""TEMPORARY (removed when the indexes registry lands): today's backend placement behind the
registry's descriptor API, so the library package can be built and tested first."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class IndexInputError(ValueError):
    pass


class _Files:
    capabilities = frozenset({"files", "calibration"})

    def __init__(self, name: str) -> None:
        self.name = name

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        if raw:
            raise IndexInputError(f"backend {self.name} takes no option {sorted(raw)[0]!r}")
        return {}

    def open(
        self, home: Path, name: str, dim: int, options: Mapping[str, Any], *, read_only: bool, create: bool
    ) -> Any:
        from fgsearch.indexes import open_index

        return open_index(self.name, home / "index" / name, dim=dim, read_only=read_only, create=create)

    def owned_paths(self, home: Path, options: Mapping[str, Any]) -> dict[str, Path]:
        from fgsearch.indexes._store import MANIFEST

        return {n: home / "index" / n for n in ("global", "regions") if (home / "index" / n / MANIFEST).is_file()}

    def location(self, home: Path, options: Mapping[str, Any]) -> str:
        return f"backend {self.name}"


class _Qdrant:
    name = "qdrant"
    capabilities = frozenset({"remote"})

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        bad = set(raw) - {"url", "path", "collection"}
        if bad:
            raise IndexInputError(f"backend qdrant takes no option {sorted(bad)[0]!r}")
        if raw.get("url") and raw.get("path"):
            raise IndexInputError("give --qdrant-url (server) or --qdrant-path (embedded), not both")
        return {"url": raw.get("url"), "path": raw.get("path"), "collection": str(raw.get("collection") or "fgsearch")}

    def open(
        self, home: Path, name: str, dim: int, options: Mapping[str, Any], *, read_only: bool, create: bool
    ) -> Any:
        from fgsearch.indexes import QdrantConfig, open_index

        collection = f"{options['collection']}_{name}"
        if options.get("url"):
            cfg = QdrantConfig(url=options["url"], api_key=os.environ.get("QDRANT_API_KEY"), collection=collection)
        else:
            base = Path(options["path"]) if options.get("path") else home / "qdrant"
            cfg = QdrantConfig(path=str(base / name), collection=collection)
        return open_index("qdrant", None, config=cfg, dim=dim, read_only=read_only, create=create)

    def owned_paths(self, home: Path, options: Mapping[str, Any]) -> dict[str, Path]:
        if options.get("path") or options.get("url"):
            return {}
        return {n: home / "qdrant" / n for n in ("global", "regions") if (home / "qdrant" / n).is_dir()}

    def location(self, home: Path, options: Mapping[str, Any]) -> str:
        where = options.get("url") or str(Path(options.get("path") or home / "qdrant").resolve())
        extra = f" (collection {options['collection']})" if options["collection"] != "fgsearch" else ""
        return f"qdrant at {where}{extra}"


_ALL: dict[str, Any] = {"exact": _Files("exact"), "faiss": _Files("faiss"), "qdrant": _Qdrant()}


def get_backend(kind: str) -> Any:
    if kind not in _ALL:
        raise IndexInputError(f"unknown backend {kind!r}; choose one of {', '.join(_ALL)}")
    return _ALL[kind]


def backend_names() -> tuple[str, ...]:
    return tuple(_ALL)
