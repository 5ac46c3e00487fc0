"""The backend registry: a toy backend added from this module alone passes the congruence checks;
unknown kinds, bad options and conflicting options are one-line errors; the built-in descriptors
place a library's indexes where the library always kept them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _congruence import run_congruence

from fgsearch.indexes import (
    KINDS,
    MANIFEST,
    Backend,
    Calibratable,
    FaissConfig,
    IndexInputError,
    IndexNotFoundError,
    IndexStats,
    SearchResult,
    VectorIndex,
    backend_names,
    create_index,
    get_backend,
    open_index,
    register_backend,
    unregister_backend,
)
from fgsearch.indexes.base import as_ids, as_k, as_queries, as_vectors, topk_rows


# ------------------------------------------------------------------------------ a toy backend
@dataclass(frozen=True)
class ToyConfig:
    norm_tolerance: float = 0.01


class ToyIndex(VectorIndex):
    """Every vector in a dict, searched by brute force, saved as one .npz on flush."""

    kind = "toy"

    def __init__(self, path: Path, dim: int, *, read_only: bool) -> None:
        super().__init__(dim, read_only=read_only)
        self._path = path
        self._rows: dict[int, np.ndarray] = {}
        if (path / "toy.npz").exists():
            with np.load(path / "toy.npz") as z:
                self._rows = {int(i): v for i, v in zip(z["ids"], z["vecs"], strict=True)}

    def count(self) -> int:
        return len(self._rows)

    def add(self, ids: Any, vectors: Any, *, upsert: bool = False, payload: Any = None) -> None:
        arr = as_ids(ids)
        vecs = as_vectors(vectors, self.dim, arr.size, norm_tolerance=0.01, ids=arr)
        if not upsert and any(int(i) in self._rows for i in arr):
            raise IndexInputError("id stored already")
        self._rows.update({int(i): v for i, v in zip(arr, vecs, strict=True)})

    def remove(self, ids: Any, *, missing: str = "error") -> int:
        arr = as_ids(ids)
        gone = [int(i) for i in arr if self._rows.pop(int(i), None) is not None]
        return len(gone)

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        q, kk = as_queries(queries, self.dim), as_k(k)
        ids = self.ids()
        if allowed_ids is not None:
            ids = ids[np.isin(ids, np.asarray(allowed_ids))]
        vecs = self.get(ids) if ids.size else np.zeros((0, self.dim), np.float32)
        scores = q @ vecs.T
        i, s = topk_rows(np.broadcast_to(ids, scores.shape).copy(), scores.astype(np.float32), kk)
        return SearchResult(ids=i, scores=s)

    def get(self, ids: Any) -> np.ndarray:
        return np.stack([self._rows[int(i)] for i in as_ids(ids, unique=False)]).astype(np.float32)

    def ids(self) -> np.ndarray:
        return np.array(sorted(self._rows), dtype=np.int64)

    def contains(self, ids: Any) -> np.ndarray:
        return np.array([int(i) in self._rows for i in as_ids(ids, unique=False)], dtype=bool)

    def flush(self) -> None:
        if not self.read_only:
            ids = self.ids()
            np.savez(self._path / "toy.npz", ids=ids, vecs=self.get(ids) if ids.size else np.zeros((0, self.dim)))

    def save(self) -> None:
        self.flush()

    def reload(self) -> None:
        self.__init__(self._path, self.dim, read_only=self.read_only)  # type: ignore[misc]

    def stats(self) -> IndexStats:
        return IndexStats(kind="toy", dim=self.dim, count=self.count())

    def close(self) -> None:
        if not self.closed:
            self.flush()
        self._closed = True


class ToyBackend(Backend):
    name = "toy"
    config_type = ToyConfig
    capabilities: frozenset[str] = frozenset({"files"})

    def open(self, home: Path, name: str, dim: int, options: Mapping[str, Any], *, read_only: bool, create: bool):
        return self.open_index(home / "toy" / name, read_only=read_only, config=None, dim=dim, create=create)

    def owned_paths(self, home: Path, options: Mapping[str, Any]) -> dict[str, Path]:
        return {n: home / "toy" / n for n in ("global", "regions") if (home / "toy" / n).is_dir()}

    def create_index(self, path: Any, dim: int, config: Any) -> VectorIndex:
        Path(path).mkdir(parents=True)
        (Path(path) / "dim").write_text(str(dim))
        return ToyIndex(Path(path), dim, read_only=False)

    def open_index(self, path: Any, *, read_only: bool, config: Any, dim: int | None, create: bool) -> VectorIndex:
        if not (Path(path) / "dim").exists():
            if create and dim is not None:
                return self.create_index(path, dim, config)
            raise IndexNotFoundError(f"no toy index at {path}")
        return ToyIndex(Path(path), int((Path(path) / "dim").read_text()), read_only=read_only)


@pytest.fixture
def toy() -> Iterator[Backend]:
    backend = ToyBackend()
    register_backend(backend)
    try:
        yield backend
    finally:
        unregister_backend("toy")


def test_a_toy_backend_registered_from_a_test_module_agrees_with_exact(tmp_path: Path, toy: Backend) -> None:
    assert "toy" in backend_names() and get_backend("toy") is toy
    other = run_congruence(tmp_path, "toy", None, exact=True, save_midway=False, n=600)
    other.close()
    lib = tmp_path / "lib"
    with toy.open(lib, "global", 32, {}, read_only=False, create=True) as idx:
        assert idx.count() == 0
    assert toy.owned_paths(lib, {}) == {"global": lib / "toy" / "global"}
    assert toy.location(lib, {}) == "backend toy"


def test_registering_a_name_twice_needs_replace(toy: Backend) -> None:
    with pytest.raises(IndexInputError, match=r"^a backend named 'toy' is registered already; pass replace=True$"):
        register_backend(ToyBackend())
    other = ToyBackend()
    register_backend(other, replace=True)
    assert get_backend("toy") is other


# ------------------------------------------------------------------------------ errors
def test_kinds_come_from_the_registry() -> None:
    assert KINDS == backend_names() == ("exact", "faiss", "pgvector", "qdrant", "usearch")
    assert get_backend("faiss").config_type is FaissConfig
    assert get_backend("faiss").capabilities == {"files", "tunable_breadth", "calibration"}
    assert get_backend("exact").capabilities == {"files"} and not get_backend("qdrant").capabilities
    assert get_backend("pgvector").capabilities == {"tunable_breadth", "calibration", "catalog_database"}


def test_unknown_kind_is_a_one_line_error(tmp_path: Path) -> None:
    for call in (
        lambda: get_backend("annoy"),
        lambda: create_index("annoy", tmp_path / "a", 8),
        lambda: open_index("annoy", tmp_path / "a"),
    ):
        with pytest.raises(
            IndexInputError, match=r"^unknown backend 'annoy'; choose one of exact, faiss, pgvector, qdrant, usearch$"
        ):
            call()


def test_options_are_typed_from_strings() -> None:
    faiss = get_backend("faiss")
    got = faiss.parse_options({"hnsw_fill_links": "24", "recall_target": "0.9", "mmap": "false", "ef_search": "none"})
    assert got == {"hnsw_fill_links": 24, "recall_target": 0.9, "mmap": False, "ef_search": None}
    assert faiss.parse_options({"structure": "ivfpq", "use_gpu": "true"}) == {"structure": "ivfpq", "use_gpu": True}
    assert get_backend("exact").parse_options({"journal": {"compact_ratio": "0.5"}}) == {
        "journal": {"compact_ratio": 0.5}
    }
    q = get_backend("qdrant").parse_options({"path": "/tmp/q", "hnsw_m": "32"})
    assert q == {"url": None, "path": "/tmp/q", "collection": "fgsearch", "hnsw_m": 32}


def test_bad_options_are_one_line_errors() -> None:
    faiss = get_backend("faiss")
    with pytest.raises(
        IndexInputError, match=r"^backend faiss: unknown option 'fill_links'; known options: .*hnsw_fill_links"
    ):
        faiss.parse_options({"fill_links": 3})
    with pytest.raises(IndexInputError, match=r"^backend faiss: option hnsw_m takes a int, got 'many'$"):
        faiss.parse_options({"hnsw_m": "many"})
    with pytest.raises(IndexInputError, match=r"^backend faiss: option structure must be one of hnsw, ivfpq"):
        faiss.parse_options({"structure": "lsh"})
    with pytest.raises(IndexInputError, match=r"^hnsw_fill_links must be >= 0, got -1$"):
        faiss.parse_options({"hnsw_fill_links": "-1"})
    with pytest.raises(IndexInputError, match=r"^backend qdrant: give url \(server\) or path \(embedded\), not both$"):
        get_backend("qdrant").parse_options({"url": "http://q:6333", "path": "/tmp/q"})
    with pytest.raises(IndexInputError, match=r"QDRANT_API_KEY"):
        get_backend("qdrant").parse_options({"api_key": "secret"})


# ------------------------------------------------------------------------------ library placement
def test_file_backends_live_in_the_library_index_folder(tmp_path: Path) -> None:
    faiss = get_backend("faiss")
    with faiss.open(tmp_path, "global", 8, {}, read_only=False, create=True) as idx:
        assert idx.kind == "faiss" and isinstance(idx, Calibratable)
    (tmp_path / "index" / "regions").mkdir()  # no manifest: not the backend's folder
    assert faiss.owned_paths(tmp_path, {}) == {"global": tmp_path / "index" / "global"}
    assert (tmp_path / "index" / "global" / MANIFEST).is_file()
    assert faiss.location(tmp_path, {}) == "backend faiss"
    opts = faiss.parse_options({"flat_threshold": "10"})
    with faiss.open(tmp_path, "global", 8, opts, read_only=False, create=False) as idx:
        assert idx.config.flat_threshold == 10  # type: ignore[attr-defined]


def test_qdrant_places_collections_as_the_library_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qdrant = get_backend("qdrant")
    opts = qdrant.parse_options({})
    with qdrant.open(tmp_path, "regions", 8, opts, read_only=False, create=True) as idx:
        assert not isinstance(idx, Calibratable)
        assert idx.stats().location is not None
    assert (tmp_path / "qdrant" / "regions").is_dir()
    assert qdrant.owned_paths(tmp_path, opts) == {"regions": tmp_path / "qdrant" / "regions"}
    assert qdrant.location(tmp_path, opts) == f"qdrant at {(tmp_path / 'qdrant').resolve()}"
    elsewhere = qdrant.parse_options({"path": str(tmp_path / "mine"), "collection": "photos"})
    assert qdrant.owned_paths(tmp_path, elsewhere) == {}
    assert qdrant.location(tmp_path, elsewhere) == f"qdrant at {(tmp_path / 'mine').resolve()} (collection photos)"
    monkeypatch.setenv("QDRANT_API_KEY", "k")
    server = qdrant.parse_options({"url": "http://q:6333"})
    cfg = qdrant.config_for(tmp_path, "global", server)  # type: ignore[attr-defined]
    assert (cfg.url, cfg.api_key, cfg.collection, cfg.path) == ("http://q:6333", "k", "fgsearch_global", None)
    assert qdrant.location(tmp_path, server) == "qdrant at http://q:6333"


def test_the_built_in_backends_are_declared_as_a_plugin_declares_them() -> None:
    """pyproject's entry points and the table the registry loads without them name the same backends."""
    import tomllib

    from fgsearch.indexes.registry import BUILTIN_BACKENDS, ENTRY_POINT_GROUP

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert declared == BUILTIN_BACKENDS
    assert set(BUILTIN_BACKENDS) <= set(backend_names())
