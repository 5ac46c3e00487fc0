"""A library's record of how to rebuild it, kept outside its catalog: ``<library>/rebuild.json``.

The catalog's ``meta`` table records the model, backend and region settings too, but a damaged or
lost catalog takes them along; then the advice fgsearch prints (``fgsearch index FOLDERS --library L
--model M --reindex``) would have to guess them, and a guessed model fails offline or mixes models.
So a library also writes this small JSON file: the model source, the backend and region settings,
and every folder an ``index`` run was given. It is rewritten whole (write a temporary file, then
rename), never edited in place, and only ever read for advice and for ``--reindex``/``doctor
--repair`` defaults: the catalog stays the authority while it can be read.

This module imports nothing else of fgsearch at import time, so the catalog (below the library)
can use it for its messages too.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RECORD_FILE = "rebuild.json"
FORMAT = 1


def record_path(lib_dir: Path) -> Path:
    return Path(lib_dir) / RECORD_FILE


def read_record(lib_dir: Path) -> dict[str, Any]:
    """The record of ``lib_dir``; ``{}`` when there is none or it cannot be read (it is advice only)."""
    try:
        data = json.loads(record_path(lib_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(lib_dir: Path, rec: dict[str, Any]) -> None:
    """Write ``rec`` as the record of ``lib_dir`` (a temporary file, fsync, rename); a full disk
    or an unwritable folder is a ``LibraryError`` naming it (the old record stays as it was)."""
    rec = {**rec, "format": FORMAT}
    path = record_path(lib_dir)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        from fgsearch.diskfull import full_disk_message, is_full_disk
        from fgsearch.errors import LibraryError

        if is_full_disk(e):
            raise LibraryError(full_disk_message(Path(lib_dir), e)) from e
        raise LibraryError(f"cannot write {path}: {e.strerror or e}; check the --library folder") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_record(lib_dir: Path, model: str, backend: dict[str, Any], regions: dict[str, Any]) -> None:
    """The record of a new build (a creation or a ``--reindex``): no folders yet, its runs add them."""
    write_record(lib_dir, {"model": model, "backend": backend, "regions": regions, "folders": []})


def record_run(lib_dir: Path, roots: list[str], model: str, backend: dict[str, Any], regions: dict[str, Any]) -> None:
    """Before an index run: add its folders (absolute) to the record, and fill in the build's
    settings where the record lacks them (a library made before records were kept). Writes only
    when something changes."""
    rec = read_record(lib_dir)
    folders = list(rec.get("folders") or [])
    for r in roots:
        f = os.path.abspath(os.path.expanduser(r))
        if f not in folders and os.path.exists(f):  # a folder that is not there is an error of the run
            folders.append(f)
    want = {"model": rec.get("model") or model, "backend": rec.get("backend") or backend,
            "regions": rec.get("regions") or regions, "folders": folders}  # fmt: skip
    if any(rec.get(k) != v for k, v in want.items()):
        write_record(lib_dir, {**rec, **want})


def rebuild_command(lib_dir: Path, model: str | None = None, folders: list[str] | None = None) -> str:
    """``fgsearch index FOLDERS --library L --model M --reindex``, with the library's own folders
    and model (from its record, else those given); ``PHOTOS``/``MODEL`` stand only for what was
    never recorded (a library made before records were kept)."""
    rec = read_record(lib_dir)
    model = rec.get("model") or model
    folders = list(rec.get("folders") or folders or [])
    where = " ".join(shlex.quote(f) for f in folders) if folders else "PHOTOS"
    return (
        f"fgsearch index {where} --library {shlex.quote(str(lib_dir))} "
        f"--model {shlex.quote(str(model)) if model else 'MODEL'} --reindex"
    )


def index_command(lib_dir: Path) -> str:
    """``fgsearch index FOLDERS --library L`` (the library's own folders: an incremental run)."""
    folders = list(read_record(lib_dir).get("folders") or [])
    where = " ".join(shlex.quote(f) for f in folders) if folders else "PHOTOS"
    return f"fgsearch index {where} --library {shlex.quote(str(lib_dir))}"


def repair_command(lib_dir: Path) -> str:
    """``fgsearch doctor --repair --library L``."""
    return f"fgsearch doctor --repair --library {shlex.quote(str(lib_dir))}"
