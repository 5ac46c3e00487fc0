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


def same_topk(a_ids: np.ndarray, a_scores: np.ndarray, b_ids: np.ndarray, b_scores: np.ndarray) -> bool:
    """True when two exact top-k lists agree, allowing swaps only between (near-)equal scores."""
    if a_ids.shape != b_ids.shape:
        return False
    if not np.allclose(a_scores, b_scores, atol=1e-5, equal_nan=False):
        return False
    for ai, bi, s in zip(a_ids, b_ids, a_scores, strict=True):
        if np.array_equal(ai, bi):
            continue
        # positions that differ must sit inside a run of tied scores, and the sets must match
        # except at the k-th position where a tie can pick either of two ids
        diff = np.flatnonzero(ai != bi)
        for j in diff:
            ties = np.abs(s - s[j]) <= 1e-5
            if ties.sum() < 2 and j != len(s) - 1:
                return False
    return True


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(np.isin(t[t >= 0], f).sum() for f, t in zip(found, truth, strict=True))
    total = sum((t >= 0).sum() for t in truth)
    return float(hits / total) if total else 1.0
