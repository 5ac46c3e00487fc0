"""Fusion rules side by side: how each ranks FineShapes photos on the demo model and on a
random-weight model (whose global and region scores have wildly different spreads).

Every image of the library is a candidate and scored exactly, so only the rule differs. Queries:
each stored image vector (must rank its image first), each stored region vector (must rank its own
image first), every object expression ("a large red circle on the left": precision@1 and MRR of an
image holding that object) and every image's long caption (recall@1 of its image). Also the cost of
standardising (sample scores) per query.

    python bench/bench_fusion.py --n 300 [--overhead-images 62500]

``--overhead-images N`` also times the fusion on bench_query.py's synthetic library (N images, 16
regions each, 512-d): a whole image search (index search + exact scoring + catalog lookups), the
standardisation inside it, and drawing the library sample (once per open library and index change).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fgsearch.library import Library
from fgsearch.model import REGISTRY
from fgsearch.search import DEFAULT_WEIGHTS, LibrarySample, best_regions, library_sample, sample_scores, standardise
from fgsearch.trainer.fineshapes import make_fineshapes

Rule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str], np.ndarray]


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(-x)] = np.arange(1, len(x) + 1)
    return r


def rules() -> dict[str, Rule]:
    """name -> f(g, r, sample g, sample r, query kind) giving one score per image."""

    def raw(wg: float, wr: float) -> Rule:
        return lambda g, r, sg, sr, kind: wg * g + wr * r

    def z(wg: float | None, wr: float | None) -> Rule:
        def f(g: np.ndarray, r: np.ndarray, sg: np.ndarray, sr: np.ndarray, kind: str) -> np.ndarray:
            dg, dr = DEFAULT_WEIGHTS[kind]
            return (dg if wg is None else wg) * standardise(g, sg) + (dr if wr is None else wr) * standardise(r, sr)

        return f

    def rrf(wg: float, wr: float) -> Rule:
        return lambda g, r, sg, sr, kind: wg / (60 + _ranks(g)) + wr / (60 + _ranks(r))

    return {
        "global only": raw(1, 0),
        "region only": raw(0, 1),
        "raw 0.25/0.75 (before)": raw(0.25, 0.75),
        "raw 0.5/0.5": raw(0.5, 0.5),
        "RRF 0.25/0.75": rrf(0.25, 0.75),
        "z 0.25/0.75 every kind": z(0.25, 0.75),
        "z 0.5/0.5 every kind": z(0.5, 0.5),
        "z by query kind (default)": z(None, None),
    }


def _standardising(sample: LibrarySample, q: np.ndarray) -> None:
    """What standardising adds to a query: the sample's scores and their mean and spread."""
    sg, sr = sample_scores(sample, q)
    standardise(sg, sg), standardise(sr, sr)


def evaluate(lib: Library, data: Path) -> dict[str, dict[str, float]]:
    ids = np.asarray(sorted(lib.catalog.filter_contents()), np.int64)
    rows = {row.id: row for row in lib.catalog.contents_by_ids(ids.tolist())}
    images = lib.global_index.get(ids)
    regions_of = lib.catalog.region_arrays(ids.tolist())
    rids = [regions_of.get(int(c), (np.zeros(0, np.int64), None))[0] for c in ids]
    counts = np.asarray([len(r) for r in rids])
    all_rids = np.concatenate(rids)
    regions = lib.region_index.get(all_rids)
    owner = np.repeat(np.arange(len(ids)), counts)
    sample = library_sample(lib.store)
    objects = json.loads((data / "objects.json").read_text())
    captions = {
        str(data / c["f_path"]): c["caption"] for c in json.loads((data / "jsonfiles" / "train.json").read_text())
    }
    where = {rows[int(c)].path: i for i, c in enumerate(ids)}
    holders: dict[str, set[int]] = {}
    for rel, objs in objects.items():
        for o in objs:
            holders.setdefault(o["short_expr"], set()).add(where[str(data / rel)])
    texts = sorted(holders)
    tvec = lib.encoder.encode_texts(texts)
    cvec = lib.encoder.encode_texts([captions[rows[int(c)].path] for c in ids])
    step = max(1, len(all_rids) // len(ids))
    region_trials = np.arange(0, len(all_rids), step)

    def channels(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        g = images @ q
        return g, best_regions(g, regions @ q, counts)[0], *sample_scores(sample, q)

    out: dict[str, dict[str, float]] = {}
    for name, rule in rules().items():
        self1 = np.mean([np.argmax(rule(*channels(images[i]), "image")) == i for i in range(len(ids))])
        box1 = np.mean([np.argmax(rule(*channels(regions[j]), "box")) == owner[j] for j in region_trials])
        p1, rr = [], []
        for t, q in zip(texts, tvec, strict=True):
            order = np.argsort(-rule(*channels(q), "text"))
            first = next(k for k, i in enumerate(order) if i in holders[t])
            p1.append(first == 0)
            rr.append(1 / (first + 1))
        cap1 = np.mean([np.argmax(rule(*channels(cvec[i]), "text")) == i for i in range(len(ids))])
        out[name] = {
            "image self@1": float(self1),
            "box own image@1": float(box1),
            "object P@1": float(np.mean(p1)),
            "object MRR": float(np.mean(rr)),
            "caption R@1": float(cap1),
        }
    t0 = time.perf_counter()
    for _ in range(200):
        _standardising(sample, tvec[0])
    out["_cost"] = {
        "standardise ms/query": (time.perf_counter() - t0) / 200 * 1000,
        "sample images": len(sample.images),
    }
    return out


def overhead(n_images: int, queries: int = 50) -> None:
    import importlib.util
    from dataclasses import replace

    import torch

    from fgsearch.model import FGCLIP, FGCLIPConfig, save_model
    from fgsearch.search import SearchQuery, search_vector
    from fgsearch.search.fusion import _SAMPLES

    spec = importlib.util.spec_from_file_location("bench_query", Path(__file__).with_name("bench_query.py"))
    assert spec is not None and spec.loader is not None
    bench_query = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_query)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        save_model(FGCLIP(replace(FGCLIPConfig.tiny(), projection_dim=512)), work / "model")
        lib_dir = bench_query.build(work, n_images, 16, 512, work / "model")
        rng = np.random.default_rng(1)
        with Library.open(lib_dir, read_only=True) as lib:
            t0 = time.perf_counter()
            sample = library_sample(lib.store)
            draw_ms = (time.perf_counter() - t0) * 1000
            total, zs = [], []
            for _ in range(queries + 3):
                q = rng.normal(size=512).astype(np.float32)
                q /= np.linalg.norm(q)
                t0 = time.perf_counter()
                search_vector(lib.store, SearchQuery(text="synthetic", k=10), q)
                t1 = time.perf_counter()
                _standardising(sample, q)
                t2 = time.perf_counter()
                total.append((t1 - t0) * 1000)
                zs.append((t2 - t1) * 1000)
            _SAMPLES.pop(lib.store, None)
        p50 = float(np.median(total[3:]))
        z50 = float(np.median(zs[3:]))
        print(
            f"\noverhead: {n_images} images / {n_images * 16} regions, 512-d: image search p50 {p50:.1f} ms, of which "
            f"standardising {z50:.2f} ms ({z50 / p50:.0%}); drawing the sample ({len(sample.images)} images, "
            f"{len(sample.regions)} regions) {draw_ms:.0f} ms once per open library"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="FineShapes photos in the library")
    ap.add_argument("--seed", type=int, default=4242, help="FineShapes seed (the demo model was trained on seed 0)")
    ap.add_argument("--overhead-images", type=int, default=0, help="also time the fusion on a library this big")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, in a temporary folder (tests)")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.overhead_images = 12, 0
    if args.overhead_images:
        overhead(args.overhead_images)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_fineshapes(work / "photos", n=args.n, seed=args.seed, heldout=0)
        import torch

        from fgsearch.model import FGCLIP, FGCLIPConfig, save_model

        torch.manual_seed(0)
        save_model(FGCLIP(FGCLIPConfig.tiny()), work / "random")
        for label, model in (("demo", str(REGISTRY["demo"].local_dir)), ("random-0", str(work / "random"))):
            with Library.open(work / f"lib-{label}", model=model, device="cpu") as lib:
                lib.index(str(data / "images"))
                res = evaluate(lib, data)
            cost = res.pop("_cost")
            print(f"\n{label}: {args.n} images; standardising costs {cost['standardise ms/query']:.2f} ms/query")
            cols = list(next(iter(res.values())))
            print(f"{'rule':28s}" + "".join(f"{c:>17s}" for c in cols))
            for name, vals in res.items():
                print(f"{name:28s}" + "".join(f"{vals[c]:17.3f}" for c in cols))


if __name__ == "__main__":
    main()
