"""A library: one directory holding the SQLite catalog and the two vector indexes.

```
<library>/catalog.sqlite     files, contents (images), regions, settings  (SQLAlchemy)
<library>/index/global/      one vector per distinct image (id = content id)
<library>/index/regions/     one vector per region box    (id = region id)
<library>/lock               the writer lock (flock; holds the writer's PID)
```

:class:`Library` is the public entry point of the package: ``Library.open(...)``, ``.index(...)``,
``.search(...)``, ``.status()``, ``.doctor()``. The library records the model, region settings and
backend that built it and refuses to mix vectors from another model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from fgsearch.boxes import Box
from fgsearch.errors import FgsearchError, LibraryError
from fgsearch.regions import RegionSettings

T = TypeVar("T")

if TYPE_CHECKING:
    from fgsearch.indexes import VectorIndex
    from fgsearch.ingest import IndexOptions, IndexReport, ProgressFn
    from fgsearch.model import Encoder
    from fgsearch.search import SearchHit, SearchQuery

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "fg-clip-base"
_ENCODERS: dict[tuple[str, str, str], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def shared_encoder(model: str, device: str = "auto", precision: str = "auto") -> Encoder:
    """The process-wide encoder for a model (loaded once, shared by every library and thread)."""
    from fgsearch.model import Encoder

    key = (str(model), str(device), precision)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = Encoder.load(model, device=device, precision=precision)
        return _ENCODERS[key]


@dataclass(frozen=True)
class BackendSettings:
    """Which vector store a library uses; chosen when the library is created."""

    kind: str = "faiss"  # faiss | exact | qdrant
    qdrant_url: str | None = None
    qdrant_path: str | None = None
    qdrant_collection: str = "fgsearch"

    def __post_init__(self) -> None:
        from fgsearch.indexes import KINDS

        if self.kind not in KINDS:
            raise LibraryError(f"unknown backend {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind != "qdrant" and (self.qdrant_url or self.qdrant_path):
            raise LibraryError("--qdrant-url/--qdrant-path need --backend qdrant")
        if self.qdrant_url and self.qdrant_path:
            raise LibraryError("give --qdrant-url (server) or --qdrant-path (embedded), not both")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "qdrant_url": self.qdrant_url,
            "qdrant_path": self.qdrant_path,
            "qdrant_collection": self.qdrant_collection,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackendSettings:
        return cls(
            kind=str(d.get("kind", "faiss")),
            qdrant_url=d.get("qdrant_url"),
            qdrant_path=d.get("qdrant_path"),
            qdrant_collection=str(d.get("qdrant_collection", "fgsearch")),
        )


def _open_vector_index(
    lib_dir: Path, backend: BackendSettings, name: str, dim: int, *, read_only: bool, create: bool
) -> VectorIndex:
    from fgsearch.indexes import QdrantConfig, open_index

    if backend.kind == "qdrant":
        api_key = os.environ.get("QDRANT_API_KEY")
        collection = f"{backend.qdrant_collection}_{name}"
        if backend.qdrant_url:
            cfg = QdrantConfig(url=backend.qdrant_url, api_key=api_key, collection=collection)
            return open_index("qdrant", None, config=cfg, dim=dim, read_only=read_only, create=create)
        base = Path(backend.qdrant_path) if backend.qdrant_path else lib_dir / "qdrant"
        cfg = QdrantConfig(path=str(base / name), collection=collection)
        return open_index("qdrant", None, config=cfg, dim=dim, read_only=read_only, create=create)
    return open_index(backend.kind, lib_dir / "index" / name, dim=dim, read_only=read_only, create=create)


def _where(bk: BackendSettings, lib_dir: Path) -> str:
    """A backend as a user names it: the kind, and for qdrant where it lives (default folder made explicit)."""
    if bk.kind != "qdrant":
        return f"backend {bk.kind}"
    where = bk.qdrant_url or str(Path(bk.qdrant_path or lib_dir / "qdrant").resolve())
    extra = f" (collection {bk.qdrant_collection})" if bk.qdrant_collection != "fgsearch" else ""
    return f"qdrant at {where}{extra}"


class _ReadWriteLock:
    """Many readers or one writer (writers first). A thread may re-enter what it holds, and a
    thread that holds the only read lock may take the write lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()

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


class _GuardedIndex:
    """A library's vector index shared between threads: searches and lookups run under the
    library's read lock, changes (including a reload or a compaction, which swap the whole
    in-memory state) under its write lock, so no thread ever sees a half-loaded index."""

    _OWN = frozenset({"inner", "_rw"})

    def __init__(self, inner: VectorIndex, rw: _ReadWriteLock) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "_rw", rw)

    # Otherwise it is the backend to its users: isinstance, attributes and backend extras (path,
    # tier, _config, ...) all reach the wrapped index.
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN or name in type(self).__dict__:
            object.__setattr__(self, name, value)  # e.g. a test replacing a guarded method
        else:
            setattr(self.inner, name, value)

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

    def add(self, ids: Any, vectors: Any, *, upsert: bool = False, payload: Any = None) -> None:
        with self._rw.exclusive():
            self.inner.add(ids, vectors, upsert=upsert, payload=payload)

    def remove(self, ids: Any, *, missing: Any = "error") -> int:
        with self._rw.exclusive():
            return self.inner.remove(ids, missing=missing)

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


class Library:
    """A searchable image library. Open with :meth:`Library.open`; close (or use ``with``) when done.

    Readers (``read_only=True``) never block and are safe to share between threads; one writer at a
    time holds ``<library>/lock`` (a second gets :class:`~fgsearch.errors.LibraryLockedError`).
    Every search, ``status`` and ``doctor`` of a reader first picks up what the writer has committed
    (:meth:`refresh`, under a millisecond) and sees one consistent state (:meth:`consistent`); a
    writable library may be searched from other threads while it indexes.
    """

    def __init__(
        self,
        path: Path,
        catalog: Any,
        global_index: VectorIndex,
        region_index: VectorIndex,
        model: str,
        region_settings: RegionSettings,
        backend: BackendSettings,
        *,
        read_only: bool,
        lock: Any = None,
        device: str = "auto",
        encoder: Encoder | None = None,
    ) -> None:
        self.path = path
        self.catalog = catalog
        self.model = model
        self.region_settings = region_settings
        self.backend = backend
        self.read_only = read_only
        self.device = device
        self._lock = lock
        self._encoder = encoder
        self._given_encoder = encoder  # kept across a reopen after --reindex when it fits the new build
        self._rw = _ReadWriteLock()
        self.global_index = cast("VectorIndex", _GuardedIndex(global_index, self._rw))
        self.region_index = cast("VectorIndex", _GuardedIndex(region_index, self._rw))
        self._epoch = catalog.get_meta().get("library_id")
        self._build = _BuildProbe(path)

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        model: str | None = None,
        backend: str | BackendSettings | None = None,
        regions: RegionSettings | None = None,
        read_only: bool = False,
        create: bool = True,
        reindex: bool = False,
        device: str = "auto",
        encoder: Encoder | None = None,
        rebuild_damaged: bool = False,
    ) -> Library:
        """Open (or create) a library.

        ``path``: a directory; default ``$FGSEARCH_HOME/default`` or the user data directory.
        ``model``: registry name, ``hf-hub:`` id or checkpoint directory; ``None`` uses the library's
        own (``fg-clip-base`` for a new library). ``backend`` and ``regions`` apply when the library
        is created (or rebuilt with ``reindex=True``); passing different ones later is an error.
        ``rebuild_damaged`` (for ``doctor --repair``) replaces a damaged vector index by an empty one.
        """
        from fgsearch.catalog import WriteLock
        from fgsearch.library_paths import resolve_library_dir

        lib_dir = resolve_library_dir(path)
        if lib_dir.exists() and not lib_dir.is_dir():
            raise LibraryError(f"{lib_dir} is a file, not a library folder; give --library a folder (new or existing)")
        exists = (lib_dir / "catalog.sqlite").exists()
        if read_only and reindex:
            raise LibraryError("reindex needs a writable library")
        if not exists and (read_only or not create):
            raise LibraryError(f"no library at {lib_dir}; create one with `fgsearch index PHOTOS --library {lib_dir}`")
        if not exists:
            _check_new_library_dir(lib_dir)
        lock = None
        made_dir = not lib_dir.exists()
        if not read_only:
            try:
                lib_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise LibraryError(
                    f"cannot create the library folder {lib_dir}: {e.strerror or e}; "
                    "give --library a folder you can write"
                ) from e
            lock = WriteLock(lib_dir)
            lock.acquire()
        try:
            return cls._open_locked(
                lib_dir, exists, model, backend, regions, read_only, reindex, device, encoder, lock, rebuild_damaged
            )
        except BaseException:
            if lock is not None:
                lock.release()
            if made_dir:  # a library this call began to create and could not finish: leave nothing behind
                shutil.rmtree(lib_dir, ignore_errors=True)
            raise

    @classmethod
    def _open_locked(
        cls,
        lib_dir: Path,
        exists: bool,
        model: str | None,
        backend: str | BackendSettings | None,
        regions: RegionSettings | None,
        read_only: bool,
        reindex: bool,
        device: str,
        encoder: Encoder | None,
        lock: Any,
        rebuild_damaged: bool = False,
    ) -> Library:
        from fgsearch.catalog import Catalog

        bk = BackendSettings(kind=backend) if isinstance(backend, str) else backend
        if exists and not read_only and _unfinished(lib_dir):
            # created by a run that failed before recording its model (nothing was indexed): start over
            cls._wipe(lib_dir)
            exists = False
        if (not exists or reindex) and regions is not None and regions.proposer == "sidecar" and regions.sidecar:
            from fgsearch.regions import SidecarBoxes

            SidecarBoxes(regions.sidecar)  # a missing or malformed sidecar fails before anything is written
        if not exists and encoder is None:
            # load the model before writing anything: a model that fails to load leaves no library behind
            encoder = shared_encoder(model or DEFAULT_MODEL, device)
        if reindex and exists:
            # load the new model first: a model that fails to load must not cost the old library;
            # without --model, --backend or --regions the rebuilt library keeps the ones it had
            stored = _stored_settings(lib_dir)
            model = model or stored.get("model") or DEFAULT_MODEL
            bk = bk or stored.get("backend")
            regions = regions or stored.get("regions")
            encoder = encoder or shared_encoder(model, device)
            cls._wipe(lib_dir, stored.get("backend"))
            exists = False
        catalog = Catalog.open(lib_dir / "catalog.sqlite", create=not exists, read_only=read_only)
        try:
            meta = catalog.get_meta()
            if exists:
                stored_model = meta.get("model_source") or meta.get("model_name")
                stored_bk = BackendSettings.from_dict(meta.get("backend") or {})
                stored_regions = RegionSettings.from_dict(meta.get("regions") or {})
                if bk is not None and _where(bk, lib_dir) != _where(stored_bk, lib_dir):
                    raise LibraryError(
                        f"library {lib_dir} uses {_where(stored_bk, lib_dir)}; it cannot switch to "
                        f"{_where(bk, lib_dir)} (leave out --backend/--qdrant-* to use its own, "
                        "--reindex to rebuild it, or --library to choose another)"
                    )
                if regions is not None and regions != stored_regions and not read_only:
                    raise LibraryError(
                        f"library {lib_dir} was built with --regions {stored_regions.proposer} "
                        f"(max {stored_regions.max_regions}); use the same settings or --reindex to rebuild"
                    )
                model_ref = model or stored_model or DEFAULT_MODEL
                enc: Encoder | None = encoder
                if enc is None and not (read_only and model is None):
                    enc = shared_encoder(model_ref, device)
                if enc is not None:
                    catalog.check_model(_model_info(model_ref, enc))
                # a reader that was given no model loads the library's own on its first search
                bk, regions = stored_bk, stored_regions
            else:
                bk = bk or BackendSettings()
                regions = regions or RegionSettings()
                model_ref = model or DEFAULT_MODEL
                enc = encoder or shared_encoder(model_ref, device)
                catalog.init_library(_model_info(model_ref, enc), regions=regions.to_dict(), backend=bk.to_dict())
                cal = enc.calibration
                catalog.set_meta(
                    model_source=_model_source(model_ref),
                    library_id=_new_library_id(),
                    model_family=enc.family.name,
                    score_calibration=cal.to_dict() if cal is not None else None,
                )
            if exists and not read_only and not meta.get("library_id"):
                catalog.set_meta(library_id=_new_library_id())  # a library made before ids were recorded
            dim = enc.dim if enc is not None else int(meta["dim"])
            gidx, ridx = _open_indexes(lib_dir, bk, dim, read_only=read_only, rebuild_damaged=rebuild_damaged)
            if not exists:
                _start_empty(lib_dir, (gidx, ridx), rebuilt=reindex)
            if not read_only and enc is not None:  # approximate indexes tune search on text queries
                from fgsearch.indexes import Calibratable

                texts = _calibration_texts(enc)
                for idx in (gidx, ridx):
                    if isinstance(idx, Calibratable):
                        idx.set_calibration_queries(texts)
        except BaseException:
            catalog.close()
            raise
        lib = cls(
            lib_dir,
            catalog,
            gidx,
            ridx,
            model_ref,
            regions,
            bk,
            read_only=read_only,
            lock=lock,
            device=device,
            encoder=enc,
        )
        if not read_only:
            from fgsearch.ingest import recover

            recover(lib)
        return lib

    @staticmethod
    def _wipe(lib_dir: Path, backend: BackendSettings | None = None) -> None:
        """Remove what the library created (for --reindex): its catalog and the vector-index folders
        of its recorded backend. Anything else in the folder is left alone; the lock file stays."""
        for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
            (lib_dir / name).unlink(missing_ok=True)
        for parent, names in _owned_index_dirs(lib_dir, backend).items():
            for name in names:
                shutil.rmtree(parent / name, ignore_errors=True)
            with contextlib.suppress(OSError):  # only if now empty: never a folder with the user's files
                parent.rmdir()

    # ---- use -------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The library's model, loaded on first use (and checked against the one that built it)."""
        if self._encoder is None:
            enc = shared_encoder(self.model, self.device)
            self.catalog.check_model(_model_info(self.model, enc))
            self._encoder = enc
        return self._encoder

    def index(
        self,
        paths: str | os.PathLike[str] | list[str | os.PathLike[str]],
        options: IndexOptions | None = None,
        progress: ProgressFn | None = None,
        **kw: Any,
    ) -> IndexReport:
        """Index image folders (or files) incrementally; keyword arguments override IndexOptions fields."""
        from dataclasses import replace

        from fgsearch.ingest import IndexOptions, run_index

        if self.read_only:
            raise LibraryError(f"library {self.path} was opened read-only; open it without read_only to index")
        opts = replace(options or IndexOptions(), **kw)
        roots = [str(p) for p in paths] if isinstance(paths, list) else [str(paths)]
        with _storage_errors(self.path):
            return run_index(self, roots, opts, progress)

    def search(
        self,
        text: str | None = None,
        *,
        image: Any = None,
        box: Any = None,
        negative: str | None = None,
        k: int = 10,
        query: SearchQuery | None = None,
        **kw: Any,
    ) -> list[SearchHit]:
        """Ranked images (or regions with ``by="region"``) for a text and/or image query."""
        from dataclasses import replace

        from fgsearch.search import SearchQuery, run_search

        q = query or SearchQuery()
        q = replace(
            q,
            text=text if text is not None else q.text,
            image=image if image is not None else q.image,
            box=Box.coerce(box) if box is not None else q.box,
            negative=negative if negative is not None else q.negative,
            k=k,
            **kw,
        )
        return self.consistent(lambda: run_search(self, q))

    def consistent(self, read: Callable[[], T]) -> T:
        """Run ``read`` (searches, counts) against one state of the library.

        Within this process, index changes wait until ``read`` is done. A read-only library first
        picks up what the writer has committed since the last call, and if the library was rebuilt
        (``--reindex`` gives it a new id) while ``read`` ran, it reopens and runs ``read`` again:
        ids from one build are never looked up in another build's catalog.
        """
        for _ in range(_REBUILD_RETRIES):
            with _storage_errors(self.path):
                self.refresh()
                epoch = self._epoch
                try:
                    with self._rw.shared():
                        out = read()
                except _read_errors():
                    if not self.read_only or self._build.is_build(epoch):
                        raise
                    continue  # rebuilt under our feet: reopen and read again
                if not self.read_only or self._build.is_build(epoch):
                    return out
        raise LibraryError(f"library {self.path} keeps being rebuilt (--reindex) while it is read; try again later")

    def refresh(self) -> None:
        """Read-only libraries: pick up what the writer committed; reopen after a ``--reindex``.

        The writer makes a batch durable in both indexes before it confirms the batch in the
        catalog, and deletes from the catalog before it deletes vectors; a search keeps only the
        images whose vectors this view holds (:meth:`visible_contents`).
        """
        if not self.read_only:
            return
        from fgsearch.indexes import IndexBackendError

        with contextlib.suppress(IndexBackendError):  # e.g. a manifest gone in a rebuild: decided below
            if self._build.is_build(self._epoch) and not (
                self.global_index.has_updates() or self.region_index.has_updates()
            ):
                # Nothing new: no write lock, so requests in flight need not drain first
                # (bench_serve, 8 clients: lets the text encoding of some requests overlap the
                # searches of others).
                return
        with self._rw.exclusive():
            if self._build.is_build(self._epoch):
                try:
                    self.global_index.reload()
                    self.region_index.reload()
                    return
                except IndexBackendError:
                    if self._build.is_build(self._epoch):
                        raise
            self._reopen()

    def _reopen(self) -> None:
        """Swap in a fresh view of a library that was rebuilt (waits out a rebuild in progress)."""
        import time

        from fgsearch.indexes import IndexBackendError

        deadline = time.monotonic() + _REBUILD_WAIT_S
        while True:
            try:
                fresh = Library.open(self.path, read_only=True, device=self.device)
                break
            except (LibraryError, IndexBackendError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        logger.info("library %s was rebuilt; reopened it", self.path)
        old = (self.catalog, self.global_index, self.region_index)
        self.catalog = fresh.catalog
        self.global_index = cast("VectorIndex", _GuardedIndex(cast(Any, fresh.global_index).inner, self._rw))
        self.region_index = cast("VectorIndex", _GuardedIndex(cast(Any, fresh.region_index).inner, self._rw))
        self.model, self.region_settings, self.backend = fresh.model, fresh.region_settings, fresh.backend
        self._encoder = None  # loaded (and checked against the new build) on the next search
        if self._given_encoder is not None:  # e.g. serve's batching encoder: keep it if the model is the same
            with contextlib.suppress(LibraryError):
                fresh.catalog.check_model(_model_info(fresh.model, self._given_encoder))
                self._encoder = self._given_encoder
        self._epoch = fresh._epoch
        for idx in old[1:]:
            with contextlib.suppress(Exception):
                cast(Any, idx).inner.close()
        old[0].close()

    def visible_contents(self, ids: list[int], regions: dict[int, Any] | None = None) -> list[int]:
        """The content ids (images) whose vectors this library's indexes hold, in the given order.

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

    def status(self) -> dict[str, Any]:
        """Counts, model, backend, sizes and failures, as a JSON-ready dict."""
        return self.consistent(self._status)

    def _status(self) -> dict[str, Any]:
        counts = self.catalog.counts()
        meta = self.catalog.get_meta()
        return {
            "library": str(self.path),
            "model": meta.get("model_name"),
            "model_ref": meta.get("model_ref"),
            "dim": meta.get("dim"),
            "family": meta.get("model_family", "fgclip"),  # libraries from before families: FG-CLIP
            "score_calibration": meta.get("score_calibration"),
            "regions": self.region_settings.to_dict(),
            "backend": self.backend.to_dict(),
            "counts": counts,
            "vectors": {"global": self.global_index.count(), "regions": self.region_index.count()},
            "index": {
                "global": _stats_dict(self.global_index),
                "regions": _stats_dict(self.region_index),
            },
        }

    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        return list(self.catalog.failures(limit))

    def doctor(self, repair: bool = False) -> dict[str, Any]:
        """Check that catalog and indexes agree; with ``repair``, make them agree.

        Vectors the catalog does not know are removed; catalog rows whose vectors are missing are
        dropped and their files marked for re-indexing (the next ``index`` run embeds them again).
        A read-only check while another process indexes reports only disagreements that persist:
        a batch in flight (vectors written, catalog not yet confirmed) is not one.
        """
        found, counts = self.consistent(self._disagreements)
        if self.read_only and any(v.size for v in found.values()):
            found = self._persisting(found)
        damaged = self.consistent(self._damaged)
        report: dict[str, Any] = {"damaged_files": damaged["files"]}
        for name in ("global", "regions"):
            cat_n, idx_n = counts[name]
            report[name] = {
                "catalog": cat_n,
                "index": idx_n,
                "orphan_vectors": int(found[name + "_orphan"].size),
                "missing_vectors": int(found[name + "_missing"].size),
                "damaged_vectors": int(damaged[name].size),
            }
        ok = not any(v.size for v in found.values()) and not damaged["files"]
        if repair and not ok:
            if self.read_only:
                raise LibraryError("doctor --repair needs a writable library")
            with _storage_errors(self.path):
                self._repair(found, damaged)
        report["consistent"] = ok
        report["repaired"] = bool(repair and not ok)
        return report

    def _repair(self, found: dict[str, Any], damaged: dict[str, Any]) -> None:
        """Remove orphan vectors; drop images with missing or damaged vectors (their files are
        re-queued, so the next ``index`` run embeds them again); write clean snapshots."""
        import numpy as np

        self.global_index.remove(found["global_orphan"], missing="ignore")
        self.region_index.remove(found["regions_orphan"], missing="ignore")
        broken = set(map(int, found["global_missing"])) | set(map(int, damaged["global"]))
        regions_lost = list(map(int, np.union1d(found["regions_missing"], damaged["regions"])))
        broken |= set(self.catalog.contents_of_regions(regions_lost))
        if broken:
            _, region_ids = self.catalog.drop_contents(sorted(broken), keep_files_for_reindex=True)
            self.global_index.remove(np.asarray(sorted(broken), np.int64), missing="ignore")
            self.region_index.remove(np.asarray(region_ids, np.int64), missing="ignore")
        self.global_index.flush()
        self.region_index.flush()
        self.global_index.save()
        self.region_index.save()

    def _disagreements(self) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
        """Orphan vectors (ids the catalog has never reserved, or has deleted) and missing vectors
        (confirmed catalog ids absent from the index), per index. Read the indexes first: every id
        in them was reserved in the catalog before it was written."""
        import numpy as np

        idx = {"global": self.global_index.ids(), "regions": self.region_index.ids()}
        confirmed = self.catalog.all_vector_ids()
        known = self.catalog.all_vector_ids(include_pending=True)
        out: dict[str, Any] = {}
        counts: dict[str, tuple[int, int]] = {}
        for i, name in enumerate(("global", "regions")):
            ok_ids = np.asarray(confirmed[i], np.int64)
            out[name + "_orphan"] = np.setdiff1d(idx[name], np.asarray(known[i], np.int64))
            out[name + "_missing"] = np.setdiff1d(ok_ids, idx[name])
            counts[name] = (int(ok_ids.size), int(idx[name].size))
        return out, counts

    def _damaged(self) -> dict[str, Any]:
        """Snapshot files that fail their checksums, and the ids of each index whose stored vectors
        they make untrustworthy (every full read of the index files happens here)."""
        out: dict[str, Any] = {"files": []}
        for name, idx in (("global", self.global_index), ("regions", self.region_index)):
            files, ids = idx.verify()
            out["files"] += [f"{name}/{f}" for f in files]
            out[name] = ids
        return out

    def _persisting(self, found: dict[str, Any]) -> dict[str, Any]:
        """Keep only the disagreements that are still there after the writer (if any) has had time
        to finish the batch or deletion it was in the middle of."""
        import time

        import numpy as np

        deadline = time.monotonic() + _DOCTOR_SETTLE_S
        while any(v.size for v in found.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
            again, _ = self.consistent(self._disagreements)
            found = {k: np.intersect1d(v, again[k]) for k, v in found.items()}
        return found

    def close(self) -> None:
        for idx in (self.global_index, self.region_index):
            try:
                idx.close()
            except Exception as e:  # closing must release the lock even if an index is broken (or the disk full)
                logger.warning("could not close a vector index of %s cleanly: %s", self.path, e)
        self.catalog.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_REBUILD_RETRIES = 5
_DOCTOR_SETTLE_S = 2.0
_REBUILD_WAIT_S = 10.0


def _new_library_id() -> str:
    """A library's build id: a new one for every creation and every --reindex."""
    import uuid

    return uuid.uuid4().hex


def _library_id(lib_dir: Path) -> str | None:
    """The build id recorded in the library's catalog now: "" in the moment a --reindex replaces
    the catalog (no file, or no table yet); a damaged catalog raises."""
    import json
    import sqlite3

    try:
        con = _catalog_connection(lib_dir)
        try:
            row = con.execute("SELECT value FROM meta WHERE key='library_id'").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if not (lib_dir / "catalog.sqlite").is_file() or "no such table" in str(e):
            return ""
        raise
    return json.loads(row[0]) if row else None


class _BuildProbe:
    """Whether the catalog at a library's path is still the build (library id) a reader opened.

    The exact answer, :func:`_library_id`, opens a new sqlite connection: ~0.5 ms, and a search
    asks twice. A ``--reindex`` deletes the catalog and writes a new file, and a file's id, once
    set, never changes. So once the file is seen to hold the build asked about, the probe keeps its
    ``stat`` signature (device, inode, size, modification and change times) and answers later
    questions from one ``stat``: the same signature is the same, unchanged file. Any change (a
    checkpoint of the writer, a new file) is checked the exact way. The probe holds no descriptor
    of its own: closing one would drop the POSIX locks SQLite holds on that file in this process.
    """

    def __init__(self, lib_dir: Path) -> None:
        self._lib_dir = lib_dir
        self._path = lib_dir / "catalog.sqlite"
        self._known: tuple[str, tuple[int, ...]] | None = None  # (library id, signature of the file holding it)

    def _signature(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def is_build(self, epoch: str | None) -> bool:
        known = self._known
        if known is not None and known[0] == epoch and self._signature() == known[1]:
            return True
        before = self._signature()
        same = _library_id(self._lib_dir) == epoch
        # no id yet (a library older than ids: a writer sets one in place): always ask the catalog
        if same and epoch and before is not None and self._signature() == before:
            self._known = (epoch, before)  # unchanged while the id was read: it holds that id
        return same


@contextlib.contextmanager
def _storage_errors(lib_dir: Path) -> Iterator[None]:
    """Turn a full disk, a damaged catalog or an unwritable library into one line naming the fix."""
    import errno
    import sqlite3

    import sqlalchemy

    try:
        yield
    except (OSError, sqlite3.Error, sqlalchemy.exc.DBAPIError) as e:
        msg = str(getattr(e, "orig", None) or e)
        low = msg.lower()
        code = getattr(e, "errno", None)
        if code in (errno.ENOSPC, errno.EDQUOT) or "database or disk is full" in low:
            raise LibraryError(
                f"the disk of library {lib_dir} is full ({msg}); free some space and run the same command again "
                "(what was committed so far is kept)"
            ) from e
        if "malformed" in low or "not a database" in low:
            raise LibraryError(
                f"the catalog of library {lib_dir} is damaged ({msg}); restore it from a backup, or rebuild the "
                f"library with `fgsearch index PHOTOS --library {lib_dir} --reindex`"
            ) from e
        if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly database" in low:
            raise LibraryError(
                f"cannot write to library {lib_dir} ({msg}); it is read-only here: query it, or copy it to a "
                "writable folder to change it"
            ) from e
        raise


def _read_errors() -> tuple[type[Exception], ...]:
    """What a read of a library that is being rebuilt may raise (it is then read again)."""
    import sqlite3

    import sqlalchemy

    from fgsearch.indexes import IndexBackendError

    return (FgsearchError, IndexBackendError, sqlite3.Error, sqlalchemy.exc.SQLAlchemyError)


def _open_indexes(
    lib_dir: Path, bk: BackendSettings, dim: int, *, read_only: bool, rebuild_damaged: bool
) -> tuple[VectorIndex, VectorIndex]:
    """The global and region indexes. A damaged file-backed index is an error naming the repair;
    with ``rebuild_damaged`` (doctor --repair) it is replaced by an empty one, and the catalog's
    images without vectors are then re-queued by the doctor for the next ``index`` run."""
    from fgsearch.indexes import IndexCorruptError, IndexNotFoundError

    opened: list[VectorIndex] = []
    try:
        for name in ("global", "regions"):
            try:
                opened.append(_open_vector_index(lib_dir, bk, name, dim, read_only=read_only, create=not read_only))
            except IndexNotFoundError as e:
                raise LibraryError(
                    f"library {lib_dir} has lost its {name} vector index; run `fgsearch index` on its "
                    "folders (or `fgsearch doctor --repair`) to rebuild what is missing"
                ) from e
            except IndexCorruptError as e:
                folder = lib_dir / "index" / name
                if not (rebuild_damaged and bk.kind != "qdrant" and folder.is_dir()):
                    raise LibraryError(
                        f"library {lib_dir}: the {name} vector index is damaged ({e}); run "
                        f"`fgsearch doctor --repair --library {lib_dir}`, then `fgsearch index` on its folders"
                    ) from e
                logger.warning("replacing the damaged %s vector index of %s (%s)", name, lib_dir, e)
                shutil.rmtree(folder)
                opened.append(_open_vector_index(lib_dir, bk, name, dim, read_only=False, create=True))
    except BaseException:
        for idx in opened:
            idx.close()
        raise
    return opened[0], opened[1]


def _start_empty(lib_dir: Path, indexes: tuple[VectorIndex, VectorIndex], *, rebuilt: bool) -> None:
    """A new catalog starts its ids at 1, so vectors already in a (Qdrant) collection it is given
    would be taken for its images: a rebuild clears what its old build left there; a new library
    refuses a collection that holds vectors (another library's)."""
    for idx in indexes:
        n = idx.count()
        if not n:
            continue
        if not rebuilt:
            where = idx.stats().location
            for other in indexes:
                other.close()
            raise LibraryError(
                f"the vector store of the new library {lib_dir} already holds {n} vectors ({where}); "
                "give the library its own --qdrant-path or collection"
            )
        idx.remove(idx.ids(), missing="ignore")
        idx.flush()


def _stats_dict(index: VectorIndex) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    st = index.stats()
    return asdict(st) if is_dataclass(st) and not isinstance(st, type) else dict(st)


def _peek_catalog(lib_dir: Path, read: Callable[[Any], T], default: T) -> T:
    """``read(connection)`` on a read-only plain-sqlite connection to the library's catalog (cheap:
    no SQLAlchemy, no schema checks); ``default`` when the file cannot be read."""
    import sqlite3

    try:
        con = _catalog_connection(lib_dir)
        try:
            return read(con)
        finally:
            con.close()
    except sqlite3.Error:
        return default


def _catalog_connection(lib_dir: Path) -> Any:
    """A read-only plain-sqlite connection to the library's catalog (immutable where the folder
    cannot be written: a read-only mount or directory)."""
    import sqlite3

    from fgsearch.catalog import cannot_write_here, read_only_uri

    path = lib_dir / "catalog.sqlite"

    def connect(immutable: bool) -> Any:
        con = sqlite3.connect(read_only_uri(path, immutable=immutable), uri=True)
        try:
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # opening is lazy: fail here, not later
        except BaseException:
            con.close()
            raise
        return con

    try:
        return connect(immutable=False)
    except sqlite3.Error as e:
        if not cannot_write_here(e) or not path.is_file():
            raise
    return connect(immutable=True)


def _unfinished(lib_dir: Path) -> bool:
    """A catalog without a recorded model and without any image: a creation that did not finish.
    Unreadable files are not ours to judge (Catalog.open reports a damaged catalog clearly)."""

    def read(con: Any) -> bool:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            return False  # not a catalog of ours: never wiped
        keys = {r[0] for r in con.execute("SELECT key FROM meta")}
        if "schema_version" not in keys or "dim" in keys:
            return False
        return "contents" not in tables or not con.execute("SELECT 1 FROM contents LIMIT 1").fetchone()

    return _peek_catalog(lib_dir, read, False)


def _stored_settings(lib_dir: Path) -> dict[str, Any]:
    """The model source, backend and region settings recorded in an existing library's catalog
    (keys missing when unreadable)."""
    import json

    def read(con: Any) -> dict[str, Any]:
        keys = ("model_source", "model_name", "backend", "regions")
        marks = ",".join("?" * len(keys))
        return {k: json.loads(v) for k, v in con.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", keys)}

    meta: dict[str, Any] = _peek_catalog(lib_dir, read, {})
    out: dict[str, Any] = {}
    if meta.get("model_source") or meta.get("model_name"):
        out["model"] = meta.get("model_source") or meta.get("model_name")
    if isinstance(meta.get("backend"), dict):
        out["backend"] = BackendSettings.from_dict(meta["backend"])
    if isinstance(meta.get("regions"), dict):
        out["regions"] = RegionSettings.from_dict(meta["regions"])
    return out


#: What a library folder may hold before it becomes one (a failed creation leaves its lock file).
_NEW_LIBRARY_LEFTOVERS = {"lock", "catalog.sqlite-wal", "catalog.sqlite-shm"}


def _check_new_library_dir(lib_dir: Path) -> None:
    """A new library goes into a new or empty folder, never into a folder of the user's files
    (``--reindex`` later deletes what the library created there, so the two must not mix)."""
    try:
        entries = sorted(e.name for e in lib_dir.iterdir()) if lib_dir.is_dir() else []
    except OSError as e:
        raise LibraryError(f"cannot read the library folder {lib_dir}: {e.strerror or e}") from e
    others = [name for name in entries if name not in _NEW_LIBRARY_LEFTOVERS]
    if others:
        shown = ", ".join(others[:3]) + (f", ... ({len(others)} entries)" if len(others) > 3 else "")
        raise LibraryError(
            f"{lib_dir} is not empty ({shown}) and is not an fgsearch library; give --library a new "
            "or empty folder (e.g. --library PHOTOS-library)"
        )


def _owned_index_dirs(lib_dir: Path, backend: BackendSettings | None) -> dict[Path, list[str]]:
    """The vector-index folders a library with ``backend`` created inside ``lib_dir``, by parent.

    File-backed indexes count only when they hold an index manifest; an embedded Qdrant store
    counts only at the library's own default path (a ``--qdrant-path`` is the user's folder).
    """
    from fgsearch.indexes import MANIFEST

    out: dict[Path, list[str]] = {}
    names = ("global", "regions")
    kind = backend.kind if backend is not None else None
    if kind != "qdrant":
        out[lib_dir / "index"] = [n for n in names if (lib_dir / "index" / n / MANIFEST).is_file()]
    if (kind is None or kind == "qdrant") and not (backend and (backend.qdrant_path or backend.qdrant_url)):
        out[lib_dir / "qdrant"] = [n for n in names if (lib_dir / "qdrant" / n).is_dir()]
    return out


def _model_source(model_ref: str) -> str:
    """How to load the model again later: an absolute directory, or the name/hub id as given."""
    p = Path(model_ref).expanduser()
    return str(p.resolve()) if p.is_dir() else model_ref


def _calibration_texts(enc: Encoder) -> Callable[[], dict[str, Any]]:
    """The model's embeddings of 150 varied captions, computed on first use (an index build)."""
    things = "a dog|two children|a red car|an old man|a cup of coffee|a bicycle|a cat|a plate of pasta"
    things += "|a wooden boat|a woman in a blue dress|a birthday cake|a laptop|a horse|a street sign|a tent"
    where = "on a beach at sunset|in a snowy forest|on a kitchen table|next to a window|in a crowded market"
    where += "|under a bridge|at night under street lights|in a green field|on a white background|in a museum"
    captions = [f"{t} {w}" for t in things.split("|") for w in where.split("|")]
    cache: dict[str, Any] = {}
    return lambda: cache.setdefault("sets", {"text": enc.encode_texts(captions)})


def _model_info(model_ref: str, enc: Encoder) -> Any:
    from fgsearch.catalog import ModelInfo
    from fgsearch.model import checkpoint_fingerprint

    ref = enc.spec.fingerprint or enc.spec.revision or ""
    if not ref and enc.spec.local_dir:
        ref = checkpoint_fingerprint(Path(enc.spec.local_dir))
    return ModelInfo(name=enc.spec.name, ref=ref, dim=enc.dim, image_size=tuple(enc.spec.image_size or ()))
