"""Subprocess used by the crash-safety tests: it is SIGKILLed in the middle of its work.

``stream KIND PATH``: create an index and run batches of add/remove/upsert + ``flush()`` forever,
printing ``flushed I`` after each flush returns.

pgvector: PATH is ignored; the database is ``$FGSEARCH_TEST_PG_URL`` (table ``crash``), and the
save stage ``build`` blocks when the save commits its HNSW index build (the second commit of a save:
the first commits the pending batch).

``save KIND PATH STAGE``: open the index the test prepared, add a batch without flushing, then call
``save()`` with a hook that prints ``at STAGE`` and blocks at that point of the snapshot write
(``vectors``: half the vectors file written; ``faiss``/``usearch``: the backend file written, not renamed;
``manifest``: new manifest written to its temp file, not renamed; ``after``: manifest renamed,
old files not yet deleted; ``none``: no hook, print ``saving`` and save).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _indexes_data import ann_config, small_journal, unit_vectors

from fgsearch.indexes import (
    MANIFEST,
    ExactConfig,
    PgvectorConfig,
    UsearchConfig,
    VectorIndex,
    create_index,
    faults,
    open_index,
)

DIM = 16
BATCH = 150


def config(kind: str) -> Any:
    if kind == "exact":
        return ExactConfig(journal=small_journal())
    if kind == "usearch":
        return UsearchConfig(flat_threshold=1000, journal=small_journal(), calibration_queries=50)
    if kind == "pgvector":
        return PgvectorConfig(url=os.environ["FGSEARCH_TEST_PG_URL"], table="crash", flat_threshold=1000)
    return ann_config(flat_threshold=1000, journal=small_journal(), calibration_queries=50)


def batch_ops(i: int) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """The deterministic operations of batch ``i`` (the test replays them to know the state)."""
    ops: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    ids = np.arange(i * BATCH, (i + 1) * BATCH)
    ops.append(("add", ids, unit_vectors(BATCH, DIM, seed=1000 + i)))
    if i % 3 == 2:
        prev = np.arange((i - 1) * BATCH, i * BATCH, 2)
        ops.append(("remove", prev, None))
    if i % 4 == 3:
        ops.append(("upsert", np.arange(5), unit_vectors(5, DIM, seed=5000 + i)))
    return ops


def expected_state(n_batches: int) -> dict[int, np.ndarray]:
    state: dict[int, np.ndarray] = {}
    for i in range(n_batches):
        for op, ids, vecs in batch_ops(i):
            if op == "remove":
                for x in ids.tolist():
                    del state[x]
            else:
                assert vecs is not None
                for x, v in zip(ids.tolist(), vecs, strict=True):
                    state[x] = v
    return state


def apply_batch(index: VectorIndex, i: int) -> None:
    for op, ids, vecs in batch_ops(i):
        if op == "add":
            index.add(ids, vecs)
        elif op == "upsert":
            index.add(ids, vecs, upsert=True)
        else:
            index.remove(ids)


def _block(stage: str) -> None:
    print(f"at {stage}", flush=True)
    while True:
        time.sleep(1)


def install_hook(stage: str) -> None:
    """Stop the save at ``stage`` through the indexes' named fault points (see fgsearch.indexes.faults)."""
    if stage == "vectors":  # the first chunk of the new vectors file is in its temp file

        def in_vectors(path: object) -> None:
            if isinstance(path, Path) and path.name.startswith("vectors."):
                _block(stage)

        faults.install("store.snapshot_chunk", in_vectors)
    elif stage == "faiss":  # the FAISS file is written, not yet fsynced nor renamed
        faults.install("faiss.before_fsync", lambda path: _block(stage))
    elif stage == "usearch":  # the usearch graph file is written, not yet fsynced nor renamed
        faults.install("usearch.before_fsync", lambda path: _block(stage))
    elif stage == "manifest":  # the new manifest is complete in its temp file, not yet renamed

        def in_manifest(path: object) -> None:
            if isinstance(path, Path) and path.name == MANIFEST:
                _block(stage)

        faults.install("store.before_rename", in_manifest)
    elif stage == "after":  # committed, the old generation's files not yet deleted
        faults.install("store.collect_garbage", lambda path: _block(stage))
    elif stage == "build":  # pgvector: the HNSW index is built in the transaction about to commit
        commits = iter(range(2))
        faults.install("pgvector.before_commit", lambda table: None if next(commits, 1) == 0 else _block(stage))


def main() -> None:
    mode, kind, path = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    where = None if kind == "pgvector" else path
    if mode == "stream":
        index = create_index(kind, where, DIM, config=config(kind))
        i = 0
        while True:
            apply_batch(index, i)
            index.flush()
            print(f"flushed {i}", flush=True)
            i += 1
    elif mode == "save":
        stage = sys.argv[4]
        n_done = int(sys.argv[5])
        index = open_index(kind, where, config=config(kind) if where is None else None)
        apply_batch(index, n_done)  # not flushed: only a completed save makes it durable
        install_hook(stage)
        if stage == "none":
            print("saving", flush=True)
        index.save()
        print("saved", flush=True)
        _block("done")


if __name__ == "__main__":
    main()
