"""The store of a library: its catalog and its two vector indexes, seen as one consistent state.

Ingest, search and the doctor are handed a :class:`LibraryStore` (never the whole
:class:`~fgsearch.library.Library`): it holds the catalog, the global and region indexes (each
guarded by one readers-writer lock), and the rules that keep a reader's view consistent with what
the writer committed (:meth:`LibraryStore.consistent`, :meth:`LibraryStore.visible_contents`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from fgsearch.errors import FgsearchError, LibraryError
from fgsearch.library.locks import GuardedIndex, ReadWriteLock
from fgsearch.library.settings import BackendSettings
from fgsearch.regions import RegionSettings

if TYPE_CHECKING:
    from fgsearch.catalog import Catalog
    from fgsearch.indexes import VectorIndex
    from fgsearch.library.reuse import Reuse

T = TypeVar("T")
logger = logging.getLogger(__name__)

REBUILD_RETRIES = 5  # reads of a library that keeps being rebuilt under a reader
REBUILD_WAIT_S = 10.0  # how long a reader waits for a rebuild in progress to finish


@dataclass(frozen=True)
class Build:
    """What built a library: the model reference, region settings and backend, and the build id
    (a new one at every creation and every ``--reindex``)."""

    model: str
    regions: RegionSettings
    backend: BackendSettings
    epoch: str | None


class LibraryStore:
    """A library's catalog and vector indexes. Readers (``read_only``) first pick up what the
    writer has committed; a writable store may be read from other threads while it indexes."""

    def __init__(
        self, path: Path, catalog: Catalog, global_index: VectorIndex, region_index: VectorIndex, build: Build, *,
        read_only: bool, reopen: Callable[[Path], LibraryStore] | None = None,
    ) -> None:  # fmt: skip
        self.path = path
        self.catalog = catalog
        self.read_only = read_only
        self.build = build
        self._rw = ReadWriteLock()
        self.global_index = cast("VectorIndex", GuardedIndex(global_index, self._rw))
        self.region_index = cast("VectorIndex", GuardedIndex(region_index, self._rw))
        self.build_probe: BuildProbe | CatalogBuildProbe = (
            CatalogBuildProbe(lambda: self.catalog) if catalog.pg else BuildProbe(path / "catalog.sqlite")
        )
        self._reopen_fn = reopen
        #: a rebuild of a library whose catalog was lost: the vectors its indexes recorded
        self.reuse: Reuse | None = None

    @property
    def indexes(self) -> tuple[VectorIndex, VectorIndex]:
        return self.global_index, self.region_index

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the write lock: no search or lookup of this process runs meanwhile."""
        return self._rw.exclusive()

    @property
    def writers_waiting(self) -> int:
        """Threads waiting to change the indexes (a reload, a write) while reads hold them."""
        return self._rw.writers_waiting

    # ---- reader consistency ----------------------------------------------------------------
    def consistent(self, read: Callable[[], T]) -> T:
        """Run ``read`` (searches, counts) against one state of the library.

        Within this process, index changes wait until ``read`` is done. A read-only store first
        picks up what the writer has committed since the last call, and if the library was rebuilt
        (``--reindex`` gives it a new id) while ``read`` ran, it reopens and runs ``read`` again:
        ids from one build are never looked up in another build's catalog.
        """
        for _ in range(REBUILD_RETRIES):
            with storage_errors(self.path):
                self.refresh()
                epoch = self.build.epoch
                try:
                    with self._rw.shared():
                        out = read()
                except read_errors():
                    if not self.read_only or self.build_probe.is_build(epoch):
                        raise
                    continue  # rebuilt under our feet: reopen and read again
                if not self.read_only or self.build_probe.is_build(epoch):
                    return out
        raise LibraryError(f"library {self.path} keeps being rebuilt (--reindex) while it is read; try again later")

    def refresh(self) -> None:
        """Read-only stores: pick up what the writer committed; reopen after a ``--reindex``.

        The writer makes a batch durable in both indexes before it confirms the batch in the
        catalog, and deletes from the catalog before it deletes vectors; a search keeps only the
        images whose vectors this view holds (:meth:`visible_contents`).
        """
        if not self.read_only:
            return
        from fgsearch.indexes import IndexBackendError

        with contextlib.suppress(IndexBackendError):  # e.g. a manifest gone in a rebuild: decided below
            if self.build_probe.is_build(self.build.epoch) and not (
                self.global_index.has_updates() or self.region_index.has_updates()
            ):
                # Nothing new: no write lock, so requests in flight need not drain first (bench_serve,
                # 8 clients: lets the text encoding of some requests overlap the searches of others).
                return
        with self._rw.exclusive():
            if self.build_probe.is_build(self.build.epoch):
                try:
                    self.global_index.reload()
                    self.region_index.reload()
                    return
                except IndexBackendError:
                    if self.build_probe.is_build(self.build.epoch):
                        raise
            self._reopen()

    def _reopen(self) -> None:
        """Swap in a fresh view of a library that was rebuilt (waits out a rebuild in progress)."""
        from fgsearch.indexes import IndexBackendError

        if self._reopen_fn is None:
            raise LibraryError(f"library {self.path} was rebuilt; open it again")
        deadline = time.monotonic() + REBUILD_WAIT_S
        while True:
            try:
                fresh = self._reopen_fn(self.path)
                break
            except (LibraryError, IndexBackendError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        logger.info("library %s was rebuilt; reopened it", self.path)
        old = (self.catalog, cast(Any, self.global_index).inner, cast(Any, self.region_index).inner)
        self.catalog = fresh.catalog
        self.global_index = cast("VectorIndex", GuardedIndex(cast(Any, fresh.global_index).inner, self._rw))
        self.region_index = cast("VectorIndex", GuardedIndex(cast(Any, fresh.region_index).inner, self._rw))
        self.build = fresh.build
        for idx in old[1:]:
            with contextlib.suppress(Exception):
                idx.close()
        old[0].close()

    def visible_contents(self, ids: list[int], regions: dict[int, Any] | None = None) -> list[int]:
        """The content ids (images) whose vectors this store's indexes hold, in the given order.

        All of them in the writer. A reader may meet an image the writer confirmed after this
        reader's last refresh (or whose vectors were removed since): its global vector or some
        region vector is not in this reader's view yet, so the image waits for a later search.
        ``regions``: the catalog's ``region_ids_by_content`` of these ids when the caller has it.
        """
        if not self.read_only or not ids:
            return ids
        import numpy as np

        keep = self.global_index.contains(np.asarray(ids, np.int64))
        if regions is None:
            regions = self.catalog.region_ids_by_content(ids)
        per = [regions.get(cid, np.zeros(0, np.int64)) for cid in ids]
        counts = np.asarray([len(r) for r in per], np.int64)
        has = counts > 0
        if has.any():  # every region of an image must be in view (reduceat over each image's run)
            seen = self.region_index.contains(np.concatenate(per))
            keep[has] &= np.logical_and.reduceat(seen, (np.cumsum(counts) - counts)[has])
        return [cid for cid, k in zip(ids, keep.tolist(), strict=True) if k]

    def is_current_build(self) -> bool:
        """Whether the catalog on disk is still the build this store opened."""
        return self.build_probe.is_build(self.build.epoch)

    def close(self) -> None:
        for idx in self.indexes:
            try:
                idx.close()
            except Exception as e:  # closing must go on even if an index is broken (or the disk full)
                logger.warning("could not close a vector index of %s cleanly: %s", self.path, e)
        self.catalog.close()


class BuildProbe:
    """Whether the catalog file is still the build (library id) a reader opened.

    The exact answer (:func:`fgsearch.catalog.peek_library_id`) opens a new sqlite connection:
    ~0.5 ms, and a search asks twice. A ``--reindex`` deletes the catalog and writes a new file, and
    a file's id, once set, never changes. So once the file is seen to hold the build asked about,
    the probe keeps its ``stat`` signature (device, inode, size, modification and change times) and
    answers later questions from one ``stat``: the same signature is the same, unchanged file. Any
    change (a checkpoint of the writer, a new file) is checked the exact way. The probe holds no
    descriptor of its own: closing one would drop the POSIX locks SQLite holds on that file here.
    """

    def __init__(self, catalog_file: Path) -> None:
        self._path = catalog_file
        self._known: tuple[str, tuple[int, ...]] | None = None  # (library id, signature of the file holding it)
        self.catalog_reads = 0  # exact answers asked of the catalog (what the stat signature saves)

    def _signature(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def is_build(self, epoch: str | None) -> bool:
        from fgsearch.catalog import peek_library_id

        known = self._known
        if known is not None and known[0] == epoch and self._signature() == known[1]:
            return True
        before = self._signature()
        self.catalog_reads += 1
        same = peek_library_id(self._path) == epoch
        # no id yet (a library older than ids: a writer sets one in place): always ask the catalog
        if same and epoch and before is not None and self._signature() == before:
            self._known = (epoch, before)  # unchanged while the id was read: it holds that id
        return same


class CatalogBuildProbe:
    """Whether a PostgreSQL catalog still holds the build a reader opened: one small query (a
    replica on any machine sees a ``--reindex`` made on any other; no state of its own)."""

    def __init__(self, catalog: Callable[[], Catalog]) -> None:
        self._catalog = catalog
        self.catalog_reads = 0

    def is_build(self, epoch: str | None) -> bool:
        self.catalog_reads += 1
        return self._catalog().library_id() == epoch


def damaged_index(lib_dir: Path, e: BaseException, name: str | None = None) -> LibraryError:
    """The one-line error for an index file that cannot be opened: the library, the file (the
    backend's message names it) and the repair."""
    from fgsearch.library_record import index_command, repair_command

    what = f"the {name} vector index" if name else "a vector index"
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return LibraryError(
        f"library {lib_dir}: {what} is damaged ({reason}); run `{repair_command(lib_dir)}`, then "
        f"`{index_command(lib_dir)}`"
    )


@contextlib.contextmanager
def storage_errors(lib_dir: Path) -> Iterator[None]:
    """Turn a full disk, a damaged catalog or index, or an unwritable library into one line naming the fix."""
    import errno
    import sqlite3

    import sqlalchemy

    from fgsearch.indexes import IndexCorruptError

    try:
        yield
    except IndexCorruptError as e:  # e.g. a reader reloading a new snapshot whose file is damaged
        raise damaged_index(lib_dir, e) from e
    except (OSError, sqlite3.Error, sqlalchemy.exc.DBAPIError) as e:
        from fgsearch.catalog.health import damaged_message
        from fgsearch.diskfull import full_disk_message, is_full_disk

        msg = str(getattr(e, "orig", None) or e)
        low = msg.lower()
        if isinstance(e, sqlalchemy.exc.OperationalError) and type(e.orig).__module__.startswith("psycopg"):
            reason = next((ln.strip() for ln in msg.splitlines() if ln.strip()), type(e.orig).__name__)
            raise LibraryError(
                f"lost the connection to the PostgreSQL catalog of library {lib_dir} ({reason}); run the same "
                "command again when the database is back (what was committed so far is kept)"
            ) from e
        code = getattr(e, "errno", None)
        if is_full_disk(e, lib_dir):
            raise LibraryError(full_disk_message(lib_dir, e)) from e
        if "malformed" in low or "not a database" in low:
            raise LibraryError(damaged_message(lib_dir / "catalog.sqlite", msg)) from e
        if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly database" in low:
            raise LibraryError(
                f"cannot write to library {lib_dir} ({msg}); it is read-only here: query it, or copy it to a "
                "writable folder to change it"
            ) from e
        raise


def read_errors() -> tuple[type[Exception], ...]:
    """What a read of a library that is being rebuilt may raise (it is then read again)."""
    import sqlite3

    import sqlalchemy

    from fgsearch.indexes import IndexBackendError

    return (FgsearchError, IndexBackendError, sqlite3.Error, sqlalchemy.exc.SQLAlchemyError)
