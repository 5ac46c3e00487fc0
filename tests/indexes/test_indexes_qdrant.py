"""Qdrant backend specifics: retries, partial failures, collection checks, server-mode errors.

Everything runs in embedded mode or against a fake client: no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _indexes_data import unit_vectors
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from fgsearch.indexes import (
    BackendUnavailableError,
    CollectionMismatchError,
    IndexBackendError,
    IndexExistsError,
    IndexLockedError,
    IndexNotFoundError,
    QdrantConfig,
    create_index,
    faults,
    open_index,
)

DIM = 8


def _cfg(tmp_path: Path, **kw: Any) -> QdrantConfig:
    return QdrantConfig(path=str(tmp_path / "q"), retry_backoff_s=0.0, **kw)


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    idx = create_index("qdrant", None, DIM, config=_cfg(tmp_path, batch_size=4, max_retries=2))
    calls = {"n": 0}

    def flaky(collection: object) -> None:
        calls["n"] += 1
        if calls["n"] in (1, 3):  # first try of batch 1 and of batch 2 fail
            raise ResponseHandlingException(ConnectionError("connection reset"))

    with faults.inject("qdrant.upsert", flaky):
        idx.add(np.arange(8), unit_vectors(8, DIM))
    assert calls["n"] == 4 and len(idx) == 8
    idx.close()


def test_failed_add_is_undone_and_reported(tmp_path: Path) -> None:
    idx = create_index("qdrant", None, DIM, config=_cfg(tmp_path, batch_size=4, max_retries=1))
    idx.add([100], unit_vectors(1, DIM))
    calls = {"n": 0}

    def dies_on_second_batch(collection: object) -> None:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise UnexpectedResponse(503, "Service Unavailable", b"", None)  # type: ignore[arg-type]

    with (
        faults.inject("qdrant.upsert", dies_on_second_batch),
        pytest.raises(IndexBackendError, match=r"503 .*the 4 new ones written were removed$"),
    ):
        idx.add(np.arange(10), unit_vectors(10, DIM, seed=2))
    assert calls["n"] == 3  # first batch, then the second batch tried twice (1 retry)
    np.testing.assert_array_equal(idx.ids(), [100])  # no half-written state left behind
    idx.close()


def test_non_transient_errors_are_not_retried(tmp_path: Path) -> None:
    idx = create_index("qdrant", None, DIM, config=_cfg(tmp_path, max_retries=3))
    calls = {"n": 0}

    def bad_request(collection: object) -> None:
        calls["n"] += 1
        raise UnexpectedResponse(400, "Bad Request", b"wrong", None)  # type: ignore[arg-type]

    with faults.inject("qdrant.upsert", bad_request), pytest.raises(IndexBackendError, match="nothing was written"):
        idx.add([1], unit_vectors(1, DIM))
    assert calls["n"] == 1
    idx.close()


def test_collection_checks(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, collection="photos")
    create_index("qdrant", None, DIM, config=cfg).close()
    with pytest.raises(IndexExistsError, match="photos"):
        create_index("qdrant", None, DIM, config=cfg)
    with pytest.raises(CollectionMismatchError, match=r"'photos' holds 8-d vectors, expected 512-d"):
        open_index("qdrant", None, config=cfg, dim=512)
    cosine = _cfg(tmp_path, collection="photos", distance="cosine")
    with pytest.raises(CollectionMismatchError, match="'photos' uses distance Dot, expected Cosine"):
        open_index("qdrant", None, config=cosine)
    with pytest.raises(IndexNotFoundError, match="other"):
        open_index("qdrant", None, config=_cfg(tmp_path, collection="other"))
    with open_index("qdrant", None, config=_cfg(tmp_path, collection="other"), dim=DIM, create=True) as idx:
        assert idx.dim == DIM and len(idx) == 0


def test_embedded_allows_one_process(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = create_index("qdrant", None, DIM, config=cfg)
    try:
        with pytest.raises(IndexLockedError, match="one process at a time"):
            open_index("qdrant", None, config=cfg, read_only=True)
    finally:
        first.close()


def test_unreachable_server_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    import qdrant_client

    class Unreachable:
        def __init__(self, **kw: Any) -> None:
            self.kw = kw

        def get_collections(self) -> None:
            raise ResponseHandlingException(ConnectionRefusedError("[Errno 111] Connection refused"))

        def close(self) -> None:
            pass

    monkeypatch.setattr(qdrant_client, "QdrantClient", Unreachable)
    cfg = QdrantConfig(url="http://qdrant.internal:6333", api_key="secret")
    with pytest.raises(BackendUnavailableError, match=r"cannot reach Qdrant at http://qdrant\.internal:6333"):
        open_index("qdrant", None, config=cfg)
    assert "secret" not in repr(cfg)


def test_server_collection_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server mode creates the collection with size, distance, on-disk, HNSW, quantization, shards."""
    import qdrant_client

    created: dict[str, Any] = {}

    class FakeServer:
        def __init__(self, **kw: Any) -> None:
            created["client"] = kw

        def get_collections(self) -> list[str]:
            return []

        def collection_exists(self, name: str) -> bool:
            return False

        def create_collection(self, **kw: Any) -> bool:
            created.update(kw)
            return True

        def close(self) -> None:
            pass

    monkeypatch.setattr(qdrant_client, "QdrantClient", FakeServer)
    cfg = QdrantConfig(
        url="http://q:6333", api_key="k", shard_number=6, replication_factor=2, quantization="scalar", hnsw_m=32
    )
    create_index("qdrant", None, 512, config=cfg).close()
    assert created["client"]["url"] == "http://q:6333" and created["client"]["api_key"] == "k"
    assert created["vectors_config"].size == 512
    assert created["vectors_config"].distance.value == "Dot" and created["vectors_config"].on_disk
    assert created["shard_number"] == 6 and created["replication_factor"] == 2
    assert created["hnsw_config"].m == 32
    assert created["quantization_config"].scalar.type.value == "int8"
