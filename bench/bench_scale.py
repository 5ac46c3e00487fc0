"""Indexing in one process vs on Ray (``fgsearch index --ray``): throughput, Ray's overhead and
scaling, and the per-stage costs that docs/scale.md's sizing table is computed from.

    nice -n 19 python bench/bench_scale.py [--n 128] [--rounds 3] [--batch 16] [--smoke]

Generates N 1024x768 JPEGs (as bench_index.py: decoding costs what a photo costs) and indexes
them with the demo model (CPU-bound, ``--regions auto``), each run into a fresh library, with:

* ``local-1``: the local runner on one CPU (torch on 1 thread, the process pinned to one core:
  the compute of one 1-CPU Ray worker),
* ``local``: the local runner as a user runs it (torch on every core),
* ``ray-1`` / ``ray-2``: ``--ray`` on a local Ray cluster of 2 CPUs with 1 and 2 workers.

The configurations alternate (reversed every other round) and every ratio is the median of the
per-round ratios, so a shared machine's drift hits both sides of a ratio alike. Targets: Ray's
overhead at 1 worker <= 10 % (ray-1 vs local-1), 2 workers >= 1.6x 1 worker (ray-2 vs ray-1).
"Cores busy" is the CPU time of this process and its descendants (the Ray cluster) over the run's
wall time: on a machine shared with other work, a run can only scale as far as it gets cores.
Also printed: Ray's start-up and first-run cost (worker processes load torch and the model), the
driver's share of time in the commit stage, and per-stage costs on one core: prepare (read,
hash, decode, preprocess), embed (demo model), commit (catalog + FAISS, per image and per region).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import make_photos


def _cpu_seconds() -> float:
    """CPU time of this process and all its descendants (the local Ray cluster's workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _run(photos: Path, lib_dir: Path, batch: int, mapper: Any = None, one_cpu: bool = False) -> dict[str, float]:
    """One index run into a fresh library. ``one_cpu``: torch on 1 thread and this process (its
    decode threads too) pinned to one CPU: the compute of one Ray worker."""
    import torch

    from fgsearch.library import Library

    before, cpus = torch.get_num_threads(), os.sched_getaffinity(0)
    if one_cpu:
        torch.set_num_threads(1)
        os.sched_setaffinity(0, {min(cpus)})
    try:
        with Library.open(lib_dir, model="demo", device="cpu") as lib:
            c0, t0 = _cpu_seconds(), time.perf_counter()
            report = lib.index(str(photos), batch_size=batch, workers=1 if one_cpu else 0, mapper=mapper)
            dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    finally:
        torch.set_num_threads(before)
        os.sched_setaffinity(0, cpus)
        shutil.rmtree(lib_dir, ignore_errors=True)
    out = {"images_s": report.indexed / dt, "seconds": dt, "cores": cpu / dt, "cpu_ms": 1e3 * cpu / report.indexed}
    if mapper is not None:
        out["commit_share"] = mapper.commit_seconds / dt
    return out


def stage_costs(photos: Path, batch: int) -> dict[str, float]:
    """CPU milliseconds per image of each stage, in this process (torch on 1 thread, no decode
    threads), and the wall time of the three together (longer when other work shares the CPUs)."""
    import torch

    from fgsearch.decode import PixelBudget
    from fgsearch.ingest import IndexOptions, IndexReport
    from fgsearch.ingest.commit import Committer
    from fgsearch.ingest.embed import embed_batch
    from fgsearch.ingest.prepare import Preparer
    from fgsearch.library import Library
    from fgsearch.regions import make_proposer
    from fgsearch.scan import FileEntry

    files = sorted(photos.iterdir())[: 2 * batch]
    torch.set_num_threads(1)
    lib_dir = photos.parent / "stages-lib"
    try:
        with Library.open(lib_dir, model="demo", device="cpu") as lib:
            enc, store = lib.encoder, lib.store
            proposer = make_proposer(store.build.regions)
            prep = Preparer(enc.transform, IndexOptions(), set(), PixelBudget(10**8), proposer)
            entries = [(str(photos), FileEntry(str(f), f.stat().st_size, f.stat().st_mtime_ns)) for f in files]
            prep(entries[0])  # warm-up
            n = len(entries)
            w0, c0 = time.perf_counter(), time.process_time()
            prepared = [prep(e) for e in entries]
            w1, c1 = time.perf_counter(), time.process_time()
            embed_batch(enc, proposer, prepared[:2])  # warm-up
            w2, c2 = time.perf_counter(), time.process_time()
            embedded = [embed_batch(enc, proposer, prepared[i : i + batch]) for i in range(0, n, batch)]
            w3, c3 = time.perf_counter(), time.process_time()
            run_id = store.catalog.begin_run()
            committer = Committer(store, run_id, IndexReport(), proposer.name)
            w4, c4 = time.perf_counter(), time.process_time()
            for i, emb in zip(range(0, n, batch), embedded, strict=True):
                committer.store_batch(prepared[i : i + batch], emb)
            w5, c5 = time.perf_counter(), time.process_time()
            out = {
                "prepare_ms": 1e3 * (c1 - c0) / n,
                "embed_ms": 1e3 * (c3 - c2) / n,
                "commit_ms": 1e3 * (c5 - c4) / n,
                "wall_ms": 1e3 * ((w1 - w0) + (w3 - w2) + (w5 - w4)) / n,
            }
            regions = committer.report.regions / len(prepared)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
        shutil.rmtree(lib_dir, ignore_errors=True)
    return {**out, "regions": regions, "index_512_ms": index_write_cost(photos.parent / "idx512", batch)}


def index_write_cost(home: Path, batch: int, regions: int = 16, batches: int = 4) -> float:
    """Milliseconds per image for the FAISS default to add and flush (fsync) a batch at 512-d
    (fg-clip-base's width): ``batch`` global vectors and ``regions`` region vectors per image."""
    import numpy as np

    from fgsearch.indexes import get_backend

    rng = np.random.default_rng(0)
    bk = get_backend("faiss")
    home.mkdir(parents=True, exist_ok=True)
    gidx = bk.open(home, "global", 512, {}, read_only=False, create=True)
    ridx = bk.open(home, "regions", 512, {}, read_only=False, create=True)

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, 512)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    try:
        t0 = time.perf_counter()
        for b in range(batches):
            ids = np.arange(b * batch, (b + 1) * batch, dtype=np.int64)
            rids = np.arange(b * batch * regions, (b + 1) * batch * regions, dtype=np.int64)
            gidx.add(ids, unit(batch))
            owners = {"image_id": list(np.repeat(ids, regions)), "region": [0] * len(rids)}
            ridx.add(rids, unit(len(rids)), payload=owners)
            gidx.flush()
            ridx.flush()
        return 1e3 * (time.perf_counter() - t0) / (batches * batch)
    finally:
        gidx.close()
        ridx.close()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=128, help="photos per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="images per batch (and per Ray task)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, to check the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.rounds, args.batch = 8, 1, 4

    import ray

    with tempfile.TemporaryDirectory(prefix="fgs-scale-") as tmp:
        work = Path(tmp)
        photos = work / "photos"
        photos.mkdir()
        make_photos(photos, args.n)
        print(f"{args.n} photos 1024x768, demo model, --regions auto, batch {args.batch}, {os.cpu_count()} CPUs")
        print(f"load average at the start: {os.getloadavg()[0]:.1f} (other processes share these CPUs)")

        st = stage_costs(photos, args.batch)
        print(
            f"CPU per image, one thread: prepare {st['prepare_ms']:.1f} ms, embed {st['embed_ms']:.1f} ms (demo), "
            f"commit {st['commit_ms']:.2f} ms ({st['regions']:.1f} regions/image, demo 64-d); wall for the three "
            f"{st['wall_ms']:.1f} ms; FAISS add+flush at 512-d, 16 regions/image: {st['index_512_ms']:.2f} ms (wall)"
        )

        # Ray's sockets live in its temp folder and a socket path has at most 107 bytes: a long
        # $TMPDIR gets a short folder of its own in /tmp (removed with the rest at exit)
        ray_tmp = work / "ray" if len(str(work)) < 40 else Path(tempfile.mkdtemp(prefix="fgsray-", dir="/tmp"))
        try:
            _measure(ray, photos, work, ray_tmp, args)
        finally:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _measure(ray: Any, photos: Path, work: Path, ray_tmp: Path, args: argparse.Namespace) -> None:
    from fgsearch.ingest.ray_runner import RayMapper, RayOptions

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(ray_tmp))
    print(f"ray.init (local cluster, 2 CPUs): {time.perf_counter() - t0:.1f} s")
    warm = _run(photos, work / "warm", args.batch, RayMapper(RayOptions(workers=2, chunk=args.batch)))
    print(f"first Ray run (worker processes start, load torch and the model): {warm['seconds']:.1f} s")

    configs: dict[str, Any] = {
        "local-1": lambda: _run(photos, work / "lib", args.batch, one_cpu=True),
        "ray-1": lambda: _run(photos, work / "lib", args.batch, RayMapper(RayOptions(workers=1, chunk=args.batch))),
        "ray-2": lambda: _run(photos, work / "lib", args.batch, RayMapper(RayOptions(workers=2, chunk=args.batch))),
        "local": lambda: _run(photos, work / "lib", args.batch),
    }
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    for r in range(args.rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            runs[name].append(configs[name]())
            x = runs[name][-1]
            busy = f"{x['cores']:.2f} cores busy"
            print(f"  round {r + 1} {name:8s} {x['images_s']:6.2f} images/s, {busy}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")

    print("\n| run | images/s (each round) | median | cores busy (median) | CPU ms/image | driver's commit share |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        rates = ", ".join(f"{x['images_s']:.2f}" for x in rs)
        share = statistics.median(x["commit_share"] for x in rs) if "commit_share" in rs[0] else None
        med = statistics.median(x["images_s"] for x in rs)
        cores, cpu_ms = statistics.median(x["cores"] for x in rs), statistics.median(x["cpu_ms"] for x in rs)
        share_s = "" if share is None else f"{100 * share:.1f} %"
        print(f"| {name} | {rates} | {med:.2f} | {cores:.2f} | {cpu_ms:.1f} | {share_s} |")

    def ratio(a: str, b: str) -> float:
        return statistics.median(x["images_s"] / y["images_s"] for x, y in zip(runs[a], runs[b], strict=True))

    overhead = 1 - ratio("ray-1", "local-1")
    print(f"\nRay's overhead at 1 worker (1 - ray-1/local-1, median of rounds): {100 * overhead:.1f} %", end="")
    print(" (target <= 10 %)")
    print(f"2 workers vs 1 (ray-2/ray-1): {ratio('ray-2', 'ray-1'):.2f}x (target >= 1.6x)")
    print(f"ray-2 vs the local runner on every core (ray-2/local): {ratio('ray-2', 'local'):.2f}x")


if __name__ == "__main__":
    main()
