"""The congruence suite's machinery and its rows: every backend against the exact backend on the
same data and the same operations (a new engine, or a new tier of one, is a new :class:`Row`).

The reference is the vectors the test holds (:class:`HeldVectors`, brute force), never another
backend: a persistence fault the exact backend shared would otherwise pass (issue 30.8).
Exact backends (exact, FAISS's flat tier, Qdrant embedded) must return the true top-k (ties aside);
FAISS's approximate tiers (HNSW-SQ8, IVF-PQ) and usearch must reach recall@10 >= 0.95, with exact scores for
what they return. Checked after adds, after removals and upserts, after reopening, and after a new
snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _indexes_data import HeldVectors, ann_config, near_queries, recall, same_topk, small_journal, unit_vectors

from fgsearch.indexes import (
    ExactConfig,
    FaissConfig,
    PgvectorConfig,
    QdrantConfig,
    UsearchConfig,
    VectorIndex,
    create_index,
    open_index,
)

DIM = 32
N = 3000  # qdrant embedded writes ~1 ms per point: its test uses N_QDRANT
N_QDRANT = 1000
N_PG = 1500


def apply_ops(indexes: list[Any], data: np.ndarray, *, save_midway: bool) -> None:
    """The same sequence of adds, removals, upserts and re-adds on every index."""
    rng = np.random.default_rng(7)
    n = data.shape[0]
    step = n // 6
    for s in range(0, n, step):
        for idx in indexes:
            idx.add(np.arange(s, min(s + step, n)), data[s : s + step])
            idx.flush()
    if save_midway:
        for idx in indexes:
            idx.save()
    removed = rng.choice(n, size=n // 10, replace=False)
    replaced = rng.choice(np.setdiff1d(np.arange(n), removed), size=n // 20, replace=False)
    new_vecs = unit_vectors(n // 20, DIM, seed=99)
    readded = removed[: n // 60]
    for idx in indexes:
        assert idx.remove(removed) == n // 10
        idx.add(replaced, new_vecs, upsert=True)
        idx.add(readded, data[readded] * -1.0)  # re-add removed ids with other vectors
        idx.add(np.arange(n, n + 100), unit_vectors(100, DIM, seed=5))
        idx.flush()


def compare(held: HeldVectors, other: VectorIndex, queries: np.ndarray, *, exact: bool) -> None:
    """``other`` against the vectors the test holds: the same ids, the same vectors, and searches
    that return the true top-k (exact) or recall@10 >= 0.95 (approximate), each score its id's."""
    np.testing.assert_array_equal(held.ids(), other.ids())
    np.testing.assert_allclose(held.get(held.ids()), other.get(held.ids()), atol=1e-6)
    allowed = held.ids()[::3]
    for kw in ({}, {"allowed_ids": allowed}, {"allowed_ids": allowed[:40]}):
        r = held.search(queries, 10, **kw)
        o = other.search(queries, 10, **kw)
        true = held.scores_of(queries, o.ids)  # a score must be its id's, at every position
        if exact:
            assert same_topk(r.ids, r.scores, o.ids, o.scores, true), kw.keys()
        else:
            valid = o.ids >= 0
            np.testing.assert_allclose(o.scores[valid], true[valid], atol=1e-5)
            assert recall(o.ids, r.ids) >= 0.95, kw.keys()
        if "allowed_ids" in kw:
            assert np.isin(o.ids[o.ids >= 0], kw["allowed_ids"]).all()


def run_congruence(
    tmp_path: Path, kind: str, config: Any, *, exact: bool, save_midway: bool, n: int = N
) -> VectorIndex:
    data = unit_vectors(n, DIM, seed=3)
    queries = near_queries(data, 60)
    held = HeldVectors(DIM)  # the reference: vectors this test holds, searched by brute force
    where = None if kind == "pgvector" else tmp_path / kind  # pgvector: a table named by its config
    reopen = config if where is None else None  # (the others read their stored config)
    other = create_index(kind, where, DIM, config=config)
    apply_ops([held, other], data, save_midway=save_midway)  # type: ignore[list-item]
    compare(held, other, queries, exact=exact)
    # reopen: snapshot + journal replay must give the same answers
    other.close()
    other = open_index(kind, where, config=reopen)
    compare(held, other, queries, exact=exact)
    other.save()  # fold the journal into a new snapshot
    compare(held, other, queries, exact=exact)
    other.close()
    other = open_index(kind, where, config=reopen, read_only=kind != "qdrant")
    compare(held, other, queries, exact=exact)
    return other


@dataclass(frozen=True)
class Row:
    """One backend (or tier) of the congruence suite: how to configure it and what else to check."""

    id: str
    kind: str
    config: Callable[[Path], Any]
    exact: bool
    save_midway: bool = False
    n: int = N
    check: Callable[[dict[str, Any]], None] | None = None


def _flat(params: dict[str, Any]) -> None:
    assert params["tier"] == "flat"


def _pg_tier(tier: str) -> Callable[[dict[str, Any]], None]:
    def check(params: dict[str, Any]) -> None:
        assert params["tier"] == tier
        if tier == "hnsw":  # built at flat_threshold, calibrated on image-like and synthetic text queries
            cal = params["calibration"]
            assert set(cal["sets"]) == {"image", "text", "text-far", "text-near"}, cal["sets"]
            assert cal["reached"], cal

    return check


def _calibrated(tier: str) -> Callable[[dict[str, Any]], None]:
    def check(params: dict[str, Any]) -> None:
        assert params["tier"] == tier
        sets = params["calibration"]["sets"]
        synthetic = {"image", "text", "text-far", "text-near"}  # or the queries the suite served
        assert set(sets) in (synthetic, {"image", "served"}), set(sets)
        assert "served" in sets or sets["text"]["source"].startswith("synthetic cross-modal")
        assert sets["image"]["recall10"] >= 0.95
        if tier == "hnsw":  # IVF-PQ misses text-like queries at any nprobe here (worst set ~0.86)
            assert params["calibrated_recall"] >= 0.95 and params["calibration"]["reached"]

    return check


ROWS: list[Row] = [
    Row("exact", "exact", lambda tmp: ExactConfig(), exact=True),
    Row(
        "faiss-flat",
        "faiss",
        lambda tmp: FaissConfig(journal=small_journal()),
        exact=True,
        save_midway=True,
        check=_flat,
    ),
    *(
        Row(
            f"faiss-{structure}-{'saved' if midway else 'journal'}",
            "faiss",
            lambda tmp, s=structure: ann_config(structure=s),
            exact=False,
            save_midway=midway,
            check=_calibrated(tier),
        )
        for structure, tier in (("hnsw", "hnsw"), ("ivfpq", "ivf"))
        for midway in (True, False)
    ),
    # usearch: its HNSW graph (i8 codes) built at 1,000 vectors, calibrated like FAISS's; "journal":
    # the graph is built by a flush, then takes adds/removals at the final save (incremental)
    *(
        Row(
            f"usearch-{'saved' if midway else 'journal'}",
            "usearch",
            lambda tmp: UsearchConfig(flat_threshold=1000, calibration_queries=100),
            exact=False,
            save_midway=midway,
            check=_calibrated("hnsw"),
        )
        for midway in (True, False)
    ),
    Row(
        "qdrant-embedded",
        "qdrant",
        lambda tmp: QdrantConfig(path=str(tmp / "qdrant"), batch_size=300),
        exact=True,
        n=N_QDRANT,
    ),
    # pgvector: a PostgreSQL table (the test fills in the url of a fresh database); exact below
    # flat_threshold, and with its HNSW index built and calibrated at 1,000 vectors
    Row("pgvector-exact", "pgvector", lambda tmp: PgvectorConfig(), exact=True, n=N_PG, check=_pg_tier("exact")),
    Row(
        "pgvector-hnsw",
        "pgvector",
        lambda tmp: PgvectorConfig(flat_threshold=1000, calibration_queries=100),
        exact=False,
        n=N_PG,
        check=_pg_tier("hnsw"),
    ),
]
