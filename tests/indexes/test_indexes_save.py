"""A save with nothing to write writes nothing: every ``fgsearch index`` run ends with one, and on an
unchanged library it rewrote every vector (and the graph) as a new snapshot."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from fgsearch.indexes import ExactConfig, FaissConfig, UsearchConfig, create_index, open_index

DIM = 16
CONFIGS = {
    "exact": ExactConfig(),
    "faiss": FaissConfig(flat_threshold=500, hnsw_m=8, hnsw_ef_construction=32, calibration_queries=50),
    "usearch": UsearchConfig(flat_threshold=500, calibration_queries=50),
}


def _vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _state(folder: Path) -> tuple[int, dict[str, int]]:
    with open_index(None, folder, read_only=True) as r:
        g = int(r.stats().params["generation"])
    return g, {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_a_save_with_nothing_changed_writes_no_snapshot(tmp_path: Path, kind: str) -> None:
    if kind == "usearch":
        pytest.importorskip("usearch")
    folder, cfg = tmp_path / kind, CONFIGS[kind]
    with create_index(kind, folder, DIM, config=cfg) as idx:
        idx.add(np.arange(800), _vectors(800, 1))
        idx.save()
    g, files = _state(folder)
    with open_index(kind, folder, config=cfg) as idx:
        idx.save()
        idx.flush()
    assert _state(folder) == (g, files)  # not a file touched
    with open_index(kind, folder, config=cfg) as idx:  # a change of any kind still makes one
        idx.set_record_meta({"model": "another"})
        idx.save()
    assert _state(folder)[0] == g + 1
    with open_index(kind, folder, config=dataclasses.replace(cfg, norm_tolerance=0.02)) as idx:
        idx.save()
    assert _state(folder)[0] == g + 2
    with open_index(kind, folder) as idx:
        idx.remove(np.array([3]))
        idx.save()
        assert idx.count() == 799
    assert _state(folder)[0] == g + 3
    assert os.listdir(folder)  # and it opens
    with open_index(kind, folder, read_only=True) as r:
        assert r.count() == 799 and r.stats().params["generation"] == g + 3
