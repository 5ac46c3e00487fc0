"""Fuzz: a snapshot's HNSW graph file garbled in place (same size, many seeds, every region).

FAISS (1.14.2+) refuses much of it when it reads the file, fgsearch's own check
(:mod:`fgsearch.indexes.hnsw.check`) what FAISS's reader lets through and its search would trust; a
garbled id map is refused by the search that meets a foreign id; garbled codes give other
(stored) ids. What must never happen: a signal, a hang,
an exception other than the one-line :class:`IndexCorruptError`, or an id that was never stored.
The searches run in a subprocess (tests/indexes/_hnsw_fuzz_worker.py), so a crash fails the test
and names the seed instead of killing the test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from _hnsw_fuzz_worker import REGIONS
from _indexes_data import unit_vectors

from fgsearch.indexes import FaissConfig, create_index

WORKER = Path(__file__).with_name("_hnsw_fuzz_worker.py")
SEEDS = 20 * REGIONS  # 20 garbles of each of the 24 regions


def _run(folder: Path, first: int, count: int, timeout: float) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(WORKER), "faiss", str(folder), str(first), str(count)],
        capture_output=True,
        text=True,
        cwd=WORKER.parent,
        env={**os.environ, "PYTHONPATH": str(WORKER.parent.parent), "OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )
    lines = proc.stdout.splitlines()
    started = [ln for ln in lines if ln.startswith("start ")]
    assert proc.returncode == 0, (
        f"the worker died (exit {proc.returncode}) at {started[-1] if started else 'open'}: {proc.stderr[-1500:]}"
    )
    return [ln for ln in lines if not ln.startswith("start ")]


def test_a_garbled_graph_is_refused_in_one_line_or_gives_stored_ids_never_a_crash(tmp_path: Path) -> None:
    x = unit_vectors(1200, 24, seed=5, clusters=30)
    ids = np.arange(x.shape[0], dtype=np.int64) * 5 + 3
    folder = tmp_path / "f"
    cfg = FaissConfig(flat_threshold=1000, calibration_queries=40, hnsw_m=8)  # a small file: each case is cheap
    with create_index("faiss", folder, x.shape[1], config=cfg) as idx:
        idx.add(ids, x)
        idx.save()
        assert idx.stats().params["search"] == "faiss"  # FAISS's own search walks the graph
        faiss_file = folder / idx._extra["faiss_file"]
    shutil.copyfile(faiss_file, folder / "pristine.index")
    np.save(folder / "stored_ids.npy", ids)
    outcomes = _run(folder, 0, SEEDS, timeout=240)
    assert len(outcomes) == SEEDS, outcomes[-3:]
    bad = [ln for ln in outcomes if ln.startswith("bad ")]
    assert not bad, bad[:5]
    refused = [ln for ln in outcomes if ln.startswith("error ")]
    searched = [ln for ln in outcomes if ln.startswith("ids ")]
    assert len(refused) + len(searched) == SEEDS
    # both outcomes happen: the fuzz reaches the checks and FAISS's search of garbled data
    assert refused and len(searched) > SEEDS // 10, (len(refused), len(searched))
    on_open = [ln for ln in refused if "cannot read the backend files of generation" in ln]
    on_search = [ln for ln in refused if "returned ids missing from the snapshot" in ln]  # a garbled id map
    assert len(on_open) + len(on_search) == len(refused), refused[:3]
