"""A bounded record of the query vectors an index has served, for calibrating its search on them.

The breadth of an approximate search is calibrated on sample queries (:mod:`.calibration`); the
synthetic ones stand in for what users will ask, and real queries can be harder (measured: a
breadth calibrated to 0.985 on synthetic text queries gave 0.962 on CLIP-like text queries from
another generator). So every search appends its query vectors here, and each snapshot measures
recall@10 of the current breadth on a sample of them against exact search, and calibrates again,
with them as one of the sets, when they miss the goal (widen) or clear it with room (narrow).

What is kept, and where: ``served_queries.f16`` in the index directory, a ring of at most
``FaissConfig.served_queries`` vectors (float16; 2,000 x 512-d = 2 MB), the most recent first
to be kept. Vectors only: no text, no time of each query, no result; readable by the owner only
(mode 0600). ``served_queries=0`` (an index's setting, given when it is created) or the
environment variable ``FGSEARCH_SERVED_QUERIES=0`` (any process, any existing library) turns it
off: nothing is recorded, and the next snapshot deletes the file.
Several processes (a server, ``fgsearch query``) append under an exclusive ``flock``; a process
that cannot write the file records nothing and says so once in its log (at INFO where the library
is simply not writable by this user or disk, else a warning), and the index's status says so
(``served.recording: false`` with the reason).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..base import SearchResult
from ..exact import StoreBackedIndex, chunked_queries, exact_topk
from ..filtered import exact_over_rows

log = logging.getLogger(__name__)

FILE = "served_queries.f16"
_MAGIC = b"FGSQ"
_HEADER = struct.Struct("<4sIIQ")  # magic, dim, capacity, total ever recorded
_HEADER_BYTES = 64
FLUSH_ROWS = 32


ENV = "FGSEARCH_SERVED_QUERIES"


def served_capacity(configured: int) -> int:
    """The ring's capacity: the index's setting, or 0 when ``FGSEARCH_SERVED_QUERIES=0``."""
    return 0 if os.environ.get(ENV, "").strip() == "0" else int(configured)


class ServedQueries:
    """The ring of served query vectors of one index directory (see the module docstring)."""

    def __init__(self, folder: Path, dim: int, capacity: int) -> None:
        self.path = Path(folder) / FILE
        self.dim = int(dim)
        self.capacity = max(0, int(capacity))
        self.unavailable: str | None = None  # why this process records nothing
        self._pending: list[np.ndarray] = []  # rows not written yet (written 32 at a time)
        self._pending_rows = 0
        self._lock = threading.Lock()  # a server searches from several threads

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.unavailable is None

    def record(self, q: np.ndarray) -> None:
        """Add the rows of ``q`` (``[n, dim]`` float32) to the ring (written once 32 rows are
        waiting, so a search pays for a file write once per 32 queries); never raises."""
        if not self.enabled or q.shape[0] == 0:
            return
        rows = np.asarray(q[-self.capacity :], dtype=np.float16)
        with self._lock:
            self._pending.append(rows)
            self._pending_rows += rows.shape[0]
            full = self._pending_rows >= FLUSH_ROWS
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the rows still waiting (at close, and before a snapshot reads the record)."""
        with self._lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
        if not pending:
            return
        rows = np.ascontiguousarray(np.concatenate(pending)[-self.capacity :])
        if not self.enabled:
            return
        try:
            self._append(rows)
        except OSError as e:
            self.unavailable = f"cannot write {self.path} ({e.strerror or e})"
            # a library shared read-only is expected: said once at INFO, and in its status
            level = logging.INFO if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else logging.WARNING
            log.log(level, "%s: served queries are not recorded by this process", self.unavailable)

    def writable(self) -> str | None:
        """Why this process could not record (None when it can, as far as permissions tell)."""
        if self.unavailable is not None:
            return self.unavailable
        target = self.path if self.path.exists() else self.path.parent
        if self.path.is_dir() or not os.access(target, os.W_OK):
            return f"cannot write {self.path} (not writable by this user)"
        return None

    def _append(self, rows: np.ndarray) -> None:
        import fcntl

        row_bytes = self.dim * 2
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            dim, cap, total = self._header(fd)
            if (dim, cap) != (self.dim, self.capacity):  # new settings (or a new file): start over
                total = 0
                os.ftruncate(fd, _HEADER_BYTES + self.capacity * row_bytes)
            for i, row in enumerate(rows):
                slot = (total + i) % self.capacity
                os.pwrite(fd, row.tobytes(), _HEADER_BYTES + slot * row_bytes)
            header = _HEADER.pack(_MAGIC, self.dim, self.capacity, total + rows.shape[0])
            os.pwrite(fd, header.ljust(_HEADER_BYTES, b"\0"), 0)
        finally:
            os.close(fd)  # releases the lock

    def _header(self, fd: int) -> tuple[int, int, int]:
        """(dim, capacity, total) of the open record; zeros for a file that is not one."""
        try:
            raw = os.pread(fd, _HEADER.size, 0)
        except OSError:  # e.g. a folder in its place
            return 0, 0, 0
        if len(raw) < _HEADER.size:
            return 0, 0, 0
        magic, dim, cap, total = _HEADER.unpack(raw)
        size = os.fstat(fd).st_size
        if magic != _MAGIC or size != _HEADER_BYTES + cap * dim * 2:
            return 0, 0, 0
        return int(dim), int(cap), int(total)

    def total(self) -> int:
        """How many queries were ever recorded in the file (0 when there is none)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return 0
        try:
            dim, cap, total = self._header(fd)
            return total if (dim, cap) == (self.dim, self.capacity) else 0
        finally:
            os.close(fd)

    def recent(self, limit: int) -> np.ndarray:
        """Up to ``limit`` of the most recent recorded queries (``[n, dim]`` float32, unit length)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            dim, cap, total = self._header(fd)
            if (dim, cap) != (self.dim, self.capacity) or total == 0:
                return np.zeros((0, self.dim), dtype=np.float32)
            raw = os.pread(fd, cap * dim * 2, _HEADER_BYTES)
        except OSError:
            return np.zeros((0, self.dim), dtype=np.float32)
        finally:
            os.close(fd)
        if len(raw) != cap * dim * 2:  # shortened under us: nothing to trust
            return np.zeros((0, self.dim), dtype=np.float32)
        ring = np.frombuffer(raw, dtype=np.float16).reshape(cap, dim)
        held = min(total, cap)
        order = (total - 1 - np.arange(min(held, limit))) % cap  # newest first
        q = ring[order].astype(np.float32)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        keep = np.isfinite(q).all(axis=1) & (norms[:, 0] > 0)
        return np.ascontiguousarray(q[keep] / norms[keep])

    def remove(self) -> None:
        """Delete the record (``served_queries=0``)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def check_served(
    served: ServedQueries,
    cfg: Any,
    extra: dict[str, Any],
    before: dict[str, Any],
    *,
    breadth: int,
    fixed: bool,
    measure: Callable[[np.ndarray, int, int], float],
    recalibrate: Callable[[np.ndarray], dict[str, Any]],
) -> dict[str, Any]:
    """The ``served`` record of a snapshot's manifest: recall@10 of the search as calibrated, on the
    queries the index served, for any backend that calibrates a breadth (the FAISS default, usearch).

    ``cfg``: the backend's config (``calibration_queries``, ``served_min``, ``recall_target``,
    ``calibration_margin``, ``rerank_factor``); ``extra``: the new snapshot's extras (updated when
    it calibrates again), ``before``: the current snapshot's; ``breadth``: the search's breadth as
    configured or calibrated; ``fixed``: configured (only measured); ``measure(queries, breadth,
    factor)``: recall@10 against exact search; ``recalibrate(queries)``: the extras of a calibration
    with them as a set. Calibrates again when they miss the goal (widen), or when they clear it by
    0.01 or reach it at half the breadth (narrow: where recall grows slowly with the breadth, as it
    does near the goal for text queries far from every image, a breadth can ask for several times
    what its queries need and still clear the goal by less than 0.01).
    """
    if served.capacity == 0:
        return {"recording": False}
    served.flush()
    queries = served.recent(max(cfg.calibration_queries, cfg.served_min))  # a set needs served_min
    total = served.total()
    held = min(total, served.capacity)
    record: dict[str, Any] = {"recording": True, "held": held, "needed": cfg.served_min, "total_at_check": total}
    if held < cfg.served_min:
        return record
    goal = min(1.0, cfg.recall_target + cfg.calibration_margin)
    fresh = extra.get("calibration") is not before.get("calibration")  # calibrated in this build
    cal = (extra.get("calibration") or {}) if fresh else {}
    if "served" not in cal.get("sets", {}):  # not calibrated on them in this build: measure
        factor = int(extra.get("rerank_factor", cfg.rerank_factor))
        recall = measure(queries, breadth, factor)
        # widen; or narrow (half the breadth is measured only when the goal is cleared by less than 0.01)
        if not fixed and (
            recall < goal or recall >= goal + 0.01 or _reached_at_half(measure, queries, breadth, factor, goal)
        ):
            extra.update(recalibrate(queries))
            cal = extra["calibration"]
        else:
            cal = {"breadth": breadth, "sets": {"served": {"recall10": round(recall, 4)}}}
    recall = float(cal["sets"]["served"]["recall10"])
    record.update(
        recall10=recall,
        goal_recall10=goal,
        below_goal=recall < goal,
        queries=int(queries.shape[0]),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        breadth=int(cal.get("breadth", breadth)),
    )
    return record


def _reached_at_half(
    measure: Callable[[np.ndarray, int, int], float], queries: np.ndarray, breadth: int, factor: int, goal: float
) -> bool:
    """Whether the served queries reach ``goal`` at half the breadth (one more measurement)."""
    half = breadth // 2
    return half >= 1 and measure(queries, half, factor) >= goal


def recheck_due(served: ServedQueries, extra: dict[str, Any], cfg: Any, *, explicit: bool) -> bool:
    """Whether enough queries were served since the snapshot's check that a snapshot with no other
    change is due to check them again (a library that has stopped growing gets no snapshot from
    growth, so its breadth would otherwise never meet what it serves). ``explicit`` (a ``save()``:
    every ``fgsearch index`` run ends with one): ``served_min`` new queries; otherwise (any flush,
    e.g. a writer's close): half the ring as well, so that a busy server does not make a long
    ingest rewrite its snapshot every ``served_min`` queries."""
    if served.capacity == 0:
        return False
    served.flush()  # this process's own queries count too
    total = served.total()
    since = total - int((extra.get("served") or {}).get("total_at_check", 0))
    need = cfg.served_min if explicit else max(cfg.served_min, served.capacity // 2)
    return min(total, served.capacity) >= cfg.served_min and since >= need


def served_status(served: ServedQueries, extra: dict[str, Any]) -> dict[str, Any]:
    """What ``status`` shows of the served-query record (``extra``: the snapshot's extras) and the
    recall measured on it."""
    s = dict(extra.get("served") or {})
    why = served.writable() if served.capacity else None
    s["recording"] = served.enabled and why is None
    if why:
        s["unavailable"] = why
    s["recorded_since_check"] = max(0, served.total() - int(s.get("total_at_check", 0)))
    return s


class ServedIndex(StoreBackedIndex):
    """A store-backed index with backend files (``_build_extra``) that keeps the record of the
    queries it served (the graph backends: the FAISS default and usearch): the ring opened once per
    process, written at close, a snapshot with no other change once a check of it is due, and what
    ``status`` shows. A subclass sets ``_extra`` (the snapshot's manifest extras) and ``_ann`` (its
    structure, ``None`` while exact) in ``_after_load`` and calls :meth:`_open_served` there."""

    _extra: dict[str, Any]
    _ann: Any

    def _build_extra(self, generation: int, vecs: np.ndarray, ids: np.ndarray) -> tuple[dict[str, Any], list[str]]:
        """The backend's files and manifest extras of a new snapshot (see ``JournaledStore.compact``)."""
        raise NotImplementedError

    def _compact(self) -> None:
        self._store.compact(build_extra=self._build_extra)

    def _open_served(self) -> None:
        if getattr(self, "_served", None) is None:  # kept across snapshots: it knows if it cannot write
            self._served = ServedQueries(self._store.path, self.dim, served_capacity(self._config.served_queries))

    def close(self) -> None:
        if not self.closed and getattr(self, "_served", None) is not None:
            self._served.flush()  # the queries this process answered since its last write
        super().close()

    def _saved_unchanged(self) -> None:
        if self._served.capacity == 0:
            self._served.remove()  # turned off: what was recorded goes, snapshot or not

    def _wants_snapshot(self, *, explicit: bool) -> bool:
        if self._wants_rebuild():
            return True
        return self._ann is not None and recheck_due(self._served, self._extra, self._config, explicit=explicit)

    def _served_status(self) -> dict[str, Any]:
        """What ``status`` shows of the served-query record and the recall measured on it."""
        return served_status(self._served, self._extra)

    def _search_chunks(
        self,
        q: np.ndarray,
        k: int,
        exact_rows: tuple[np.ndarray, np.ndarray] | None,
        delta_allowed: np.ndarray | None,
        structure: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> SearchResult:
        """The top ``k`` of each query, a bounded chunk of queries at a time: exactly over the
        ``exact_rows`` of a narrow filter, exactly while there is no structure, else the
        ``structure``'s answers over the snapshot with the rows added since merged in."""
        out_i = np.empty((q.shape[0], k), dtype=np.int64)
        out_s = np.empty((q.shape[0], k), dtype=np.float32)
        for s, chunk in chunked_queries(q):
            if exact_rows is not None:
                i, sc = exact_over_rows(self._store, chunk, k, *exact_rows, self._config.block_rows)
            elif self._ann is None:
                i, sc = exact_topk(chunk, self._store.iter_blocks(self._config.block_rows), k)
            else:
                i, sc = self._with_delta(chunk, k, structure(chunk), delta_allowed)
            out_i[s : s + chunk.shape[0]] = i
            out_s[s : s + chunk.shape[0]] = sc
        return SearchResult(ids=out_i, scores=out_s)
