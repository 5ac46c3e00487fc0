"""Fuzz: a snapshot's usearch graph file garbled in place (same size, 48 seeds, every region).

usearch 2.x checks a file's header when it maps it, not its links: garbled node bytes made its
search die of SIGSEGV or hang (seen while writing the check, 8 of 10 garbles of the node region).
fgsearch's check (:mod:`fgsearch.indexes.usearch.check`) refuses those files before usearch reads
them; garbled codes (the vector matrix) give other stored ids. What must never happen: a signal, a
hang, an exception other than the one-line :class:`IndexCorruptError`, or an id that was never
stored. The searches run in a subprocess (tests/indexes/_hnsw_fuzz_worker.py), so a crash fails
the test and names the seed instead of killing the test run.
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

from fgsearch.indexes import UsearchConfig, create_index

WORKER = Path(__file__).with_name("_hnsw_fuzz_worker.py")
SEEDS = 2 * REGIONS  # 2 garbles of each of the 24 regions


def test_a_garbled_usearch_graph_is_refused_in_one_line_or_gives_stored_ids_never_a_crash(tmp_path: Path) -> None:
    x = unit_vectors(1200, 24, seed=5, clusters=30)
    ids = np.arange(x.shape[0], dtype=np.int64) * 5 + 3
    folder = tmp_path / "u"
    cfg = UsearchConfig(flat_threshold=1000, calibration_queries=40, connectivity=8)  # a small file
    with create_index("usearch", folder, x.shape[1], config=cfg) as idx:
        idx.add(ids, x)
        idx.remove(ids[:30])
        idx.save()  # rebuilt graph (no deleted nodes): then delete a few, so deleted keys are in the file
        idx.remove(ids[30:40])
        idx.save()
        assert idx.stats().params["deleted_nodes"] == 10
        graph = folder / idx._extra["graph_file"]  # type: ignore[attr-defined]
    shutil.copyfile(graph, folder / "pristine.index")
    np.save(folder / "stored_ids.npy", ids[40:])
    proc = subprocess.run(
        [sys.executable, str(WORKER), "usearch", str(folder), "0", str(SEEDS)],
        capture_output=True,
        text=True,
        cwd=WORKER.parent,
        env={**os.environ, "PYTHONPATH": str(WORKER.parent.parent), "OMP_NUM_THREADS": "1"},
        timeout=180,
    )
    lines = proc.stdout.splitlines()
    started = [ln for ln in lines if ln.startswith("start ")]
    assert proc.returncode == 0, (
        f"the worker died (exit {proc.returncode}) at {started[-1] if started else 'open'}: {proc.stderr[-1500:]}"
    )
    outcomes = [ln for ln in lines if not ln.startswith("start ")]
    assert len(outcomes) == SEEDS, outcomes[-3:]
    bad = [ln for ln in outcomes if ln.startswith("bad ")]
    assert not bad, bad[:5]
    refused = [ln for ln in outcomes if ln.startswith("error ")]
    searched = [ln for ln in outcomes if ln.startswith("ids ")]
    # both outcomes happen: the fuzz reaches the check and usearch's search of garbled codes
    assert len(refused) + len(searched) == SEEDS and refused and searched, (len(refused), len(searched))
    assert all("cannot read the backend files of generation" in ln for ln in refused), refused[:3]
