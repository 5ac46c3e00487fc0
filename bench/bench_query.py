"""Query latency on a library of 1M region vectors (synthetic vectors in a real catalog).

    python bench/bench_query.py [--images 62500] [--regions-per-image 16] [--queries 50]

Builds (once, kept in --work) a library whose catalog holds --images images with
--regions-per-image boxes each (1M region vectors by default) and whose FAISS indexes hold
synthetic image-like unit vectors from bench_indexes.py's generators (``--data clip``, the
default: CLIP-like vectors with a shared direction, a decaying spectrum and topic/scene/photo
structure; ``--data isotropic``: round 1's Zipf-sized clusters with isotropic noise). The text
encoder is the fg-clip-base architecture with random weights: its text queries are cross-modal in
a degenerate sense (nothing ties them to the stored vectors, best-match cosine near 0), so the
library is calibrated on synthetic cross-modal queries (best match ~0.3, as a trained model's
captions) instead of that model's caption embeddings. Prints the index parameters; warm p50/p95
of search + fusion + catalog lookup for synthetic text-like query vectors; of text encoding and
of search + fusion + lookup for a 20-word and a 150-word text query; and the cold time of a
whole `fgsearch query` process.

Filtered queries (issue 24.5): the images live in nested folders holding 0.1 %, 1 %, 10 % and 50 %
of the library (:data:`FOLDERS`) and carry capture dates (:data:`DATE_RANGE` keeps ~5 %). For
``--under`` each folder, a date range, ``--not`` and ``--by region`` (alone and with a folder),
the bench prints the filter's size, the cost of building its allowed set in the catalog, p50/p95
of search + fusion + lookup, and recall@10 against the same search with exact indexes (results,
and the region index's own top 10), beside the unfiltered figures. The sweep then times the
region index's two ways of answering a filter (exact over the allowed rows; the graph at
``efSearch / selectivity``) on random filters of ``--sweep`` shares, with the graph's recall
widened and not: the figures behind :mod:`fgsearch.indexes.filtered`'s threshold.
``--build-once``: every vector is added before one snapshot builds each graph (less than half
the work of the ingest pattern; a separate library in ``--work``).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

#: Nested folders of the built library: (folder, share of the images under it, subfolders
#: included). Image i lives in the deepest folder whose share covers it; the vectors of image i are
#: random draws, so each folder holds a random sample of the collection.
FOLDERS = (
    ("/photos/all/half/tenth/hundredth/thousandth", 0.001),
    ("/photos/all/half/tenth/hundredth", 0.01),
    ("/photos/all/half/tenth", 0.1),
    ("/photos/all/half", 0.5),
    ("/photos/all/rest", 1.0),
)
#: Capture dates: image i is taken on day ((i * 7919) mod n) / n of 2020-2024 (a permutation, so a
#: date range holds a share of the images spread over every folder and id range).
TAKEN_FROM, TAKEN_DAYS = datetime(2020, 1, 1), 1827
#: The date range the bench filters on: 91 of 1,827 days, ~5 % of the images.
DATE_RANGE = (datetime(2023, 1, 1), datetime(2023, 4, 2))


def image_path(i: int, n: int) -> str:
    folder = next(f for f, share in FOLDERS if i < share * n)
    return f"{folder}/{i // 1000:03d}/img_{i:07d}.jpg"


def taken_at(i: int, n: int) -> datetime:
    return TAKEN_FROM + timedelta(days=TAKEN_DAYS * ((i * 7919) % n) / n)


def build(
    work: Path,
    n_images: int,
    per: int,
    dim: int,
    model_dir: Path,
    data: str = "clip",
    *,
    once: bool = False,
    flat_threshold: int | None = None,
) -> Path:
    """The bench library (kept in ``work``). Its indexes are built as an ingest builds them: a flush
    per 2,000 images, so the graph is rebuilt as the collection grows; ``once``: every vector is
    added first and one snapshot builds each graph (less than half the work: the 1M figures of the
    filtered queries on a machine shared with other runs)."""
    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_data import GENERATORS

    lib_dir = work / f"lib-{data}-v2{'-once' if once else ''}"  # v2: nested folders and capture dates
    if (lib_dir / "catalog.sqlite").exists():
        return lib_dir
    work.mkdir(parents=True, exist_ok=True)  # bench_serve builds in a subfolder of its --work
    generate = GENERATORS[data]
    global_vecs = generate(work / f"global-{data}.npy", n_images, dim, 1000, seed=1)
    region_vecs = generate(work / f"regions-{data}.npy", n_images * per, dim, 1000, seed=2)
    t0 = time.perf_counter()
    from fgsearch.library import BackendSettings

    # --smoke: graphs from a few hundred vectors (FAISS's least: 1,000), so the filtered paths run
    backend = None
    if flat_threshold is not None:
        backend = BackendSettings("faiss", {"flat_threshold": flat_threshold, "calibration_queries": 20})
    regions = RegionSettings(proposer="grid", max_regions=per)
    with Library.open(lib_dir, model=str(model_dir), regions=regions, backend=backend) as lib:
        # A library calibrates its FAISS tiers on its model's embeddings of 150 captions. This
        # model has random weights: its captions bear no relation to the synthetic vectors (best
        # match cosine ~0, where a trained model's is ~0.3), a degenerate query set no real
        # library meets. Calibrate on the synthetic cross-modal queries instead (best match 0.3).
        lib.global_index.set_calibration_queries(None)
        lib.region_index.set_calibration_queries(None)
        chunk = 2000
        pending: list[tuple[list[int], list[tuple[str, int, int]]]] = []
        for s in range(0, n_images, chunk):
            m = min(chunk, n_images - s)
            items = []
            for i in range(s, s + m):
                boxes = [
                    (0.05 * (j % 4), 0.05 * (j // 4), 0.5 + 0.05 * (j % 4), 0.5 + 0.05 * (j // 4)) for j in range(per)
                ]
                items.append(
                    {
                        "sha256": f"{i:064x}",
                        "width": 1024,
                        "height": 768,
                        "captured_at": taken_at(i, n_images),
                        "boxes": boxes,
                        "proposer": "grid",
                    }
                )
            cids, rids = lib.catalog.reserve_contents(items)
            lib.global_index.add(np.asarray(cids, np.int64), np.asarray(global_vecs[s : s + m]))
            flat = np.asarray([r for rr in rids for r in rr], np.int64)
            lib.region_index.add(flat, np.asarray(region_vecs[s * per : s * per + len(flat)]))
            files = [(image_path(i, n_images), 100_000, 1_700_000_000_000_000_000) for i in range(s, s + m)]
            pending.append((cids, files))
            if not once or s + m == n_images:
                if once:
                    print("\n  building the graphs in one snapshot", flush=True)
                    lib.global_index.save()
                    lib.region_index.save()
                lib.global_index.flush()
                lib.region_index.flush()
                for done, paths in pending:  # confirmed once their vectors are durable
                    lib.catalog.confirm_contents(done, paths, 1)
                pending.clear()
            print(f"\r  built {s + m}/{n_images} images", end="", flush=True)
        lib.global_index.save()
        lib.region_index.save()
    print(f"\nbuilt library with {n_images} images / {n_images * per} regions in {time.perf_counter() - t0:.0f}s")
    return lib_dir


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p))


def warm_figures(lib_dir: Path, args: argparse.Namespace, rng: np.random.Generator, words: list[str]) -> None:
    """Warm p50/p95 of search + fusion + lookup (text-like vectors) and of 20- and 150-word queries."""
    from fgsearch.library import Library
    from fgsearch.search import QueryInfo, SearchQuery

    with Library.open(lib_dir, read_only=True) as lib:
        print(f"library: {lib.global_index.count()} images, {lib.region_index.count()} region vectors")
        for name, idx in (("global", lib.global_index), ("regions", lib.region_index)):
            p = idx.stats().params
            print(f"{name} index: tier {p.get('tier')}, calibration {p.get('calibration')}")
        from bench_data import make_text_queries

        from fgsearch.search import search_vector

        region_vecs = np.load(args.work / f"regions-{args.data}.npy", mmap_mode="r")
        text_like = make_text_queries(region_vecs, args.queries + 3)
        ms = []
        for qi, v in enumerate(text_like):
            t0 = time.perf_counter()
            lib.consistent(lambda v=v: search_vector(lib.store, SearchQuery(text="-", k=10), v))
            if qi >= 3:
                ms.append(1000 * (time.perf_counter() - t0))
        print(
            f"synthetic text-like query vectors (best region match cosine ~0.3): search+fusion+lookup "
            f"p50 {pct(ms, 50):.1f} ms p95 {pct(ms, 95):.1f}"
        )
        nf = args.filter_queries
        filtered_figures(lib, args, text_like[3 : 3 + nf], make_text_queries(region_vecs, nf, seed=99))
        filter_sweep(lib, text_like[3 : 3 + nf], args.sweep)
        for n_words in (20, 150):
            enc_ms, search_ms = [], []
            for qi in range(args.queries + 3):
                text = " ".join(rng.choice(words, n_words))
                info = QueryInfo()
                lib.search(query=SearchQuery(text=text, k=10), info=info)
                if qi >= 3:  # warm-up
                    enc_ms.append(info.encode_ms)
                    search_ms.append(info.search_ms)
            total = [a + b for a, b in zip(enc_ms, search_ms, strict=True)]
            print(
                f"{n_words:>3}-word query ({info.text_path} path): text encoding p50 {pct(enc_ms, 50):.1f} ms "
                f"p95 {pct(enc_ms, 95):.1f} | search+fusion+lookup p50 {pct(search_ms, 50):.1f} ms "
                f"p95 {pct(search_ms, 95):.1f} | end-to-end p50 {pct(total, 50):.1f} ms p95 {pct(total, 95):.1f}"
            )


class ExactReference:
    """An index of the library searched exactly (the yardstick of the filtered figures): every
    other call reaches the index itself."""

    def __init__(self, guarded: object) -> None:
        self.guarded = guarded
        self.inner = guarded.inner  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.guarded, name)

    def search(self, queries: np.ndarray, k: int = 10, *, allowed_ids: np.ndarray | None = None) -> object:
        from fgsearch.indexes.base import SearchResult
        from fgsearch.indexes.exact import exact_topk

        q = np.asarray(queries, np.float32).reshape(-1, self.inner.dim)
        if allowed_ids is None:
            i, s = exact_topk(q, self.inner._store.iter_blocks(65536), k)
        else:
            i, s = self.inner._exact_over_allowed(q, k, np.unique(np.asarray(allowed_ids, np.int64)))
        return SearchResult(i, s)


def filter_cases(n_images: int) -> list[tuple[str, dict]]:
    """(name, SearchQuery fields) of the filtered figures: folders holding 0.1 % to 50 %, a date
    range, ``--not``, and ``--by region`` with and without a folder."""
    from fgsearch.search import Filters

    under = {share: folder + "/" for folder, share in FOLDERS}
    return [
        ("no filter", {}),
        ("--under 0.1 %", {"filters": Filters(path_prefix=under[0.001])}),
        ("--under 1 %", {"filters": Filters(path_prefix=under[0.01])}),
        ("--under 10 %", {"filters": Filters(path_prefix=under[0.1])}),
        ("--under 50 %", {"filters": Filters(path_prefix=under[0.5])}),
        ("taken 2023-01..03 (~5 %)", {"filters": Filters(captured_after=DATE_RANGE[0], captured_before=DATE_RANGE[1])}),
        ("--not (a 2nd text)", {"negative": True}),
        ("--by region", {"by": "region"}),
        ("--by region --under 1 %", {"by": "region", "filters": Filters(path_prefix=under[0.01])}),
        ("--by region --under 10 %", {"by": "region", "filters": Filters(path_prefix=under[0.1])}),
    ]


def filtered_figures(lib: object, args: argparse.Namespace, queries: np.ndarray, negatives: np.ndarray) -> None:
    """Per filter: its size, the cost of building the allowed set, p50/p95 of search + fusion +
    lookup, and recall@10 of the results (images, or regions with --by region) and of the region
    index's own top 10 against exact search over the same filter."""
    import copy

    from fgsearch.search import SearchQuery, search_vector
    from fgsearch.search.run import _allowed

    store = lib.store  # type: ignore[attr-defined]
    exact = copy.copy(store)
    exact.global_index = ExactReference(store.global_index)
    exact.region_index = ExactReference(store.region_index)
    n_img, n_reg = store.global_index.count(), store.region_index.count()
    index_truth: dict[tuple[int, object], set[int]] = {}
    print(
        f"filtered queries ({len(queries)} text-like vectors; recall@10 against exact search over the same filter):\n"
        f"  {'filter':<26}{'images':>9}{'regions':>10}{'allowed ms':>11}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'recall@10':>10}{'index r@10':>11}"
    )
    for name, fields in filter_cases(args.images):
        neg = fields.pop("negative", False)
        q = SearchQuery(text="-", k=10, **fields)
        allow_ms, ms, rec, irec = [], [], [], []
        n_g = n_r = None
        for qi, v in enumerate(queries):
            nv = negatives[qi] if neg else None
            t0 = time.perf_counter()
            ag, ar = _allowed(store, q.filters)
            allow_ms.append(1000 * (time.perf_counter() - t0))
            n_g = n_img if ag is None else len(ag)
            n_r = n_reg if ar is None else len(ar)
            t0 = time.perf_counter()
            got = lib.consistent(lambda q=q, v=v, nv=nv: search_vector(store, q, v, nv))  # type: ignore[attr-defined]
            ms.append(1000 * (time.perf_counter() - t0))
            want = search_vector(exact, q, v, nv)
            key = (lambda h: h.region_id) if q.by == "region" else (lambda h: h.image_id)
            truth = {key(h) for h in want}
            rec.append(len(truth & {key(h) for h in got}) / max(len(truth), 1))
            r_got = store.region_index.search(v[None], 10, allowed_ids=ar).ids[0]
            if (qi, q.filters) not in index_truth:  # the same filter's truth serves every case
                r_want = exact.region_index.search(v[None], 10, allowed_ids=ar).ids[0]
                index_truth[qi, q.filters] = {int(i) for i in r_want if i >= 0}
            wanted = index_truth[qi, q.filters]
            irec.append(len(wanted & {int(i) for i in r_got}) / max(len(wanted), 1))
        print(
            f"  {name:<26}{n_g:>9}{n_r:>10}{pct(allow_ms, 50):>11.1f}{pct(ms, 50):>8.1f}{pct(ms, 95):>8.1f}"
            f"{statistics.mean(rec):>10.3f}{statistics.mean(irec):>11.3f}"
        )


def filter_sweep(lib: object, queries: np.ndarray, shares: tuple[float, ...]) -> None:
    """The exact path against the graph path on the region index, on random allowed sets of each
    share: p50 of ``index.search(k=10, allowed_ids)`` either way, and the graph's recall@10 at the
    widened breadth and at the unfiltered one; the exact path's recall is 1.0 by construction."""
    from dataclasses import replace

    import fgsearch.indexes.faiss.search as faiss_search
    from fgsearch.indexes.filtered import FilterPlan, exact_max, plan

    idx = lib.store.region_index.inner  # type: ignore[attr-defined]
    if idx.tier != "hnsw":
        print(f"filter sweep: the region index is {idx.tier}, not a graph; nothing to compare")
        return
    ids = idx.ids()
    n = int(idx._ann.ntotal)
    breadth = idx._breadth()
    depth = max(10 * idx._rerank_factor(), idx._config.min_rerank)  # candidates re-ranked at k=10
    rng = np.random.default_rng(5)
    cfg = idx._config
    print(
        f"filter sweep on the region index ({n} vectors, efSearch {breadth}; derived exact limit "
        f"{exact_max(breadth, n, depth)} rows):\n  {'share':>7}{'rows':>9}{'exact p50':>11}{'graph p50':>11}{'ef':>7}"
        f"{'graph r@10':>11}{'unwidened p50':>15}{'unwidened r@10':>16}"
    )

    def timed(allowed: np.ndarray, limit: int | None) -> tuple[float, list[np.ndarray]]:
        idx._config = replace(cfg, filter_exact_max=limit)
        ms, out = [], []
        for v in queries:
            t0 = time.perf_counter()
            out.append(idx.search(v[None], 10, allowed_ids=allowed).ids[0])
            ms.append(1000 * (time.perf_counter() - t0))
        return pct(ms, 50), out

    try:
        for share in shares:
            allowed = np.sort(rng.choice(ids, max(int(share * ids.size), 10), replace=False))
            t_exact, truth = timed(allowed, ids.size)
            t_graph, got = timed(allowed, 0)
            ef = plan(allowed.size, n, breadth, depth, fixed_max=0).breadth
            real_plan = faiss_search.plan
            faiss_search.plan = lambda m, g, b, d, in_graph=None, fixed_max=None: FilterPlan(False, b, m / g)  # type: ignore[assignment]
            try:
                t_plain, plain = timed(allowed, 0)
            finally:
                faiss_search.plan = real_plan

            def recall(got: list[np.ndarray], truth: list[np.ndarray] = truth) -> float:
                return statistics.mean(
                    len(set(t.tolist()) & set(g.tolist())) / 10 for t, g in zip(truth, got, strict=True)
                )

            print(
                f"  {share:>7.3%}{allowed.size:>9}{t_exact:>11.2f}{t_graph:>11.2f}{ef:>7}{recall(got):>11.3f}"
                f"{t_plain:>15.2f}{recall(plain):>16.3f}"
            )
    finally:
        idx._config = cfg


def cold_start(lib_dir: Path, runs: int = 3) -> None:
    """A whole `fgsearch query` process, ``runs`` times."""
    cold = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fgsearch",
                "query",
                "a red mug left of a laptop",
                "--library",
                str(lib_dir),
                "--paths",
            ],
            check=True,
            capture_output=True,
            env={**os.environ},
        )
        cold.append(time.perf_counter() - t0)
    print(f"cold `fgsearch query` process: median {statistics.median(cold):.2f}s over {runs} runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=62_500)
    ap.add_argument("--regions-per-image", type=int, default=16)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--data", choices=("clip", "isotropic"), default="clip", help="synthetic vector generator")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fgsearch-bench-query")
    ap.add_argument(
        "--filter-queries", type=int, default=20, help="queries per filtered case (each also searched exactly)"
    )
    ap.add_argument(
        "--sweep",
        type=lambda t: tuple(float(x) for x in t.split(",")),
        default=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
        help="shares of the region index kept by the random filters of the exact/graph sweep",
    )
    ap.add_argument("--build-once", action="store_true", help="build each graph in one snapshot (see build())")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, in a temporary folder (tests)")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.regions_per_image, args.queries, args.filter_queries = 300, 4, 3, 2
        args.work = Path(tempfile.mkdtemp(prefix="fgsearch-bench-query-"))
        atexit.register(shutil.rmtree, args.work, ignore_errors=True)

    import torch

    from fgsearch.model import FGCLIP, FGCLIPConfig, save_model

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / "model"
    if not (model_dir / "model.safetensors").exists():
        torch.manual_seed(0)
        save_model(FGCLIP(FGCLIPConfig.tiny() if args.smoke else FGCLIPConfig.base()), model_dir)
    dim = FGCLIPConfig.tiny().projection_dim if args.smoke else 512  # the model's
    lib_dir = build(
        args.work,
        args.images,
        args.regions_per_image,
        dim,
        model_dir,
        args.data,
        once=args.build_once,
        flat_threshold=100 if args.smoke else None,
    )
    rng = np.random.default_rng(1)
    words = (
        "red ceramic mug left of an open silver laptop next to a potted cactus on a wooden desk under "
        "a window with white curtains and a striped towel"
    ).split()
    print(f"torch threads={torch.get_num_threads()}")
    warm_figures(lib_dir, args, rng, words)
    cold_start(lib_dir, 1 if args.smoke else 3)
    print("targets: search+fusion+lookup <= 15 ms p50; warm end-to-end <= 150 ms p50 (20-word query)")


if __name__ == "__main__":
    main()
