"""fgsearch.ingest.shared: shared writers of one library (PostgreSQL catalog, a vector store both
reach) split the work through the catalog's queue; every file is indexed once."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from _library_data import scene
from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.errors import LibraryError
from fgsearch.indexes import Backend, IndexStats, SearchResult, VectorIndex, register_backend, unregister_backend
from fgsearch.ingest import IndexOptions
from fgsearch.library import Library
from fgsearch.model import load_encoder
from fgsearch.regions import RegionSettings


class SharedIndex(VectorIndex):
    """A vector store every writer reaches (a stand-in for a Qdrant server or pgvector): one dict per
    (space, name) shared by every instance in the process; upserts by id are idempotent."""

    kind = "toy-shared"
    spaces: ClassVar[dict[tuple[str, str], dict[int, np.ndarray]]] = {}
    lock = threading.Lock()

    def __init__(self, space: str, name: str, dim: int, *, read_only: bool) -> None:
        super().__init__(dim, read_only=read_only)
        with self.lock:
            self.vectors = self.spaces.setdefault((space, name), {})

    def count(self) -> int:
        return len(self.vectors)

    def add(self, ids: Any, vectors: Any, *, upsert: bool = False, payload: Any = None) -> None:
        with self.lock:
            for i, v in zip(np.asarray(ids, np.int64).tolist(), np.asarray(vectors, np.float32), strict=True):
                if i in self.vectors and not upsert:
                    raise ValueError(f"id {i} is stored already")
                self.vectors[i] = v

    def remove(self, ids: Any, *, missing: str = "error") -> int:
        with self.lock:
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
        with self.lock:
            rows = [self.vectors[i] for i in np.asarray(ids, np.int64).tolist()]
        return np.asarray(rows, np.float32).reshape(-1, self.dim)

    def ids(self) -> np.ndarray:
        with self.lock:
            return np.asarray(sorted(self.vectors), np.int64)

    def contains(self, ids: Any) -> np.ndarray:
        return np.asarray([i in self.vectors for i in np.asarray(ids, np.int64).tolist()], bool)

    def flush(self) -> None:
        pass

    def save(self) -> None:
        pass

    def reload(self) -> None:
        pass

    def stats(self) -> IndexStats:
        return IndexStats(kind=self.kind, dim=self.dim, count=self.count(), location="memory")

    def close(self) -> None:
        self._closed = True


class SharedBackend(Backend):
    name = "toy-shared"
    config_type = dict
    capabilities = frozenset()  # not in the library folder: every machine reaches it

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {"space": str(raw.get("space", ""))}

    def open(self, home: Path, name: str, dim: int, options: Mapping[str, Any], *, read_only: bool, create: bool):
        return SharedIndex(options["space"], name, dim, read_only=read_only)

    def owned_paths(self, home: Path, options: Mapping[str, Any]) -> dict[str, Path]:
        return {}

    def location(self, home: Path, options: Mapping[str, Any]) -> str:
        return f"toy-shared space {options['space']}"


@pytest.fixture
def shared_backend() -> Iterator[None]:
    register_backend(SharedBackend())
    yield
    unregister_backend("toy-shared")


def test_two_shared_writers_index_each_file_once(postgres_url: str, tmp_path: Path, shared_backend: None) -> None:
    from fgsearch.library import BackendSettings

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(9):
        scene(200 + i).save(photos / f"s{i}.png")
    (photos / "s0-copy.png").write_bytes((photos / "s0.png").read_bytes())
    (photos / "broken.png").write_bytes(b"not a png")
    bk = BackendSettings("toy-shared", {"space": uuid.uuid4().hex})
    kw: dict[str, Any] = {"model": "demo", "regions": RegionSettings("grid", max_regions=2), "device": "cpu"}
    with (
        Library.open(tmp_path / "lib", catalog=postgres_url, backend=bk, **kw) as lone,
        pytest.raises(LibraryError, match="index_shared is for shared writers"),
    ):
        lone.index_shared(str(photos))
    desc = tmp_path / "lib" / "library.json"
    # two writers as two machines would run them: each its own library view and its own model
    writers = [Library.open(desc, shared_writer=True, encoder=load_encoder("demo", device="cpu")) for _ in range(2)]
    reports: list[Any] = [None, None]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            reports[i] = writers[i].index_shared(str(photos), IndexOptions(batch_size=2, workers=1), lease_s=60)
        except BaseException as e:
            errors.append(e)
            raise

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    try:
        assert errors == []
        with pytest.raises(LibraryError, match="shared writer, which takes its work from"):
            writers[0].index(str(photos))
        assert all(r is not None for r in reports)
        assert sum(r.indexed for r in reports) == 9 and sum(r.reused for r in reports) == 1
        assert sum(r.failed for r in reports) == 1
        st = writers[0].status()
        assert st["counts"]["images"] == 9 and st["counts"]["files_ok"] == 10 and st["counts"]["files_failed"] == 1
        cids, rids = writers[0].catalog.all_vector_ids(include_pending=True)
        assert sorted(writers[0].global_index.ids().tolist()) == sorted(cids)  # each image once in the store
        assert sorted(writers[0].region_index.ids().tolist()) == sorted(rids) and len(rids) == 9 * 2
        (photos / "s9.png").write_bytes((photos / "s1.png").read_bytes())  # a new copy, beside writer 1
        r = CliRunner().invoke(app, ["index", str(photos), "--library", str(desc), "--shared", "--json"])
        assert r.exit_code == 0, r.output
        assert {k: json.loads(r.output)[k] for k in ("indexed", "reused", "unchanged")} == {
            "indexed": 0, "reused": 1, "unchanged": 10,
        }  # fmt: skip
        with pytest.raises(LibraryError, match="neither reads only nor rebuilds"):
            Library.open(desc, shared_writer=True, reindex=True)
    finally:
        for w in writers:
            w.close()
    with Library.open(desc, read_only=True, device="cpu") as reader:
        assert len(reader.search("a red circle", k=20)) == 9


class _SlowEncoder:
    """An encoder whose forward pass takes longer than a writer's lease (a big model, a busy CPU)."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self._inner, self._seconds = inner, seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode_pixels(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._seconds)
        return self._inner.encode_pixels(*args, **kwargs)


def test_a_batch_slower_than_the_lease_keeps_its_claim(postgres_url: str, tmp_path: Path, shared_backend: None) -> None:
    """The writer renews its claim while it works: the lease bounds silence, not a batch's time
    (before: every batch slower than the lease ended in ClaimLostError, with no other writer)."""
    from fgsearch.library import BackendSettings

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        scene(300 + i).save(photos / f"s{i}.png")
    bk = BackendSettings("toy-shared", {"space": uuid.uuid4().hex})
    kw: dict[str, Any] = {"model": "demo", "regions": RegionSettings("grid", max_regions=2), "device": "cpu"}
    Library.open(tmp_path / "lib", catalog=postgres_url, backend=bk, **kw).close()
    slow = _SlowEncoder(load_encoder("demo", device="cpu"), seconds=3.0)
    with Library.open(tmp_path / "lib" / "library.json", shared_writer=True, encoder=slow) as writer:
        report = writer.index_shared(str(photos), IndexOptions(batch_size=3, workers=1), lease_s=1.0)
        assert report.indexed == 3 and report.failed == 0
        assert writer.status()["counts"]["images"] == 3
