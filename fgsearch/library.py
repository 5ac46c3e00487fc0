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

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fgsearch.errors import LibraryError
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


class Library:
    """A searchable image library. Open with :meth:`Library.open`; close (or use ``with``) when done.

    Readers (``read_only=True``) never block and are safe to share between threads; one writer at a
    time holds ``<library>/lock`` (a second gets :class:`~fgsearch.errors.LibraryLockedError`).
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
        self.global_index = global_index
        self.region_index = region_index
        self.model = model
        self.region_settings = region_settings
        self.backend = backend
        self.read_only = read_only
        self.device = device
        self._lock = lock
        self._encoder = encoder
        self._search_lock = threading.Lock()

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
    ) -> Library:
        """Open (or create) a library.

        ``path``: a directory; default ``$FGSEARCH_HOME/default`` or the user data directory.
        ``model``: registry name, ``hf-hub:`` id or checkpoint directory; ``None`` uses the library's
        own (``fg-clip-base`` for a new library). ``backend`` and ``regions`` apply when the library
        is created (or rebuilt with ``reindex=True``); passing different ones later is an error.
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
        lock = None
        made_dir = not lib_dir.exists()
        if not read_only:
            lib_dir.mkdir(parents=True, exist_ok=True)
            lock = WriteLock(lib_dir)
            lock.acquire()
        try:
            return cls._open_locked(lib_dir, exists, model, backend, regions, read_only, reindex, device, encoder, lock)
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
            # without --model the rebuilt library keeps the model it had
            model = model or _stored_model(lib_dir) or DEFAULT_MODEL
            encoder = encoder or shared_encoder(model, device)
            cls._wipe(lib_dir)
            exists = False
        catalog = Catalog.open(lib_dir / "catalog.sqlite", create=not exists, read_only=read_only)
        try:
            meta = catalog.get_meta()
            if exists:
                stored_model = meta.get("model_source") or meta.get("model_name")
                stored_bk = BackendSettings.from_dict(meta.get("backend") or {})
                stored_regions = RegionSettings.from_dict(meta.get("regions") or {})
                if bk is not None and bk != stored_bk:
                    raise LibraryError(
                        f"library {lib_dir} uses backend {stored_bk.kind}; it cannot switch to {bk.kind} "
                        "(use --reindex to rebuild it, or --library to choose another)"
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
                catalog.set_meta(model_source=_model_source(model_ref))
            from fgsearch.indexes import IndexNotFoundError

            dim = enc.dim if enc is not None else int(meta["dim"])
            opened = []
            for name in ("global", "regions"):
                try:
                    opened.append(_open_vector_index(lib_dir, bk, name, dim, read_only=read_only, create=not read_only))
                except IndexNotFoundError as e:
                    for idx in opened:
                        idx.close()
                    raise LibraryError(
                        f"library {lib_dir} has lost its {name} vector index; run `fgsearch index` on its "
                        "folders (or `fgsearch doctor --repair`) to rebuild what is missing"
                    ) from e
            gidx, ridx = opened
            if not read_only and enc is not None:  # approximate indexes tune search on text queries
                texts = _calibration_texts(enc)
                gidx.set_calibration_queries(texts)
                ridx.set_calibration_queries(texts)
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
    def _wipe(lib_dir: Path) -> None:
        """Remove a library's catalog and local indexes (for --reindex); the lock file stays."""
        for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
            (lib_dir / name).unlink(missing_ok=True)
        for sub in ("index", "qdrant"):
            shutil.rmtree(lib_dir / sub, ignore_errors=True)

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
            box=box if box is not None else q.box,
            negative=negative if negative is not None else q.negative,
            k=k,
            **kw,
        )
        return run_search(self, q)

    def status(self) -> dict[str, Any]:
        """Counts, model, backend, sizes and failures, as a JSON-ready dict."""
        counts = self.catalog.counts()
        meta = self.catalog.get_meta()
        return {
            "library": str(self.path),
            "model": meta.get("model_name"),
            "model_ref": meta.get("model_ref"),
            "dim": meta.get("dim"),
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
        """
        import numpy as np

        cat_g, cat_r = self.catalog.all_vector_ids()
        idx_g, idx_r = self.global_index.ids(), self.region_index.ids()
        report: dict[str, Any] = {}
        for name, cat_ids, idx_ids in (("global", cat_g, idx_g), ("regions", cat_r, idx_r)):
            cat_set = np.asarray(cat_ids, np.int64)
            orphans = np.setdiff1d(idx_ids, cat_set)
            missing = np.setdiff1d(cat_set, idx_ids)
            report[name] = {
                "catalog": len(cat_set),
                "index": len(idx_ids),
                "orphan_vectors": len(orphans),
                "missing_vectors": len(missing),
            }
            report[name + "_missing_ids"] = missing
            report[name + "_orphan_ids"] = orphans
        ok = all(report[n]["orphan_vectors"] == 0 and report[n]["missing_vectors"] == 0 for n in ("global", "regions"))
        if repair and not ok:
            if self.read_only:
                raise LibraryError("doctor --repair needs a writable library")
            self.global_index.remove(report["global_orphan_ids"], missing="ignore")
            self.region_index.remove(report["regions_orphan_ids"], missing="ignore")
            broken = set(map(int, report["global_missing_ids"]))
            broken |= set(self.catalog.contents_of_regions(list(map(int, report["regions_missing_ids"]))))
            if broken:
                _, region_ids = self.catalog.drop_contents(sorted(broken), keep_files_for_reindex=True)
                self.global_index.remove(np.asarray(sorted(broken), np.int64), missing="ignore")
                self.region_index.remove(np.asarray(region_ids, np.int64), missing="ignore")
            self.global_index.flush()
            self.region_index.flush()
            self.global_index.save()
            self.region_index.save()
        for n in ("global", "regions"):
            for key in ("_missing_ids", "_orphan_ids"):
                report.pop(n + key)
        report["consistent"] = ok
        report["repaired"] = bool(repair and not ok)
        return report

    def close(self) -> None:
        for idx in (self.global_index, self.region_index):
            try:
                idx.close()
            except Exception:  # closing must release the lock even if an index is broken
                logger.exception("error while closing an index")
        self.catalog.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stats_dict(index: VectorIndex) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    st = index.stats()
    return asdict(st) if is_dataclass(st) and not isinstance(st, type) else dict(st)


def _peek_catalog(lib_dir: Path, read: Callable[[Any], T], default: T) -> T:
    """``read(connection)`` on a read-only plain-sqlite connection to the library's catalog (cheap:
    no SQLAlchemy, no schema checks); ``default`` when the file cannot be read."""
    import sqlite3
    from urllib.parse import quote

    try:
        con = sqlite3.connect(f"file:{quote(str(lib_dir / 'catalog.sqlite'))}?mode=ro", uri=True)
        try:
            return read(con)
        finally:
            con.close()
    except sqlite3.Error:
        return default


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


def _stored_model(lib_dir: Path) -> str | None:
    """The model source recorded in an existing library's catalog (None if unreadable)."""
    import json

    row = _peek_catalog(
        lib_dir,
        lambda con: con.execute(
            "SELECT value FROM meta WHERE key IN ('model_source', 'model_name') "
            "ORDER BY key = 'model_source' DESC LIMIT 1"
        ).fetchone(),
        None,
    )
    return json.loads(row[0]) if row else None


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
