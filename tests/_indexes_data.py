"""Shared helpers for the index backend tests: seeded clustered unit vectors and index factories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fgsearch.indexes import (
    ExactConfig,
    FaissConfig,
    JournalConfig,
    PgvectorConfig,
    QdrantConfig,
    VectorIndex,
    create_index,
    open_index,
)

BACKENDS = ("exact", "faiss", "qdrant", "pgvector")  # pgvector: make(..., url=postgres_url)


def unit_vectors(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """``n`` L2-normalized float32 vectors drawn around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    lab = rng.integers(0, clusters, n)
    x = centres[lab] + rng.standard_normal((n, dim)) * (1.0 / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def near_queries(data: np.ndarray, nq: int, seed: int = 1) -> np.ndarray:
    """Queries near stored vectors (noise of norm ~0.5), normalized."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(data.shape[0], size=nq, replace=False)
    q = data[rows] + rng.standard_normal((nq, data.shape[1])).astype(np.float32) * (0.5 / np.sqrt(data.shape[1]))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)


def text_like_queries(data: np.ndarray, nq: int, seed: int = 2, best_cos: float = 0.3) -> np.ndarray:
    """Queries from another "modality": a shared direction of their own, Gaussian noise, and a weak
    pull towards one stored vector (cosine ~``best_cos`` to it). Independent of the generator the
    FAISS calibration uses, so tests of it are not circular."""
    rng = np.random.default_rng(seed)
    dim = data.shape[1]
    own = rng.standard_normal(dim)
    own /= np.linalg.norm(own)
    target = data[rng.choice(data.shape[0], size=nq, replace=False)]
    noise = rng.standard_normal((nq, dim)) / np.sqrt(dim)
    base = 0.7 * own + 0.7 * noise
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = best_cos * target + np.sqrt(1 - best_cos**2) * base
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)


def small_journal() -> JournalConfig:
    """Compact after a few KiB of changes, so tests exercise snapshots often."""
    return JournalConfig(compact_min_bytes=4096, compact_ratio=0.25)


def config_for(kind: str, path: Path, **overrides: Any) -> Any:
    if kind == "exact":
        return ExactConfig(**overrides)
    if kind == "faiss":
        return FaissConfig(**overrides)
    return QdrantConfig(path=str(path), **overrides)


def ann_config(**overrides: Any) -> FaissConfig:
    """A FAISS config that builds its approximate tier at 1,000 vectors (tests use a few thousand).

    The structure is the default (HNSW over 4-bit codes) unless ``structure="ivfpq"`` is passed.
    """
    base: dict[str, Any] = {"flat_threshold": 1000, "calibration_queries": 100}
    base.update(overrides)
    return FaissConfig(**base)


def make(kind: str, path: Path, dim: int, *, url: str | None = None, **overrides: Any) -> VectorIndex:
    """A new index of ``kind`` at ``path`` (pgvector: in the database ``url``, table named after ``path``)."""
    if kind == "pgvector":
        return create_index(kind, None, dim, config=PgvectorConfig(url=url, table=path.name, **overrides))
    return create_index(kind, path, dim, config=config_for(kind, path, **overrides))


def reopen(kind: str, path: Path, **kw: Any) -> VectorIndex:
    return open_index(kind, path, **kw)


def same_topk(
    a_ids: np.ndarray,
    a_scores: np.ndarray,
    b_ids: np.ndarray,
    b_scores: np.ndarray,
    b_true: np.ndarray | None = None,
    tol: float = 1e-5,
) -> bool:
    """True when two exact top-k lists agree: the same scores position by position, every id given
    the same score in both lists, no id twice, padding (-1) in the same places, and an id in only
    one of the lists only where a true tie at the k-th score lets either list hold it. ``b_true``:
    the true scores of ``b_ids`` (from the vectors the test holds, :class:`HeldVectors`); without
    them a wrong id that claims the k-th score cannot be told from a tie."""
    if a_ids.shape != b_ids.shape or a_scores.shape != b_scores.shape or a_ids.shape != a_scores.shape:
        return False
    if b_true is not None and not np.allclose(b_scores[b_ids >= 0], b_true[b_ids >= 0], atol=tol):
        return False
    if not np.allclose(a_scores, b_scores, atol=tol, equal_nan=False):
        return False
    for ai, bi, sa, sb in zip(a_ids, b_ids, a_scores, b_scores, strict=True):
        valid = ai >= 0
        if not np.array_equal(valid, bi >= 0):
            return False
        a = dict(zip(ai[valid].tolist(), sa[valid].tolist(), strict=True))
        b = dict(zip(bi[valid].tolist(), sb[valid].tolist(), strict=True))
        if len(a) != valid.sum() or len(b) != valid.sum():  # an id listed twice
            return False
        if any(abs(a[i] - b[i]) > tol for i in a.keys() & b.keys()):
            return False
        kth = float(sa[valid][-1]) if valid.any() else 0.0
        only_one = [a.get(i, b.get(i)) for i in a.keys() ^ b.keys()]
        if any(abs(score - kth) > tol for score in only_one):
            return False
    return True


class HeldVectors:
    """What an index should hold, kept by the test itself (ids -> vectors) and searched by brute
    force: the reference the congruence suite compares every backend with, so that a fault shared
    by a backend and the exact backend (a persistence that drops a vector) cannot pass."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vectors: dict[int, np.ndarray] = {}

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, upsert: bool = False) -> None:
        vectors = np.asarray(vectors, np.float32).reshape(len(ids), self.dim)
        for i, v in zip(np.asarray(ids).tolist(), vectors, strict=True):
            self.vectors[int(i)] = v.copy()  # the tests add unit vectors

    def remove(self, ids: np.ndarray) -> int:
        return sum(self.vectors.pop(int(i), None) is not None for i in np.asarray(ids).tolist())

    def flush(self) -> None:
        pass

    def save(self) -> None:
        pass

    def ids(self) -> np.ndarray:
        return np.asarray(sorted(self.vectors), np.int64)

    def get(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self.vectors[int(i)] for i in np.asarray(ids).tolist()])

    def search(self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None) -> Any:
        from fgsearch.indexes import SearchResult

        q = np.atleast_2d(np.asarray(queries, np.float32))
        ids = self.ids() if allowed_ids is None else np.intersect1d(self.ids(), allowed_ids)
        out_i = np.full((q.shape[0], k), -1, np.int64)
        out_s = np.full((q.shape[0], k), -np.inf, np.float32)
        if len(ids):
            scores = q @ self.get(ids).T
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            n = order.shape[1]
            out_i[:, :n] = ids[order]
            out_s[:, :n] = np.take_along_axis(scores, order, axis=1)
        return SearchResult(ids=out_i, scores=out_s)

    def scores_of(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The true score of each listed id for its row's query (NaN for padding)."""
        out = np.full(ids.shape, np.nan, np.float32)
        valid = ids >= 0
        rows = np.nonzero(valid)[0]
        out[valid] = np.einsum("ij,ij->i", self.get(ids[valid]), np.atleast_2d(queries)[rows])
        return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(np.isin(t[t >= 0], f).sum() for f, t in zip(found, truth, strict=True))
    total = sum((t >= 0).sum() for t in truth)
    return float(hits / total) if total else 1.0
