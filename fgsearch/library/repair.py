"""``fgsearch doctor`` on a library folder: check the catalog file before anything opens it, salvage
a damaged one (``--repair``), then the doctor's agreement check and repair, then re-embed what
the salvage lost.

This works on the folder, not on an open :class:`~fgsearch.library.Library`: a damaged catalog may
not open at all, and the salvage replaces the catalog file, which no open library may hold.

Order of a repair of a damaged catalog:

1. SQLite's ``quick_check`` (``full``: ``integrity_check``) of ``catalog.sqlite``;
2. under the writer lock, :func:`fgsearch.catalog.salvage.salvage_catalog`: readable rows into a
   new catalog, the damaged file kept aside as ``catalog-damaged-<time>.sqlite``; settings the
   salvage lost (a damaged ``meta`` page) come back from the library's record (``rebuild.json``);
3. the library opens on the salvaged catalog; the doctor removes vectors of rows that were lost,
   and re-queues images whose vectors or region rows are incomplete;
4. an ``index`` run over the library's recorded folders embeds what was lost, and only that: every
   image whose row survived keeps its vectors; a file whose row was lost but whose image's row
   survived is recognised by its content hash and re-linked without embedding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fgsearch.errors import LibraryError
from fgsearch.library_record import read_record, rebuild_command, repair_command

logger = logging.getLogger(__name__)


def examine(
    path: str | os.PathLike[str] | None,
    *,
    repair: bool = False,
    full: bool = False,
    reembed: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Check a library (``fgsearch doctor``); with ``repair``, salvage and repair it.

    Returns the doctor's report (:func:`fgsearch.library.doctor.doctor`) with ``catalog_check``
    (what SQLite's check found before any repair), ``salvage`` (None, or what the salvage
    recovered and the counts ``images_recovered``, ``images_lost``, ``images_reembedded``) and
    ``advice`` (the command to run next, or None)."""
    from fgsearch.catalog.health import check_catalog
    from fgsearch.diskfull import full_disk_message
    from fgsearch.library.description import locate
    from fgsearch.library.lifecycle import check_library_dir
    from fgsearch.library_paths import resolve_library_dir

    if locate(path)[1] is not None:  # a PostgreSQL catalog: no file to check or salvage here
        return _doctor(locate(path)[0], repair=repair, full=full, salvage=None, reembed=reembed, device=device)
    lib_dir = resolve_library_dir(path)
    check_library_dir(lib_dir, read_only=not repair, create=False, reindex=False)
    check = check_catalog(lib_dir / "catalog.sqlite", full=full)
    if check.full_disk:
        raise LibraryError(full_disk_message(lib_dir, check.problems[0]))
    if check.unreadable and (lib_dir / "catalog.sqlite").stat().st_size == 0:
        raise LibraryError(
            f"catalog {lib_dir / 'catalog.sqlite'} is empty (its records are lost); rebuild the library with "
            f"`{rebuild_command(lib_dir)}`"
        )
    if check.unreadable and any("not a database" in m for m in check.problems):
        from fgsearch.catalog.health import damaged_message

        raise LibraryError(damaged_message(lib_dir / "catalog.sqlite", check.problems[0]))
    if not check.ok and not repair:
        return {
            "library": str(lib_dir),
            "catalog_check": check.to_dict(),
            "salvage": None,
            "consistent": False,
            "repaired": False,
            "advice": repair_command(lib_dir),
        }
    salvage = _salvage(lib_dir, device) if not check.ok else None
    report = _doctor(lib_dir, repair=repair, full=full, salvage=salvage, reembed=reembed, device=device)
    report["catalog_check"] = check.to_dict()
    return report


def _salvage(lib_dir: Path, device: str) -> dict[str, Any]:
    """Salvage the catalog under the writer lock; restore lost settings from the record."""
    from fgsearch.catalog import WriteLock
    from fgsearch.catalog.salvage import salvage_catalog
    from fgsearch.library.store import storage_errors

    lock = WriteLock(lib_dir)
    lock.acquire()
    try:
        with storage_errors(lib_dir):
            rep = salvage_catalog(lib_dir / "catalog.sqlite")
            if rep.meta_keys_lost:
                _restore_settings(lib_dir, rep.meta_keys_lost, device)
    finally:
        lock.release()
    return rep.to_dict()


def _restore_settings(lib_dir: Path, lost: list[str], device: str) -> None:
    """Settings a salvage could not read back, from the library's record: the model is loaded
    to record its fingerprint and dimension again (the check that no other model's vectors mix in)."""
    from fgsearch.catalog import Catalog
    from fgsearch.library.lifecycle import new_library_id
    from fgsearch.library.settings import model_info, model_source, shared_encoder

    rec = read_record(lib_dir)
    if not rec.get("model"):
        raise LibraryError(
            f"the salvaged catalog of {lib_dir} lost its settings ({', '.join(lost)}) and the library has no "
            f"record of them; rebuild it with `{rebuild_command(lib_dir)}` (name the model that built it)"
        )
    logger.warning("the salvaged catalog lost %s: restoring them from %s", ", ".join(lost), lib_dir / "rebuild.json")
    enc = shared_encoder(str(rec["model"]), device)
    with Catalog.open(lib_dir / "catalog.sqlite") as cat:
        meta = cat.get_meta()
        info = model_info(str(rec["model"]), enc)
        cat.init_library(info, regions=meta.get("regions") or rec.get("regions") or {},
                         backend=meta.get("backend") or rec.get("backend") or {})  # fmt: skip
        cal = enc.calibration
        cat.set_meta(
            model_source=model_source(str(rec["model"])),
            library_id=meta.get("library_id") or new_library_id(),
            model_family=enc.family_name,
            score_calibration=cal.to_dict() if cal is not None else None,
        )


def _doctor(
    lib_dir: Path, *, repair: bool, full: bool, salvage: dict[str, Any] | None, reembed: bool, device: str
) -> dict[str, Any]:
    from fgsearch.library import Library

    with Library.open(lib_dir, read_only=not repair, create=False, rebuild_damaged=repair, device=device) as lib:
        rep = lib.doctor(repair=repair, full=full, after_salvage=salvage is not None)
        rep["library"] = str(lib_dir)
        rep["salvage"] = salvage
        rep["advice"] = None
        if salvage is None:
            if rep.get("requeued_images"):
                from fgsearch.library_record import index_command

                rep["advice"] = index_command(lib_dir)
            return rep
        counts = lib.catalog.counts()
        salvage["images_recovered"] = counts["images"]
        salvage["images_lost"] = rep["global"]["orphan_vectors"] + rep["requeued_images"]
        folders = [f for f in read_record(lib_dir).get("folders") or [] if Path(f).is_dir()]
        if reembed and folders:
            run = lib.index(folders)
            salvage["images_reembedded"] = run.indexed
            salvage["files_relinked"] = run.reused
            salvage["folders"] = folders
        else:
            from fgsearch.library_record import index_command

            salvage["images_reembedded"] = 0
            rep["advice"] = index_command(lib_dir)
    return rep
