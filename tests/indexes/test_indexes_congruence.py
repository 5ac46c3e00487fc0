"""Congruence: every backend against the exact backend on the same data and the same operations.

Exact backends (exact, FAISS's flat tier, Qdrant embedded) must return the same top-k (ties aside);
FAISS's approximate tiers (HNSW-SQ4/SQ8, IVF-PQ) must reach recall@10 >= 0.95, with exact scores for
what they return. Checked
after adds, after removals and upserts, after reopening, and after a new snapshot.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _congruence import DIM, ROWS, N, Row, compare, run_congruence
from _indexes_data import HeldVectors, ann_config, near_queries, recall, same_topk, text_like_queries, unit_vectors

from fgsearch.indexes import (
    FaissConfig,
    IndexInputError,
    SearchResult,
    backend_names,
    create_index,
    open_index,
)
from fgsearch.indexes.faiss import FaissIndex

STRUCTURES = [("hnsw", "hnsw"), ("ivfpq", "ivf")]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_backend_agrees_with_exact(tmp_path: Path, row: Row, request: pytest.FixtureRequest) -> None:
    """The congruence suite: one row per backend (and per tier of one), all against exact."""
    config = row.config(tmp_path)
    if row.kind == "pgvector":  # a fresh database on the tests' PostgreSQL
        config = dataclasses.replace(config, url=request.getfixturevalue("postgres_url"))
    other = run_congruence(tmp_path, row.kind, config, exact=row.exact, save_midway=row.save_midway, n=row.n)
    if row.check is not None:
        row.check(other.stats().params)
    other.close()


def test_every_registered_backend_has_a_congruence_row() -> None:
    assert set(backend_names()) <= {r.kind for r in ROWS}


def test_qdrant_payload_carries_image_and_region(tmp_path: Path) -> None:
    data = unit_vectors(32, DIM)
    with create_index("qdrant", tmp_path / "q", DIM) as idx:
        ids = np.arange(1000, 1032)
        idx.add(ids, data, payload={"image_id": ids // 16, "region": ids % 16})
        recs = idx._client.retrieve("fgsearch", [1017], with_payload=True)  # type: ignore[attr-defined]
        assert recs[0].payload == {"image_id": 63, "region": 9}


@pytest.mark.parametrize(("structure", "tier"), STRUCTURES)
def test_faiss_switches_tiers_automatically(tmp_path: Path, structure: str, tier: str) -> None:
    cfg = ann_config(flat_threshold=1000, retrain_growth=2.0, structure=structure)
    data = unit_vectors(2400, DIM, seed=11)
    with create_index("faiss", tmp_path / "f", DIM, config=cfg) as idx:
        idx.add(np.arange(900), data[:900])
        idx.flush()
        assert idx.stats().params["tier"] == "flat"
        idx.add(np.arange(900, 1100), data[900:1100])
        idx.flush()  # crossed flat_threshold: the flush builds the approximate structure
        p = idx.stats().params
        assert p["tier"] == tier and p["trained_n"] == 1100
        idx.add(np.arange(1100, 2400), data[1100:])
        idx.flush()
        if tier == "ivf":  # grew past retrain_growth x trained_n: the cells are re-trained
            assert idx.stats().params["trained_n"] == 2400
        else:  # the graph takes the adds at the next snapshot, never rebuilt for growth alone
            idx.save()
            p = idx.stats().params
            assert (p["tier"], p["trained_n"], idx.count()) == ("hnsw", 1100, 2400)
        idx.remove(np.arange(2000))
        idx.flush()  # fell below flat_threshold / 2: back to exact search
        assert idx.stats().params["tier"] == "flat"
        res = idx.search(data[2300], 1)
        assert res.ids[0, 0] == 2300


@pytest.mark.parametrize("structure", ["hnsw", "ivfpq"])
def test_faiss_large_filter_uses_the_selector(tmp_path: Path, structure: str) -> None:
    cfg = ann_config(filter_exact_max=10, structure=structure)
    data = unit_vectors(2000, DIM, seed=12)
    queries = near_queries(data, 30)
    with (
        create_index("faiss", tmp_path / "f", DIM, config=cfg) as idx,
        create_index("exact", tmp_path / "e", DIM) as ref,
    ):
        for i in (idx, ref):
            i.add(np.arange(2000), data)
            i.save()
            i.remove(np.arange(0, 2000, 5))  # masked in the FAISS snapshot
            i.add(np.arange(5000, 5100), unit_vectors(100, DIM, seed=13))  # delta, searched exactly
        allowed = np.concatenate([np.arange(0, 2000, 2), np.arange(5000, 5100, 2)])
        got = idx.search(queries, 10, allowed_ids=allowed)
        want = ref.search(queries, 10, allowed_ids=allowed)
        assert np.isin(got.ids[got.ids >= 0], allowed).all()
        assert not np.isin(got.ids, np.arange(0, 2000, 5)).any()
        assert recall(got.ids, want.ids) >= 0.95


def test_faiss_gpu_selection_falls_back_to_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a GPU reported but unusable, search stays on CPU; use_gpu=True without one is an error."""
    import faiss

    from fgsearch.indexes import BackendUnavailableError

    data = unit_vectors(1500, DIM, seed=21)
    with create_index("faiss", tmp_path / "f", DIM, config=ann_config(use_gpu=False, structure="ivfpq")) as idx:
        idx.add(np.arange(1500), data)
        idx.save()

    def no_gpu_resources() -> None:
        raise RuntimeError("CUDA driver not found")

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", no_gpu_resources, raising=False)
    with open_index("faiss", tmp_path / "f", read_only=True, config=ann_config(structure="ivfpq")) as idx:
        assert idx.stats().params["gpu"] is False
        assert idx.search(data[7], 1).ids[0, 0] == 7
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    with pytest.raises(BackendUnavailableError, match="no GPU"):
        open_index("faiss", tmp_path / "f", read_only=True, config=ann_config(use_gpu=True, structure="ivfpq"))


def test_faiss_default_tier_holds_recall_on_text_like_queries(tmp_path: Path) -> None:
    """Regression: the IVF-PQ tier was calibrated on image-like queries only and returned
    recall@10 ~0.8 for text-like ones (far from every stored vector); the default must hold 0.95."""
    data = unit_vectors(N, DIM, seed=3)
    queries = text_like_queries(data, 100)
    with (
        create_index("faiss", tmp_path / "f", DIM, config=FaissConfig(flat_threshold=1000)) as idx,
        create_index("exact", tmp_path / "e", DIM) as ref,
    ):
        for i in (idx, ref):
            i.add(np.arange(N), data)
            i.save()
        assert idx.stats().params["tier"] == "hnsw"
        assert recall(idx.search(queries, 10).ids, ref.search(queries, 10).ids) >= 0.95


def test_faiss_calibrates_on_the_callers_queries(tmp_path: Path) -> None:
    data = unit_vectors(2000, DIM, seed=4)
    calls = []

    def source() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"text": text_like_queries(data, 80, seed=9)}

    with create_index("faiss", tmp_path / "f", DIM, config=ann_config()) as idx:
        assert isinstance(idx, FaissIndex)
        idx.set_calibration_queries(source)
        idx.add(np.arange(900), data[:900])
        idx.flush()
        assert calls == []  # nothing to calibrate below flat_threshold: the source is not called
        idx.add(np.arange(900, 2000), data[900:])
        idx.save()
        assert calls == [1]
        sets = idx.stats().params["calibration"]["sets"]
        assert sets["text"] == {**sets["text"], "queries": 80, "source": "given by caller"}
        assert set(sets) == {"image", "text"}
        idx.set_calibration_queries({"text": np.ones((5, DIM + 1), np.float32)})
        idx.add(np.arange(2000, 8000), unit_vectors(6000, DIM, seed=5))
        with pytest.raises(IndexInputError, match=r"calibration query set 'text'.*expected 32-d"):
            idx.save()  # grew 4x: the rebuild calibrates with the (bad) given set
        idx.set_calibration_queries(None)


def test_faiss_hnsw_keeps_removed_ids_as_tombstones_until_rebuild(tmp_path: Path) -> None:
    data = unit_vectors(2000, DIM, seed=6)
    queries = near_queries(data, 40)
    with (
        create_index("faiss", tmp_path / "f", DIM, config=ann_config()) as idx,
        create_index("exact", tmp_path / "e", DIM) as ref,
    ):
        for i in (idx, ref):
            i.add(np.arange(2000), data)
            i.save()
            i.remove(np.arange(0, 2000, 20))  # 100 ids: 5% < max_tombstones
            i.add(np.arange(3000, 3050), unit_vectors(50, DIM, seed=7))
            i.save()
        p = idx.stats().params
        assert (p["tier"], p["tombstones"], p["trained_n"]) == ("hnsw", 100, 2000)  # no rebuild
        got = idx.search(queries, 10)
        assert not np.isin(got.ids, np.arange(0, 2000, 20)).any()
        assert recall(got.ids, ref.search(queries, 10).ids) >= 0.95
        idx.close()
        idx = open_index("faiss", tmp_path / "f", read_only=True)
        assert not np.isin(idx.search(data[::20], 10).ids, np.arange(0, 2000, 20)).any()
        idx.close()
        idx = open_index("faiss", tmp_path / "f")
        back = unit_vectors(1, DIM, seed=8)
        idx.add([40], back)  # a tombstoned id comes back: the graph cannot hold it twice
        idx.save()
        assert idx.stats().params["tombstones"] == 0
        assert idx.search(back[0], 1).ids[0, 0] == 40
        idx.close()


def test_faiss_hnsw_codes_are_configurable_and_a_change_rebuilds(tmp_path: Path) -> None:
    """The graph searches 8-bit codes by default; an index built with other codes (here 4-bit, half
    the memory) is rebuilt with the configured ones at its next snapshot, not kept silently."""
    data = unit_vectors(1500, DIM, seed=5)
    path = tmp_path / "f"
    with create_index("faiss", path, DIM, config=ann_config(hnsw_codes="SQ4")) as idx:
        idx.add(np.arange(1500), data)
        idx.save()
        p = idx.stats().params
        assert (p["tier"], p["codes"]) == ("hnsw", "SQ4")
        sq4_bytes = idx.stats().bytes_in_memory
    with open_index("faiss", path, config=ann_config()) as idx:
        assert idx.stats().params["codes"] == "SQ4"  # what is on disk, until the next snapshot
        idx.add(np.arange(1500, 1510), unit_vectors(10, DIM, seed=6))
        idx.save()
        p = idx.stats().params
        assert (p["codes"], p["trained_n"]) == ("SQ8", 1510)
        assert p["calibration"]["reached"]
        assert idx.stats().bytes_in_memory > sq4_bytes
        res = idx.search(data[:50], 10)
        assert (res.ids[:, 0] == np.arange(50)).mean() >= 0.95


def test_faiss_config_rejects_unknown_hnsw_codes() -> None:
    with pytest.raises(IndexInputError, match="hnsw_codes must be 'SQ4' or 'SQ8'"):
        FaissConfig(hnsw_codes="PQ16")  # type: ignore[arg-type]


def test_faiss_recalibrates_when_adds_grow_the_graph(tmp_path: Path) -> None:
    """The breadth calibrated at build time was measured on a smaller graph: a snapshot that finds
    the collection recalibrate_growth (1.25x) larger measures it again (tombstones excluded), so the
    recorded recall describes the index as it is searched."""
    data = unit_vectors(2200, DIM, seed=21)
    with create_index("faiss", tmp_path / "f", DIM, config=ann_config()) as idx:
        idx.add(np.arange(1200), data[:1200])
        idx.save()
        p = idx.stats().params
        assert (p["trained_n"], p["calibrated_n"]) == (1200, 1200)
        idx.remove(np.arange(50))  # tombstones in the graph during the next calibration
        idx.add(np.arange(1200, 1400), data[1200:1400])
        idx.save()
        p = idx.stats().params
        assert (p["trained_n"], p["calibrated_n"], p["tombstones"]) == (1200, 1200, 50)  # 1350 < 1.25 x 1200
        idx.add(np.arange(1400, 2200), data[1400:2200])
        idx.save()
        p = idx.stats().params
        assert (p["trained_n"], p["calibrated_n"], p["tombstones"]) == (1200, 2150, 50)
        assert p["calibration"]["reached"] and p["calibrated_recall"] >= 0.98
        res = idx.search(data[:100], 5)
        assert not np.isin(res.ids, np.arange(50)).any()  # removed ids are never returned


@pytest.mark.skipif(
    not Path("/proc/self/maps").exists() or not hasattr(os, "posix_fadvise"), reason="Linux memory map and fadvise"
)
def test_an_hnsw_snapshot_is_searched_memory_mapped_with_the_same_answers(tmp_path: Path, monkeypatch) -> None:
    """The graph and codes of an HNSW snapshot are mapped from its file, not read into anonymous
    memory (they were: ~740 B per vector of every reader and writer, bench_indexes), and the
    answers are those of the same index read into memory."""
    data = unit_vectors(3000, DIM, seed=5)
    queries = text_like_queries(data, 50)
    with create_index("faiss", tmp_path / "f", DIM, config=FaissConfig(flat_threshold=1000)) as w:
        w.add(np.arange(3000), data)
        w.save()
        assert w.stats().params["tier"] == "hnsw" and w.stats().params["mmap"]  # the writer's too
    for t in threading.enumerate():  # the writer's own read-ahead (it maps its snapshot too) is done
        if t.name == "fgsearch-prefetch":
            t.join(10)
    advised: list[int] = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, how: advised.append(how) or real(fd, off, n, how))
    mapped = open_index("faiss", tmp_path / "f", read_only=True)
    plain = open_index("faiss", tmp_path / "f", read_only=True, config=FaissConfig(flat_threshold=1000, mmap=False))
    try:
        assert isinstance(mapped, FaissIndex)
        faiss_file = str(tmp_path / "f" / mapped._extra["faiss_file"])
        assert faiss_file in Path("/proc/self/maps").read_text()
        assert mapped.stats().params["mmap"] and not plain.stats().params["mmap"]
        a, b = mapped.search(queries, 10), plain.search(queries, 10)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        for _ in range(100):  # the mapped file is read ahead in the background (a cold cache is read at disk speed)
            if advised:
                break
            time.sleep(0.05)
        assert advised == [os.POSIX_FADV_WILLNEED]
    finally:
        mapped.close()
        plain.close()


# ---- the checks themselves fail on a wrong backend (issue 30.7, 30.8) ---------------------------
def test_same_topk_allows_only_true_ties_at_the_boundary() -> None:
    ids = np.array([[4, 7, 9]])
    scores = np.array([[0.9, 0.8, 0.7]], np.float32)
    assert same_topk(ids, scores, ids.copy(), scores.copy(), scores.copy())
    wrong_kth = np.array([[4, 7, 5]])  # claims the k-th score; its true score is 0.3
    assert not same_topk(ids, scores, wrong_kth, scores, np.array([[0.9, 0.8, 0.3]], np.float32))
    assert not same_topk(ids, scores, np.array([[4, 7, 7]]), scores)  # an id twice
    assert not same_topk(ids, scores, np.array([[7, 4, 9]]), scores)  # ids swapped: scores not theirs
    assert not same_topk(ids, scores, ids, np.array([[0.9, 0.8, 0.6]], np.float32))
    tied = np.array([[0.9, 0.7, 0.7]], np.float32)
    assert same_topk(ids, tied, np.array([[4, 9, 7]]), tied)  # a tie inside the list
    assert same_topk(ids, tied, np.array([[4, 9, 5]]), tied, tied)  # a true tie at the k-th position: either id


class _WrongKth:
    """An exact index that returns another live id, with the k-th score, at the k-th position."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def search(self, queries: np.ndarray, k: int, **kw: Any) -> Any:
        res = self.inner.search(queries, k, **kw)
        ids = res.ids.copy()
        live = self.inner.ids()
        for row in ids:
            row[-1] = next(int(i) for i in live[::-1] if i not in row)
        return SearchResult(ids=ids, scores=res.scores)


def test_a_backend_with_a_wrong_kth_id_fails_the_congruence_check(tmp_path: Path) -> None:
    data = unit_vectors(300, DIM, seed=3)
    queries = near_queries(data, 10)
    held = HeldVectors(DIM)
    held.add(np.arange(300), data)
    with create_index("exact", tmp_path / "e", DIM) as idx:
        idx.add(np.arange(300), data)
        compare(held, idx, queries, exact=True)  # the real one passes
        with pytest.raises(AssertionError):
            compare(held, _WrongKth(idx), queries, exact=True)


def test_a_persistence_that_drops_the_last_vector_fails(tmp_path: Path) -> None:
    """Exact against exact, both reopened, would agree on a vector both lost; the vectors the test
    holds do not."""
    data = unit_vectors(300, DIM, seed=3)
    queries = near_queries(data, 10)
    held = HeldVectors(DIM)
    held.add(np.arange(300), data)
    with create_index("exact", tmp_path / "e", DIM) as idx:
        idx.add(np.arange(300), data)
        idx.save()
    with open_index("exact", tmp_path / "e") as idx:
        compare(held, idx, queries, exact=True)
        idx.remove(np.array([299]))  # as a persistence that dropped the last vector would leave it
        with pytest.raises(AssertionError):
            compare(held, idx, queries, exact=True)
