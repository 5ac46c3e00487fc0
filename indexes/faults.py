"""Named fault-injection points: the test seam of the index backends.

Crash-recovery and retry behaviour can only be tested by making a write stop or fail at a chosen
moment. Rather than have tests patch private functions (which breaks with every refactor), the
code calls :meth:`FaultPoints.reach` at a few named places, and a test installs a handler for a
name. With no handler installed, ``reach`` does nothing (one dict lookup).

Points (``subject`` is what the handler receives):

* ``"store.snapshot_chunk"``: a chunk of a snapshot ``.npy`` file was written to its temp file,
  before fsync and rename (``subject``: the final path).
* ``"store.before_rename"``: a file written atomically (the manifest) is complete in its temp file,
  before the rename that commits it (``subject``: the final path).
* ``"store.collect_garbage"``: a committed snapshot is about to delete the older generation's files
  (``subject``: the index directory).
* ``"faiss.before_fsync"``: a FAISS snapshot file was written to its temp file, before fsync and
  rename (``subject``: the temp path).
* ``"usearch.before_fsync"``: a usearch graph file was written to its temp file, before fsync and
  rename (``subject``: the temp path).
* ``"qdrant.upsert"``: one batch of points is about to be sent to Qdrant, inside the retry loop
  (``subject``: the collection name); a handler that raises simulates a failed request.
* ``"pgvector.before_commit"``: a pgvector writer is about to commit its transaction (a flush,
  a save, or before joining a caller's transaction; ``subject``: the table name).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Handler = Callable[[object], None]

POINTS: frozenset[str] = frozenset(
    {
        "store.snapshot_chunk",
        "store.before_rename",
        "store.collect_garbage",
        "faiss.before_fsync",
        "usearch.before_fsync",
        "qdrant.upsert",
        "pgvector.before_commit",
    }
)


class FaultPoints:
    """Handlers by point name; the code calls :meth:`reach`, tests call :meth:`inject`."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def reach(self, point: str, subject: object = None) -> None:
        """Run the handler installed for ``point``, if any (it may raise or block)."""
        handler = self._handlers.get(point)
        if handler is not None:
            handler(subject)

    def install(self, point: str, handler: Handler) -> None:
        """Install ``handler`` at ``point`` until :meth:`clear` (e.g. for a whole worker process)."""
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; choose one of {', '.join(sorted(POINTS))}")
        self._handlers[point] = handler

    def clear(self, point: str | None = None) -> None:
        """Remove the handler of ``point`` (every handler when None)."""
        if point is None:
            self._handlers.clear()
        else:
            self._handlers.pop(point, None)

    @contextlib.contextmanager
    def inject(self, point: str, handler: Handler) -> Iterator[None]:
        """Install ``handler`` at ``point`` for the duration of a ``with`` block."""
        previous = self._handlers.get(point)
        self.install(point, handler)
        try:
            yield
        finally:
            if previous is None:
                self.clear(point)
            else:
                self._handlers[point] = previous


#: The process-wide fault points every backend reports to.
faults = FaultPoints()
