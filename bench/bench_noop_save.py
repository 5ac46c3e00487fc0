"""What an ``fgsearch index`` run that changes nothing costs the FAISS default's index.

Usage::

    python bench/bench_noop_save.py --n 400000     # CLIP-like 400k x 512
    python bench/bench_noop_save.py --smoke        # tiny, seconds

Every ``index`` run ends with ``save()`` on both indexes. Until round 3 a save always compacted a
new snapshot: every vector copied, checksummed and fsynced again, the graph read and written again,
even when the run found nothing new. Now a save with nothing journaled, no config or records' meta
changed and nothing due (a rebuild; a check of the queries served since the last one) writes
nothing. This builds the FAISS default (adds of 50k and a flush each, as the ingest pipeline does),
then times, on the same unchanged index: ``save()`` (what a run now does), the compaction a save
did before (``_compact()``, the same code the old save ran), and a save once 150 queries were
served since the last check (a snapshot that measures recall on them). Prints seconds and the
bytes each one wrote. Figures in bench/README.md, "A run that changes nothing".
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _written(folder: Path, since: dict[str, int]) -> int:
    """Bytes of the files in ``folder`` that are new or rewritten since ``since`` (name -> mtime)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and since.get(p.name) != p.stat().st_mtime_ns)


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--smoke", action="store_true", help="3,000 x 32, seconds")
    args = ap.parse_args()
    from bench_data import generate_clip_like

    from fgsearch.indexes import FaissConfig, create_index, open_index

    n, dim = (3000, 32) if args.smoke else (args.n, args.dim)
    cfg = FaissConfig(flat_threshold=1000, calibration_queries=100) if args.smoke else FaissConfig()
    batch = 1000 if args.smoke else 50_000
    tmp = Path(tempfile.mkdtemp(prefix="fg-noop-"))
    try:
        data = generate_clip_like(tmp / "data.npy", n, dim, topics=100 if args.smoke else 1000)
        folder = tmp / "index"
        t = time.perf_counter()
        with create_index("faiss", folder, dim, config=cfg) as idx:
            for s in range(0, n, batch):
                idx.add(np.arange(s, min(s + batch, n)), np.asarray(data[s : s + batch]))
                idx.flush()
            idx.save()
        print(f"built {n} x {dim} in {time.perf_counter() - t:.1f} s")
        rows = []
        with open_index("faiss", folder, config=cfg) as idx:
            g0 = idx.stats().params["generation"]
            before = _files(folder)
            t = time.perf_counter()
            idx.save()
            rows.append(("save(), nothing changed (now)", time.perf_counter() - t, _written(folder, before)))
            assert idx.stats().params["generation"] == g0, "a save with nothing changed wrote a snapshot"
            before = _files(folder)
            t = time.perf_counter()
            idx._compact()  # what every save ran before
            idx._after_load()
            rows.append(("the compaction a save ran before", time.perf_counter() - t, _written(folder, before)))
        rng = np.random.default_rng(5)
        with open_index("faiss", folder, read_only=True, config=cfg) as reader:  # e.g. fgsearch serve
            q = np.asarray(data[rng.choice(n, 150, replace=False)]) + 0.05 * rng.standard_normal((150, dim))
            reader.search((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), 10)
        with open_index("faiss", folder, config=cfg) as idx:
            before = _files(folder)
            t = time.perf_counter()
            idx.save()
            rows.append(("save() after 150 served queries", time.perf_counter() - t, _written(folder, before)))
            served = idx.stats().params["served"]
        print(f"{'':40s} {'seconds':>8s} {'MB written':>11s}")
        for name, sec, written in rows:
            print(f"{name:40s} {sec:8.2f} {written / 1e6:11.1f}")
        print(f"served check: recall@10 {served.get('recall10')} on {served.get('queries')} queries")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
