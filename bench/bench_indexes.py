"""Benchmark the vector index backends side by side: build time, memory, recall@10, latency, throughput.

Usage::

    python bench/bench_indexes.py --n 100000 --n 1000000
    python bench/bench_indexes.py --demo 3000          # real text vs image/region embeddings, demo model

Every backend gets the same data and the same query sets in the same run:

* ``exact``: our exact backend (brute force; its answers are the ground truth).
* ``faiss``: our default (FAISS HNSW M=24 over 8-bit scalar-quantised codes, efConstruction 100,
  searched with FAISS's own HNSW search, with exact re-rank; efSearch/re-rank depth calibrated on
  image-like and synthetic text-like queries, see ``fgsearch.indexes.faiss.calibration_queries``).
  Its build prints where the time went (graph, calibration, snapshot files, the rest: the store)
  and the build process's peak RSS after each 50k flush.
* ``faiss-ivfpq``: our backend with ``structure="ivfpq"`` (the previous default, IVF-PQ).
* ``fg-usearch``: our usearch backend (``--backend usearch``, its defaults: i8 codes, connectivity
  16, expansion_add 128, exact re-rank, expansion_search calibrated as the FAISS default's
  efSearch), built with the same ingest pattern as ``faiss`` (adds in 50k batches, each flushed,
  then a save); its graph check on open is printed as ``graph check on open``.
* ``hnsw-sq8``: plain FAISS ``IndexHNSWSQ`` (8-bit, M=32, FAISS's default efConstruction 40) with an
  exact re-rank of 100 candidates from the memory-mapped float32 data, at efSearch 128/256/512.
* ``qdrant-edge``: the Qdrant engine embedded in-process (PyPI ``qdrant-edge-py``): HNSW m=32,
  ef_construct 100, int8 scalar quantisation in RAM, 10x oversampling re-scored from the stored
  vectors (100 candidates for k=10, as ours), one optimised segment, at hnsw_ef 64/128/256/512.
* ``qdrant``: qdrant-client's local mode (brute force in Python), only up to ``--qdrant-max``.
* ``usearch-DTYPE-CONN`` (e.g. ``usearch-i8-16``, ``usearch-f16-32``): usearch's HNSW (PyPI
  ``usearch``), inner product over ``i8`` or ``f16`` vectors with ``CONN`` links per node,
  expansion_add 128 (its default), built with every core, searched memory-mapped
  (``Index.restore(view=True)``) at expansion_search 32/64/128/256/512, each without a re-rank
  (setting ``E``) and with an exact re-rank of 30 candidates from the memory-mapped float32 vectors
  (setting ``E+rr``).
* ``hnswlib-M`` (e.g. ``hnswlib-16``): hnswlib (float32, inner product, M links, ef_construction
  100), ef 32/64/128/256/512; float32 distances are exact, so no re-rank.

Synthetic data (fixed seed, generated in chunks of 50k rows so 1M x 512 never sits in RAM twice),
three generators (``--data clip,isotropic,unseen``; each reported separately):

* ``clip`` (default): CLIP-like image embeddings. Three properties of real CLIP image vectors are
  matched, because they decide how hard nearest-neighbour search is:
  (1) the *cone*: image embeddings share a large common direction, mean pairwise cosine ~0.5
  (Liang et al., "Mind the Gap", NeurIPS 2022); here 0.46;
  (2) a *decaying spectrum*: the covariance eigenvalues of CLIP embeddings fall off steeply (a few
  dozen principal directions carry most of the variance; the rest is low-variance noise), so the
  data has a low intrinsic dimension; here eigenvalue ``i`` is proportional to ``1/i`` in a random
  rotation, a participation ratio of 28 of 512 dimensions (70% of the variance in 50);
  (3) *neighbourhoods at several scales*: a collection holds topics (Zipf-sized, ``1/rank**0.8``,
  ``--clusters`` of them), scenes within a topic (20 each) and individual photos; an image query
  (a stored vector plus noise) has best / 10th / 100th match cosine 0.90 / 0.82 / 0.77 at 1M (the
  same scene, then the same topic). Each vector is
  ``normalize(1.2 m + 1.0 B g_topic + 0.6 B g_scene + 0.6 B g_photo)`` with ``m`` the shared
  direction, ``g`` standard Gaussians and ``B`` the rotation scaled by the spectrum.
* ``isotropic`` (round 1's generator, kept as a stress set): ``clusters`` centres drawn uniformly on
  the unit sphere, Zipf cluster sizes, each vector ``normalize(0.5 * m + c_j + s_j * g / sqrt(dim))``
  with isotropic 512-d noise of norm ``s_j`` in [0.8, 1.6]: the members of a cluster are random
  directions around its centre (an image's 10th and 100th neighbours have nearly the same cosine,
  0.47 / 0.45 at 1M), a full-dimensional worst case for every graph and IVF index, unlike real
  embeddings.
* ``unseen`` (``bench/unseen_data.py``): written apart from the two above and from the index's own
  calibration sets, with its OWN image and text queries (out-of-sample photos; captions with a
  wider modality gap, a text-side structure and concept meanings): another cone strength, local
  subspaces per domain, heavy tails. The FAISS default was never tuned on it.

Query sets (each reported separately):

* ``image``: stored vectors plus Gaussian noise of norm 0.5, normalized (cosine to their source ~0.9).
* ``text``: cross-modal queries (``cross_modal_queries`` with another seed than the index's own
  calibration): their own shared direction, almost nothing of the images' common direction, and a
  meaning drawn from a stored vector and its neighbours, scaled so the best match has cosine 0.30;
  at 1M the best / 10th / 100th match have cosine 0.31 / 0.30 / 0.27 on ``clip`` and 0.31 / 0.28 /
  0.25 on ``isotropic``: ranks closer together than CLIP ViT-B/16 text queries on COCO (~0.30 at
  rank 1, ~0.15 at rank 100), so a harder set than real text queries.
  The cosines of ranks 1, 10 and 100 are printed for every set.
* ``--demo N``: the shipped demo model's text embeddings of varied FineShapes-style captions
  against its image and region embeddings of N generated FineShapes-like photos (real modality
  gap, small dimension). Index calibration there uses synthetic queries only.

``--served N`` (N >= 100): after ``faiss`` and ``fg-usearch`` are measured as built, the index is
opened for writing, serves N text queries of another draw of the same generator (none of them
measured; the measurement's own queries are never recorded as served), takes a snapshot, which
measures recall on them and calibrates again with them as a set, and is measured again: rows
``faiss+served`` / ``fg-usearch+served``. This is what a library does once users have queried it
(docs/backends.md, "Served queries"). ``--reuse --reuse-builds`` measures the indexes a ``--keep``
run left instead of building them again (``--keep`` keeps them; else each is deleted once measured).

Each backend is built in one subprocess (timed: adds in batches of 50k, each followed by
``flush()`` as the ingest pipeline does, then ``save()``) and measured in a fresh one that opens
the index read-only. Latency is single queries on one thread (FAISS OpenMP and Qdrant's search
pool set to 1); throughput is one batch of all queries, also on one thread. RAM is read from
``/proc/self/status`` before the open (after importing the backend's libraries) and after all
queries: ``RssAnon`` is memory the process owns, ``RssFile`` is memory-mapped file pages it
touched (page cache the kernel can drop); both are printed, and bytes/vector uses their sum.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import (
    CHUNK,
    GENERATORS,
    demo_dataset,
    make_queries,
    make_text_queries,
)
from index_workers import worker_build, worker_query, worker_serve
from unseen_data import generate_unseen, image_queries, text_queries

ALL_GENERATORS = {**GENERATORS, "unseen": generate_unseen}


def _query_sets(gen: str, data: np.ndarray, nq: int, clusters: int) -> dict[str, np.ndarray]:
    """The image-like and text-like queries of a generator (``unseen`` has its own)."""
    if gen == "unseen":
        return {"image": image_queries(data, nq, clusters), "text": text_queries(data, nq, clusters)}
    return {"image": make_queries(data, nq), "text": make_text_queries(data, nq)}


#: the draw of the queries a library "served" before the measured ones (``--served``): the same
#: generator as the measured text queries, another draw, none of them measured
SERVED_DRAW = 7_000


def _served_queries(gen: str, data: np.ndarray, nq: int, clusters: int) -> np.ndarray:
    if gen == "unseen":
        return text_queries(data, nq, clusters, draw=SERVED_DRAW)
    return make_text_queries(data, nq, seed=SERVED_DRAW)


def _ours_graph(kind: str) -> bool:
    """A backend of ours whose search breadth is calibrated (and so follows served queries)."""
    return kind == "faiss" or kind == "fg-usearch"


def _run_worker(args: list[str], timeout: float, extra_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cosines(data_path: Path, q: np.ndarray) -> str:
    """Median cosine of ranks 1, 10 and 100 (exact, over every stored vector)."""
    data = np.load(data_path, mmap_mode="r")
    best = np.full((q.shape[0], 0), -np.inf, dtype=np.float32)
    for s in range(0, data.shape[0], CHUNK):
        sc = q @ np.asarray(data[s : s + CHUNK]).T
        best = -np.sort(-np.concatenate([best, sc], axis=1), axis=1)[:, :100]
    r1, r10, r100 = np.median(best[:, [0, 9, min(99, best.shape[1] - 1)]], axis=0)
    return f"best match cosine {r1:.3f}, 10th {r10:.3f}, 100th {r100:.3f}"


# --------------------------------------------------------------------------- main
def run_dataset(label: str, work: Path, data_path: Path, qpaths: dict[str, Path], backends: list[str], args) -> list:
    rows = []
    builds: dict[str, dict] = {}
    n = int(np.load(data_path, mmap_mode="r").shape[0])
    for name, qp in qpaths.items():
        if not args.reuse:  # (a reusing run's first run printed them)
            print(f"# {label}: {name} queries: {_cosines(data_path, np.load(qp))}", flush=True)
    for kind in backends:
        if kind == "qdrant" and n > args.qdrant_max:
            print(f"# {label}: qdrant (client local mode) skipped (> --qdrant-max {args.qdrant_max})", flush=True)
            continue
        idx_dir = work / f"{kind}-{label}"
        built = idx_dir.with_suffix(".build.json")
        if args.reuse_builds and built.is_file() and idx_dir.is_dir():
            b = json.loads(built.read_text())
            print(f"# {kind} {label}: the build a run left in {idx_dir} reused", flush=True)
        else:
            shutil.rmtree(idx_dir, ignore_errors=True)
            b = _run_worker(["--worker", "build", kind, str(data_path), str(idx_dir)], args.timeout)
        qsets = {
            name: (str(qp), "-" if kind == "exact" else str(qp.with_name(qp.stem + "-truth.npy")))
            for name, qp in qpaths.items()
        }
        query = ["--worker", "query", kind, str(idx_dir), str(data_path), json.dumps(qsets)]
        quiet = {"FGSEARCH_SERVED_QUERIES": "0"}  # the measured queries are not recorded as served
        results = [(kind, _run_worker(query, args.timeout, quiet))]
        served_path = work / f"queries-{label}-served.npy"
        if args.served and _ours_graph(kind) and served_path.is_file():
            sv = _run_worker(["--worker", "serve", kind, str(idx_dir), str(served_path)], args.timeout)
            print(
                f"# {kind} {label}: served {sv['served_n']} text queries of another draw in {sv['serve_s']:.1f}s, "
                f"then a snapshot in {sv['snapshot_s']:.1f}s: breadth {sv['breadth']}, served record {sv['served']}",
                flush=True,
            )
            results.append((f"{kind}+served", _run_worker(query, args.timeout, quiet)))
        for shown, r in results:
            if kind == "exact":
                for run in r["runs"]:
                    run["recall10"] = 1.0
            for run in r["runs"]:
                row = {"backend": shown, "data": label, **b, **{k: v for k, v in r.items() if k != "runs"}, **run}
                rows.append(row)
                print(
                    f"# {shown} {label} {run['set']} setting={run['setting']}: build {b['build_s']:.1f}s "
                    f"recall {run['recall10']:.4f} p50 {run['p50_ms']:.2f}ms p95 {run['p95_ms']:.2f}ms",
                    flush=True,
                )
            print(f"#   params {r['params']}", flush=True)
        check = results[0][1]["graph_check_ms"]
        print(
            f"# {kind} {label}: build {b['build_s']:.1f}s ({b.get('build_cpu_s', float('nan')):.1f} CPU s), "
            f"build peak RSS {b['build_peak_B'] / 2**30:.2f} GiB"
            + (f", graph check on open {check:.1f} ms" if check is not None else ""),
            flush=True,
        )
        if (kind.startswith("faiss") or kind == "fg-usearch") and b.get("build_parts_s"):
            parts = ", ".join(f"{k} {v:.1f}s" for k, v in b["build_parts_s"].items())
            print(f"# {kind} {label}: build time by part (served check includes its calibration): {parts}")
            peaks = b["build_peaks"]
            marks = sorted({peaks[min(len(peaks) - 1, round(f * len(peaks)) - 1)][0] for f in (0.25, 0.5, 1.0)})
            shown = ", ".join(f"{v:,} vectors {p / 2**30:.2f} GiB" for v, p in peaks if v in marks)
            print(f"# {kind} {label}: build peak RSS so far at {shown}", flush=True)
        builds[kind] = b
        if not args.keep:  # kept for --reuse-builds; else each index goes once measured (disk)
            shutil.rmtree(idx_dir, ignore_errors=True)
    _print_build_ratios(label, builds)
    return rows


def _print_build_ratios(label: str, builds: dict[str, dict]) -> None:
    """Our builds' (faiss, fg-usearch) time and peak memory over the fastest peer's, measured in this run."""
    peers = {k: b for k, b in builds.items() if not k.startswith(("faiss", "fg-")) and k not in ("exact", "qdrant")}
    for mine in ("faiss", "fg-usearch"):
        if mine in builds and peers:
            _print_build_ratio(label, mine, builds[mine], peers)


def _print_build_ratio(label: str, mine: str, ours: dict, peers: dict[str, dict]) -> None:
    fastest = min(peers, key=lambda k: peers[k]["build_s"])
    best = peers[fastest]
    print(
        f"# {label}: build {mine} / fastest peer ({fastest}): time {ours['build_s']:.1f}s / {best['build_s']:.1f}s = "
        f"{ours['build_s'] / best['build_s']:.2f}x, peak RSS {ours['build_peak_B'] / 2**30:.2f} / "
        f"{best['build_peak_B'] / 2**30:.2f} GiB = {ours['build_peak_B'] / best['build_peak_B']:.2f}x, CPU time "
        f"{ours.get('build_cpu_s', float('nan')) / best.get('build_cpu_s', float('nan')):.2f}x",
        flush=True,
    )


def print_table(rows: list) -> None:
    head = (
        f"{'backend':<15} {'setting':>7} {'data':>14} {'set':>5} {'recall@10':>9} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'batch q/s':>9} {'build s':>8} {'peak GB':>7} {'B/vec':>6} {'anon':>6} {'file':>6} {'disk MB':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        setting = "-" if r["setting"] is None else str(r["setting"])
        print(
            f"{r['backend']:<15} {setting:>7} {r['data']:>14} {r['set']:>5} {r['recall10']:>9.4f} {r['p50_ms']:>7.2f} "
            f"{r['p95_ms']:>7.2f} {r['batch_qps']:>9.0f} {r['build_s']:>8.1f} {r['build_peak_B'] / 2**30:>7.2f} "
            f"{r['bytes_per_vector']:>6.0f} "
            f"{r['anon_bytes_per_vector']:>6.0f} {r['rss_file_B'] / max(r['n'], 1):>6.0f} "
            f"{(r['disk_B'] or 0) / 1e6:>8.0f}"
        )


def run_worker_args(w: list[str]) -> None:
    """A build or query worker (a subprocess of the main run): prints its result as JSON."""
    if w[0] == "build":
        res = worker_build(w[1], Path(w[2]), Path(w[3]))
    elif w[0] == "serve":
        res = worker_serve(w[1], Path(w[2]), Path(w[3]))
    else:
        qsets = {k: (Path(q), None if t == "-" else Path(t)) for k, (q, t) in json.loads(w[4]).items()}
        res = worker_query(w[1], Path(w[2]), Path(w[3]), qsets)
    # also beside the index directory, so a long run's finished backends survive an interruption
    Path(w[3] if w[0] == "build" else w[2]).with_suffix(f".{w[0]}.json").write_text(json.dumps(res, default=str))
    print(json.dumps(res, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="synthetic collection size (repeatable)")
    ap.add_argument("--demo", type=int, default=0, help="also run the demo-model set over this many photos")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument(
        "--backends",
        default="exact,faiss,fg-usearch,hnsw-sq8,qdrant-edge,usearch-i8-16,usearch-i8-24,usearch-i8-32,"
        "usearch-f16-16,usearch-f16-24,usearch-f16-32,hnswlib-16,faiss-ivfpq",
    )
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=1000, help="clusters (isotropic) or topics (clip)")
    ap.add_argument("--data", default="clip", help="synthetic generators, comma-separated: clip, isotropic, unseen")
    ap.add_argument("--qdrant-max", type=int, default=100_000, help="skip qdrant-client's local mode above this")
    ap.add_argument("--workdir", type=Path, default=None, help="where data and indexes go (default: temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory and the indexes built there")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --workdir: use the data, queries and exact answers a run left there (--keep) instead "
        "of generating them (e.g. a second process measuring more backends on the same files)",
    )
    ap.add_argument(
        "--reuse-builds",
        action="store_true",
        help="with --reuse: measure the indexes a --keep run built there instead of building them again",
    )
    ap.add_argument(
        "--served",
        type=int,
        default=0,
        help="also measure faiss and fg-usearch after they served this many text queries of another draw "
        "(>= 100, the served_min) and took a snapshot: rows named KIND+served",
    )
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, every peer, in seconds (a temp dir)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke and not args.worker:
        args.n, args.dim, args.queries, args.clusters, args.workdir = [3000], 64, 40, 30, None
        args.backends, args.data, args.served = "exact,faiss,fg-usearch,usearch-i8-16,hnswlib-16", "unseen", 120

    if args.worker:
        run_worker_args(args.worker)
        return

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "exact" in backends:
        backends.remove("exact")
    backends.insert(0, "exact")  # ground truth first
    if args.reuse and not args.workdir:
        ap.error("--reuse needs --workdir (the folder a --keep run left)")
    if args.reuse_builds and not args.reuse:
        ap.error("--reuse-builds needs --reuse")
    if args.served and args.served < 100:
        ap.error("--served needs at least 100 queries (an index calibrates on served queries once 100 are held)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fgsearch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        gens = [g.strip() for g in args.data.split(",") if g.strip()]
        if unknown := sorted(set(gens) - set(ALL_GENERATORS)):
            ap.error(f"--data: unknown generator {', '.join(unknown)}; choose from {', '.join(ALL_GENERATORS)}")
        for gen in gens:
            for n in args.n or ([] if args.demo else [100_000]):
                label = f"{gen}{n}"
                data_path = work / f"data-{label}-{args.dim}.npy"
                t = time.perf_counter()
                qpaths = {"image": work / f"queries-{label}-image.npy", "text": work / f"queries-{label}-text.npy"}
                truths = [q.with_name(q.stem + "-truth.npy") for q in qpaths.values()]
                served_path = work / f"queries-{label}-served.npy"
                if args.reuse and all(p.is_file() for p in [data_path, *qpaths.values(), *truths]):
                    print(f"# {label}: data, queries and exact answers reused from {work}", flush=True)
                    if args.served and not served_path.is_file():
                        data = np.load(data_path, mmap_mode="r")
                        np.save(served_path, _served_queries(gen, data, args.served, args.clusters))
                    rows += run_dataset(label, work, data_path, qpaths, [b for b in backends if b != "exact"], args)
                    continue
                data = ALL_GENERATORS[gen](data_path, n, args.dim, args.clusters)
                for name, q in _query_sets(gen, data, args.queries, args.clusters).items():
                    np.save(qpaths[name], q)
                if args.served:
                    np.save(served_path, _served_queries(gen, data, args.served, args.clusters))
                del data
                print(f"# {label}: data and queries generated in {time.perf_counter() - t:.1f}s", flush=True)
                rows += run_dataset(label, work, data_path, qpaths, backends, args)
        if args.demo:
            data_path, qpaths = demo_dataset(work, args.demo, args.queries)
            rows += run_dataset(f"demo{args.demo}", work, data_path, qpaths, backends, args)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows)
    print()
    print(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
