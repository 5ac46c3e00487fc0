"""The FAISS backend's HNSW tier searched with FAISS's own search (issue 24 removed fgsearch's C
kernel and its link reinforcement): removed ids, old snapshots and configs, folding adds instead of
rebuilding, and the re-rank's ``pread`` of rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
from _indexes_data import near_queries, text_like_queries, unit_vectors

from fgsearch.indexes import FaissConfig, IndexCorruptError, create_index, open_index
from fgsearch.indexes.faiss import tiers
from fgsearch.indexes.faiss.calibration_queries import recall_at_k
from fgsearch.indexes.registry import get_backend

DIM = 32
CFG = FaissConfig(flat_threshold=1000, calibration_queries=100)


def _truth(q: np.ndarray, x: np.ndarray, ids: np.ndarray, live: np.ndarray) -> np.ndarray:
    return ids[live][np.argsort(-(q @ x[live].T), axis=1)[:, :10]]


def test_removed_ids_are_never_returned_and_scores_are_exact(tmp_path: Path) -> None:
    x = unit_vectors(3000, DIM, seed=6, clusters=30)
    ids = np.arange(x.shape[0], dtype=np.int64) * 2 + 1
    q = np.concatenate([near_queries(x, 80, seed=3), text_like_queries(x, 80, seed=4)])
    with create_index("faiss", tmp_path / "f", DIM, config=CFG) as idx:
        idx.add(ids, x)
        idx.save()
        idx.remove(ids[:50])  # since the snapshot: excluded by FAISS's id selector
        p = idx.stats().params
        assert (p["tier"], p["search"]) == ("hnsw", "faiss") and "fill_links" not in p
        got = idx.search(q, 10)
        assert not np.isin(got.ids, ids[:50]).any()
        assert recall_at_k(got.ids, _truth(q, x, ids, np.arange(50, x.shape[0]))) >= 0.95
        np.testing.assert_allclose(got.scores, np.take_along_axis(q @ x.T, (got.ids - 1) // 2, axis=1), atol=1e-5)


def test_adds_that_fit_the_codes_are_folded_in_and_adds_that_do_not_rebuild(tmp_path: Path) -> None:
    x = unit_vectors(3000, DIM, seed=7, clusters=30)
    ids = np.arange(x.shape[0], dtype=np.int64)
    q = near_queries(x, 60, seed=8)
    with create_index("faiss", tmp_path / "f", DIM, config=CFG) as idx:
        idx.add(ids[:1200], x[:1200])
        idx.save()
        assert idx.stats().params["trained_n"] == 1200
        idx.add(ids[1200:], x[1200:])  # 2.5x the graph, same distribution: no rebuild
        idx.save()
        p = idx.stats().params
        assert (p["trained_n"], idx.count(), p["calibrated_n"]) == (1200, 3000, 3000)
        assert recall_at_k(idx.search(q, 10).ids, _truth(q, x, ids, np.arange(3000))) >= 0.95
        # vectors whose values lie far outside the ranges the codes were trained on: rebuilt
        far = np.zeros((300, DIM), dtype=np.float32)
        far[np.arange(300), np.arange(300) % DIM] = 1.0
        idx.add(np.arange(5000, 5300), far)
        idx.save()
        assert idx.stats().params["trained_n"] == 3300
        got = idx.search(far[:20], 1)
        np.testing.assert_array_equal(got.scores[:, 0], np.ones(20, dtype=np.float32))


def test_out_of_range_counts_values_outside_the_widened_trained_ranges() -> None:
    x = unit_vectors(2000, DIM, seed=9)
    h = faiss.IndexHNSWSQ(DIM, faiss.ScalarQuantizer.QT_8bit, 8, faiss.METRIC_INNER_PRODUCT)
    h.train(x)
    ann = faiss.IndexIDMap(h)
    assert tiers.out_of_range(ann, x) == 0.0  # the training vectors themselves
    trained = faiss.vector_to_array(faiss.downcast_index(h.storage).sq.trained)
    vmin, vdiff = trained[:DIM], trained[DIM:]
    y = np.tile(vmin + 0.5 * vdiff, (4, 1)).astype(np.float32)
    y[0, 0] = vmin[0] + (1 + 2 * tiers.RANGE_MARGIN) * vdiff[0]  # outside, past the margin
    y[1, 1] = vmin[1] - 0.5 * tiers.RANGE_MARGIN * vdiff[1]  # outside, within the margin
    assert tiers.out_of_range(ann, y) == pytest.approx(1 / (4 * DIM))


def _with_extra_links(path: Path) -> int:
    """Rewrite a snapshot's graph with more level-0 links per node (free slots filled with each
    node's exact neighbours), as the removed link reinforcement left old snapshots."""
    ann = faiss.read_index(str(path))
    inner = faiss.downcast_index(ann.index)
    h = inner.hnsw
    n = int(ann.ntotal)
    vecs = inner.storage.reconstruct_n(0, n)
    nb = faiss.vector_to_array(h.neighbors)
    off = faiss.vector_to_array(h.offsets).astype(np.int64)
    slots = int(faiss.vector_to_array(h.cum_nneighbor_per_level)[1])
    near = np.argsort(-(vecs @ vecs.T), axis=1)[:, 1 : slots + 1]
    added = 0
    for v in range(n):
        row = nb[off[v] : off[v] + slots]
        have = row[row >= 0]
        extra = [int(u) for u in near[v] if u not in have][: slots - have.size]
        nb[off[v] + have.size : off[v] + have.size + len(extra)] = extra
        added += len(extra)
    faiss.copy_array_to_vector(nb, h.neighbors)
    faiss.write_index(ann, str(path))
    return added


def test_an_old_snapshot_with_reinforced_links_and_fill_links_in_its_manifest_opens_and_searches(
    tmp_path: Path,
) -> None:
    x = unit_vectors(2000, DIM, seed=10, clusters=25)
    ids = np.arange(x.shape[0], dtype=np.int64) * 3 + 2
    folder = tmp_path / "f"
    with create_index("faiss", folder, DIM, config=CFG) as idx:
        idx.add(ids, x)
        idx.save()
        faiss_file = folder / idx._extra["faiss_file"]
    assert _with_extra_links(faiss_file) > 1000
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["hnsw_fill_links"] = 24  # what the old code wrote
    manifest["extra"]["hnsw_fill_links"] = 24
    manifest["checksums"].pop(faiss_file.name, None)  # rewritten above: not what the manifest hashed
    manifest_path.write_text(json.dumps(manifest))
    q = np.concatenate([near_queries(x, 60, seed=11), text_like_queries(x, 60, seed=12)])
    with open_index("faiss", folder, read_only=True) as ro:
        assert ro.tier == "hnsw"
        got = ro.search(q, 10)
    assert np.isin(got.ids, ids).all()
    assert recall_at_k(got.ids, _truth(q, x, ids, np.arange(x.shape[0]))) >= 0.95
    # a library or script that still passes the option: accepted, ignored
    assert get_backend("faiss").parse_options({"hnsw_fill_links": "16"}) == {"hnsw_fill_links": 16}
    with create_index("faiss", tmp_path / "g", DIM, config=FaissConfig(flat_threshold=1000, hnsw_fill_links=24)) as g:
        g.add(ids, x)
        g.save()
        assert "hnsw_fill_links" not in g._extra


def test_a_short_read_of_the_vectors_file_is_a_one_line_corrupt_error(tmp_path: Path) -> None:
    x = unit_vectors(200, DIM, seed=13)
    with create_index("faiss", tmp_path / "f", DIM, config=FaissConfig()) as idx:
        idx.add(np.arange(200), x)
        idx.save()
        rows = np.array([199, 0, 57])
        np.testing.assert_array_equal(idx._store.read_rows(rows), x[rows])
        store = idx._store
        saved = store._base_offset
        store._base_offset = saved + 4 * DIM  # as if the file were a row shorter than the manifest says
        try:
            with pytest.raises(IndexCorruptError, match=r"cannot read the vectors file \(short read of row 199\)"):
                store.read_rows(np.array([3, 199]))
        finally:
            store._base_offset = saved


def test_calibration_narrows_efsearch_between_the_ladder_steps() -> None:
    """The ladder's steps are 1.33-1.5x apart: the breadth is then bisected between the step that
    missed the goal and the one that reached it (before issue 24 it stopped at the ladder step)."""
    from fgsearch.indexes.faiss.calibration import _search_ladder

    tried: list[int] = []

    def measure(breadth: int, factor: int) -> dict[str, float]:
        tried.append(breadth)
        return {"text": 0.99 if breadth >= 300 else 0.95, "image": 1.0}

    (breadth, factor, recalls), reached = _search_ladder(measure, "hnsw", 0, FaissConfig(), None, 0.98)
    assert reached and factor == 3 and recalls["text"] == 0.99
    assert 256 in tried and 384 in tried  # the ladder: 256 missed, 384 reached
    assert 300 <= breadth <= 304, tried  # then bisected in steps of 16
    (fixed, _, _), _ = _search_ladder(measure, "hnsw", 0, FaissConfig(), 200, 0.98)
    assert fixed == 200  # a configured breadth is only measured


def test_with_a_faiss_that_does_not_check_ids_on_read_the_graph_check_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from fgsearch.indexes.hnsw.check import check_graph

    x = unit_vectors(1500, DIM, seed=14)
    h = faiss.IndexHNSWSQ(DIM, faiss.ScalarQuantizer.QT_8bit, 8, faiss.METRIC_INNER_PRODUCT)
    h.train(x)
    ann = faiss.IndexIDMap(h)
    ann.add_with_ids(x, np.arange(1500, dtype=np.int64))
    nb = faiss.vector_to_array(h.hnsw.neighbors)
    nb[int(np.flatnonzero(nb >= 0)[7])] = 1500  # one past the last node
    faiss.copy_array_to_vector(nb, h.hnsw.neighbors)
    check_graph(ann)  # FAISS 1.14.2+ refuses such a file when it reads it: not checked twice
    monkeypatch.setattr(faiss, "__version__", "1.13.2")  # e.g. an older faiss-gpu-cu12
    with pytest.raises(IndexCorruptError, match=r"^HNSW graph: a neighbour id out of range \[0, 1500\)$"):
        check_graph(ann)


def test_a_pass_over_a_mapped_snapshot_leaves_its_pages_released(tmp_path: Path) -> None:
    """A build's passes over the snapshot (CRCs, calibration truths) hold one block resident, not
    the file (issue 24: every pass made the whole snapshot resident, and the build's peak with it)."""
    from fgsearch.indexes.store.files import block_crcs, release_pages

    def rss_file() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc")
    np.save(tmp_path / "v.npy", np.ones((40_000, 256), dtype=np.float32))  # 41 MB
    v = np.load(tmp_path / "v.npy", mmap_mode="r")
    before = rss_file()
    assert float(np.asarray(v).sum()) == 40_000 * 256  # a plain pass maps all of it
    assert rss_file() - before > 30 * 2**20
    release_pages(v)
    assert rss_file() - before < 8 * 2**20
    assert len(block_crcs(v)) == 10 and rss_file() - before < 8 * 2**20
    release_pages(np.zeros(3))  # not mapped: nothing to do


def test_a_deeper_rerank_is_tried_only_where_it_can_win() -> None:
    """Recall grows with the breadth: a deeper re-rank that misses the goal at the widest breadth
    narrower than the chosen one is not tried at the narrower ones (one trial per depth, not ~10)."""
    from fgsearch.indexes.faiss.calibration import _search_ladder

    tried: list[tuple[int, int]] = []

    def measure(breadth: int, factor: int) -> dict[str, float]:
        tried.append((breadth, factor))
        return {"text": 0.99 if breadth >= 300 else 0.95}  # depth does not help

    (breadth, factor, _), reached = _search_ladder(measure, "hnsw", 0, FaissConfig(), None, 0.98)
    assert reached and factor == 3 and 300 <= breadth <= 304
    deeper = [t for t in tried if t[1] > 3]
    assert deeper == [(256, 6), (256, 12), (256, 24)], deeper  # one each (depth 480 starts past 304)

    def helps(breadth: int, factor: int) -> dict[str, float]:  # depth 60 reaches it from ef 96
        return {"text": 0.99 if breadth >= 300 or (factor >= 6 and breadth >= 96) else 0.95}

    (breadth, factor, _), reached = _search_ladder(helps, "hnsw", 0, FaissConfig(), None, 0.98)
    assert reached and (breadth, factor) == (96, 6)


def test_when_no_breadth_reaches_the_goal_each_deeper_rerank_costs_one_trial() -> None:
    """A goal no breadth reaches at the first depth (the calibration's synthetic sets on data far from
    them): each deeper depth is tried at its widest breadth only, not along its whole ladder (the
    old code walked all five ladders: 203 s of calibration in a 1M build)."""
    from fgsearch.indexes.faiss.calibration import _search_ladder

    tried: list[tuple[int, int]] = []

    def measure(breadth: int, factor: int) -> dict[str, float]:
        tried.append((breadth, factor))
        return {"text": 0.9 + breadth / 100_000 + factor / 10_000}

    cfg = FaissConfig()
    (breadth, factor, _), reached = _search_ladder(measure, "hnsw", 0, cfg, None, 0.98)
    assert not reached and (breadth, factor) == (cfg.max_ef_search, 48)
    assert [t for t in tried if t[1] > 3] == [(cfg.max_ef_search, f) for f in (6, 12, 24, 48)]

    def deeper_helps(breadth: int, factor: int) -> dict[str, float]:  # only a depth of 120 reaches it
        return {"text": 0.99 if factor >= 12 and breadth >= 192 else 0.95}

    (breadth, factor, _), reached = _search_ladder(deeper_helps, "hnsw", 0, cfg, None, 0.98)
    assert reached and (breadth, factor) == (192, 12)


@pytest.mark.parametrize("needed", [72, 300, 700, 3000])
@pytest.mark.parametrize("previous", [(96, 3), (248, 3), (336, 3), (1024, 3)])
def test_a_recalibration_starts_from_the_last_breadth_and_chooses_as_the_full_ladder(
    needed: int, previous: tuple[int, int]
) -> None:
    """After growth the search for the breadth starts at the last calibration's (up or down from
    there), with the full ladder's choice on a recall curve that grows with the breadth, in fewer
    trials when the need is near the last breadth; a need past max_ef_search is reported unreached.
    (The bisection's bracket differs, so the two may differ by less than its step.)"""
    from fgsearch.indexes.faiss.calibration import _from_previous, _search_ladder

    def curve(tried: list[tuple[int, int]]) -> Callable[[int, int], dict[str, float]]:
        def measure(breadth: int, factor: int) -> dict[str, float]:
            tried.append((breadth, factor))
            return {"text": 0.99 if breadth >= needed else 0.90 + breadth / needed * 0.05, "image": 1.0}

        return measure

    cold: list[tuple[int, int]] = []
    warm: list[tuple[int, int]] = []
    cfg = FaissConfig()
    full, reached_full = _search_ladder(curve(cold), "hnsw", 0, cfg, None, 0.98)
    started, reached = _from_previous(curve(warm), cfg, 0.98, previous)
    assert reached == reached_full == (needed <= cfg.max_ef_search)
    if reached:  # the same factor, and the breadth within the bisection's step (1/8 of its bracket)
        assert started[1] == full[1] == previous[1]
        assert needed <= started[0] <= needed + max(8, needed // 8) and needed <= full[0] <= needed + max(
            8, needed // 8
        )
    assert warm[0] == previous  # the last breadth is measured first
    if abs(needed - previous[0]) <= previous[0] // 2:
        assert len(warm) < len(cold), (warm, cold)


def test_synthetic_text_queries_reach_their_best_match_cosine() -> None:
    """The text-like sets' bisection (two products with the sample, the cosines of every step from
    them) lands on the median best-match cosine each variant asks for, as a direct product shows."""
    from fgsearch.indexes.faiss.calibration_queries import CROSS_MODAL_VARIANTS, cross_modal_sets

    rng = np.random.default_rng(21)
    x = rng.standard_normal((3000, 384)).astype(np.float32) + 3.0 * rng.standard_normal(384).astype(np.float32) / 20
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # a weak cone in 384-d: best matches far below the targets at b=0
    for name, q in cross_modal_sets(x, 64, 5).items():
        best = float(np.median((q @ x.T).max(axis=1)))
        assert abs(best - CROSS_MODAL_VARIANTS[name]["target_cos"]) < 0.01, (name, best)
        assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def test_calibration_truths_are_the_exact_top10_skipping_removed_rows() -> None:
    """The calibration's yardstick (FAISS's brute force per block) gives exact search's top 10,
    across blocks, with removed rows (id -1) never in it."""
    from fgsearch.indexes.base import exact_topk
    from fgsearch.indexes.faiss.calibration import exact_truths

    x = unit_vectors(5000, DIM, seed=31)
    ids = np.arange(10_000, 15_000, dtype=np.int64)
    ids[::7] = -1  # removed rows
    q = near_queries(x, 50, seed=32)
    got = exact_truths({"a": (q[:20], "x"), "b": (q[20:], "y")}, x, ids, 1024)
    want = exact_topk(q, [(x, ids)], 10)[0]
    assert np.array_equal(np.concatenate([got["a"], got["b"]]), want)
    assert not np.isin(got["a"], ids[::7]).any() and (got["a"] >= 10_000).all()


@pytest.mark.parametrize(("need_far", "previous"), [(700, None), (5000, None), (700, (1024, 3)), (900, (384, 3))])
def test_a_missed_trial_stops_at_the_first_set_that_misses_and_the_choice_is_the_same(
    need_far: int, previous: tuple[int, int] | None
) -> None:
    """A calibration trial asks whether every set reaches the goal: it stops at the first set that
    misses (the one that bound the last trial first) and a trial that reaches it measures them all,
    so the choice is the full measurement's with fewer searches; unreached, the record still has
    every set's recall (the best trial measured again in full)."""
    from fgsearch.indexes.faiss.calibration import calibrate

    need = {"image": 40, "text": 200, "text-far": need_far}
    sets = {name: (np.full((4, DIM), i, dtype=np.float32), name) for i, name in enumerate(need)}
    truths = {name: np.tile(np.arange(10), (4, 1)) for name in need}
    searched: list[str] = []
    trials: list[tuple[int, int]] = []

    def candidates(q: np.ndarray, breadth: int, factor: int) -> np.ndarray:
        name = list(need)[int(q[0, 0])]
        searched.append(name)
        if not trials or trials[-1] != (breadth, factor):
            trials.append((breadth, factor))
        hits = 10 if breadth >= need[name] else int(9 * breadth / need[name])
        return np.where(np.arange(10) < hits, np.arange(10), -5)[None].repeat(4, axis=0)

    cfg = FaissConfig()
    x, ids = np.zeros((1, DIM)), np.zeros(1)
    got = calibrate(None, "hnsw", x, ids, cfg, sets, candidates, fixed=None, truths=truths, previous=previous)
    reached = need_far <= cfg.max_ef_search
    assert got["calibration"]["reached"] is reached
    assert set(got["calibration"]["sets"]) == set(need)  # every set's recall in the record
    if reached:
        assert need_far <= got["ef_search"] <= need_far + max(8, need_far // 8)
        assert min(v["recall10"] for v in got["calibration"]["sets"].values()) >= 0.98
    else:
        assert got["ef_search"] == cfg.max_ef_search and got["calibrated_recall"] < 0.98
    assert len(searched) <= len(need) * len(trials)  # never more than every set in every trial
    if previous == (1024, 3):  # narrowing down from the last breadth: its misses search one set each
        assert len(searched) < len(need) * len(trials) - len(trials) // 2
    assert searched.count("text-far") >= searched.count("text")  # the binding set is measured first


@pytest.mark.parametrize("previous", [None, (384, 3)])
def test_when_no_breadth_reaches_the_goal_the_sets_that_do_are_measured_once_not_at_every_step(
    previous: tuple[int, int] | None,
) -> None:
    """One set misses the goal at every breadth, its recall growing with the breadth: each step up
    the ladder searches that set alone, and the others are measured again only for the trial kept
    (the widest), where every improving step used to measure them all (a 1M build whose goal no
    breadth reached spent most of its calibration there)."""
    from fgsearch.indexes.faiss.calibration import calibrate

    names = ["image", "text", "text-far"]
    sets = {name: (np.full((4, DIM), i, dtype=np.float32), name) for i, name in enumerate(names)}
    truths = {name: np.tile(np.arange(10), (4, 1)) for name in names}
    searched: list[tuple[str, int]] = []
    cfg = FaissConfig()

    def candidates(q: np.ndarray, breadth: int, factor: int) -> np.ndarray:
        name = names[int(q[0, 0])]
        searched.append((name, breadth))
        hits = 10 if name != "text-far" else min(9, 1 + int(8 * breadth / cfg.max_ef_search))
        return np.where(np.arange(10) < hits, np.arange(10), -5)[None].repeat(4, axis=0)

    x, ids = np.zeros((1, DIM)), np.zeros(1)
    got = calibrate(None, "hnsw", x, ids, cfg, sets, candidates, fixed=None, truths=truths, previous=previous)
    assert got["calibration"]["reached"] is False
    assert got["ef_search"] == cfg.max_ef_search and got["calibrated_recall"] == 0.9
    assert set(got["calibration"]["sets"]) == set(names)  # the kept trial's record has every set
    steps = {b for name, b in searched if name == "text-far"}
    assert len(steps) >= 5  # the ladder was walked
    others = [b for name, b in searched if name != "text-far"]
    assert len(others) <= 2 * len(names), sorted(others)  # the first trial's and the kept one's


def test_calibration_truths_with_fewer_live_rows_than_k_are_padded_and_blocks_of_any_size_agree() -> None:
    """The exact pass (one product per KNN_ROWS rows, merging only queries whose k-th best moved)
    gives the same top 10 whatever the block sizes, and pads with -1 when fewer rows are live."""
    from fgsearch.indexes.base import exact_topk
    from fgsearch.indexes.faiss import calibration
    from fgsearch.indexes.faiss.calibration import exact_truths

    x = unit_vectors(3000, DIM, seed=41)
    ids = np.arange(3000, dtype=np.int64) * 3
    q = near_queries(x, 30, seed=42)
    want = exact_topk(q, [(x, ids)], 10)[0]
    for block, rows in ((97, 5), (1000, 64), (4096, 8192)):
        old = calibration.KNN_ROWS
        calibration.KNN_ROWS = rows
        try:
            got = exact_truths({"q": (q, "x")}, x, ids, block)["q"]
        finally:
            calibration.KNN_ROWS = old
        assert np.array_equal(got, want), (block, rows)
    few = np.full(3000, -1, dtype=np.int64)
    few[[5, 900, 2999]] = [50, 9000, 29990]
    got = exact_truths({"q": (q, "x")}, x, few, 256)["q"]
    assert (got[:, 3:] == -1).all() and set(got[0, :3]) == {50, 9000, 29990}


@pytest.mark.parametrize("previous", [None, (1024, 3)])
def test_when_no_breadth_reaches_the_goal_the_best_measured_trial_serves_even_if_not_the_widest(
    previous: tuple[int, int] | None,
) -> None:
    """Recall need not grow with the breadth (with 30 candidates re-ranked, a wider walk can push
    true neighbours out of them: at 950k unseen vectors one set measured 0.976 at efSearch 1600 and
    0.965 at 2048). With no breadth reaching the goal, the breadth kept is the trial whose worst set
    is highest, as measuring every trial in full would choose, not the widest."""
    from fgsearch.indexes.faiss.calibration import calibrate

    names = ["image", "text", "text-far"]
    sets = {name: (np.full((4, DIM), i, dtype=np.float32), name) for i, name in enumerate(names)}
    truths = {name: np.tile(np.arange(10), (4, 1)) for name in names}
    cfg = FaissConfig()

    def hits(name: str, breadth: int, factor: int) -> int:
        if name == "image":
            return 10
        if name == "text":  # misses everywhere, but above text-far's peak
            return 9
        return 9 if breadth == 1536 and factor == 3 else 7  # text-far peaks at 1536, then falls

    def candidates(q: np.ndarray, breadth: int, factor: int) -> np.ndarray:
        got = hits(names[int(q[0, 0])], breadth, factor)
        return np.where(np.arange(10) < got, np.arange(10), -5)[None].repeat(4, axis=0)

    x, ids = np.zeros((1, DIM)), np.zeros(1)
    got = calibrate(None, "hnsw", x, ids, cfg, sets, candidates, fixed=None, truths=truths, previous=previous)
    assert got["calibration"]["reached"] is False
    assert (got["ef_search"], got["rerank_factor"], got["calibrated_recall"]) == (1536, 3, 0.9)
    assert set(got["calibration"]["sets"]) == set(names)


def test_a_snapshot_after_some_growth_checks_the_binding_set_and_calibrates_again_only_when_it_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between calibrations (every 1.25x of growth) recall at the calibrated breadth falls as the
    graph grows. A snapshot that finds the collection 1.1x larger than at the last calibration
    measures the set that bound it (one set's exact pass, one search) and calibrates again only
    when that misses the goal; below 1.1x nothing is measured."""
    import fgsearch.indexes.faiss.index as fi
    from fgsearch.indexes.faiss.calibration import calibration_sets, drawn_set
    from fgsearch.indexes.store.files import RowReader

    x = unit_vectors(3000, DIM, seed=51)
    rng = np.random.default_rng(52)
    more = x[rng.choice(3000, 500)] * 0.98 + 0.0  # new vectors inside the codes' value ranges (no rebuild)
    x = np.concatenate([x, more / np.linalg.norm(more, axis=1, keepdims=True)]).astype(np.float32)
    passes: list[list[str]] = []
    real_truths = fi.exact_truths

    def spy(sets: dict, *args: object, **kw: object) -> dict:
        passes.append(sorted(sets))
        return real_truths(sets, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fi, "exact_truths", spy)
    cfg = FaissConfig(flat_threshold=1000, calibration_queries=100, served_queries=0)
    with create_index("faiss", tmp_path / "f", DIM, config=cfg) as idx:
        idx.add(np.arange(3000), x[:3000])
        idx.save()
        assert idx.stats().params["calibrated_n"] == 3000
        record = idx.stats().params["calibration"]["sets"]
        binding = min(record, key=lambda k: record[k]["recall10"])
        passes.clear()
        idx.add(np.arange(3000, 3200), x[3000:3200])  # 1.07x: nothing measured
        idx.save()
        assert passes == [] and idx.stats().params["calibrated_n"] == 3000
        monkeypatch.setattr(fi, "recall_at_k", lambda found, truth: 1.0)  # as if it held
        idx.add(np.arange(3200, 3400), x[3200:3400])  # 1.13x: the binding set measured, it holds
        idx.save()
        assert passes == [[binding]] and idx.stats().params["calibrated_n"] == 3000
        passes.clear()
        monkeypatch.setattr(fi, "recall_at_k", lambda found, truth: 0.5)  # as if it missed now
        idx.add(np.arange(3400, 3500), x[3400:3500])
        idx.save()
        p = idx.stats().params
        assert p["calibrated_n"] == 3500 and p["calibration"]["started_from"]
        assert passes[0] == [binding] and binding not in passes[1]  # its exact top 10 reused
    rows = RowReader(x[:3000])
    sets = calibration_sets(rows, cfg, None, DIM)  # drawn_set draws a set as calibration_sets does
    for name, (q, _) in sets.items():
        assert np.array_equal(drawn_set(rows, cfg, name), q), name
    assert drawn_set(rows, cfg, "served") is None


def test_the_growth_check_measures_the_callers_own_set_when_it_bound_the_calibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library gives its captions as a set named ``text`` (the name of a synthetic set too): when
    that set bound the last calibration, the check after growth measures those captions, not a
    synthetic set of the same name."""
    import fgsearch.indexes.faiss.index as fi

    x = unit_vectors(3000, DIM, seed=53)
    rng = np.random.default_rng(54)
    more = x[rng.choice(3000, 400)] * 0.98  # inside the codes' value ranges (no rebuild)
    x = np.concatenate([x, more / np.linalg.norm(more, axis=1, keepdims=True)]).astype(np.float32)
    captions = text_like_queries(x[:3000], 80, seed=55)
    checked: list[tuple[list[str], np.ndarray]] = []
    real_truths = fi.exact_truths

    def spy(sets: dict, *args: object, **kw: object) -> dict:
        if len(sets) == 1:
            ((name, (q, _)),) = sets.items()
            checked.append(([name], q))
        return real_truths(sets, *args, **kw)  # type: ignore[arg-type]

    cfg = FaissConfig(flat_threshold=1000, calibration_queries=100, served_queries=0)
    with create_index("faiss", tmp_path / "f", DIM, config=cfg) as idx:
        idx.set_calibration_queries(lambda: {"text": captions})
        idx.add(np.arange(3000), x[:3000])
        idx.save()
        record = idx.stats().params["calibration"]["sets"]
        assert record["text"]["source"] == "given by caller" and "text-far" not in record
        assert min(record, key=lambda k: record[k]["recall10"]) == "text"  # the captions bound it
        monkeypatch.setattr(fi, "exact_truths", spy)
        idx.add(np.arange(3000, 3400), x[3000:3400])  # 1.13x
        idx.save()
    assert checked[0][0] == ["text"]  # the check; a calibration after a miss reuses its exact top 10
    assert all(names != ["text"] for names, _ in checked[1:])
    want = captions / np.linalg.norm(captions, axis=1, keepdims=True)
    assert np.allclose(checked[0][1], want[: cfg.calibration_queries], atol=1e-6)
