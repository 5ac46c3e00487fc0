"""Where an index run's files come from: local folders (:func:`fgsearch.ingest.plan.walk_roots`)
or object-store URLs through fsspec (``s3://``, ``gs://``, ``memory://``, ``file://``...).

A URL names one object or a prefix (a "folder"); every object under a prefix whose extension is
an image's is listed as a :class:`~fgsearch.scan.FileEntry` whose path is the full URL, with the
object's size and its modification time (0 where the store gives none: then only a size change
marks it changed). Objects are read through :func:`open_source` by the same guarded decoder,
size caps and failure records as local files (:class:`fgsearch.ingest.prepare.Preparer`).
fsspec is imported only when a URL is given; a protocol whose package is missing (``s3fs``,
``gcsfs``) is a one-line error naming the package.
"""

from __future__ import annotations

import fnmatch
import os
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from fgsearch.errors import InputError

if TYPE_CHECKING:
    from fgsearch.ingest.options import IndexOptions, IndexReport

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


def is_url(path: str) -> bool:
    """``scheme://...`` (an fsspec URL), as opposed to a local path."""
    return bool(_URL.match(path))


def open_source(path: str) -> BinaryIO:
    """Open a planned file for reading: a URL through fsspec, a local path with the guarded
    :func:`fgsearch.decode.open_regular` (regular files only, never a FIFO)."""
    if is_url(path):
        fs, key = _filesystem(path)
        return fs.open(key, "rb")
    from fgsearch.decode import open_regular

    return open_regular(path)


def source_exists(path: str) -> bool:
    """A planned file still there: a regular local file, or an object at a URL (one request)."""
    if not is_url(path):
        return os.path.isfile(path)
    fs, key = _filesystem(path)
    try:
        return bool(fs.isfile(key))
    except OSError:
        return True  # the store did not answer: keep the file rather than drop what may be there


def walk_urls(roots: list[str], opts: IndexOptions, exts: frozenset[str], report: IndexReport) -> list[tuple[str, Any]]:
    """(root, entry) for every image object under each URL root, each URL once, in name order;
    ``--include``/``--exclude`` globs match the name relative to the root as for folders."""
    from fgsearch.scan import FileEntry

    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for root in roots:
        fs, base = _filesystem(root)
        try:
            infos = fs.find(base, detail=True) if fs.isdir(base) else ({base: fs.info(base)} if fs.exists(base) else {})
        except OSError as e:
            raise InputError(f"cannot list {root}: {e}; check the URL and the store's credentials") from e
        found = filtered = 0
        for key in sorted(infos):
            info = infos[key]
            if info.get("type", "file") != "file" or not _wanted_ext(key, exts):
                continue
            rel = key[len(base) :].lstrip("/") if key != base else key.rsplit("/", 1)[-1]
            if not _selected(rel, opts):
                filtered += 1
                continue
            url = fs.unstrip_protocol(key)
            found += 1
            if url not in seen:
                seen.add(url)
                out.append((root, FileEntry(url, int(info.get("size") or 0), _mtime_ns(info))))
        if not found:
            report.warnings.append(
                f"--include/--exclude left no image under {root} ({filtered} image objects there did not match)"
                if filtered
                else f"no image objects under {root}; give a URL prefix that holds images"
            )
    return out


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as e:  # pragma: no cover - fsspec comes with torch and ray
        raise InputError(f"{url}: reading URLs needs fsspec; pip install fsspec") from e
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        scheme = url.split("://", 1)[0]
        raise InputError(
            f"{url}: no fsspec filesystem for {scheme}:// ({e}); install its package (e.g. s3fs, gcsfs)"
        ) from e


def _wanted_ext(key: str, exts: frozenset[str]) -> bool:
    name = key.rsplit("/", 1)[-1]
    return "." in name and "." + name.rsplit(".", 1)[-1].lower() in exts


def _selected(rel: str, opts: IndexOptions) -> bool:
    parts = rel.split("/")
    if not opts.hidden and any(p.startswith(".") for p in parts):
        return False
    if opts.include and not any(fnmatch.fnmatch(rel, g) for g in opts.include):
        return False
    return not any(fnmatch.fnmatch(rel, g) or any(fnmatch.fnmatch(p, g) for p in parts) for g in opts.exclude)


def _mtime_ns(info: dict[str, Any]) -> int:
    for key in _MTIME_KEYS:
        value = info.get(key)
        if isinstance(value, datetime):
            return int(value.timestamp() * 1e9)
        if isinstance(value, int | float) and value > 0:
            return int(value * 1e9) if value < 1e11 else int(value)
    return 0
