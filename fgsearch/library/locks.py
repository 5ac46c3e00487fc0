"""Thread safety inside one process: a readers-writer lock, and the vector index wrapper that
takes it, so that no thread ever sees a half-loaded index (a reload or a compaction swaps the whole
in-memory state of an index under the write lock)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fgsearch.indexes import VectorIndex


class ReadWriteLock:
    """Many readers or one writer (writers first). A thread may re-enter what it holds, and a
    thread that holds the only read lock may take the write lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()

    @property
    def writers_waiting(self) -> int:
        """Threads waiting for the write lock (a named probe: tests wait for it, not for a time)."""
        return self._writers_waiting

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        depth = getattr(self._local, "depth", 0)
        with self._cond:
            if self._writer != me and depth == 0:
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
            self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        own_reads = getattr(self._local, "depth", 0)
        with self._cond:
            if self._writer == me:
                self._writer_depth += 1
            else:
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers > own_reads:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._writer_depth -= 1
                if not self._writer_depth:
                    self._writer = None
                self._cond.notify_all()


class GuardedIndex:
    """A library's vector index shared between threads: searches and lookups run under the
    library's read lock, changes (including a reload or a compaction, which swap the whole
    in-memory state) under its write lock, so no thread ever sees a half-loaded index."""

    def __init__(self, inner: VectorIndex, rw: ReadWriteLock) -> None:
        self.inner = inner
        self._rw = rw

    def __getattr__(self, name: str) -> Any:
        """Backend extras (``kind``, ``path``, ``set_calibration_queries``, ...) reach the wrapped index."""
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return self.count()

    def count(self) -> int:
        with self._rw.shared():
            return self.inner.count()

    def ids(self) -> Any:
        with self._rw.shared():
            return self.inner.ids()

    def contains(self, ids: Any) -> Any:
        with self._rw.shared():
            return self.inner.contains(ids)

    def get(self, ids: Any) -> Any:
        with self._rw.shared():
            return self.inner.get(ids)

    def search(self, queries: Any, k: int = 10, *, allowed_ids: Any = None) -> Any:
        with self._rw.shared():
            return self.inner.search(queries, k, allowed_ids=allowed_ids)

    def stats(self) -> Any:
        with self._rw.shared():
            return self.inner.stats()

    def verify(self) -> Any:
        with self._rw.shared():
            return self.inner.verify()

    def add(self, ids: Any, vectors: Any, *, upsert: bool = False, payload: Any = None, **extra: Any) -> None:
        """``extra``: a backend's own keywords (pgvector's ``connection=``), passed through."""
        with self._rw.exclusive():
            self.inner.add(ids, vectors, upsert=upsert, payload=payload, **extra)

    def remove(self, ids: Any, *, missing: Any = "error", **extra: Any) -> int:
        with self._rw.exclusive():
            return self.inner.remove(ids, missing=missing, **extra)

    def flush(self) -> None:
        with self._rw.exclusive():
            self.inner.flush()

    def save(self) -> None:
        with self._rw.exclusive():
            self.inner.save()

    def has_updates(self) -> bool:
        return self.inner.has_updates()  # no lock: it reads files only, and asks before a reload

    def reload(self) -> None:
        with self._rw.exclusive():
            self.inner.reload()

    def close(self) -> None:
        with self._rw.exclusive():
            self.inner.close()
