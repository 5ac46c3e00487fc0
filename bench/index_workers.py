"""The worker processes of ``bench_indexes.py``: build one index, serve queries into one, measure one.

Each runs in its own subprocess (``bench_indexes.py --worker build|serve|query ...``), so a build's
peak RSS and a search's resident memory are the backend's alone. Kept apart from the run's driver
(bench_indexes.py: data, query sets, the order of backends, the tables) so each file reads as one
thing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from bench_data import CHUNK
from bench_data import proc_status as _rss
from index_peers import PeerIndex, build_peer, is_peer, peer_settings


def _config(kind: str, index_dir: Path) -> object:
    from fgsearch.indexes import FaissConfig, QdrantConfig, UsearchConfig

    if kind == "faiss":
        return FaissConfig()
    if kind == "faiss-ivfpq":
        return FaissConfig(structure="ivfpq")
    if kind == "qdrant":
        return QdrantConfig(path=str(index_dir))
    if kind == "fg-usearch":
        return UsearchConfig()
    return None


def _ours(kind: str) -> str:
    if kind == "fg-usearch":
        return "usearch"
    return "faiss" if kind.startswith("faiss") else kind


def worker_build(kind: str, data_path: Path, index_dir: Path) -> dict[str, float]:
    """Build one index; its time, and the build process's peak RSS (``VmHWM``, data memory-mapped)."""
    import resource

    res = _build(kind, data_path, index_dir)
    res["build_peak_B"] = _rss()["VmHWM"]
    use = resource.getrusage(resource.RUSAGE_SELF)
    res["build_cpu_s"] = use.ru_utime + use.ru_stime  # CPU seconds, all threads: steadier than wall time under load
    return res


def _build(kind: str, data_path: Path, index_dir: Path) -> dict[str, float]:
    data = np.load(data_path, mmap_mode="r")
    n, dim = data.shape
    t0 = time.perf_counter()
    if is_peer(kind):
        return build_peer(kind, data, index_dir, t0)
    from fgsearch.indexes import create_index

    index = create_index(_ours(kind), index_dir, dim, config=_config(kind, index_dir))
    peaks = []  # (vectors, peak RSS so far) after each flush: does the peak grow faster than the data?
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        index.add(np.arange(s, e), np.asarray(data[s:e]))
        index.flush()
        peaks.append((e, _rss()["VmHWM"]))
    t_add = time.perf_counter() - t0
    index.save()
    parts = dict(getattr(index, "build_seconds", {}))
    index.close()
    total = time.perf_counter() - t0
    parts["store and the rest"] = total - sum(v for k, v in parts.items() if k != "served check")
    return {"build_s": total, "add_s": t_add, "build_parts_s": parts, "build_peaks": peaks}


def worker_serve(kind: str, index_dir: Path, served_path: Path) -> dict:
    """A library that served queries: the built index opened for writing, its record of served
    queries emptied (the measurement's own queries are not recorded: its workers run with
    FGSEARCH_SERVED_QUERIES=0), every query of ``served_path`` searched once, then a snapshot,
    which measures recall on them and calibrates again with them as a set (docs/backends.md)."""
    import faiss

    from fgsearch.indexes import open_index
    from fgsearch.indexes.faiss.served import FILE

    faiss.omp_set_num_threads(1)
    (index_dir / FILE).unlink(missing_ok=True)
    index = open_index(_ours(kind), index_dir, config=_config(kind, index_dir))
    q = np.load(served_path)
    t = time.perf_counter()
    for i in range(q.shape[0]):
        index.search(q[i : i + 1], 10)
    serve_s = time.perf_counter() - t
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # the snapshot runs as a build does
    t = time.perf_counter()
    index.save()
    snapshot_s = time.perf_counter() - t
    p = index.stats().params
    index.close()
    breadth = p.get("ef_search", p.get("expansion_search"))
    out = {"served_n": int(q.shape[0]), "serve_s": serve_s, "snapshot_s": snapshot_s, "breadth": breadth}
    return {**out, "served": p.get("served")}


class _Searcher:
    """One loaded index and its search settings; ``search(q, k) -> ids``."""

    def __init__(self, kind: str, index_dir: Path, data_path: Path) -> None:
        self.kind = kind
        self.settings: list[object] = [None]
        if is_peer(kind):
            self.peer: PeerIndex | None = PeerIndex(kind, index_dir, data_path)
            self.index, self.settings, self.n = self.peer.index, peer_settings(kind), self.peer.n
        else:
            from fgsearch.indexes import open_index

            self.peer = None
            self.index = open_index(_ours(kind), index_dir, read_only=kind != "qdrant", config=_config(kind, index_dir))
            self.n = self.index.count()
            if getattr(self.index, "_entry", None) is not None:
                # the same graph at the same breadth, started where FAISS's greedy descent stops
                # instead of at the best entry pivot (fgsearch.indexes.faiss.entry)
                self.settings = [None, "descent"]
        self.setting: object = self.settings[0]

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        if self.peer is not None:
            return self.peer.search(q, k, self.setting)
        if self.setting == "descent":
            entry, self.index._entry = self.index._entry, None
            try:
                return np.asarray(self.index.search(q, k).ids)
            finally:
                self.index._entry = entry
        return np.asarray(self.index.search(q, k).ids)

    def params(self) -> dict:
        if self.peer is not None:
            return {"ef": self.setting}
        return {k: v for k, v in self.index.stats().params.items() if k != "config"}

    def disk_bytes(self, index_dir: Path) -> int:
        return sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())


def _timed_set(searcher: _Searcher, kind: str, setting: object, name: str, qpath: Path, tpath: Path | None) -> dict:
    """One query set at one setting: single-query latency, batch throughput, recall (or the truth)."""
    q = np.load(qpath)
    for i in range(10):  # warm-up
        searcher.search(q[i : i + 1], 10)
    lat = []
    for i in range(min(30 if kind == "exact" else 300, q.shape[0])):  # exact: only its truth matters
        t = time.perf_counter()
        searcher.search(q[i : i + 1], 10)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    ids = searcher.search(q, 10)
    batch_s = time.perf_counter() - t
    recall = None
    if tpath is not None:
        from fgsearch.indexes.faiss.calibration_queries import recall_at_k

        recall = recall_at_k(ids, np.load(tpath))
    else:
        np.save(qpath.with_name(qpath.stem + "-truth.npy"), ids)
    return {
        "setting": setting,
        "set": name,
        "recall10": recall,
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p95_ms": 1000 * float(np.percentile(lat, 95)),
        "batch_qps": q.shape[0] / batch_s,
    }


def worker_query(kind: str, index_dir: Path, data_path: Path, qsets: dict[str, tuple[Path, Path | None]]) -> dict:
    """Latency, throughput, recall for every query set and search setting; memory after all of it."""
    import faiss

    faiss.omp_set_num_threads(1)
    if kind.startswith("qdrant"):
        import qdrant_client  # noqa: F401
        import qdrant_edge  # noqa: F401
    before = _rss()
    t0 = time.perf_counter()
    searcher = _Searcher(kind, index_dir, data_path)
    open_s = time.perf_counter() - t0
    after_open = _rss()
    check_ms = None
    if kind.startswith("faiss") and getattr(searcher.index, "tier", "") == "hnsw":
        from fgsearch.indexes.hnsw.check import check_graph

        t = time.perf_counter()  # what every open of a snapshot pays for fgsearch's graph check
        check_graph(searcher.index._ann)
        check_ms = 1000 * (time.perf_counter() - t)
    elif kind == "fg-usearch" and searcher.index.tier == "hnsw":  # timed by the open itself
        check_ms = 1000 * searcher.index.build_seconds.get("graph check", 0.0)
    if kind != "exact":
        # warm every backend the same way before anything is timed: the timed queries of each set,
        # one at a time, at the widest setting (a 1M index is ~1-3 GB of mapped pages; ten queries
        # left the first set of each backend measuring page faults: qdrant-edge's first setting
        # and our image set read 0.6-1.3 ms that way, against 0.2-0.4 ms once warm)
        searcher.setting = searcher.settings[-1]
        for qpath, _ in qsets.values():
            q = np.load(qpath)
            for i in range(min(300, q.shape[0])):
                searcher.search(q[i : i + 1], 10)
    runs = []
    for setting in searcher.settings:
        searcher.setting = setting
        for name, (qpath, tpath) in qsets.items():
            runs.append(_timed_set(searcher, kind, setting, name, qpath, tpath))
    after = _rss()
    n = searcher.n
    d_anon = after["RssAnon"] - before["RssAnon"]
    d_file = after["RssFile"] - before["RssFile"]
    return {
        "n": n,
        "open_s": open_s,
        "runs": runs,
        "rss_anon_open_B": after_open["RssAnon"] - before["RssAnon"],
        "rss_anon_B": d_anon,
        "rss_file_B": d_file,
        "bytes_per_vector": (d_anon + d_file) / max(n, 1),
        "anon_bytes_per_vector": d_anon / max(n, 1),
        "disk_B": searcher.disk_bytes(index_dir),
        "graph_check_ms": check_ms,
        "params": searcher.params(),
    }
