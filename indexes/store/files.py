"""The files of a journaled index directory: manifest, atomic writes, ``.npy`` snapshots, digests.

Every write that must survive a crash goes through here: a temp file, fsync, rename, directory
fsync. Snapshot files are recorded in the manifest with their size and SHA-256 (and the vectors
with a CRC-32 per block of rows) so that damage can be detected and localised.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexCorruptError, IndexNotFoundError
from ..faults import faults

FORMAT_VERSION = 2  # 2: snapshots may carry a records file (per-row bytes a library rebuilds from)
READABLE_FORMATS = (1, 2)  # format 1: the same layout without records
MANIFEST = "manifest.json"
LOCK = "LOCK"
CHECK_BLOCK_ROWS = 4096  # vector rows per CRC-32 in the manifest
_HASH_CHUNK = 1 << 22


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and new files in it survive a crash."""
    fsync_file(path)


def fsync_file(path: Path) -> None:
    """fsync a file (or a directory) by path: opened read-only, which is enough for fsync."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, directory fsync."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    faults.reach("store.before_rename", path)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_manifest(path: Path) -> dict[str, Any]:
    """Load ``manifest.json`` of the index at ``path``."""
    mpath = path / MANIFEST
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        raise IndexNotFoundError(f"no index at {path} ({MANIFEST} missing); create one with create_index()") from None
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise IndexCorruptError(f"{mpath} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        raise IndexCorruptError(f"{mpath}: unsupported index format {manifest.get('format')!r}")
    return manifest


def write_npy(path: Path, shape: tuple[int, ...], dtype: str, chunks: Iterator[np.ndarray]) -> None:
    """Stream chunks into a .npy file via a temp file, fsync and rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
            faults.reach("store.snapshot_chunk", path)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_npy(path: Path, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise IndexCorruptError(f"{path} is damaged ({e})") from e
    if arr.dtype != np.dtype(dtype) or arr.shape != shape:
        raise IndexCorruptError(f"{path}: expected {dtype} {shape}, found {arr.dtype} {arr.shape}")
    return arr


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file (what the manifest records for each snapshot file)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def release_pages(arr: np.ndarray) -> None:
    """Drop the pages of a read-only memory-mapped array from this process (they stay in the page
    cache; the next read maps them again). A pass over a whole snapshot (a compaction's copy, its
    CRCs, a calibration's exact search) releases as it goes, so the process's resident memory holds
    one block of the file, not all of it (issue 24: the 1M build's peak). No-op for other arrays."""
    m = getattr(arr, "_mmap", None)
    if isinstance(m, mmap.mmap) and hasattr(m, "madvise") and not m.closed:
        m.madvise(mmap.MADV_DONTNEED)


def block_crcs(vecs: np.ndarray, rows: int = CHECK_BLOCK_ROWS) -> list[int]:
    """CRC-32 of each block of ``rows`` vector rows: localises damage to the ids it affects."""
    out = []
    for s in range(0, len(vecs), rows):
        out.append(zlib.crc32(np.ascontiguousarray(vecs[s : s + rows]).tobytes()))
        if s % (16 * rows) == 0:
            release_pages(vecs)
    release_pages(vecs)
    return out


def check_snapshot(path: Path, m: dict[str, Any], ids: np.ndarray, vecs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The snapshot files of manifest ``m`` in ``path`` whose SHA-256 does not match, and the ids
    (``ids``/``vecs``: the snapshot's rows) whose vector rows are damaged: all snapshot ids when the
    ids file or a backend file is (a damaged records file damages no vector). Journals are
    covered by their per-record CRCs; generations written before checksums were recorded have
    nothing to compare and pass."""
    bad = [
        name
        for name, digest in (m.get("checksums") or {}).items()
        if not (path / name).is_file() or file_digest(path / name) != digest
    ]
    if set(bad) - {m.get("vectors"), m.get("records")}:  # the ids or a backend file (derived from all rows)
        return bad, ids.copy()
    damaged = np.zeros(0, dtype=np.int64)
    crcs = m.get("vector_crc32")
    if m.get("vectors") in bad and crcs is not None:
        now = block_crcs(vecs)
        blocks = [b for b, (a, c) in enumerate(zip(crcs, now, strict=False)) if a != c]
        damaged = np.concatenate([ids[b * CHECK_BLOCK_ROWS : (b + 1) * CHECK_BLOCK_ROWS] for b in blocks] or [damaged])
    elif m.get("vectors") in bad:
        damaged = ids.copy()
    return bad, damaged
