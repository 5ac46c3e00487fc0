"""Plugins land as one module: a toy vector backend and a toy region proposer, defined in this
test module alone (no edit in the package), index and search a library end to end, from the
library API and from the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _library_data import scene
from typer.testing import CliRunner

from fgsearch.indexes import Backend, IndexStats, SearchResult, VectorIndex, register_backend, unregister_backend
from fgsearch.library import BackendSettings, Library
from fgsearch.regions import ImageBoxes, RegionSettings, register_proposer

CORNERS = np.asarray([[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]], np.float32)


class NpzIndex(VectorIndex):
    """Brute force over a dict, written to one .npz file at each flush."""

    kind = "toy-npz"

    def __init__(self, file: Path, dim: int, *, read_only: bool) -> None:
        super().__init__(dim, read_only=read_only)
        self.file = file
        self.vectors: dict[int, np.ndarray] = {}
        self.reload()

    def count(self) -> int:
        return len(self.vectors)

    def add(self, ids: Any, vectors: Any, *, upsert: bool = False, payload: Any = None) -> None:
        self._check_writable()
        for i, v in zip(np.asarray(ids, np.int64).tolist(), np.asarray(vectors, np.float32), strict=True):
            if i in self.vectors and not upsert:
                raise ValueError(f"id {i} is stored already")
            self.vectors[i] = v

    def remove(self, ids: Any, *, missing: str = "error") -> int:
        self._check_writable()
        return sum(self.vectors.pop(i, None) is not None for i in np.asarray(ids, np.int64).tolist())

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        q = np.atleast_2d(np.asarray(queries, np.float32))
        ids = self.ids()
        if allowed_ids is not None:
            ids = ids[np.isin(ids, np.asarray(allowed_ids, np.int64))]
        out_ids = np.full((len(q), k), -1, np.int64)
        out_scores = np.full((len(q), k), -np.inf, np.float32)
        if len(ids):
            scores = q @ self.get(ids).T
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            out_ids[:, : top.shape[1]] = ids[top]
            out_scores[:, : top.shape[1]] = np.take_along_axis(scores, top, axis=1)
        return SearchResult(out_ids, out_scores)

    def get(self, ids: Any) -> np.ndarray:
        rows = [self.vectors[i] for i in np.asarray(ids, np.int64).tolist()]
        return np.asarray(rows, np.float32).reshape(-1, self.dim)

    def ids(self) -> np.ndarray:
        return np.asarray(sorted(self.vectors), np.int64)

    def contains(self, ids: Any) -> np.ndarray:
        return np.asarray([i in self.vectors for i in np.asarray(ids, np.int64).tolist()], bool)

    def flush(self) -> None:
        if not self.read_only:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            np.savez(self.file, ids=self.ids(), vectors=self.get(self.ids()))

    def save(self) -> None:
        self.flush()

    def reload(self) -> None:
        if self.file.exists():
            with np.load(self.file) as z:
                self.vectors = dict(zip(z["ids"].tolist(), z["vectors"], strict=True))

    def stats(self) -> IndexStats:
        return IndexStats(kind=self.kind, dim=self.dim, count=self.count(), location=str(self.file))

    def close(self) -> None:
        self.flush()
        self._closed = True


class NpzBackend(Backend):
    name = "toy-npz"
    config_type = dict
    capabilities = frozenset({"files"})

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(raw) - {"folder"}
        if unknown:
            from fgsearch.indexes import IndexInputError

            raise IndexInputError(f"toy-npz: unknown option {sorted(unknown)[0]!r}; known: folder")
        return {"folder": str(raw.get("folder") or "toy")}

    def open(self, home: Path, name: str, dim: int, options: Mapping[str, Any], *, read_only: bool, create: bool):
        return NpzIndex(home / options["folder"] / f"{name}.npz", dim, read_only=read_only)

    def owned_paths(self, home: Path, options: Mapping[str, Any]) -> dict[str, Path]:
        folder = home / options["folder"]
        return {"global": folder} if folder.is_dir() else {}

    def location(self, home: Path, options: Mapping[str, Any]) -> str:
        return f"toy-npz in {home / options['folder']}"


class CornerProposer:
    """Four quadrants of every image, known before the forward pass."""

    name = "corners"
    uses_dense = False
    wants_regions = True

    def __init__(self, settings: RegionSettings) -> None:
        self.settings = settings
        self.images = 0

    def before(self, path: str, root: str | None, width: int, height: int) -> ImageBoxes:
        return ImageBoxes(CORNERS[: self.settings.max_regions].copy())

    def after(self, dense: list[np.ndarray]) -> list[np.ndarray]:
        raise AssertionError("corners needs no dense map")

    def run_warnings(self, seen: Any) -> list[str]:
        return [f"corners: {len(seen)} images"]


@pytest.fixture(autouse=True)
def _plugins() -> Iterator[None]:
    register_backend(NpzBackend(), replace=True)
    register_proposer("corners", CornerProposer, replace=True)
    yield
    unregister_backend("toy-npz")  # the registry's other users (the congruence suite) never see it


def test_a_toy_backend_and_proposer_index_and_search_a_library(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        scene(i).save(photos / f"p{i}.png")
    lib_dir = tmp_path / "lib"
    bk = BackendSettings("toy-npz", {"folder": "vectors"})
    with Library.open(
        lib_dir, model=str(tiny_model_dir), backend=bk, regions=RegionSettings(proposer="corners")
    ) as lib:
        report = lib.index(photos)
        assert report.indexed == 4 and report.regions == 16
        assert report.warnings == ["corners: 4 images"]
        hits = lib.search("a red square", k=2)
        assert len(hits) == 2 and hits[0].box is not None
        assert tuple(round(v, 3) for v in hits[0].box.as_tuple()) in {tuple(map(float, b)) for b in CORNERS}
    assert (lib_dir / "vectors" / "global.npz").is_file() and (lib_dir / "vectors" / "regions.npz").is_file()
    with Library.open(lib_dir, read_only=True) as reader:  # the kind and options come back from the catalog
        st = reader.status()
        assert st["backend"] == {"kind": "toy-npz", "options": {"folder": "vectors"}}
        assert st["regions"]["proposer"] == "corners" and st["vectors"] == {"global": 4, "regions": 16}
        assert reader.doctor()["consistent"]
        assert [h.path for h in reader.search("a red square", k=2)] == [h.path for h in hits]


def test_the_command_line_takes_a_plugin_backend_and_its_options(tmp_path: Path, tiny_model_dir: Path) -> None:
    from fgsearch.console.cli import app

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        scene(i).save(photos / f"p{i}.png")
    lib = str(tmp_path / "lib")
    base = ["index", str(photos), "--library", lib, "--model", str(tiny_model_dir), "--json"]
    r = CliRunner().invoke(app, [*base, "--backend", "toy-npz", "--backend-opt", "colour=red"])
    assert r.exit_code == 1 and "unknown option 'colour'" in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--backend", "toy-npz", "--backend-opt", "folder=vecs", "--regions", "corners"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["indexed"] == 2 and (tmp_path / "lib" / "vecs" / "global.npz").is_file()
    r = CliRunner().invoke(app, ["query", "a red square", "--library", lib, "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["results"]) == 2, r.output


def test_an_unknown_backend_or_proposer_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    from fgsearch.errors import FgsearchError

    with pytest.raises(FgsearchError, match=r"unknown backend 'nope'.*faiss"):
        BackendSettings("nope")
    with pytest.raises(FgsearchError, match=r"nope.*corners"):
        RegionSettings(proposer="nope")
