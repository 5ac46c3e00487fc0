"""What fgsearch's graph check costs each time a snapshot is opened (fgsearch.indexes.hnsw.check).

    python bench/bench_graph_check.py [--n 1000000] [--smoke]

Builds an HNSW-SQ8 graph of ``--n`` nodes with the default's links (M=24; 8-dimensional codes:
the check reads the level table, the offsets and the upper-level links, never the codes, so its
cost does not depend on the dimension), writes it, memory-maps it as a snapshot is opened, and
times :func:`check_graph` on it: the first call (which faults the mapped pages it reads in) and
the median of the next eight. Prints the figures; writes only under a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import faiss

    from fgsearch.indexes.hnsw.check import check_graph

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--smoke", action="store_true", help="20,000 nodes, in seconds")
    args = ap.parse_args()
    n, d = (20_000 if args.smoke else args.n), 8
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    h = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, 24, faiss.METRIC_INNER_PRODUCT)
    h.hnsw.efConstruction = 16  # the check's cost depends on the graph's shape, not its quality
    h.train(x[:100_000])
    ann = faiss.IndexIDMap(h)
    ann.own_fields = True
    h.this.disown()
    t = time.perf_counter()
    ann.add_with_ids(x, np.arange(n, dtype=np.int64))
    built = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="fgsearch-bench-check-") as tmp:
        path = Path(tmp) / "graph.index"
        faiss.write_index(ann, str(path))
        size_mb = path.stat().st_size / 1e6
        mapped = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        ts = []
        for _ in range(9):
            t = time.perf_counter()
            check_graph(mapped)
            ts.append(time.perf_counter() - t)
        del mapped
    print(
        f"graph check, {n:,}-node graph (M=24, built in {built:.0f}s), memory-mapped: "
        f"first {1000 * ts[0]:.1f} ms, then median {1000 * float(np.median(ts[1:])):.1f} ms "
        f"(min {1000 * min(ts):.1f} ms)"
    )
    print(f"graph file {size_mb:.1f} MB: the check costs {1000 * float(np.median(ts[1:])) / size_mb:.2f} ms per MB")


if __name__ == "__main__":
    main()
