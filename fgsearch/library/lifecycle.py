"""Creating, opening, rebuilding (``--reindex``) and wiping a library's store.

A library folder holds what the library created and nothing else::

    <library>/catalog.sqlite     files, contents (images), regions, settings  (SQLAlchemy)
    <library>/index/global/      one vector per distinct image (id = content id)   [file backends]
    <library>/index/regions/     one vector per region box    (id = region id)
    <library>/lock               the writer lock (flock; holds the writer's PID)
    <library>/rebuild.json       model, backend, regions and folders, for advice that outlives
                                 a damaged catalog (fgsearch.library_record)

or, with a PostgreSQL catalog (``--catalog postgresql+psycopg://...``), ``<library>/library.json``
(:mod:`fgsearch.library.description`) naming the database in place of ``catalog.sqlite``; the
writer lock is then an advisory lock in that database, and the vector-index folders (of a file
backend) stay in the library folder.

:func:`open_store` is the one place that decides, in order: the folder may be used; a creation
that never finished is started over; a model that fails to load costs nothing (it is loaded before
anything is written); the settings asked for agree with those recorded; the indexes open (a
damaged one is an error naming the repair, or replaced under ``rebuild_damaged``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fgsearch.errors import LibraryError
from fgsearch.indexes import INDEX_NAMES
from fgsearch.library.description import DESCRIPTION_FILE, CatalogRef, write_description
from fgsearch.library.settings import (
    DEFAULT_MODEL,
    BackendSettings,
    calibration_texts,
    model_info,
    model_source,
)
from fgsearch.library.store import Build, LibraryStore, damaged_index
from fgsearch.library_record import new_record, read_record, rebuild_command
from fgsearch.regions import RegionSettings

if TYPE_CHECKING:
    from fgsearch.catalog import Catalog
    from fgsearch.indexes import VectorIndex
    from fgsearch.library.reuse import Reuse
    from fgsearch.model import Encoder

logger = logging.getLogger(__name__)

CATALOG_FILES = ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm")
#: What a library folder may hold before it becomes one (a failed creation leaves its lock file).
NEW_LIBRARY_LEFTOVERS = {"lock", "catalog.sqlite-wal", "catalog.sqlite-shm", "library.json.tmp", "rebuild.json"}

EncoderFor = Callable[[str], "Encoder"]  # model reference -> the (shared) encoder


@dataclass(frozen=True)
class OpenRequest:
    """What the caller of ``Library.open`` asked for (``None``: the library's own, or the default)."""

    model: str | None = None
    backend: BackendSettings | None = None
    regions: RegionSettings | None = None
    read_only: bool = False
    reindex: bool = False
    rebuild_damaged: bool = False
    #: the PostgreSQL catalog (None: ``catalog.sqlite`` in the library folder)
    catalog: CatalogRef | None = None


def check_library_dir(
    lib_dir: Path, *, read_only: bool, create: bool, reindex: bool, catalog: CatalogRef | None = None
) -> bool:
    """Whether a library exists at ``lib_dir``; raises when the request cannot be served there."""
    if lib_dir.exists() and not lib_dir.is_dir():
        raise LibraryError(f"{lib_dir} is a file, not a library folder; give --library a folder (new or existing)")
    sqlite_here = (lib_dir / "catalog.sqlite").exists()
    if sqlite_here and catalog is not None:
        raise LibraryError(
            f"library {lib_dir} keeps its catalog in {lib_dir / 'catalog.sqlite'}; it cannot move to "
            f"{catalog.public} (leave out --catalog, or give --library a new folder)"
        )
    exists = sqlite_here or (lib_dir / DESCRIPTION_FILE).exists()
    if not exists and catalog is None and catalog_lost(lib_dir):
        if not reindex:
            raise LibraryError(
                f"library {lib_dir} has lost its catalog (catalog.sqlite) but keeps its vector files; "
                f"rebuild it, reusing them, with `{rebuild_command(lib_dir)}`"
            )
        exists = True  # rebuilt in place, reusing its recorded vectors
    if read_only and reindex:
        raise LibraryError("reindex needs a writable library")
    if not exists and (read_only or not create):
        raise LibraryError(f"no library at {lib_dir}; create one with `fgsearch index PHOTOS --library {lib_dir}`")
    if not exists:
        _check_new_library_dir(lib_dir)
    return exists


def catalog_lost(lib_dir: Path) -> bool:
    """A library whose catalog file is gone but whose record (``rebuild.json``) and vector-index
    folder remain: ``--reindex`` rebuilds it where it is."""
    from fgsearch.library_record import record_path

    return not (lib_dir / "catalog.sqlite").exists() and record_path(lib_dir).is_file() and (lib_dir / "index").is_dir()


def open_store(
    lib_dir: Path, exists: bool, req: OpenRequest, encoder: Encoder | None, encoder_for: EncoderFor, reopen: Any
) -> tuple[LibraryStore, Encoder | None]:
    """Open (creating or rebuilding as asked) the store of a library whose folder is checked and,
    for a writer, locked. Returns the store and the encoder loaded on the way (``None`` for an
    existing library given no model: the library's own loads on first use, so that a reader, or a
    writer that only repairs, never loads it)."""
    if exists and not req.read_only and _unfinished(lib_dir, req.catalog):
        # created by a run that failed before recording its model (nothing was indexed): start over
        wipe(lib_dir, catalog=req.catalog)
        exists = False
    req, encoder, rebuilt, reuse = _prepare_build(lib_dir, exists, req, encoder, encoder_for)
    exists = exists and not rebuilt
    catalog = _open_catalog(lib_dir, req.catalog, create=not exists, read_only=req.read_only)
    try:
        if exists:
            build, encoder = _check_existing(lib_dir, catalog, req, encoder, encoder_for)
        else:
            encoder = encoder or encoder_for(req.model or DEFAULT_MODEL)
            build = _init_catalog(catalog, req, encoder)
            if req.catalog is not None:  # the name every other machine opens the library by
                write_description(lib_dir, req.catalog, build.backend.to_dict(), model_source(build.model))
        dim = encoder.dim if encoder is not None else int(catalog.get_meta()["dim"])
        gidx, ridx = open_indexes(
            lib_dir, build.backend, dim, read_only=req.read_only, rebuild=req.rebuild_damaged, database=_database(req)
        )
        if not exists:
            _start_empty(lib_dir, (gidx, ridx), rebuilt=req.reindex)
        if not req.read_only:
            _describe_records(catalog, (gidx, ridx))
            _calibrate(_loader(encoder, encoder_for, build.model), (gidx, ridx))
    except BaseException:
        catalog.close()
        raise
    store = LibraryStore(lib_dir, catalog, gidx, ridx, build, read_only=req.read_only, reopen=reopen)
    store.reuse = reuse
    return store, encoder


def _describe_records(catalog: Catalog, indexes: tuple[VectorIndex, VectorIndex]) -> None:
    """File-backed indexes record what made their vectors (model, regions) with each snapshot, so
    that a rebuild without the catalog can tell whether they may be reused."""
    from fgsearch.library.reuse import record_meta

    meta = record_meta(catalog.get_meta())
    for idx in indexes:
        if getattr(idx, "keeps_records", False):
            cast(Any, idx).set_record_meta(meta)


def _open_catalog(lib_dir: Path, ref: CatalogRef | None, *, create: bool, read_only: bool) -> Catalog:
    """The library's catalog: ``catalog.sqlite`` in its folder, or the PostgreSQL database ``ref``."""
    from fgsearch.catalog import Catalog

    if ref is not None:
        return ref.open(lib_dir, create=create, read_only=read_only)
    return Catalog.open(lib_dir / "catalog.sqlite", create=create, read_only=read_only)


def _unfinished(lib_dir: Path, ref: CatalogRef | None) -> bool:
    """Whether the catalog is a creation that did not finish (see ``peek_unfinished``)."""
    from fgsearch.catalog import peek_unfinished

    if ref is None:
        return peek_unfinished(lib_dir / "catalog.sqlite")
    with ref.open(lib_dir, create=False, read_only=False) as cat:
        return "dim" not in cat.get_meta() and cat.counts()["images"] == 0


def _loader(encoder: Encoder | None, encoder_for: EncoderFor, model: str) -> Callable[[], Encoder]:
    """The encoder, or a function that loads the library's model when first called."""
    if encoder is not None:
        return lambda: encoder
    return lambda: encoder_for(model)


def _calibrate(load: Callable[[], Encoder], indexes: tuple[VectorIndex, VectorIndex]) -> None:
    """Approximate indexes tune their search breadth on text queries of this model (embedded on
    first use: an index build; a writer that builds nothing never loads the model for them)."""
    from fgsearch.indexes import Calibratable

    texts = calibration_texts(load)
    for idx in indexes:
        if isinstance(idx, Calibratable):
            idx.set_calibration_queries(texts)


def _prepare_build(
    lib_dir: Path, exists: bool, req: OpenRequest, encoder: Encoder | None, encoder_for: EncoderFor
) -> tuple[OpenRequest, Encoder | None, bool, Reuse | None]:
    """Before anything is written: the sidecar and the model of a new build must load. A
    ``--reindex`` keeps the model, backend and regions it is not given, then wipes the old build.
    Returns the request with those filled in, the encoder, whether the library was wiped, and (a
    library whose catalog is lost) the vectors its indexes recorded, read before the wipe."""
    from dataclasses import replace

    if (not exists or req.reindex) and req.regions is not None:
        _check_regions(req.regions)  # a missing or malformed sidecar fails before anything is written
    if not exists and encoder is None:
        encoder = encoder_for(req.model or DEFAULT_MODEL)  # a model that fails to load leaves no library behind
    if not (req.reindex and exists):
        return req, encoder, False, None
    from fgsearch.catalog import peek_meta

    stored = stored_settings(lib_dir, req.catalog)
    lost = req.catalog is None and not peek_meta(lib_dir / "catalog.sqlite", ("model_name",))
    req = replace(
        req,
        model=req.model or stored.get("model") or DEFAULT_MODEL,
        backend=req.backend or stored.get("backend"),
        regions=req.regions or stored.get("regions"),
    )
    encoder = encoder or encoder_for(req.model or DEFAULT_MODEL)  # must not cost the old library if it fails
    reuse = None
    if lost:  # the catalog is gone: reuse the vectors the indexes recorded (read before the wipe)
        from fgsearch.library.reuse import harvest

        backend = req.backend or stored.get("backend") or BackendSettings()
        reuse = harvest(lib_dir, backend, model_info(req.model or DEFAULT_MODEL, encoder), req.regions, encoder.dim)
    wipe(lib_dir, stored.get("backend"), catalog=req.catalog)
    return req, encoder, True, reuse


def _check_regions(regions: RegionSettings) -> None:
    from fgsearch.regions import make_proposer

    make_proposer(regions)  # e.g. a sidecar file that is missing or malformed


def _check_existing(
    lib_dir: Path, catalog: Catalog, req: OpenRequest, encoder: Encoder | None, encoder_for: EncoderFor
) -> tuple[Build, Encoder | None]:
    """An existing library's recorded settings, checked against what the caller asked for."""
    meta = catalog.get_meta()
    stored_model = meta.get("model_source") or meta.get("model_name")
    stored_bk = BackendSettings.from_dict(meta.get("backend") or {})
    stored_regions = RegionSettings.from_dict(meta.get("regions") or {})
    if req.backend is not None and req.backend.location(lib_dir) != stored_bk.location(lib_dir):
        raise LibraryError(
            f"library {lib_dir} uses {stored_bk.location(lib_dir)}; it cannot switch to "
            f"{req.backend.location(lib_dir)} (leave out --backend/--qdrant-* to use its own, "
            "--reindex to rebuild it, or --library to choose another)"
        )
    if req.regions is not None and req.regions != stored_regions and not req.read_only:
        raise LibraryError(
            f"library {lib_dir} was built with --regions {stored_regions.proposer} "
            f"(max {stored_regions.max_regions}); use the same settings or --reindex to rebuild"
        )
    model_ref = req.model or stored_model or DEFAULT_MODEL
    if encoder is None and req.model is not None:  # else the library's own, loaded on first use
        encoder = encoder_for(model_ref)
    if encoder is not None:
        catalog.check_model(model_info(model_ref, encoder))
    epoch = meta.get("library_id")
    if not req.read_only and not epoch:
        epoch = new_library_id()
        catalog.set_meta(library_id=epoch)  # a library made before ids were recorded
    return Build(model_ref, stored_regions, stored_bk, epoch), encoder


def _init_catalog(catalog: Catalog, req: OpenRequest, encoder: Encoder) -> Build:
    """Record a new build's model, backend and regions."""
    backend = req.backend or BackendSettings()
    regions = req.regions or RegionSettings()
    model_ref = req.model or DEFAULT_MODEL
    catalog.init_library(model_info(model_ref, encoder), regions=regions.to_dict(), backend=backend.to_dict())
    cal = encoder.calibration
    epoch = new_library_id()
    new_record(catalog.path.parent, model_source(model_ref), backend.to_dict(), regions.to_dict())
    catalog.set_meta(
        model_source=model_source(model_ref),
        library_id=epoch,
        model_family=encoder.family_name,
        score_calibration=cal.to_dict() if cal is not None else None,
    )
    return Build(model_ref, regions, backend, epoch)


def new_library_id() -> str:
    """A library's build id: a new one for every creation and every --reindex."""
    return uuid.uuid4().hex


def _database(req: OpenRequest) -> str | None:
    """The PostgreSQL catalog's URL as this process connects (with its password, if it has one):
    where a pgvector library without a url of its own keeps its tables (used, never recorded)."""
    if req.catalog is None:
        return None
    from fgsearch.catalog.postgres import connect_url

    return str(connect_url(req.catalog.url, req.catalog.password_env).render_as_string(hide_password=False))


def open_indexes(
    lib_dir: Path, bk: BackendSettings, dim: int, *, read_only: bool, rebuild: bool, database: str | None = None
) -> tuple[VectorIndex, VectorIndex]:
    """The global and region indexes. A damaged index in the library folder is an error naming the
    repair; with ``rebuild`` (doctor --repair) it is replaced by an empty one, and the catalog's
    images without vectors are then re-queued by the doctor for the next ``index`` run.
    ``database``: the library's PostgreSQL catalog (see :meth:`BackendSettings.open`)."""
    from fgsearch.indexes import IndexCorruptError, IndexNotFoundError

    opened: list[VectorIndex] = []
    try:
        for name in INDEX_NAMES:
            try:
                opened.append(bk.open(lib_dir, name, dim, read_only=read_only, create=not read_only, database=database))
            except IndexNotFoundError as e:
                raise LibraryError(
                    f"library {lib_dir} has lost its {name} vector index; run `fgsearch index` on its "
                    "folders (or `fgsearch doctor --repair`) to rebuild what is missing"
                ) from e
            except IndexCorruptError as e:
                folder = bk.owned_paths(lib_dir).get(name)
                if not (rebuild and bk.has("files") and folder is not None and folder.is_dir()):
                    raise damaged_index(lib_dir, e, name) from e
                logger.warning("replacing the damaged %s vector index of %s (%s)", name, lib_dir, e)
                shutil.rmtree(folder)
                opened.append(bk.open(lib_dir, name, dim, read_only=False, create=True))
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


def wipe(lib_dir: Path, backend: BackendSettings | None = None, *, catalog: CatalogRef | None = None) -> None:
    """Remove what the library created (for --reindex): its catalog (the file, or the tables of a
    PostgreSQL catalog: the description stays) and the vector-index folders of its recorded
    backend (of every backend when none is recorded). Anything else in the folder is left alone;
    the lock file stays."""
    if catalog is not None:
        with catalog.open(lib_dir, create=True, read_only=False) as cat:
            cat.drop_tables()
    for name in CATALOG_FILES:
        (lib_dir / name).unlink(missing_ok=True)
    for folder in _owned_index_dirs(lib_dir, backend):
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # only if now empty: never a folder with the user's files
            folder.parent.rmdir()


def _owned_index_dirs(lib_dir: Path, backend: BackendSettings | None) -> list[Path]:
    """The vector-index folders a library created inside ``lib_dir``."""
    if backend is not None:
        return list(backend.owned_paths(lib_dir).values())
    from fgsearch.indexes import backend_names

    return [p for kind in backend_names() for p in BackendSettings(kind).owned_paths(lib_dir).values()]


def stored_settings(lib_dir: Path, catalog: CatalogRef | None = None) -> dict[str, Any]:
    """The model source, backend and region settings recorded in an existing library's catalog, or
    in its record (``rebuild.json``) when the catalog cannot be read (keys missing when neither can)."""
    from fgsearch.catalog import peek_meta

    if catalog is not None:
        with catalog.open(lib_dir, create=False, read_only=True) as cat:
            meta = cat.get_meta()
    else:
        meta = peek_meta(lib_dir / "catalog.sqlite", ("model_source", "model_name", "backend", "regions"))
    if not meta:  # a damaged or lost catalog: the library's record outside it
        rec = read_record(lib_dir)
        meta = {"model_source": rec.get("model"), "backend": rec.get("backend"), "regions": rec.get("regions")}
    out: dict[str, Any] = {}
    if meta.get("model_source") or meta.get("model_name"):
        out["model"] = meta.get("model_source") or meta.get("model_name")
    if isinstance(meta.get("backend"), dict):
        out["backend"] = BackendSettings.from_dict(meta["backend"])
    if isinstance(meta.get("regions"), dict):
        out["regions"] = RegionSettings.from_dict(meta["regions"])
    return out


def _check_new_library_dir(lib_dir: Path) -> None:
    """A new library goes into a new or empty folder, never into a folder of the user's files
    (``--reindex`` later deletes what the library created there, so the two must not mix)."""
    try:
        entries = sorted(e.name for e in lib_dir.iterdir()) if lib_dir.is_dir() else []
    except OSError as e:
        raise LibraryError(f"cannot read the library folder {lib_dir}: {e.strerror or e}") from e
    others = [name for name in entries if name not in NEW_LIBRARY_LEFTOVERS]
    if others:
        shown = ", ".join(others[:3]) + (f", ... ({len(others)} entries)" if len(others) > 3 else "")
        raise LibraryError(
            f"{lib_dir} is not empty ({shown}) and is not an fgsearch library; give --library a new "
            "or empty folder (e.g. --library PHOTOS-library)"
        )
