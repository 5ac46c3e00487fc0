"""The one interface every vector index backend implements, and its input checks.

Vectors are L2-normalized float32 rows; scores are inner products (cosine similarity for unit
vectors); ids are non-negative int64 catalog ids. Results are padded with id ``-1`` and score
``-inf`` when fewer than ``k`` vectors match.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from .errors import (
    DimensionMismatchError,
    DuplicateIdError,
    IndexClosedError,
    IndexInputError,
    IndexReadOnlyError,
    InvalidVectorError,
)

MissingPolicy = Literal["error", "ignore"]
Payload = Mapping[str, Sequence[Any]]
#: Calibration queries a caller gives: a set name -> ``[n, dim]`` vectors, or a callable returning that mapping.
CalibrationSource = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class SearchResult:
    """``ids`` (int64) and ``scores`` (float32), both ``[n_queries, k]``, best first.

    Unpacks as a pair: ``ids, scores = index.search(q, 10)``.
    """

    ids: np.ndarray
    scores: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.ids, self.scores))


@dataclass(frozen=True)
class IndexStats:
    """What an index is and what it costs: ``params`` holds the backend's derived parameters."""

    kind: str
    dim: int
    count: int
    params: dict[str, Any] = field(default_factory=dict)
    bytes_in_memory: int | None = None
    bytes_on_disk: int | None = None
    location: str | None = None


@runtime_checkable
class Calibratable(Protocol):
    """The "calibration" capability: an index that tunes its search on queries of the kinds it will
    serve (FAISS's approximate tiers). Exact search has nothing to tune and Qdrant tunes its own
    HNSW, so those indexes are not Calibratable; check with ``isinstance(index, Calibratable)``."""

    def set_calibration_queries(self, source: CalibrationSource | None) -> None:
        """``source`` maps a set name (``"text"``) to ``[n, dim]`` query vectors, or is a callable
        returning that mapping (called only when a tuning happens); ``None`` clears it."""


class VectorIndex(abc.ABC):
    """A store of (id, vector) pairs searchable by inner product.

    ``add``/``remove`` apply in memory; :meth:`flush` makes every prior change durable; :meth:`save`
    also writes a compact snapshot. Use as a context manager to close (and flush) reliably.
    """

    kind: str = "abstract"

    def __init__(self, dim: int, *, read_only: bool) -> None:
        self._dim = int(dim)
        self._read_only = bool(read_only)
        self._closed = False

    # ----------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def read_only(self) -> bool:
        """True when opened with ``read_only=True``: writes raise :class:`IndexReadOnlyError`."""
        return self._read_only

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return self.count()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- abstract API
    @abc.abstractmethod
    def count(self) -> int:
        """Number of stored vectors."""

    @abc.abstractmethod
    def add(
        self,
        ids: Any,
        vectors: Any,
        *,
        upsert: bool = False,
        payload: Payload | None = None,
    ) -> None:
        """Store ``vectors[i]`` under ``ids[i]``.

        An id already stored is an error unless ``upsert=True`` (then it is replaced). ``payload``
        is optional per-vector metadata columns (e.g. ``{"image_id": [...], "region": [...]}``);
        backends that keep no payload (exact, faiss) check its lengths and drop it.
        """

    @abc.abstractmethod
    def remove(self, ids: Any, *, missing: MissingPolicy = "error") -> int:
        """Delete ``ids``; returns how many were removed.

        ``missing="error"`` rejects the whole call if any id is not stored; ``"ignore"`` skips them.
        """

    @abc.abstractmethod
    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> SearchResult:
        """Top-``k`` ids by inner product for each query row (1-D: one query).

        ``allowed_ids`` restricts results to those ids (unknown ids are simply never returned).
        """

    @abc.abstractmethod
    def get(self, ids: Any) -> np.ndarray:
        """Stored vectors ``[len(ids), dim]`` float32, in the order asked; unknown ids raise."""

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """All stored ids, sorted ascending (int64)."""

    @abc.abstractmethod
    def contains(self, ids: Any) -> np.ndarray:
        """Boolean array: which of ``ids`` are stored."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every add/remove so far durable (cheap: proportional to the changes)."""

    @abc.abstractmethod
    def save(self) -> None:
        """Write a compact snapshot (and rebuild/retrain derived structures when due)."""

    @abc.abstractmethod
    def reload(self) -> None:
        """Read-only handles: pick up the state another process has flushed since open."""

    def has_updates(self) -> bool:
        """Read-only handles: whether :meth:`reload` would pick up something another process has
        flushed since. Cheap and lock-free, so a reader can skip a reload that has nothing to do;
        backends that cannot tell answer True (always reload)."""
        self._check_open()
        return True

    @abc.abstractmethod
    def stats(self) -> IndexStats:
        """Kind, parameters, size in memory and on disk."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush (writers), release files and locks. Idempotent."""

    def verify(self) -> tuple[list[str], np.ndarray]:
        """Read the stored data against its checksums: (damaged file names, ids whose vectors are
        damaged). Backends whose storage keeps its own integrity (Qdrant) report nothing."""
        self._check_open()
        return [], np.zeros(0, dtype=np.int64)

    # ----------------------------------------------------------------- helpers for subclasses
    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosedError(f"{self.kind} index is closed; open it again with open_index()")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise IndexReadOnlyError(
                f"{self.kind} index was opened read-only; open it with read_only=False to change it"
            )


# --------------------------------------------------------------------- input validation
def as_ids(ids: Any, *, name: str = "ids", unique: bool = True) -> np.ndarray:
    """Validate ids: 1-D, integral, non-negative, (optionally) no repeats. Returns int64."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise IndexInputError(f"{name} must be a 1-D sequence of integers, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iu":
        raise IndexInputError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise IndexInputError(f"{name} must fit in int64")
    out = arr.astype(np.int64, copy=False)
    if out.min() < 0:
        bad = int(out[out < 0][0])
        raise IndexInputError(f"{name} must be non-negative catalog ids, got {bad}")
    if unique:
        s = np.sort(out)
        dup = s[1:][s[1:] == s[:-1]]
        if dup.size:
            raise DuplicateIdError(
                f"{name} repeats id {int(dup[0])} ({np.unique(dup).size} repeated ids in one call); pass each id once"
            )
    return out


def as_vectors(vectors: Any, dim: int, n: int, *, norm_tolerance: float, ids: np.ndarray) -> np.ndarray:
    """Validate stored vectors: ``[n, dim]``, finite, unit norm within ``norm_tolerance``."""
    arr = np.asarray(vectors)
    if arr.ndim == 1 and n == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise IndexInputError(f"vectors must be a 2-D array [n, {dim}], got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise DimensionMismatchError(f"expected {dim}-d vectors, got {arr.shape[1]}-d")
    if arr.shape[0] != n:
        raise IndexInputError(f"got {n} ids but {arr.shape[0]} vectors; pass one id per vector")
    if arr.dtype.kind not in "fiu":
        raise IndexInputError(f"vectors must be numeric, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if n == 0:
        return out
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise InvalidVectorError(
            f"vector for id {int(ids[i])} contains NaN or inf ({int((~finite).sum())} bad vectors); re-encode the image"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64))
    bad = np.abs(norms - 1.0) > norm_tolerance
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidVectorError(
            f"vector for id {int(ids[i])} has L2 norm {norms[i]:.4f}, expected 1 "
            f"(±{norm_tolerance}); L2-normalize vectors before adding them"
        )
    return out


def as_queries(queries: Any, dim: int) -> np.ndarray:
    """Validate queries: 1-D (one query) or ``[nq, dim]``, finite. Returns float32 ``[nq, dim]``."""
    arr = np.asarray(queries)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise IndexInputError(f"queries must be [n, {dim}] or [{dim}], got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise DimensionMismatchError(f"expected {dim}-d query vectors, got {arr.shape[1]}-d")
    if arr.dtype.kind not in "fiu":
        raise IndexInputError(f"queries must be numeric, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if out.size and not np.isfinite(out).all():
        raise InvalidVectorError("query vectors contain NaN or inf; re-encode the query")
    return out


def as_k(k: Any) -> int:
    """Validate ``k`` (a positive integer)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise IndexInputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_missing_policy(missing: str) -> None:
    if missing not in ("error", "ignore"):
        raise IndexInputError(f"missing must be 'error' or 'ignore', got {missing!r}")


def check_payload(payload: Payload | None, n: int) -> dict[str, list[Any]] | None:
    """Validate payload columns: a mapping of name -> sequence of length ``n``."""
    if payload is None:
        return None
    if not isinstance(payload, Mapping):
        raise IndexInputError("payload must be a mapping of column name -> sequence (one value per id)")
    out: dict[str, list[Any]] = {}
    for key, col in payload.items():
        if not isinstance(key, str):
            raise IndexInputError(f"payload column names must be strings, got {key!r}")
        values = col.tolist() if isinstance(col, np.ndarray) else list(col)
        if len(values) != n:
            raise IndexInputError(f"payload column {key!r} has {len(values)} values for {n} ids")
        out[key] = values
    return out


def fmt_ids(ids: np.ndarray, limit: int = 5) -> str:
    """The first ``limit`` ids of ``ids`` for an error message, with the count when there are more."""
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return shown + (f", ... ({ids.size} in all)" if ids.size > limit else "")


def empty_result(nq: int, k: int) -> SearchResult:
    return SearchResult(ids=np.full((nq, k), -1, dtype=np.int64), scores=np.full((nq, k), -np.inf, dtype=np.float32))


def merge_topk(
    ids_a: np.ndarray, scores_a: np.ndarray, ids_b: np.ndarray, scores_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two candidate lists per row (same row count) into the top ``k``, best first.

    Ties are broken by smaller id so every backend orders equal scores the same way.
    """
    ids = np.concatenate([ids_a, ids_b], axis=1)
    scores = np.concatenate([scores_a, scores_b], axis=1)
    return topk_rows(ids, scores, k)


def topk_rows(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of each row of (ids, scores), sorted by score desc then id asc; padded."""
    nq, m = scores.shape
    if nq == 1 and m and k:  # one query (the common case): the same rule on 1-D arrays, less overhead
        i1, s1 = ids[0], scores[0]
        if m > k:
            part = np.argpartition(-s1, k - 1)[:k]
            i1, s1 = i1[part], s1[part]
        s1 = np.where(i1 < 0, -np.inf, s1).astype(np.float32, copy=False)
        order = np.lexsort((np.where(i1 < 0, np.iinfo(np.int64).max, i1), -s1))
        i1, s1 = i1[order], s1[order]
        out_i = np.full((1, k), -1, dtype=np.int64)
        out_s = np.full((1, k), -np.inf, dtype=np.float32)
        out_i[0, : i1.size] = np.where(np.isneginf(s1), -1, i1)
        out_s[0, : s1.size] = s1
        return out_i, out_s
    if m > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        ids = np.take_along_axis(ids, part, axis=1)
        scores = np.take_along_axis(scores, part, axis=1)
    # sort by (-score, id); invalid entries (id -1) get -inf and sort last
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32, copy=False)
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.concatenate([ids, np.full((nq, pad), -1, dtype=np.int64)], axis=1)
        scores = np.concatenate([scores, np.full((nq, pad), -np.inf, dtype=np.float32)], axis=1)
    ids = np.where(np.isneginf(scores), -1, ids)
    return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)


def exact_topk(
    queries: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product over ``(vectors, ids)`` blocks (ids -1 = skip)."""
    nq = queries.shape[0]
    best_i = np.full((nq, 0), -1, dtype=np.int64)
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    for vecs, ids in blocks:
        if ids.size == 0:
            continue
        scores = queries @ np.asarray(vecs).T
        dead = ids < 0
        if dead.any():
            scores[:, dead] = -np.inf
        if ids.size > k:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            cand_s = np.take_along_axis(scores, part, axis=1)
            cand_i = ids[part]
        else:
            cand_s = scores
            cand_i = np.broadcast_to(ids, scores.shape)
        all_i = np.concatenate([best_i, cand_i], axis=1)
        all_s = np.concatenate([best_s, cand_s], axis=1)
        if all_s.shape[1] > k:
            part = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
            all_i = np.take_along_axis(all_i, part, axis=1)
            all_s = np.take_along_axis(all_s, part, axis=1)
        best_i, best_s = all_i, all_s
    return topk_rows(best_i, best_s, k)
