"""Qdrant cluster options (``--qdrant-url`` libraries), tested three ways, since no Qdrant server
binary reaches this workplace:

* the **request bodies** qdrant-client sends for them, captured by a loopback HTTP server that
  answers like Qdrant's REST API (collection creation with shards, replicas, write consistency,
  on-disk vectors and payload, quantisation; upserts with a write ordering; reads with a read
  consistency), set through the library's ``--backend-opt`` parsing;
* the **client contract** with qdrant-client's local mode (the same calls, the same keywords);
* the **semantics** we rely on, against the real Qdrant engine in-process (``qdrant-edge``):
  upserts by point id from several workers are idempotent, and on-disk vectors with int8
  quantisation and re-scoring return the exact top-k.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from _indexes_data import unit_vectors

from fgsearch.indexes import DuplicateIdError, IndexInputError, QdrantConfig, create_index, get_backend

DIM = 16


class FakeQdrant(BaseHTTPRequestHandler):
    """Answers the REST calls the backend makes, from an in-memory dict; records every request."""

    requests: list[dict[str, Any]]
    points: dict[int, list[float]]
    collections: set[str]

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, result: Any, status: int = 200) -> None:
        body = json.dumps({"result": result, "status": "ok", "time": 0.0}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"null") if n else None
        rec = {"method": self.command, "path": parts.path, "query": parse_qs(parts.query), "body": body}
        self.requests.append(rec)
        path = parts.path.rstrip("/").split("/")[1:]  # ["collections", name, ...]
        if self.command == "GET" and not path:
            self.send_response(200)
            data = json.dumps({"title": "qdrant - vector search engine", "version": "1.20.0"}).encode()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == ["collections"]:
            self._reply({"collections": [{"name": c} for c in sorted(self.collections)]})
        elif len(path) == 3 and path[2] == "exists":
            self._reply({"exists": path[1] in self.collections})
        elif len(path) == 2 and self.command == "PUT":
            self.collections.add(path[1])
            self._reply(True)
        elif path[2:] == ["points"] and self.command == "PUT":  # upsert
            for i, v in zip(body["batch"]["ids"], body["batch"]["vectors"], strict=True):
                self.points[int(i)] = v
            self._reply({"operation_id": len(self.requests), "status": "completed"})
        elif path[2:] == ["points"] and self.command == "POST":  # retrieve
            want = [int(i) for i in body["ids"] if int(i) in self.points]
            vec = bool(body.get("with_vector"))
            self._reply([{"id": i, "payload": {}, "vector": self.points[i] if vec else None} for i in want])
        elif path[2:] == ["points", "delete"]:
            for i in body["points"]:
                self.points.pop(int(i), None)
            self._reply({"operation_id": len(self.requests), "status": "completed"})
        elif path[2:] == ["points", "query", "batch"]:
            ids = sorted(self.points)
            out = []
            for req in body["searches"]:
                vec = req["query"]["nearest"] if isinstance(req["query"], dict) else req["query"]
                q = np.asarray(vec, np.float32)
                scored = sorted(((float(q @ np.asarray(self.points[i])), i) for i in ids), reverse=True)
                pts = [{"id": i, "version": 0, "score": s} for s, i in scored[: req["limit"]]]
                out.append({"points": pts})
            self._reply(out)
        else:
            self._reply({"error": f"not faked: {self.command} {parts.path}"}, status=404)

    do_GET = do_PUT = do_POST = do_DELETE = _handle


@pytest.fixture
def fake_qdrant() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    handler = type("Handler", (FakeQdrant,), {"requests": [], "points": {}, "collections": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


def _sent(requests: list[dict[str, Any]], method: str, suffix: str) -> list[dict[str, Any]]:
    return [r for r in requests if r["method"] == method and r["path"].endswith(suffix)]


def test_cluster_options_reach_the_server_as_qdrant_expects(
    fake_qdrant: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, requests = fake_qdrant
    backend = get_backend("qdrant")
    opts = backend.parse_options(  # what `--qdrant-url URL --backend-opt KEY=VALUE ...` gives
        {
            "url": url,
            "shard_number": "6",
            "replication_factor": "2",
            "write_consistency_factor": "2",
            "on_disk": "true",
            "on_disk_payload": "false",
            "quantization": "scalar",
            "quantization_always_ram": "false",
            "write_ordering": "strong",
            "read_consistency": "majority",
            "max_retries": "0",
        }
    )
    index = backend.open(tmp_path, "global", DIM, opts, read_only=False, create=True)
    (create,) = _sent(requests, "PUT", "/collections/fgsearch_global")
    body = create["body"]
    assert body["vectors"] == {"size": DIM, "distance": "Dot", "on_disk": True}
    assert (body["shard_number"], body["replication_factor"], body["write_consistency_factor"]) == (6, 2, 2)
    assert body["on_disk_payload"] is False
    assert body["quantization_config"] == {"scalar": {"type": "int8", "always_ram": False}}
    assert body["hnsw_config"]["m"] == 16

    x = unit_vectors(5, DIM)
    index.add(np.arange(5), x)
    (upsert,) = _sent(requests, "PUT", "/points")
    assert upsert["query"]["ordering"] == ["strong"] and upsert["query"]["wait"] == ["true"]
    assert upsert["body"]["batch"]["ids"] == [0, 1, 2, 3, 4]
    index.add(np.arange(5), x)  # the same batch again (a retried worker): accepted, written once more
    with pytest.raises(DuplicateIdError, match="with other vectors: 3"):
        index.add([3], x[:1])
    assert len(_sent(requests, "PUT", "/points")) == 2

    res = index.search(x[2], 2)
    assert res.ids[0, 0] == 2
    (query,) = _sent(requests, "POST", "/points/query/batch")
    assert query["query"]["consistency"] == ["majority"]
    assert all(r["query"].get("consistency") == ["majority"] for r in _sent(requests, "POST", "/points"))
    assert index.remove([4]) == 1
    (delete,) = _sent(requests, "POST", "/points/delete")
    assert delete["query"]["ordering"] == ["strong"]
    index.close()


def test_a_number_of_replicas_as_read_consistency(fake_qdrant: tuple[str, list[dict[str, Any]]]) -> None:
    url, requests = fake_qdrant
    cfg = QdrantConfig(url=url, read_consistency="2", quantization="none", max_retries=0)
    with create_index("qdrant", None, DIM, config=cfg) as index:
        index.add([1], unit_vectors(1, DIM))
        index.search(unit_vectors(1, DIM), 1)
    (query,) = _sent(requests, "POST", "/points/query/batch")
    assert query["query"]["consistency"] == ["2"]
    (create,) = _sent(requests, "PUT", "/collections/fgsearch")
    assert "quantization_config" not in create["body"] or create["body"]["quantization_config"] is None
    assert "ordering" not in _sent(requests, "PUT", "/points")[0]["query"]  # the server's default


def test_cluster_options_are_checked() -> None:
    with pytest.raises(IndexInputError, match="read_consistency must be all, majority, quorum or a number"):
        QdrantConfig(url="http://q:6333", read_consistency="most")
    with pytest.raises(IndexInputError, match="write_ordering must be one of weak, medium, strong"):
        get_backend("qdrant").parse_options({"url": "http://q:6333", "write_ordering": "fast"})
    with pytest.raises(IndexInputError, match="replication_factor must be >= 1"):
        QdrantConfig(url="http://q:6333", replication_factor=0)
    with pytest.raises(IndexInputError, match="shard_number takes a int"):
        get_backend("qdrant").parse_options({"url": "http://q:6333", "shard_number": "many"})


def test_local_mode_takes_the_same_calls(tmp_path: Path) -> None:
    """qdrant-client's local mode accepts every keyword the server calls carry; a re-sent batch is
    accepted and a conflicting one refused, as against a server."""
    cfg = QdrantConfig(
        path=str(tmp_path / "q"),
        shard_number=2,
        replication_factor=2,
        write_consistency_factor=2,
        on_disk_payload=False,
        write_ordering="medium",
        read_consistency="quorum",
    )
    x = unit_vectors(40, DIM)
    with create_index("qdrant", None, DIM, config=cfg) as index:
        index.add(np.arange(40), x)
        index.add(np.arange(10), x[:10])  # idempotent re-add
        with pytest.raises(DuplicateIdError, match="other vectors"):
            index.add([0], x[1:2])
        assert len(index) == 40 and index.ids().tolist() == list(range(40))
        assert index.search(x[7], 1).ids[0, 0] == 7
        np.testing.assert_allclose(index.get([5]), x[5:6], atol=1e-6)
        assert index.remove([0, 1]) == 2


def test_engine_upserts_by_id_are_idempotent_and_quantised_search_rescored(tmp_path: Path) -> None:
    """The real Qdrant engine (qdrant-edge, in-process): four workers upsert overlapping batches of
    the same ids concurrently and in different orders: each id is stored once; on-disk vectors
    with int8 quantisation (not in RAM) searched with re-scoring give the exact top-10 and scores."""
    import qdrant_edge as qe  # the dev extra installs it: missing -> the test errors, never skips

    data = unit_vectors(2000, DIM, seed=9)
    cfg = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Dot, on_disk=True),
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=100),
        quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=False),
        optimizers=qe.EdgeOptimizersConfig(default_segment_number=2),
    )
    shard = qe.EdgeShard.create(str(tmp_path / "shard"), cfg)
    rng = np.random.default_rng(0)
    batches = [np.arange(s, min(s + 300, 2000)) for s in range(0, 2000, 250)]  # overlapping ids

    def worker(seed: int) -> None:
        for b in np.random.default_rng(seed).permutation(len(batches)):
            ids = batches[b]
            shard.update(qe.UpdateOperation.upsert_points([qe.Point(int(i), data[i].tolist()) for i in ids]))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(shard.count(qe.CountRequest(exact=True))) == 2000
    shard.update(qe.UpdateOperation.upsert_points([qe.Point(7, data[8].tolist())]))  # last write wins
    assert int(shard.count(qe.CountRequest(exact=True))) == 2000
    shard.optimize()
    params = qe.SearchParams(hnsw_ef=128, quantization=qe.QuantizationSearchParams(rescore=True, oversampling=3.0))
    stored = data.copy()
    stored[7] = data[8]
    queries = unit_vectors(20, DIM, seed=int(rng.integers(100)))
    for q in queries:
        res = shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(q.tolist()), params=params))
        got_ids = [int(p.id) for p in res]
        got_scores = np.asarray([p.score for p in res], np.float32)
        exact = stored @ q
        top = np.argsort(-exact)[:10]
        assert len(set(got_ids) & set(top.tolist())) >= 9  # HNSW: at most one miss per query
        np.testing.assert_allclose(got_scores, exact[got_ids], atol=1e-5)  # re-scored: exact scores
    shard.close()
