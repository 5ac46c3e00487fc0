"""Calibration on the queries an index serves (fgsearch.indexes.faiss.served and the FAISS backend).

The data and queries here come from a generator written for this test, unlike the benchmark's
(bench/bench_data.py), the test data's (_indexes_data.py) and the calibration's own synthetic
sets: heavy-tailed topics in a low-rank subspace, and queries pushed away from the collection's
common direction (best match cosine ~0.15, an extreme modality gap). On them the breadth the
synthetic sets choose misses the goal; once the index has served enough of them, the next snapshot
measures that, widens the search, and a fresh draw of the same kind reaches the goal.
"""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fgsearch.indexes import FaissConfig, create_index, open_index
from fgsearch.indexes.faiss.calibration_queries import recall_at_k
from fgsearch.indexes.faiss.served import FILE, ServedQueries

DIM = 64


def unseen_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 77])
    mu = rng.standard_normal(DIM)
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
    scales = np.r_[np.ones(16), np.full(DIM - 16, 0.12)]
    topics = rng.standard_t(3, size=(60, DIM)) * scales
    t = rng.integers(0, 60, n)
    x = 0.9 * mu / np.linalg.norm(mu) + (0.5 * topics[t] + 0.45 * rng.standard_t(4, size=(n, DIM)) * scales) @ basis.T
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def far_queries(x: np.ndarray, nq: int, seed: int, away: float = 2.0) -> np.ndarray:
    """Random directions orthogonal to the collection's mean, pushed ``away`` from it."""
    rng = np.random.default_rng([seed, 99])
    m = x.mean(axis=0)
    m /= np.linalg.norm(m)
    z = rng.standard_normal((nq, DIM)).astype(np.float32)
    z -= (z @ m)[:, None] * m
    q = z / np.linalg.norm(z, axis=1, keepdims=True) - away * m
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def near_queries(x: np.ndarray, nq: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = x[rng.choice(x.shape[0], nq, replace=False)] + 0.3 * rng.standard_normal((nq, DIM)) / np.sqrt(DIM)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _recall(idx, x: np.ndarray, q: np.ndarray) -> float:
    return recall_at_k(idx.search(q, 10).ids, np.argsort(-(q @ x.T), axis=1)[:, :10])


CFG = FaissConfig(
    flat_threshold=1000, hnsw_m=8, hnsw_ef_construction=32, hnsw_fill_links=0, calibration_queries=100, served_min=100
)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return unseen_images(4000, seed=1)


def test_a_breadth_that_misses_the_goal_on_served_queries_widens_and_holds_on_new_ones(tmp_path: Path, data) -> None:
    x = data
    ids = np.arange(x.shape[0], dtype=np.int64)
    with create_index("faiss", tmp_path / "f", DIM, config=CFG) as idx:
        idx.add(ids, x)
        idx.save()
        p = idx.stats().params
        synthetic_ef = p["ef_search"]
        assert p["served"]["held"] == 0 and "recall10" not in p["served"]
        assert {"text", "text-far", "text-near"} <= set(p["calibration"]["sets"])  # no served queries yet
    with open_index("faiss", tmp_path / "f", read_only=True, config=CFG) as reader:  # e.g. fgsearch serve
        before = _recall(reader, x, far_queries(x, 150, seed=2))  # served: recorded by the reader
    assert before < 0.97  # the synthetic sets' breadth misses the goal on these queries
    with open_index("faiss", tmp_path / "f", config=CFG) as idx:
        idx.save()  # the next snapshot measures recall on them and widens the search
        s = idx.stats().params["served"]
        assert (s["held"], s["queries"]) == (150, 100) and s["recall10"] >= 0.98 and not s["below_goal"], s
        assert s["measured_at"] and s["breadth"] > synthetic_ef and s["recorded_since_check"] == 0
        assert idx.stats().params["ef_search"] == s["breadth"]
        assert _recall(idx, x, far_queries(x, 150, seed=3)) >= 0.97  # a fresh draw, not calibrated on


def test_easy_served_queries_narrow_a_search_the_synthetic_sets_made_wide(tmp_path: Path, data) -> None:
    x = data
    ids = np.arange(x.shape[0], dtype=np.int64)
    with create_index("faiss", tmp_path / "f", DIM, config=CFG) as idx:
        idx.add(ids, x)
        idx.save()
        wide = idx.stats().params["ef_search"]
        idx.search(near_queries(x, 120, seed=4), 10)
        idx.save()
        p = idx.stats().params
        assert p["ef_search"] < wide and p["served"]["recall10"] >= 0.98, (wide, p["served"])
        assert "text-far" not in p["calibration"]["sets"] and "served" in p["calibration"]["sets"]


def test_below_goal_when_no_breadth_reaches_it_is_in_the_status(tmp_path: Path, data) -> None:
    x = data
    cfg = FaissConfig(**{**CFG.__dict__, "ef_search": 32, "rerank_factor": 3})  # a breadth fixed by the user
    with create_index("faiss", tmp_path / "f", DIM, config=cfg) as idx:
        idx.add(np.arange(x.shape[0], dtype=np.int64), x)
        idx.save()
        idx.search(far_queries(x, 120, seed=5, away=4.0), 10)
        idx.save()
        params = idx.stats().params
    s = params["served"]
    assert s["below_goal"] and s["recall10"] < s["goal_recall10"] == pytest.approx(0.98), s
    from fgsearch.library.doctor import recall_below_goal  # what `fgsearch status` and `doctor` print
    from fgsearch.terminal import doctor_lines

    (line,) = recall_below_goal({"regions": params, "global": {}})
    assert line.startswith(
        f"regions index: recall@10 {s['recall10']:.3f} on 100 served queries (measured {s['measured_at']}) "
        "is below the goal 0.980; searches may miss matches"
    )
    part = {"catalog": 1, "index": 1, "orphan_vectors": 0, "missing_vectors": 0, "damaged_vectors": 0}
    rep = {"global": part, "regions": part, "damaged_files": [], "below_goal": [line]}
    assert doctor_lines(rep)[-1] == f"below goal: {line}"


def test_the_record_is_vectors_only_capped_private_and_off_with_one_setting(
    tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = data[:1500]
    cfg = FaissConfig(served_queries=50)  # exact search (no graph): recorded all the same
    with create_index("faiss", tmp_path / "f", DIM, config=cfg) as idx:
        idx.add(np.arange(x.shape[0], dtype=np.int64), x)
        q = near_queries(x, 80, seed=6)
        for i in range(0, 80, 20):
            idx.search(q[i : i + 20], 10)
        path = tmp_path / "f" / FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_size == 64 + 50 * DIM * 2  # header + 50 float16 vectors, nothing else
        rec = ServedQueries(tmp_path / "f", DIM, 50)
        assert rec.total() == 80
        kept = rec.recent(1000)
        np.testing.assert_allclose(kept, q[::-1][:50], atol=2e-3)  # the 50 newest, newest first
        idx.save()  # a snapshot keeps the record (it is not a snapshot file)
        assert path.exists()
    with open_index("faiss", tmp_path / "f", read_only=True, config=cfg) as ro:  # e.g. one `fgsearch query`
        ro.search(q[:1], 10)
    assert rec.total() == 81  # written when the process closes the index
    monkeypatch.setenv("FGSEARCH_SERVED_QUERIES", "0")  # off for an existing index, in every process
    with open_index("faiss", tmp_path / "f", read_only=True, config=cfg) as ro:
        ro.search(q[:40], 10)
    assert rec.total() == 81
    with open_index("faiss", tmp_path / "f", config=cfg) as idx:
        idx.save()
        assert not path.exists() and idx.stats().params["served"]["recording"] is False
    monkeypatch.delenv("FGSEARCH_SERVED_QUERIES")
    off = FaissConfig(served_queries=0)  # off as the index's own setting
    with open_index("faiss", tmp_path / "f", config=off) as idx:
        idx.search(q[:40], 10)
        idx.save()
        assert not path.exists() and idx.stats().params["served"]["recording"] is False


def test_a_reader_that_cannot_write_the_record_searches_and_says_so(tmp_path: Path, data, caplog) -> None:
    x = data[:1500]
    with create_index("faiss", tmp_path / "f", DIM) as idx:
        idx.add(np.arange(x.shape[0], dtype=np.int64), x)
        idx.save()
    (tmp_path / "f" / FILE).mkdir()  # what cannot be written as a file, even by root
    with open_index("faiss", tmp_path / "f", read_only=True) as ro:
        for _ in range(3):  # written 32 rows at a time: these 120 make the process try
            assert ro.search(near_queries(x, 40, seed=7), 10).ids.shape == (40, 10)
        s = ro.stats().params["served"]
        assert s["recording"] is False and "cannot write" in s["unavailable"], s
    assert sum("served queries are not recorded" in r.getMessage() for r in caplog.records) == 1


def test_fewer_calibration_queries_than_served_min_still_calibrate_on_served_queries(tmp_path: Path) -> None:
    """``calibration_queries`` below ``served_min``: the served set is taken at ``served_min``
    queries (a set needs that many), not cut to ``calibration_queries``; the snapshot used to fail
    with ``KeyError: 'served'`` when the served queries missed the goal and it calibrated again."""
    cfg = FaissConfig(flat_threshold=1000, hnsw_m=8, hnsw_ef_construction=32, calibration_queries=60, served_min=100)
    x = unseen_images(3000, seed=5)
    with create_index("faiss", tmp_path / "i", DIM, config=cfg) as idx:
        idx.add(np.arange(3000), x)
        idx.save()
        for q in far_queries(x, 120, seed=6):
            idx.search(q[None, :], 10)
        idx.remove(np.arange(10))
        idx.save()
        served = idx.stats().params["served"]
        assert served["queries"] >= 100 and served["held"] == 120


def test_every_snapshot_measures_the_queries_served_since_not_the_last_calibrations_record(
    tmp_path: Path, data
) -> None:
    """A snapshot after one that calibrated on served queries measures the queries served since
    (here easy ones: the search then narrows again), through the served check both graph backends
    share (``served.check_served``)."""
    x = data
    with create_index("faiss", tmp_path / "f", DIM, config=CFG) as idx:
        idx.add(np.arange(x.shape[0], dtype=np.int64), x)
        idx.save()
        idx.search(far_queries(x, 150, seed=7), 10)  # hard: the search widens on them
        idx.save()
        wide = idx.stats().params
        assert "served" in wide["calibration"]["sets"]
        idx.search(near_queries(x, 150, seed=8), 10)  # then easy ones are what users ask
        idx.save()
        p = idx.stats().params
    assert p["served"]["total_at_check"] == 300
    assert p["ef_search"] < wide["ef_search"], (wide["served"], p["served"])
    assert p["served"]["recall10"] >= 0.98 and p["served"]["breadth"] == p["ef_search"]


def test_a_library_that_stopped_growing_checks_what_it_served_when_a_writer_closes(tmp_path: Path, data) -> None:
    """No snapshot comes with growth once a library stops growing: enough queries served since the
    last check (``served_min``, and half the ring) make a writer's next close write one that checks
    them; fewer, or none since, write nothing."""
    x = data
    cfg = dataclasses.replace(CFG, served_queries=300)  # due after max(100, 300 // 2) = 150 since
    with create_index("faiss", tmp_path / "f", DIM, config=cfg) as idx:
        idx.add(np.arange(x.shape[0], dtype=np.int64), x)
        idx.save()
        first = idx.stats().params
    assert first["served"]["held"] == 0

    def serve(n: int, seed: int) -> None:
        with open_index("faiss", tmp_path / "f", read_only=True, config=cfg) as reader:
            reader.search(far_queries(x, n, seed=seed), 10)

    def writer_closes() -> dict:
        open_index("faiss", tmp_path / "f", config=cfg).close()  # a writer that changes nothing
        with open_index("faiss", tmp_path / "f", read_only=True, config=cfg) as reader:
            return reader.stats().params

    serve(120, seed=5)
    assert writer_closes()["generation"] == first["generation"]  # 120 < 150: not due
    serve(60, seed=6)
    p = writer_closes()
    assert p["generation"] == first["generation"] + 1
    assert p["served"]["total_at_check"] == 180 and p["served"]["queries"] == 100  # the most recent 100
    assert p["served"]["recall10"] >= 0.98 and p["ef_search"] > first["ef_search"]  # far queries: widened
    assert writer_closes()["generation"] == p["generation"]  # none served since


@pytest.mark.parametrize(("at_half", "narrows"), [(0.985, True), (0.975, False)])
def test_a_breadth_whose_served_recall_is_flat_near_the_goal_narrows_when_half_of_it_reaches_the_goal(
    tmp_path: Path, at_half: float, narrows: bool
) -> None:
    """Recall grows slowly with the breadth near the goal for text queries far from every image (the
    unseen generator at 1M: 0.970 at efSearch 384, 0.984 at 1600): a breadth four times what the
    served queries need cleared the goal (0.98) by less than 0.01 and was kept. Half the breadth is
    now measured too, and the search calibrates again when that reaches the goal."""
    from fgsearch.indexes.faiss.served import check_served

    served = ServedQueries(tmp_path, DIM, 500)
    served.record(np.random.default_rng(5).standard_normal((150, DIM)).astype(np.float32))
    cfg = dataclasses.replace(CFG, served_min=100)
    asked: list[int] = []

    def measure(queries: np.ndarray, breadth: int, factor: int) -> float:
        asked.append(breadth)
        return 0.985 if breadth >= 1600 else at_half

    calibrated: list[int] = []

    def recalibrate(queries: np.ndarray) -> dict:
        calibrated.append(queries.shape[0])
        return {"ef_search": 800, "calibration": {"breadth": 800, "sets": {"served": {"recall10": at_half}}}}

    extra: dict = {"ef_search": 1600, "rerank_factor": 3}
    record = check_served(served, cfg, extra, {}, breadth=1600, fixed=False, measure=measure, recalibrate=recalibrate)
    assert asked == [1600, 800]
    assert bool(calibrated) is narrows
    assert record["breadth"] == (800 if narrows else 1600) and record["recall10"] == (at_half if narrows else 0.985)


def test_a_served_check_that_calibrates_again_finds_their_exact_top10_once_and_the_pivots_once(
    tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The served check measures recall at the breadth (and at half of it), then calibrates again
    with the served queries as a set: their exact top 10 (a pass over every row) is found once for
    all of it, and the new graph's entry pivots are made once for the check and the calibration
    (and once more for the snapshot opened after it), where each step made its own."""
    import fgsearch.indexes.faiss.index as fi
    from fgsearch.indexes.faiss import calibration

    passes: list[list[str]] = []
    real_truths = fi.exact_truths

    def spy(sets: dict, *args: Any, **kw: Any) -> dict:
        passes.append(sorted(sets))
        return real_truths(sets, *args, **kw)

    made: list[int] = []

    class Counted(fi.EntryPivots):
        def __init__(self, *args: Any, **kw: Any) -> None:
            made.append(1)
            super().__init__(*args, **kw)

    monkeypatch.setattr(fi, "exact_truths", spy)
    monkeypatch.setattr(calibration, "exact_truths", spy)  # what measure_sets calls
    monkeypatch.setattr(fi, "EntryPivots", Counted)
    x = data
    with create_index("faiss", tmp_path / "f", DIM, config=CFG) as idx:
        idx.add(np.arange(x.shape[0], dtype=np.int64), x)
        idx.save()
        idx.search(near_queries(x, 120, seed=4), 10)
        passes.clear()
        made.clear()
        idx.save()  # no growth: only the served check, which narrows the search
        assert "served" in idx.stats().params["calibration"]["sets"]
    assert sum(names.count("served") for names in passes) == 1, passes
    assert len(made) == 2, made
