"""The public entry point: :class:`Library` composes a library's parts and hands each operation
only what it uses.

``Library.open`` is the composition root: it checks and locks the folder, opens the store
(catalog + indexes, :mod:`fgsearch.library.lifecycle`) and keeps the encoder. ``index`` runs the
ingest pipeline (:func:`fgsearch.ingest.run_index`) on the store and the encoder; ``search`` runs
:func:`fgsearch.search.run_search` on the same two; ``doctor`` the checks of
:mod:`fgsearch.library.doctor`. No stage ever receives the ``Library`` itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fgsearch.boxes import Box
from fgsearch.errors import LibraryError
from fgsearch.library import doctor as doctor_mod
from fgsearch.library.description import CatalogRef, locate
from fgsearch.library.fastpath import FastPath, choose_encoder
from fgsearch.library.lifecycle import OpenRequest, check_library_dir, open_store
from fgsearch.library.settings import BackendSettings, fast_text_encoder, model_info, model_source, shared_encoder
from fgsearch.library.store import LibraryStore, storage_errors
from fgsearch.library_record import record_run
from fgsearch.regions import RegionSettings

if TYPE_CHECKING:
    import threading

    from fgsearch.catalog import Catalog
    from fgsearch.indexes import VectorIndex
    from fgsearch.ingest import IndexOptions, IndexReport, ProgressFn
    from fgsearch.ingest.runner import Mapper
    from fgsearch.model import Encoder
    from fgsearch.search import QueryInfo, SearchHit, SearchQuery

T = TypeVar("T")


class Library:
    """A searchable image library. Open with :meth:`Library.open`; close (or use ``with``) when done.

    Readers (``read_only=True``) never block and are safe to share between threads; one writer at a
    time holds ``<library>/lock`` (a second gets :class:`~fgsearch.errors.LibraryLockedError`).
    Every search, ``status`` and ``doctor`` of a reader first picks up what the writer has committed
    (under a millisecond) and sees one consistent state (:meth:`consistent`); a writable library may
    be searched from other threads while it indexes. The library records the model, region settings
    and backend that built it and refuses to mix vectors from another model.
    """

    def __init__(
        self,
        store: LibraryStore,
        *,
        lock: Any = None,
        device: str = "auto",
        encoder: Encoder | None = None,
        fast: FastPath | None = None,
    ) -> None:
        self.store = store
        self.device = device
        self._lock = lock
        self._encoder = encoder
        self._encoder_epoch = store.build.epoch
        self._given_encoder = encoder  # kept across a reopen after --reindex when it fits the new build
        #: a writer beside others on a shared vector store (see :meth:`open`); it indexes through claims
        self.shared_writer = False
        self._text_only = False
        self.fast = fast  # the runtime + precision asked for (None: fp32 PyTorch, no gate)
        self.encoder_path = "torch fp32"  # the path in use (set again when the model is loaded)
        self.notes: list[str] = []  # one line per fast path refused or not checked yet (say them)
        self._gate_pending = False
        self._sample_roots: list[str] = []
        self.gates_measured: dict[str, Any] = {}  # gate reports this object measured (a reader cannot record them)

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
        catalog: str | None = None,
        catalog_password_env: str | None = None,
        shared_writer: bool = False,
        text_only: bool = False,
        fast: FastPath | None = None,
    ) -> Library:
        """Open (or create) a library.

        ``path``: a directory; default ``$FGSEARCH_HOME/default`` or the user data directory; or the
        description file (``library.json``) of a library with a PostgreSQL catalog.
        ``catalog``: for a NEW library, a PostgreSQL URL (``postgresql+psycopg://USER@HOST/DB``) to
        keep the catalog in, recorded in ``<library>/library.json`` without its password (other
        processes take it from ``PGPASSWORD`` or the variable ``catalog_password_env`` names).
        ``shared_writer``: a writer of a library with a PostgreSQL catalog and a vector store every
        machine reaches, that indexes beside other such writers (they split the work with
        :class:`fgsearch.catalog.WorkQueue`); the default writer indexes alone.
        ``model``: registry name, ``hf-hub:`` id or checkpoint directory; ``None`` uses the library's
        own (``fg-clip-base`` for a new library). ``backend`` (a kind, or kind + options) and
        ``regions`` apply when the library is created (or rebuilt with ``reindex=True``); passing
        different ones later is an error. ``rebuild_damaged`` (for ``doctor --repair``) replaces a
        damaged vector index by an empty one. ``text_only``: the caller encodes texts only (a text
        query): the model's fast text tower is used where it was prepared and passed its check
        (``fgsearch index --fast-text``; :mod:`fgsearch.model.fast_text`), without loading torch.
        ``fast`` (a runtime + precision) puts a fast path behind the quality gate
        (:mod:`fgsearch.library.fastpath`); ``None`` runs fp32 PyTorch.
        """
        if shared_writer and (read_only or reindex):
            raise LibraryError("a shared writer neither reads only nor rebuilds (--reindex): run those alone")
        lib_dir, ref = _catalog_of(path, catalog, catalog_password_env)
        # a writer's fast path is checked before anything is created or locked (bf16 asked on a CPU
        # without it is an error); a reader's when it first encodes (a text query on the fast text
        # tower never asks, so it never imports torch)
        gated = not read_only and encoder is None and fast is not None and bool(fast.candidates(device))
        exists = check_library_dir(lib_dir, read_only=read_only, create=create, reindex=reindex, catalog=ref)
        bk = BackendSettings(kind=backend) if isinstance(backend, str) else backend
        req = OpenRequest(model, bk, regions, read_only, reindex, rebuild_damaged, ref)
        made_dir = not lib_dir.exists()
        lock = None if read_only else _lock_writer(lib_dir, ref, shared=shared_writer)
        try:
            store, enc = open_store(lib_dir, exists, req, encoder, lambda m: shared_encoder(m, device), _reopen_reader)
            if shared_writer and store.build.backend.has("files"):
                raise LibraryError(
                    f"library {lib_dir} keeps its vectors in {store.build.backend.location(lib_dir)}, which only "
                    "one machine writes; index it with one writer (leave out shared_writer)"
                )
            if not read_only and not shared_writer:  # shared writers undo a dead one's work by its claims
                doctor_mod.recover(store)
        except BaseException:
            if lock is not None:
                lock.release()
            if made_dir:  # a library this call began to create and could not finish: leave nothing behind
                shutil.rmtree(lib_dir, ignore_errors=True)
            raise
        if gated:
            enc = None  # the fp32 model loaded on the way is the gate's reference; the gate picks
        lib = cls(store, lock=lock, device=device, encoder=enc, fast=fast)
        lib._given_encoder = encoder
        lib.shared_writer = shared_writer
        lib._text_only = text_only
        return lib

    # ---- the parts, for callers that need them ---------------------------------------------
    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def read_only(self) -> bool:
        return self.store.read_only

    @property
    def catalog(self) -> Catalog:
        return self.store.catalog

    @property
    def global_index(self) -> VectorIndex:
        return self.store.global_index

    @property
    def region_index(self) -> VectorIndex:
        return self.store.region_index

    @property
    def model(self) -> str:
        return self.store.build.model

    @property
    def region_settings(self) -> RegionSettings:
        return self.store.build.regions

    @property
    def backend(self) -> BackendSettings:
        return self.store.build.backend

    @property
    def encoder(self) -> Encoder:
        """The library's model, loaded on first use (and checked against the build that made it)."""
        build = self.store.build
        if self._encoder is not None and self._encoder_epoch == build.epoch:
            return self._encoder
        enc = None
        if self._given_encoder is not None:  # e.g. serve's batching encoder: kept if the model is the same
            with contextlib.suppress(LibraryError):
                self.store.catalog.check_model(model_info(build.model, self._given_encoder))
                enc = self._given_encoder
        refused: list[str] = []  # a fast text tower prepared but refused or damaged: said, then torch
        if enc is None and self._text_only and self.device in ("auto", "cpu"):
            enc = fast_text_encoder(build.model, refused)
        if enc is None:
            enc = self._choose(build.model)
            self.store.catalog.check_model(model_info(build.model, enc))
            self.notes = [*self.notes, *refused]
        self._encoder, self._encoder_epoch = enc, build.epoch
        return enc

    def _choose(self, model: str) -> Encoder:
        """fp32 PyTorch, or the fast path asked for once it passed the gate (recorded or measured)."""
        if self.fast is None or not self.fast.candidates(self.device):
            enc = shared_encoder(model, self.device)
            self.encoder_path = f"torch {enc.precision}"
            return enc
        meta = self.catalog.get_meta()
        recorded = {**(meta.get("gate") or {}), **self.gates_measured}
        choice = choose_encoder(
            self.fast,
            self.device,
            str(meta.get("model_ref") or ""),
            recorded,
            self._sample_images,
            lambda precision, runtime: shared_encoder(model, self.device, precision, runtime),
        )
        measured = {k: r.to_dict() for k, r in choice.measured.items()}
        self.gates_measured.update(measured)
        if measured and not self.read_only:
            self.catalog.set_meta(gate={**(meta.get("gate") or {}), **measured})
        self.encoder_path, self.notes, self._gate_pending = choice.label, choice.notes, choice.pending
        return choice.encoder

    def _sample_images(self, n: int) -> list[Any]:
        """Up to ``n`` of the library's own images, spread over it (else from the folders being indexed)."""
        from fgsearch.library.fastpath import read_sample

        ids = sorted(self.catalog.all_vector_ids()[0])
        step = max(1, len(ids) // n) if ids else 1
        paths = [r.path for r in self.catalog.contents_by_ids(ids[::step][:n])]
        return read_sample(paths, n, self._sample_roots)

    # ---- operations ------------------------------------------------------------------------
    def index(
        self,
        paths: str | os.PathLike[str] | list[str | os.PathLike[str]],
        options: IndexOptions | None = None,
        progress: ProgressFn | None = None,
        mapper: Mapper | None = None,
        **kw: Any,
    ) -> IndexReport:
        """Index image folders, files or object-store URLs incrementally; keyword arguments override
        IndexOptions fields. ``mapper``: where the prepare and embed stages run (default: threads
        here; ``fgsearch.ingest.ray_runner.RayMapper(RayOptions(...))``: a Ray cluster)."""
        from fgsearch.ingest import IndexOptions, IndexReport, run_index

        if self.read_only:
            raise LibraryError(f"library {self.path} was opened read-only; open it without read_only to index")
        if self.shared_writer:
            raise LibraryError(
                f"library {self.path} was opened as a shared writer, which takes its work from "
                "fgsearch.catalog.WorkQueue; Library.index plans and indexes alone (open it without shared_writer)"
            )
        opts = replace(options or IndexOptions(), **kw)
        roots = [str(p) for p in paths] if isinstance(paths, list) else [str(paths)]
        with storage_errors(self.path):
            opts.check()  # bad options fail before the heal step writes anything
            build = self.store.build  # recorded outside the catalog, for advice that must outlive it
            record_run(self.path, roots, model_source(build.model), build.backend.to_dict(), build.regions.to_dict())
            self._sample_roots = roots  # a library without images yet: the gate samples these folders
            encoder = self.encoder
            if self._gate_pending:
                self._encoder = None
                encoder = self.encoder
            warning = doctor_mod.heal(self.store)  # catalog and indexes agree before a run adds to them
            report = IndexReport(warnings=[warning] if warning else [])
            report.warnings += self.notes
            report = run_index(self.store, encoder, roots, opts, progress, report, mapper)
            made = list(self.catalog.get_meta().get("precisions") or [])
            if report.indexed and self.encoder_path not in made:
                self.catalog.set_meta(precisions=[*made, self.encoder_path])
            return report

    def index_shared(
        self,
        paths: str | os.PathLike[str] | list[str | os.PathLike[str]],
        options: IndexOptions | None = None,
        progress: ProgressFn | None = None,
        *,
        lease_s: float = 300.0,
    ) -> IndexReport:
        """Index beside the library's other shared writers (``shared_writer=True``, on any machine):
        queue what changed under ``paths`` and take batches of the common work until none is left
        (see :mod:`fgsearch.ingest.shared`; a batch held longer than ``lease_s`` seconds by a writer
        that died is taken over). Deletions are swept by a lone ``index`` run, not here."""
        from fgsearch.catalog import WorkQueue
        from fgsearch.ingest import IndexOptions
        from fgsearch.ingest.shared import run_shared

        if not self.shared_writer:
            raise LibraryError(
                f"library {self.path} was opened as its lone writer; index_shared is for shared writers "
                "(open it with shared_writer=True), index for a lone one"
            )
        opts = options or IndexOptions()
        roots = [str(p) for p in paths] if isinstance(paths, list) else [str(paths)]
        with storage_errors(self.path):
            opts.check()
            queue = WorkQueue.open(self.catalog, create=True)
            return run_shared(self.store, self.encoder, roots, opts, queue, lease_s=lease_s, progress=progress)

    def search(
        self,
        text: str | None = None,
        *,
        image: Any = None,
        box: Any = None,
        negative: str | None = None,
        k: int | None = None,
        query: SearchQuery | None = None,
        info: QueryInfo | None = None,
        search_lock: threading.Lock | None = None,
        **kw: Any,
    ) -> list[SearchHit]:
        """Ranked images (or regions with ``by="region"``) for a text and/or image query.

        ``query`` gives every setting at once (the keywords override its fields); ``info``, when
        given, receives what the search did (text path, truncation, timings); ``search_lock`` is
        held for the search half only (a server encodes concurrent queries together)."""
        from fgsearch.search import SearchQuery, run_search, validate_query

        q = query or SearchQuery()
        q = replace(
            q,
            text=text if text is not None else q.text,
            image=image if image is not None else q.image,
            box=Box.coerce(box) if box is not None else q.box,
            negative=negative if negative is not None else q.negative,
            k=k if k is not None else (q.k if query is not None else 10),
            **kw,
        )

        def run() -> list[SearchHit]:
            validate_query(self.store, q)  # first: a query refused costs no model load
            return run_search(self.store, self.encoder, q, info, search_lock=search_lock)

        return self.consistent(run)

    def consistent(self, read: Callable[[], T]) -> T:
        """Run ``read`` against one state of the library (see :meth:`LibraryStore.consistent`)."""
        return self.store.consistent(read)

    def refresh(self) -> None:
        """Read-only libraries: pick up what the writer committed; reopen after a ``--reindex``."""
        self.store.refresh()

    def visible_contents(self, ids: list[int], regions: dict[int, Any] | None = None) -> list[int]:
        return self.store.visible_contents(ids, regions)

    def status(self) -> dict[str, Any]:
        """Counts, model, backend, sizes and failures, as a JSON-ready dict."""
        return self.consistent(self._status)

    def _status(self) -> dict[str, Any]:
        from fgsearch.model.gate import GateReport
        from fgsearch.model.loading import registry_name

        meta = self.catalog.get_meta()
        counts = self.catalog.counts()
        return {
            "library": str(self.path),
            "catalog": self.catalog.location,  # the file, or the database URL without its password
            "model": registry_name(meta.get("model_name"), meta.get("model_ref")),  # old: "demo-model"
            "model_ref": meta.get("model_ref"),
            "dim": meta.get("dim"),
            "family": meta.get("model_family", "fgclip"),  # libraries from before families: FG-CLIP
            "score_calibration": meta.get("score_calibration"),
            "precisions": meta.get("precisions"),  # the paths that made the vectors (None: before they were recorded)
            "gate": [GateReport.from_dict(r).line() for r in (meta.get("gate") or {}).values()],
            "regions": self.region_settings.to_dict(),
            "backend": self.backend.to_dict(),
            "store": self.backend.location(self.path),  # where the vectors are, as people name it
            "counts": counts,
            "pending": doctor_mod.pending(self.store, counts),
            "vectors": {"global": self.global_index.count(), "regions": self.region_index.count()},
            "index": (index := {"global": _stats_dict(self.global_index), "regions": _stats_dict(self.region_index)}),
            "below_goal": doctor_mod.recall_below_goal({k: v.get("params") or {} for k, v in index.items()}),
        }

    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        return list(self.catalog.failures(limit))

    def doctor(self, repair: bool = False, *, full: bool = False, after_salvage: bool = False) -> dict[str, Any]:
        """Check the catalog file and that catalog and indexes agree; with ``repair``, make them agree
        (see :func:`fgsearch.library.doctor.doctor`; a damaged catalog is salvaged on the folder,
        before a library opens it: :func:`fgsearch.library.repair.examine`)."""
        return doctor_mod.doctor(self.store, repair, full=full, after_salvage=after_salvage)

    def close(self) -> None:
        self.store.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _catalog_of(
    path: str | os.PathLike[str] | None, catalog: str | None, password_env: str | None
) -> tuple[Path, CatalogRef | None]:
    """The library folder and its PostgreSQL catalog: the one its description names, or the one
    ``catalog`` asks for (a new library; an existing one must name the same database)."""
    from fgsearch.catalog.postgres import is_postgres_url, public_url

    lib_dir, described = locate(path)
    if catalog is None:
        return lib_dir, described
    if not is_postgres_url(catalog):
        raise LibraryError(
            f"--catalog takes a PostgreSQL URL (postgresql+psycopg://USER@HOST:PORT/DATABASE), got "
            f"{catalog[:40]!r}; leave it out for the SQLite catalog in the library folder"
        )
    ref = CatalogRef(catalog, password_env or (described.password_env if described else None))
    if described is not None and not described.same_database(ref):
        raise LibraryError(
            f"library {lib_dir} keeps its catalog in {described.public}; it cannot move to {public_url(catalog)} "
            "(leave out --catalog, or give --library a new folder)"
        )
    return lib_dir, ref


def _lock_writer(lib_dir: Path, ref: CatalogRef | None, *, shared: bool) -> Any:
    """The writer lock: the folder's (SQLite catalog), or an advisory lock in the PostgreSQL catalog."""
    if ref is None:
        if shared:
            raise LibraryError(
                f"library {lib_dir} has an SQLite catalog, which one writer uses; shared writers need a "
                "PostgreSQL catalog (create the library with --catalog postgresql+psycopg://...)"
            )
        return _lock_folder(lib_dir)
    lock = ref.lock(lib_dir, shared=shared)
    lock.acquire()  # first: a database that cannot be reached leaves no folder behind
    try:
        lib_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        lock.release()
        raise LibraryError(
            f"cannot create the library folder {lib_dir}: {e.strerror or e}; give --library a folder you can write"
        ) from e
    return lock


def _lock_folder(lib_dir: Path) -> Any:
    """Create the library folder if needed and take its writer lock."""
    from fgsearch.catalog import WriteLock

    try:
        lib_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LibraryError(
            f"cannot create the library folder {lib_dir}: {e.strerror or e}; give --library a folder you can write"
        ) from e
    lock = WriteLock(lib_dir)
    lock.acquire()
    return lock


def _reopen_reader(lib_dir: Path) -> LibraryStore:
    """A fresh read-only store of a library that was rebuilt (its model is checked on next use)."""
    lib_dir, ref = locate(lib_dir)
    exists = check_library_dir(lib_dir, read_only=True, create=False, reindex=False)
    req = OpenRequest(read_only=True, catalog=ref)
    store, _ = open_store(lib_dir, exists, req, None, _no_encoder, _reopen_reader)
    return store


def _no_encoder(model: str) -> Encoder:
    raise LibraryError(f"a reader reopening a rebuilt library loads no model here ({model})")


def _stats_dict(index: VectorIndex) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(index.stats())
