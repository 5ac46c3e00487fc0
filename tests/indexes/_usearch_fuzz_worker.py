"""Subprocess of the usearch graph fuzz test: garbles a snapshot's usearch file and searches it, case by case.

``python _usearch_fuzz_worker.py FOLDER FIRST COUNT``: FOLDER holds a usearch index whose snapshot
has a graph (and ``pristine.index``, a copy of its file). For each seed FIRST .. FIRST+COUNT-1 the
worker writes the pristine bytes garbled in region ``seed % 24`` of the file (the garbling of the
FAISS fuzz test, tests/indexes/_hnsw_fuzz_worker.py: vectors, headers, level table and nodes are
all hit), keeping the size, opens the index read-only and searches it. It prints ``start SEED``
before and one line after each case: ``error SEED MESSAGE`` (an :class:`IndexCorruptError`, one
line) or ``ids SEED`` (every id returned is a stored id or -1); anything else prints ``bad SEED
...``; a signal or a hang kills the process, and the test names the seed it started.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from _hnsw_fuzz_worker import garble
from _indexes_data import near_queries, text_like_queries, unit_vectors

from fgsearch.indexes import IndexCorruptError, open_index


def main() -> None:
    folder, first, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    manifest = json.loads((folder / "manifest.json").read_text())
    target = folder / manifest["extra"]["graph_file"]
    pristine = (folder / "pristine.index").read_bytes()
    stored = np.load(folder / "stored_ids.npy")
    x = unit_vectors(400, int(manifest["dim"]), seed=5, clusters=30)
    queries = np.concatenate([near_queries(x, 8, seed=3), text_like_queries(x, 8, seed=4)])
    for seed in range(first, first + count):
        print(f"start {seed}", flush=True)
        target.write_bytes(garble(pristine, seed))
        try:
            with open_index("usearch", folder, read_only=True) as idx:
                got = idx.search(queries, 10).ids
                got = np.concatenate([got.ravel(), idx.search(queries, 10, allowed_ids=stored[::2]).ids.ravel()])
        except IndexCorruptError as e:
            msg = str(e)
            print(f"{'error' if msg and chr(10) not in msg else 'bad'} {seed} {msg!r}", flush=True)
            continue
        except Exception as e:  # anything else is a failure of the test
            print(f"bad {seed} {type(e).__name__}: {str(e)[:300]!r}", flush=True)
            continue
        if np.isin(got[got >= 0], stored).all():
            print(f"ids {seed}", flush=True)
        else:
            print(f"bad {seed} ids never stored: {np.setdiff1d(got[got >= 0], stored)[:5]}", flush=True)
    target.write_bytes(pristine)


if __name__ == "__main__":
    main()
