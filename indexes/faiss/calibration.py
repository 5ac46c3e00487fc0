"""Calibration of the FAISS backend's search: the breadth and re-rank depth that reach the recall goal.

"Calibration" means one thing in this package: tuning the approximate search's breadth
(``efSearch`` for HNSW, ``nprobe`` for IVF) and re-rank depth against exact search. The steps:
:func:`calibration_sets` (the query sets to satisfy), :func:`exact_truths` (their exact top 10),
:func:`_search_ladder` (the narrowest breadth, then the shallowest depth, reaching the goal) and
:func:`_record` (what was measured and why, for ``stats().params["calibration"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..base import Calibratable, CalibrationSource, as_queries, topk_rows
from ..config import FaissConfig
from ..errors import IndexInputError
from ..store.files import release_pages
from .calibration_queries import (
    CROSS_MODAL_VARIANTS,
    cross_modal_queries,
    in_distribution_queries,
    recall_at_k,
)

log = logging.getLogger(__name__)

#: ``(queries, breadth, rerank factor) -> candidate ids [nq, 10]`` as the index would search.
Candidates = Callable[[np.ndarray, int, int], np.ndarray]
QuerySets = dict[str, tuple[np.ndarray, str]]
_Trial = tuple[int, int, dict[str, float]]  # breadth, rerank factor, recall per set

__all__ = [
    "Calibratable",
    "CalibrationSource",
    "calibrate",
    "calibration_sets",
    "drawn_set",
    "ef_ladder",
    "exact_truths",
    "measure_sets",
]


def ef_ladder(depth: int) -> list[int]:
    """efSearch values to try for a re-rank depth: powers of two and 1.5x between them
    (32, 48, 64, 96, ...), from the first one at or above ``depth``; the half steps matter at
    large collections, where doubling efSearch doubles the cost of every query."""
    steps = sorted({m * 2**e for e in range(4, 17) for m in (2, 3)})
    return [b for b in steps if b >= depth]


def calibration_sets(
    vecs: np.ndarray, cfg: FaissConfig, source: CalibrationSource | None, dim: int, served: np.ndarray | None = None
) -> QuerySets:
    """Named query sets (queries, where they came from) the calibration must satisfy: image-like
    queries, the caller's sets, the queries the index served (``served``, once ``served_min`` are
    held) and, with neither of the last two, the synthetic cross-modal sets."""
    sets: QuerySets = {"image": (_drawn(vecs, cfg, "image"), "synthetic: stored vectors plus noise")}
    given: Mapping[str, Any] = {}
    if source is not None:
        given = source() if callable(source) else source
    for name, queries in given.items():
        try:
            q = as_queries(queries, dim)
        except IndexInputError as e:
            raise IndexInputError(f"calibration query set {name!r}: {e}") from e
        if q.shape[0] == 0:
            continue
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sets[str(name)] = (np.ascontiguousarray(q[: cfg.calibration_queries], dtype=np.float32), "given by caller")
    if served is not None and served.shape[0] >= cfg.served_min:
        sets["served"] = (
            np.ascontiguousarray(served[: max(cfg.calibration_queries, cfg.served_min)], dtype=np.float32),
            "served: the most recent queries this index answered",
        )
    if len(sets) == 1:
        for name in CROSS_MODAL_VARIANTS:
            sets[name] = (
                _drawn(vecs, cfg, name),
                f"synthetic cross-modal, {name} (no text queries given or served yet)",
            )
    return sets


def drawn_set(vecs: np.ndarray, cfg: FaissConfig, name: str) -> np.ndarray | None:
    """The query set ``name`` of :func:`calibration_sets` drawn again as it draws it, for a set the
    index draws itself (``image`` or a synthetic cross-modal set); None for a set given by the
    caller or served (see ``FaissIndex._calibration_holds``)."""
    return _drawn(vecs, cfg, name) if name == "image" or name in CROSS_MODAL_VARIANTS else None


def _drawn(vecs: np.ndarray, cfg: FaissConfig, name: str) -> np.ndarray:
    """The set the index draws itself under ``name`` (the one place its size and seed are chosen)."""
    if name == "image":
        return in_distribution_queries(vecs, cfg.calibration_queries, cfg.seed + 1)
    i, v = list(CROSS_MODAL_VARIANTS).index(name), CROSS_MODAL_VARIANTS[name]
    return cross_modal_queries(
        vecs,
        max(1, cfg.calibration_queries // 2),
        cfg.seed + 2 + 101 * i,
        target_cos=v["target_cos"],
        related=int(v["related"]),
        gap=v["gap"],
        common=v["common"],
    )


def calibrate(
    ann: Any,
    tier: str,
    vecs: np.ndarray,
    ids: np.ndarray,
    cfg: FaissConfig,
    sets: QuerySets,
    candidates: Candidates,
    *,
    fixed: int | None,
    truths: Mapping[str, np.ndarray] | None = None,
    previous: tuple[int, int] | None = None,
    breadth_name: str | None = None,
    hint: str | None = None,
) -> dict[str, Any]:
    """Pick the search breadth and re-rank depth reaching the recall goal on every query set.

    For each re-rank depth ``rerank_factor * k`` (doubling up to 16x the configured factor), find
    the smallest breadth (``nprobe``: powers of two up to ``nlist / 4``; ``efSearch``: 32, 48,
    64, 96, ... from the depth up to ``max_ef_search``) whose recall@10 against exact search reaches
    the goal on the worst query set. The narrowest breadth wins (the breadth is what a search
    costs), then the shallowest depth: a deeper re-rank is only tried with breadths narrower than
    the best so far. A configured breadth (``fixed``) is kept and only measured. Returns the
    manifest extras (``nprobe``/``ef_search``, ``rerank_factor`` and a ``calibration`` record).
    ``truths`` (each set's exact top-10 ids), when the caller computed them (a store that streams
    its vectors, such as pgvector), replaces the exact search over ``vecs``. ``previous``: the
    (efSearch, re-rank factor) an HNSW search was calibrated to before the collection grew; the
    search for the new breadth starts there (see :func:`_from_previous`) instead of at the ladder's
    foot. ``breadth_name`` (the extras' key and the record's name of the breadth) and ``hint`` (the
    settings the warning names when the goal is missed) are a backend's own (default: FAISS's).
    """
    if truths is None:
        truths = exact_truths(sets, vecs, ids, cfg.block_rows)

    goal = min(1.0, cfg.recall_target + cfg.calibration_margin)
    measure = _Measure(sets, truths, candidates, goal)
    nlist = int(ann.nlist) if tier == "ivf" else 0
    warm = previous is not None and tier != "ivf" and fixed is None
    if warm:
        assert previous is not None
        (breadth, factor, recalls), reached = _from_previous(measure, cfg, goal, previous)
    else:
        (breadth, factor, recalls), reached = _search_ladder(measure, tier, nlist, cfg, fixed, goal)
    name = breadth_name or ("nprobe" if tier == "ivf" else "ef_search")
    if len(recalls) < len(sets):  # the best of trials that all missed: measured up to its first miss
        recalls = measure(breadth, factor, full=True)
    if not reached:
        log.warning(
            "recall target %.3f not reached on calibration queries (worst set %.3f); %s",
            goal,
            min(recalls.values()),
            hint or ("raise pq_m or nlist" if tier == "ivf" else "raise hnsw_m, hnsw_ef_construction or max_ef_search"),
        )
    record = _record(sets, cfg, (breadth, factor, recalls), name, goal, reached=reached, fixed=fixed is not None)
    if warm and previous is not None:
        record["started_from"] = {"breadth": int(previous[0]), "rerank_factor": int(previous[1])}
    worst = min(recalls.values())
    return {name: breadth, "rerank_factor": factor, "calibrated_recall": worst, "calibration": record}


class _Measure:
    """``measure(breadth, factor)``: recall@10 of each query set at one breadth and re-rank factor.

    A trial only asks whether every set reaches ``goal``, so a trial stops at the first set that
    misses it (its recall, an upper bound of the worst set's, stands for the trial), and the sets
    are measured in the order of their recall at the last trial, lowest first: the set that bound
    the last trial is the one likely to miss this one. A trial that reaches the goal measures
    every set. At 300k vectors, 4-5 sets of 200-400 queries, most missed trials then search one
    set instead of all (bench/README.md, "The calibration's missed trials")."""

    def __init__(self, sets: QuerySets, truths: Mapping[str, np.ndarray], candidates: Candidates, goal: float) -> None:
        self.sets, self.truths, self.candidates, self.goal = sets, truths, candidates, goal
        self.last: dict[str, float] = {}
        self.seen: dict[tuple[str, int, int], float] = {}  # a trial completed later is not searched twice

    def __call__(self, breadth: int, factor: int, *, full: bool = False) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in sorted(self.sets, key=lambda n: self.last.get(n, -1.0)):
            key = (name, breadth, factor)
            if key not in self.seen:
                self.seen[key] = recall_at_k(self.candidates(self.sets[name][0], breadth, factor), self.truths[name])
            out[name] = self.last[name] = self.seen[key]
            if out[name] < self.goal and not full:
                break
        return {name: out[name] for name in self.sets if name in out}


def measure_sets(
    sets: QuerySets,
    vecs: np.ndarray,
    ids: np.ndarray,
    cfg: FaissConfig,
    candidates: Candidates,
    breadth: int,
    factor: int,
) -> dict[str, float]:
    """Recall@10 against exact search of each set at one breadth and re-rank factor."""
    truths = exact_truths(sets, vecs, ids, cfg.block_rows)
    return {name: recall_at_k(candidates(q, breadth, factor), truths[name]) for name, (q, _) in sets.items()}


def exact_truths(sets: QuerySets, vecs: np.ndarray, ids: np.ndarray, block: int) -> dict[str, np.ndarray]:
    """Each set's exact top-10 ids over the snapshot (the yardstick of recall): one pass over the
    vectors for all sets together (a pass per set before issue 24), releasing the mapped pages as it
    goes (see ``release_pages``)."""
    names = list(sets)
    if not names:
        return {}
    q = np.ascontiguousarray(np.concatenate([sets[name][0] for name in names]), dtype=np.float32)

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, ids.size, block):
            yield np.array(vecs[s : s + block]), np.asarray(ids[s : s + block])
            release_pages(vecs)

    found = _knn(q, blocks(), 10)
    out, at = {}, 0
    for name in names:
        size = sets[name][0].shape[0]
        out[name], at = found[at : at + size], at + size
    return out


#: Rows scored at once by :func:`_knn` (a ``[queries, rows]`` float32 product: 32 MB for 1,000 queries).
KNN_ROWS = 8192


def _knn(q: np.ndarray, blocks: Iterator[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """Exact top-``k`` ids by inner product over ``(vectors, ids)`` blocks (ids -1: skipped).

    One BLAS product per :data:`KNN_ROWS` rows, and only the queries with a score above their
    current ``k``-th best are merged (after the first rows, a few of them per block): the product
    runs at ~116 GFLOPS on the 2-core machine where FAISS's brute force (its product and a heap per
    query) reached 28-37 GFLOPS, and at 1M vectors the calibrations' exact passes were 119 of a
    build's 184 s of calibration (bench/README.md, "The calibration's exact pass")."""
    nq = q.shape[0]
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    for vecs, ids in blocks:
        live = ids >= 0
        x, xid = (vecs, ids) if live.all() else (vecs[live], ids[live])
        for s in range(0, xid.size, KNN_ROWS):
            part_x = np.ascontiguousarray(x[s : s + KNN_ROWS], dtype=np.float32)
            part_id = xid[s : s + KNN_ROWS]
            scores = q @ part_x.T
            rows = np.flatnonzero((scores > best_s.min(axis=1)[:, None]).any(axis=1))
            if rows.size == 0:
                continue
            cand_s, cand_i = scores[rows], np.broadcast_to(part_id, (rows.size, part_id.size))
            if part_id.size > k:  # each row's own top k first: the merge below then sorts 2k values
                top = np.argpartition(cand_s, part_id.size - k, axis=1)[:, -k:]
                cand_s, cand_i = np.take_along_axis(cand_s, top, axis=1), part_id[top]
            merged_s = np.concatenate([best_s[rows], cand_s], axis=1)
            merged_i = np.concatenate([best_i[rows], cand_i], axis=1)
            keep = np.argpartition(merged_s, merged_s.shape[1] - k, axis=1)[:, -k:]
            best_s[rows] = np.take_along_axis(merged_s, keep, axis=1)
            best_i[rows] = np.take_along_axis(merged_i, keep, axis=1)
    best_i = np.where(np.isneginf(best_s), -1, best_i)
    return topk_rows(best_i, best_s, k)[0]


def _breadths(tier: str, nlist: int, cfg: FaissConfig, depth: int, fixed: int | None) -> list[int]:
    """The breadths to try, narrowest first, for a re-rank ``depth``."""
    if fixed is not None:
        return [fixed]
    if tier == "ivf":
        cap = max(1, nlist // 4)
        return sorted({min(2**i, cap) for i in range(0, cap.bit_length() + 1)})
    return [b for b in ef_ladder(depth) if b <= cfg.max_ef_search] or [depth]


def _search_ladder(
    measure: Callable[[int, int], dict[str, float]],
    tier: str,
    nlist: int,
    cfg: FaissConfig,
    fixed: int | None,
    goal: float,
) -> tuple[_Trial, bool]:
    """The chosen (breadth, factor, recalls) and whether it reached ``goal`` (else the best seen)."""
    missed: list[_Trial] = []
    chosen: _Trial | None = None
    for factor in [cfg.rerank_factor * f for f in (1, 2, 4, 8, 16)]:
        breadths = _breadths(tier, nlist, cfg, max(10 * factor, cfg.min_rerank), fixed)
        if chosen is not None:  # a deeper re-rank only wins with a narrower (cheaper) search
            breadths = [b for b in breadths if b < chosen[0]]
        if factor != cfg.rerank_factor:  # every depth after the first (a breadth is chosen only at one)
            if not breadths:
                continue
            # recall grows with the breadth: when the widest of them misses at this depth, so do
            # the narrower ones (an HNSW calibration at 150k tried ~40 breadths, most of them here;
            # with no breadth reaching the goal at the first depth, every deeper depth walked its
            # whole ladder: 203 s of calibration in a 1M build whose goal no breadth reached)
            widest = measure(breadths[-1], factor)
            if min(widest.values()) < goal:
                missed.append((breadths[-1], factor, widest))
                continue
        failed = 0  # the widest breadth that missed the goal at this depth
        for breadth in breadths:
            recalls = measure(breadth, factor)
            if min(recalls.values()) >= goal:
                chosen = (breadth, factor, recalls)
                if tier != "ivf" and fixed is None and failed:
                    chosen = _narrowed(measure, chosen, failed, goal)
                break
            missed.append((breadth, factor, recalls))
            failed = breadth
    if chosen is not None:
        return chosen, True
    return (_best_missed(measure, missed) if missed else (0, cfg.rerank_factor, {"-": -1.0})), False


def _from_previous(
    measure: Callable[[int, int], dict[str, float]], cfg: FaissConfig, goal: float, previous: tuple[int, int]
) -> tuple[_Trial, bool]:
    """The HNSW ladder of :func:`_search_ladder`, started where the last calibration ended.

    A recalibration follows growth: the breadth that reached the goal at the last calibration is
    measured first, at its re-rank factor. Reached: the ladder's steps below it are tried downwards
    until one misses; missed: the steps above it upwards until one reaches the goal; then the
    bisection of :func:`_narrowed` between the two, and one deeper re-rank (twice the factor, at the
    widest step narrower than the choice: it only wins with a narrower search). 6-7 trials where the
    full ladder took ~14 (a 150k graph: 32, 48, ... 384, three bisection steps, three deeper
    re-ranks), with the same choices on the benchmark's growth (bench/README.md)."""
    b0, f0 = max(1, int(previous[0])), max(1, int(previous[1]))
    depth = max(10 * f0, cfg.min_rerank)
    b0 = min(max(b0, depth), cfg.max_ef_search)
    ladder = sorted({b for b in ef_ladder(depth) if b <= cfg.max_ef_search} | {b0})
    at = ladder.index(b0)
    first = measure(b0, f0)
    missed: list[_Trial] = []
    chosen: _Trial | None = None
    failed = 0
    if min(first.values()) >= goal:
        chosen = (b0, f0, first)
        for breadth in reversed(ladder[:at]):
            recalls = measure(breadth, f0)
            if min(recalls.values()) < goal:
                failed = breadth
                break
            chosen = (breadth, f0, recalls)
    else:
        failed = b0
        missed.append((b0, f0, first))
        for breadth in ladder[at + 1 :]:
            recalls = measure(breadth, f0)
            if min(recalls.values()) >= goal:
                chosen = (breadth, f0, recalls)
                break
            missed.append((breadth, f0, recalls))
            failed = breadth
    if chosen is None:
        return _best_missed(measure, missed), False
    if failed:
        chosen = _narrowed(measure, chosen, failed, goal)
    deeper = 2 * f0
    if deeper <= 16 * cfg.rerank_factor:
        narrower = [b for b in ef_ladder(max(10 * deeper, cfg.min_rerank)) if b < chosen[0]]
        if narrower:
            recalls = measure(narrower[-1], deeper)
            if min(recalls.values()) >= goal:
                chosen = (narrower[-1], deeper, recalls)
    return chosen, True


def _best_missed(measure: Callable[..., dict[str, float]], missed: list[_Trial]) -> _Trial:
    """Of trials that all missed the goal, the one whose worst set's recall is highest (the first
    tried on a tie): the breadth searched when no breadth reaches the goal. A trial that stopped at
    its first miss (see :class:`_Measure`) knows an upper bound of its worst set, so the trials are
    completed in the order of that bound, and once the best completed one is at least the next
    bound no other can beat it: the choice measuring every trial in full would make (recall need
    not grow with the breadth: at 950k vectors of the unseen data, efSearch 2048 measured 0.965 on
    a set where 1600 measured more), with one or two trials completed where every improving step
    up the ladder used to be (bench/README.md, "The calibration's exact pass ...")."""
    sets = getattr(measure, "sets", None)
    order = sorted(range(len(missed)), key=lambda i: (-min(missed[i][2].values()), i))
    best_i, best_v = -1, -np.inf
    for i in order:
        bound = min(missed[i][2].values())
        if bound < best_v or (bound == best_v and i > best_i):
            break
        breadth, factor, recalls = missed[i]
        if sets is not None and len(recalls) < len(sets):
            missed[i] = (breadth, factor, measure(breadth, factor, full=True))
        value = min(missed[i][2].values())
        if value > best_v or (value == best_v and i < best_i):
            best_i, best_v = i, value
    return missed[best_i]


def _narrowed(measure: Callable[[int, int], dict[str, float]], chosen: _Trial, failed: int, goal: float) -> _Trial:
    """The narrowest efSearch between ``failed`` (missed the goal) and ``chosen``'s (reached it), in
    steps of 1/8 of the gap (at least 8), found by bisection (<= 3 more trials). The ladder's steps
    are 1.33-1.5x apart and a search costs in proportion to efSearch: at 1M vectors the step from
    384 to 512 was the difference between 0.8 and 1.1 ms per query (issue 24)."""
    breadth, factor, _ = chosen
    step = max(8, (breadth - failed) // 8)
    lo, hi = failed, breadth
    while hi - lo > step:
        mid = lo + (hi - lo) // 2 // step * step or lo + step
        recalls = measure(mid, factor)
        if min(recalls.values()) >= goal:
            chosen, hi = (mid, factor, recalls), mid
        else:
            lo = mid
    return chosen


def _record(
    sets: QuerySets, cfg: FaissConfig, trial: _Trial, name: str, goal: float, *, reached: bool, fixed: bool
) -> dict[str, Any]:
    """What was calibrated, on which query sets, and the recall each reached."""
    breadth, factor, recalls = trial
    return {
        "goal_recall10": goal,
        "reached": reached,
        "breadth_name": name,
        "breadth": breadth,
        "rerank_depth_k10": max(10 * factor, cfg.min_rerank),
        "rule": (
            f"smallest {name}{' (configured)' if fixed else ''}, then smallest "
            f"re-rank depth, whose recall@10 against exact search reaches {goal:.3f} on every query set"
        ),
        "sets": {
            k: {"queries": int(sets[k][0].shape[0]), "source": sets[k][1], "recall10": round(v, 4)}
            for k, v in recalls.items()
        },
    }
