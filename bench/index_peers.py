"""The peers ``bench_indexes.py`` measures beside fgsearch's backends: usearch, hnswlib, plain FAISS
HNSW-SQ8 and qdrant-edge: their settings, how each is built over the benchmark's data and how each
is loaded and searched (with an exact re-rank from the memory-mapped float32 data where the
setting says so)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_data import CHUNK

PEER_EF = {"hnsw-sq8": (128, 256, 512), "qdrant-edge": (64, 128, 256, 512)}
PEER_RERANK = 100
LIB_EF = (32, 64, 128, 256, 512)  # usearch expansion_search / hnswlib ef
LIB_RERANK = 30  # usearch "+rr" settings: candidates re-scored exactly from float32


def peer_family(kind: str) -> str:
    """``usearch`` / ``hnswlib`` for their parametrised kinds, else the kind itself."""
    return kind.split("-")[0] if kind.startswith(("usearch-", "hnswlib-")) else kind


def peer_settings(kind: str) -> list[object]:
    fam = peer_family(kind)
    if fam == "usearch":
        return [s for e in LIB_EF for s in (e, f"{e}+rr")]
    if fam == "hnswlib":
        return list(LIB_EF)
    return list(PEER_EF[kind])


def is_peer(kind: str) -> bool:
    """Whether ``kind`` is a peer (else one of fgsearch's own backends)."""
    return kind in PEER_EF or peer_family(kind) in ("usearch", "hnswlib")


def edge_config(dim: int, threads: int | None = None) -> object:
    import qdrant_edge as qe

    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot),
        hnsw_config=qe.HnswIndexConfig(m=32, ef_construct=100, full_scan_threshold=10_000),
        quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True),
        optimizers=qe.EdgeOptimizersConfig(default_segment_number=1),
        max_search_threads=threads,
        wal_enabled=False,
    )


def build_peer(kind: str, data: np.ndarray, index_dir: Path, t0: float) -> dict[str, float]:
    """Build peer ``kind`` over ``data`` (memory-mapped) in ``index_dir``; its build time (from ``t0``)."""
    n, dim = data.shape
    if peer_family(kind) == "usearch":
        from usearch.index import Index

        _, dtype, conn = kind.split("-")
        index_dir.mkdir(parents=True)
        ux = Index(ndim=dim, metric="ip", dtype=dtype, connectivity=int(conn), expansion_add=128)
        for s in range(0, n, CHUNK):
            ux.add(np.arange(s, min(s + CHUNK, n)), np.ascontiguousarray(data[s : s + CHUNK]), threads=0)
        ux.save(str(index_dir / "usearch.index"))
        return {"build_s": time.perf_counter() - t0, "add_s": 0.0}
    if peer_family(kind) == "hnswlib":
        import hnswlib

        index_dir.mkdir(parents=True)
        hx = hnswlib.Index(space="ip", dim=dim)
        hx.init_index(max_elements=n, M=int(kind.split("-")[1]), ef_construction=100, random_seed=0)
        for s in range(0, n, CHUNK):
            hx.add_items(np.ascontiguousarray(data[s : s + CHUNK]), np.arange(s, min(s + CHUNK, n)), num_threads=-1)
        hx.save_index(str(index_dir / "hnswlib.index"))
        return {"build_s": time.perf_counter() - t0, "add_s": 0.0}
    if kind == "hnsw-sq8":
        import faiss

        index_dir.mkdir(parents=True)
        idx = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
        rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, 100_000), replace=False))
        idx.train(np.ascontiguousarray(data[rows]))
        for s in range(0, n, CHUNK):
            idx.add(np.ascontiguousarray(data[s : s + CHUNK]))
        faiss.write_index(idx, str(index_dir / "hnsw.index"))
        return {"build_s": time.perf_counter() - t0, "add_s": 0.0}
    if kind == "qdrant-edge":
        import qdrant_edge as qe

        shard = qe.EdgeShard.create(str(index_dir), edge_config(dim))
        for s in range(0, n, 5000):
            blk = np.asarray(data[s : s + 5000])
            shard.update(qe.UpdateOperation.upsert_points([qe.Point(s + i, v.tolist()) for i, v in enumerate(blk)]))
        t_add = time.perf_counter() - t0
        shard.optimize()
        shard.flush()
        shard.close()
        return {"build_s": time.perf_counter() - t0, "add_s": t_add}
    raise ValueError(f"not a peer: {kind}")


class PeerIndex:
    """One loaded peer index; ``search(q, k, setting) -> ids``."""

    def __init__(self, kind: str, index_dir: Path, data_path: Path) -> None:
        self.kind = kind
        self.index: Any = None
        self.data: Any = None
        self.qe: Any = None
        self.n = 0
        if peer_family(kind) == "usearch":
            from usearch.index import Index

            self.index = Index.restore(str(index_dir / "usearch.index"), view=True)
            self.data = np.load(data_path, mmap_mode="r")
            self.n = len(self.index)
        elif peer_family(kind) == "hnswlib":
            import hnswlib

            dim = int(np.load(data_path, mmap_mode="r").shape[1])
            self.index = hnswlib.Index(space="ip", dim=dim)
            self.index.load_index(str(index_dir / "hnswlib.index"))
            self.index.set_num_threads(1)
            self.n = int(self.index.get_current_count())
        elif kind == "hnsw-sq8":
            import faiss

            self.index = faiss.read_index(str(index_dir / "hnsw.index"))
            self.data = np.load(data_path, mmap_mode="r")
            self.n = int(self.index.ntotal)
        elif kind == "qdrant-edge":
            import qdrant_edge as qe

            self.qe = qe
            self.index = qe.EdgeShard.load(str(index_dir), edge_config(np.load(data_path, mmap_mode="r").shape[1], 1))
            self.n = int(self.index.count(qe.CountRequest(exact=True)))

    def search(self, q: np.ndarray, k: int, setting: object) -> np.ndarray:
        fam = peer_family(self.kind)
        if fam == "usearch":
            ef, rerank = (int(str(setting).split("+")[0]), "+rr" in str(setting))
            self.index.expansion_search = ef
            m = self.index.search(q, LIB_RERANK if rerank else k, threads=1)
            cand = np.asarray(m.keys, dtype=np.int64).reshape(q.shape[0], -1)
            return self.reranked(cand, q, k) if rerank else cand[:, :k]
        if fam == "hnswlib":
            self.index.set_ef(max(int(setting), k))  # type: ignore[call-overload]
            labels, _ = self.index.knn_query(q, k=k, num_threads=1)
            return np.asarray(labels, dtype=np.int64)
        if self.kind == "hnsw-sq8":
            import faiss

            p = faiss.SearchParametersHNSW()
            p.efSearch = int(setting)  # type: ignore[call-overload]
            _, cand = self.index.search(q, PEER_RERANK, params=p)
            return self.reranked(cand, q, k)
        if self.kind == "qdrant-edge":
            qe = self.qe
            params = qe.SearchParams(
                hnsw_ef=int(setting),  # type: ignore[call-overload]
                quantization=qe.QuantizationSearchParams(rescore=True, oversampling=PEER_RERANK / 10),
            )
            reqs = [qe.QueryRequest(limit=k, query=qe.Query.Nearest(v.tolist()), params=params) for v in q]
            res = [self.index.query(reqs[0])] if len(reqs) == 1 else self.index.query_batch(qe.QueryBatchRequest(reqs))
            return np.asarray([[int(p.id) for p in r] + [-1] * (k - len(r)) for r in res], dtype=np.int64)
        raise ValueError(f"not a peer: {self.kind}")

    def reranked(self, cand: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
        """Top ``k`` of each row's candidates by exact inner product (memory-mapped float32)."""
        out = np.full((q.shape[0], k), -1, dtype=np.int64)
        for r in range(q.shape[0]):
            c = np.sort(cand[r][(cand[r] >= 0) & (cand[r] < self.data.shape[0])])
            top = c[np.argsort(-(np.asarray(self.data[c]) @ q[r]))[:k]]
            out[r, : top.size] = top
        return out
