"""Subprocess of the graph fuzz tests: garbles a snapshot's graph file and searches it, case by case.

``python _hnsw_fuzz_worker.py KIND FOLDER FIRST COUNT``: FOLDER holds an index of backend KIND
(``faiss``: its FAISS file, an HNSW graph; ``usearch``: its usearch graph file) whose snapshot has a
graph, and ``pristine.index``, a copy of that file. For each seed FIRST .. FIRST+COUNT-1 the worker
writes the pristine bytes with a few bytes garbled in one region of the file (region = seed mod 24
of 24 equal slices: every part of the file, header to id map, is hit), keeping the size, opens the
index read-only and searches it (image-like and text-like queries, unfiltered and with an
allowed-id filter). It prints ``start SEED`` before and one line after each case: ``error SEED
MESSAGE`` (an :class:`IndexCorruptError`, one line) or ``ids SEED`` (every id returned is a stored
id or -1). Anything else (another exception, an id that was never stored) prints ``bad SEED ...``;
a signal or a hang kills the process, and the test names the seed it started.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from _indexes_data import near_queries, text_like_queries, unit_vectors

from fgsearch.indexes import IndexCorruptError, open_index

REGIONS = 24
GRAPH_FILE = {"faiss": "faiss_file", "usearch": "graph_file"}  # the manifest's name of the graph file


def garble(data: bytes, seed: int) -> bytes:
    """``data`` with 1-8 bytes (or a run of up to 16) changed inside region ``seed % REGIONS``."""
    rng = np.random.default_rng(seed)
    b = bytearray(data)
    size = len(b)
    lo = size * (seed % REGIONS) // REGIONS
    hi = max(lo + 1, size * (seed % REGIONS + 1) // REGIONS)
    if rng.random() < 0.3:  # a run of bytes (e.g. a whole int32 or int64 field)
        at = int(rng.integers(lo, hi))
        for i in range(at, min(size, at + int(rng.integers(1, 17)))):
            b[i] = int(rng.integers(0, 256))
    else:
        for at in rng.integers(lo, hi, size=int(rng.integers(1, 9))):
            b[int(at)] ^= int(rng.integers(1, 256))
    return bytes(b)


def main() -> None:
    kind, folder, first, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    manifest = json.loads((folder / "manifest.json").read_text())
    target = folder / manifest["extra"][GRAPH_FILE[kind]]
    pristine = (folder / "pristine.index").read_bytes()
    stored = np.load(folder / "stored_ids.npy")
    x = unit_vectors(400, int(manifest["dim"]), seed=5, clusters=30)
    queries = np.concatenate([near_queries(x, 8, seed=3), text_like_queries(x, 8, seed=4)])
    for seed in range(first, first + count):
        print(f"start {seed}", flush=True)
        target.write_bytes(garble(pristine, seed))
        try:
            with open_index(kind, folder, read_only=True) as idx:
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
