"""Filtered queries on a library whose indexes are HNSW graphs: ``--under`` and date filters with
``--by region`` and ``--by image`` return only what the filter keeps, and the same results as the
same search with exact indexes (the yardstick of bench/bench_query.py's filtered figures)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _indexes_data import text_like_queries, unit_vectors

from fgsearch.indexes.base import SearchResult
from fgsearch.search import Filters, SearchQuery, search_vector

N_IMAGES, PER = 126, 8  # 1,008 region vectors: FAISS builds a graph from 1,000
SMALL = "/p/all/small/"  # 10 % of the images
DIM = 32  # FGCLIPConfig.tiny().projection_dim


def _path(i: int) -> str:
    return f"{SMALL if i < N_IMAGES // 10 else '/p/all/rest/'}img_{i:04d}.jpg"


def _taken(i: int) -> datetime:
    return datetime(2021, 1, 1) + timedelta(days=(i * 37) % N_IMAGES)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    from fgsearch.library import BackendSettings, Library
    from fgsearch.regions import RegionSettings

    root = tmp_path_factory.mktemp("filtered-lib")
    backend = BackendSettings("faiss", {"flat_threshold": 100, "calibration_queries": 10})
    regions = RegionSettings(proposer="grid", max_regions=PER)
    gvecs, rvecs = unit_vectors(N_IMAGES, DIM, seed=41), unit_vectors(N_IMAGES * PER, DIM, seed=42)
    with Library.open(root / "lib", model=str(tiny_model_dir), regions=regions, backend=backend) as lib:
        items = [
            {"sha256": f"{i:064x}", "width": 64, "height": 48, "captured_at": _taken(i), "proposer": "grid",
             "boxes": [(0.1 * (j % 4), 0.1 * (j // 4), 0.5 + 0.1 * (j % 4), 0.5 + 0.1 * (j // 4)) for j in range(PER)]}
            for i in range(N_IMAGES)
        ]  # fmt: skip
        cids, rids = lib.catalog.reserve_contents(items)
        lib.global_index.add(np.asarray(cids, np.int64), gvecs)
        lib.region_index.add(np.asarray([r for rr in rids for r in rr], np.int64), rvecs)
        lib.global_index.save()
        lib.region_index.save()
        lib.catalog.confirm_contents(cids, [(_path(i), 1000, 1_700_000_000_000_000_000) for i in range(N_IMAGES)], 1)
    lib = Library.open(root / "lib", read_only=True)
    assert lib.region_index.stats().params["tier"] == "hnsw"
    yield lib, rvecs
    lib.close()


class _Exact:
    """A library index searched exactly (every other call reaches the index)."""

    def __init__(self, guarded: Any) -> None:
        self.guarded = guarded

    def __getattr__(self, name: str) -> Any:
        return getattr(self.guarded, name)

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        inner = self.guarded.inner
        allowed = inner.ids() if allowed_ids is None else np.unique(np.asarray(allowed_ids, np.int64))
        return SearchResult(*inner._exact_over_allowed(np.atleast_2d(queries).astype(np.float32), k, allowed))


@pytest.mark.parametrize("by", ["region", "image"])
@pytest.mark.parametrize(
    "filters",
    [
        Filters(path_prefix=SMALL),
        Filters(captured_after=datetime(2021, 2, 1), captured_before=datetime(2021, 3, 1)),
    ],
    ids=["under", "taken"],
)
def test_filtered_queries_match_exact_search(library: Any, by: str, filters: Filters) -> None:
    lib, rvecs = library
    exact = copy.copy(lib.store)
    exact.global_index, exact.region_index = _Exact(lib.store.global_index), _Exact(lib.store.region_index)
    q = SearchQuery(text="-", k=10, by=by, filters=filters)
    for v in text_like_queries(rvecs, 5, seed=43):
        got, want = search_vector(lib.store, q, v), search_vector(exact, q, v)
        assert got and [h.image_id for h in got] == [h.image_id for h in want]
        assert [h.region_id for h in got] == [h.region_id for h in want]
        for h in got:
            assert h.path.startswith(SMALL) if filters.path_prefix else filters.captured_after <= h.captured_at
            assert filters.path_prefix or h.captured_at < filters.captured_before
