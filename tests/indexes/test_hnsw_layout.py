"""The FAISS internals fgsearch's graph check reads (indexes/hnsw/check.py), checked against FAISS itself.

If a FAISS release changes any of them, these tests fail with a message naming what changed; the
check must then be fixed (or the ``faiss-cpu`` upper bound in pyproject.toml kept below that
release) before the bound is raised.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import faiss
import numpy as np
import pytest
from _indexes_data import unit_vectors

from fgsearch.indexes.hnsw.check import FAISS_RANGE, _view, faiss_version_reason

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph() -> faiss.Index:
    x = unit_vectors(2000, 40, seed=2, clusters=20)
    h = faiss.IndexHNSWSQ(40, faiss.ScalarQuantizer.QT_8bit, 8, faiss.METRIC_INNER_PRODUCT)
    h.train(x)
    ann = faiss.IndexIDMap(h)
    ann.own_fields = True
    h.this.disown()
    ann.add_with_ids(x, np.arange(2000, dtype=np.int64) * 2)
    return ann


def test_the_requirement_and_the_check_agree_on_the_faiss_versions_and_faiss_is_in_them() -> None:
    reqs = re.findall(r'^    "faiss-cpu>=([\d.]+),<([\d.]+)",$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert len(reqs) == 1, "pyproject.toml must require faiss-cpu>=LOW,<HIGH (once)"
    lo, hi = reqs[0]
    assert tuple(int(p) for p in lo.split(".")) == FAISS_RANGE[0]
    assert (int(hi.split(".")[0]), 0, 0) == FAISS_RANGE[1]
    assert faiss_version_reason() is None, f"installed {faiss_version_reason()}"
    assert faiss_version_reason("1.13.2") and faiss_version_reason("2.0.0") and not faiss_version_reason("1.15.1")


def test_sq8_codes_decode_as_vmin_plus_code_over_255_times_vdiff(graph) -> None:
    st = faiss.downcast_index(faiss.downcast_index(graph.index).storage)
    d = int(st.d)
    trained = faiss.vector_to_array(st.sq.trained)
    assert trained.size == 2 * d, f"SQ8 trained vector holds {trained.size} values, the check reads 2 x {d}"
    codes = faiss.vector_to_array(st.codes).reshape(-1, d)[:50]
    theirs = st.sq.decode(np.ascontiguousarray(codes))
    ours = trained[:d] + (codes.astype(np.float32) + 0.5) / 255.0 * trained[d:]
    np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg="SQ8 decoding changed: tiers.out_of_range is wrong")


def test_the_link_arrays_are_a_prefix_list_per_node_and_views_alias_faiss_memory(graph) -> None:
    h = faiss.downcast_index(graph.index).hnsw
    n = int(graph.ntotal)
    levels = faiss.vector_to_array(h.levels)
    offsets = faiss.vector_to_array(h.offsets).astype(np.int64)
    cum = faiss.vector_to_array(h.cum_nneighbor_per_level)
    assert levels.size == n and offsets.size == n + 1, "level table / offsets no longer one per node"
    np.testing.assert_array_equal(np.diff(offsets), cum[levels], err_msg="a node's lists are not cum[level] slots")
    assert levels[h.entry_point] == h.max_level + 1 == levels.max(), "levels are no longer 1 + the top level"
    nb = _view(h.neighbors, ctypes.c_int32, int(h.neighbors.size()))
    row = nb[offsets[5] : offsets[5] + cum[1]]
    links = row[row >= 0]
    assert (row[: links.size] >= 0).all(), "a level-0 list is no longer its links, then -1"
    saved = int(row[links.size - 1])
    try:
        nb[offsets[5] + links.size - 1] = 1234  # written through the view (tests make extra links so)
        back = faiss.deserialize_index(faiss.serialize_index(graph))
        theirs = faiss.vector_to_array(faiss.downcast_index(back.index).hnsw.neighbors)
        assert theirs[offsets[5] + links.size - 1] == 1234, "the neighbours view is a copy, not FAISS's array"
    finally:
        nb[offsets[5] + links.size - 1] = saved
