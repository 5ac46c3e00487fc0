"""Benchmark the vector index backends: build time, RAM per vector, recall@10, latency, throughput.

Usage::

    python bench/bench_indexes.py --n 100000 --n 1000000 --backends exact,faiss,qdrant

Data generator (fixed seed, generated in chunks of 50k rows so 1M x 512 never sits in RAM twice):
``clusters`` centres drawn uniformly on the unit sphere, cluster sizes from a Zipf-like law
(weights ``1 / rank**0.8``), each vector ``normalize(0.5 * m + c_j + s_j * g / sqrt(dim))`` where
``m`` is one direction shared by all vectors (CLIP embeddings share a large common component),
``g`` is standard Gaussian noise and ``s_j`` a per-cluster spread in [0.8, 1.6]. Queries are stored
vectors plus Gaussian noise of norm 0.5, normalized (cosine to their source ~0.9). Ground truth is
the exact backend's top 10.

Each backend is built in one subprocess (timed: adds in batches of 50k, each followed by
``flush()`` as the ingest pipeline does, then ``save()``) and measured in a fresh one that opens
the index read-only. RAM is read from ``/proc/self/status`` before the open (after importing the
backend's libraries) and after all queries: ``RssAnon`` is memory the process owns, ``RssFile``
is memory-mapped file pages it touched (page cache the kernel can drop); both are printed, and
bytes/vector uses their sum. Qdrant's embedded mode is capped at ``--qdrant-max`` vectors (it is
brute force in Python and slow to build).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 50_000
SEED = 1234


# --------------------------------------------------------------------------- data
def generate(path: Path, n: int, dim: int, clusters: int, seed: int = SEED) -> np.ndarray:
    """Write ``n`` clustered unit vectors to ``path`` (.npy) chunk by chunk; return a memmap."""
    if path.exists():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (n, dim):
            return arr
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.8, 1.6, clusters)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    weights /= weights.sum()
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n, dim))
    for c, s in enumerate(range(0, n, CHUNK)):
        e = min(s + CHUNK, n)
        r = np.random.default_rng([seed, c])
        lab = r.choice(clusters, size=e - s, p=weights)
        x = 0.5 * shared + centres[lab] + spread[lab, None] * r.standard_normal((e - s, dim)) / math.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x.astype(np.float32)
    out.flush()
    del out
    os.replace(path.with_suffix(".tmp.npy"), path)
    return np.load(path, mmap_mode="r")


def make_queries(data: np.ndarray, nq: int, seed: int = SEED + 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(data.shape[0], size=nq, replace=False))
    q = np.asarray(data[rows], dtype=np.float32)
    q += rng.standard_normal(q.shape).astype(np.float32) * (0.5 / math.sqrt(q.shape[1]))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q


# --------------------------------------------------------------------------- workers
def _rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(val.split()[0]) * 1024
    return out


def _config(kind: str, index_dir: Path) -> object:
    from fgsearch.indexes import FaissConfig, QdrantConfig

    if kind == "faiss":
        return FaissConfig()
    if kind == "qdrant":
        return QdrantConfig(path=str(index_dir))
    return None


def worker_build(kind: str, data_path: Path, index_dir: Path) -> dict[str, float]:
    from fgsearch.indexes import create_index

    data = np.load(data_path, mmap_mode="r")
    n, dim = data.shape
    t0 = time.perf_counter()
    index = create_index(kind, index_dir, dim, config=_config(kind, index_dir))
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        index.add(np.arange(s, e), np.asarray(data[s:e]))
        index.flush()
    t_add = time.perf_counter() - t0
    index.save()
    index.close()
    return {"build_s": time.perf_counter() - t0, "add_s": t_add}


def worker_query(kind: str, index_dir: Path, queries_path: Path, truth_path: Path | None, out_ids: Path) -> dict:
    from fgsearch.indexes import open_index

    q = np.load(queries_path)
    # import the backend's libraries first so their code pages are not counted as index memory
    if kind == "qdrant":
        import qdrant_client  # noqa: F401
    else:
        import faiss  # noqa: F401
    before = _rss()
    t0 = time.perf_counter()
    index = open_index(kind, index_dir, read_only=kind != "qdrant", config=_config(kind, index_dir))
    open_s = time.perf_counter() - t0
    after_open = _rss()
    n = index.count()
    n_single = min(200, q.shape[0])
    for i in range(10):  # warm-up
        index.search(q[i], 10)
    lat = []
    for i in range(n_single):
        t = time.perf_counter()
        index.search(q[i], 10)
        lat.append(time.perf_counter() - t)
    nb = q.shape[0]
    t = time.perf_counter()
    res = index.search(q, 10)
    batch_s = time.perf_counter() - t
    after = _rss()
    np.save(out_ids, res.ids)
    recall = None
    if truth_path is not None:
        from fgsearch.indexes.faiss_index import recall_at_k

        recall = recall_at_k(res.ids, np.load(truth_path))
    stats = index.stats()
    index.close()
    d_anon = after["RssAnon"] - before["RssAnon"]
    d_file = after["RssFile"] - before["RssFile"]
    return {
        "n": n,
        "open_s": open_s,
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p95_ms": 1000 * float(np.percentile(lat, 95)),
        "batch_qps": nb / batch_s,
        "recall10": recall,
        "rss_anon_open_B": after_open["RssAnon"] - before["RssAnon"],
        "rss_anon_B": d_anon,
        "rss_file_B": d_file,
        "bytes_per_vector": (d_anon + d_file) / max(n, 1),
        "anon_bytes_per_vector": d_anon / max(n, 1),
        "disk_B": stats.bytes_on_disk,
        "params": {k: v for k, v in stats.params.items() if k not in ("config",)},
    }


def _run_worker(args: list[str], timeout: float) -> dict:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="collection size (repeatable)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--backends", default="exact,faiss,qdrant")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--qdrant-max", type=int, default=100_000, help="skip Qdrant embedded above this size")
    ap.add_argument("--workdir", type=Path, default=None, help="where data and indexes go (default: temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        w = args.worker
        if w[0] == "build":
            res = worker_build(w[1], Path(w[2]), Path(w[3]))
        else:
            truth = Path(w[4]) if w[4] != "-" else None
            res = worker_query(w[1], Path(w[2]), Path(w[3]), truth, Path(w[5]))
        print(json.dumps(res))
        return

    sizes = args.n or [100_000]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "exact" in backends:
        backends.remove("exact")
    backends.insert(0, "exact")  # ground truth first
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fgsearch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in sizes:
            data_path = work / f"data-{n}-{args.dim}.npy"
            t = time.perf_counter()
            data = generate(data_path, n, args.dim, args.clusters)
            q = make_queries(data, args.queries)
            del data
            q_path = work / f"queries-{n}.npy"
            np.save(q_path, q)
            print(f"# n={n}: data generated in {time.perf_counter() - t:.1f}s", flush=True)
            truth_path = work / f"truth-{n}.npy"
            for kind in backends:
                if kind == "qdrant" and n > args.qdrant_max:
                    print(f"# n={n}: qdrant embedded skipped (> --qdrant-max {args.qdrant_max})", flush=True)
                    continue
                idx_dir = work / f"{kind}-{n}"
                shutil.rmtree(idx_dir, ignore_errors=True)
                b = _run_worker(["--worker", "build", kind, str(data_path), str(idx_dir)], args.timeout)
                out_ids = work / f"ids-{kind}-{n}.npy"
                tr = "-" if kind == "exact" else str(truth_path)
                r = _run_worker(["--worker", "query", kind, str(idx_dir), str(q_path), tr, str(out_ids)], args.timeout)
                if kind == "exact":
                    shutil.copy(out_ids, truth_path)
                    r["recall10"] = 1.0
                row = {"backend": kind, "n": n, **b, **r}
                rows.append(row)
                print(
                    f"# {kind} n={n}: build {b['build_s']:.1f}s recall {r['recall10']:.4f} "
                    f"p50 {r['p50_ms']:.2f}ms params {r['params']}",
                    flush=True,
                )
                shutil.rmtree(idx_dir, ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    head = (
        f"{'backend':<8} {'n':>9} {'build s':>8} {'B/vec RAM':>10} {'(anon':>7} {'+file)':>7} "
        f"{'recall@10':>9} {'p50 ms':>7} {'p95 ms':>7} {'batch q/s':>10} {'disk MB':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['backend']:<8} {r['n']:>9} {r['build_s']:>8.1f} {r['bytes_per_vector']:>10.0f} "
            f"{r['anon_bytes_per_vector']:>7.0f} {r['rss_file_B'] / max(r['n'], 1):>7.0f} "
            f"{r['recall10']:>9.4f} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['batch_qps']:>10.0f} "
            f"{(r['disk_B'] or 0) / 1e6:>8.0f}"
        )
    print()
    print(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
