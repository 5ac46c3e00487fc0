"""The health of a SQLite catalog file: SQLite's own checks, and what an error while using the
file means for the user (a full disk, a disk that fails to read, a damaged file).

``check_catalog`` runs ``PRAGMA quick_check`` (by default: every page of every table is read
and its structure checked; O(N), no index cross-check) or ``PRAGMA integrity_check`` (``full``:
also that every index holds exactly its table's rows) on a plain read-only connection, so a
catalog that :class:`~fgsearch.catalog.Catalog` cannot even open is still examined. Timings at
1M images are in docs/reliability.md (``bench/bench_doctor.py``).

A full disk is never damage: :func:`full_disk_message` names the disk (its mount point and the
space left) and the fix (free space, run the same command again); :func:`open_error_message`
tells a full disk, a failing disk and a damaged file apart, and only the last gets the repair.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgsearch.catalog.connect import cannot_write_here, read_only_uri
from fgsearch.diskfull import full_disk_message, is_full_disk, mount_point
from fgsearch.library_record import rebuild_command, repair_command

MAX_PROBLEMS = 20  # SQLite's own cap is 100; the first few say what is wrong


def open_error_message(catalog_file: Path, err: BaseException) -> str:
    """What an error opening or reading ``catalog_file`` means, and what to do: a full disk, a
    disk that cannot be read, or a damaged file (salvaged by ``doctor --repair``)."""
    lib_dir = catalog_file.parent
    msg = str(getattr(err, "orig", None) or err)
    if is_full_disk(err, lib_dir):
        return full_disk_message(lib_dir, err)
    low = msg.lower()
    if "disk i/o error" in low or "unable to open" in low:
        return (
            f"cannot read the catalog {catalog_file} ({msg}); the file may be intact: check that its disk "
            f"({mount_point(lib_dir)}) is mounted, readable and has space, then run the same command again"
        )
    return damaged_message(catalog_file, msg)


def damaged_message(catalog_file: Path, msg: str) -> str:
    """A damaged catalog: the salvage, then the rebuild as a last resort (both as pasteable commands).
    A file whose header is gone ("not a database") has nothing a salvage can read: the rebuild."""
    lib_dir = catalog_file.parent
    if "not a database" in msg.lower():
        return (
            f"catalog {catalog_file} is not a readable SQLite database ({msg}); restore it from a backup or "
            f"rebuild the library with `{rebuild_command(lib_dir)}`"
        )
    return (
        f"the catalog {catalog_file} is damaged ({msg}); run `{repair_command(lib_dir)}` to salvage what is "
        f"readable (or restore it from a backup; last resort: `{rebuild_command(lib_dir)}`)"
    )


@dataclass
class CatalogCheck:
    """What SQLite's check of a catalog file found (``problems`` empty: healthy)."""

    path: Path
    method: str  # "quick_check" | "integrity_check"
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    unreadable: bool = False  # the file could not be opened as a database at all
    full_disk: bool = False  # the check could not run because the disk is full (nothing is damaged)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "method": self.method,
            "ok": self.ok,
            "problems": list(self.problems),
            "seconds": round(self.seconds, 3),
            "unreadable": self.unreadable,
            "full_disk": self.full_disk,
        }


def _connect(catalog_file: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(read_only_uri(catalog_file), uri=True)
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        return con
    except sqlite3.Error as e:
        if not cannot_write_here(e) or not catalog_file.is_file():
            raise
    con = sqlite3.connect(read_only_uri(catalog_file, immutable=True), uri=True)
    con.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    return con


def check_catalog(catalog_file: Path, full: bool = False) -> CatalogCheck:
    """Run SQLite's ``quick_check`` (``full``: ``integrity_check``) on ``catalog_file``."""
    method = "integrity_check" if full else "quick_check"
    out = CatalogCheck(Path(catalog_file), method)
    t0 = time.perf_counter()
    try:
        con = _connect(out.path)
    except sqlite3.Error as e:
        out.full_disk = is_full_disk(e, out.path.parent)
        out.unreadable = not out.full_disk
        out.problems = [str(e)]
        out.seconds = time.perf_counter() - t0
        return out
    try:
        rows = con.execute(f"PRAGMA {method}({MAX_PROBLEMS})").fetchall()
        out.problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
    except sqlite3.Error as e:  # damage bad enough that the check itself stops
        out.full_disk = is_full_disk(e, out.path.parent)
        out.problems = [str(e)]
    finally:
        con.close()
    if not out.problems and out.path.stat().st_size == 0:
        out.problems = ["the file is empty (its records are lost)"]
        out.unreadable = True
    out.seconds = time.perf_counter() - t0
    return out


def check_postgres_catalog(catalog: Any) -> CatalogCheck:
    """A PostgreSQL catalog's check: the server answers and every catalog table can be read.

    PostgreSQL keeps its own pages consistent (WAL, checksums when the cluster has them); page
    damage there is the database administrator's to repair (``amcheck``, a restore), not fgsearch's,
    so this is a reachability and schema check, not SQLite's page walk."""
    from fgsearch.catalog.schema import metadata

    out = CatalogCheck(Path(catalog.location), "postgres")
    t0 = time.perf_counter()
    for table in sorted(metadata.tables):
        try:
            with catalog.reading() as con:
                con.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
        except Exception as e:
            out.problems.append(f"table {table}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    out.seconds = time.perf_counter() - t0
    return out
