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


def empty_manifest(kind: str, dim: int, config: dict[str, Any], journal: str) -> dict[str, Any]:
    """The manifest of a new index directory: generation 0, no vectors, ``journal`` its journal."""
    return {
        "format": FORMAT_VERSION,
        "kind": kind,
        "dim": dim,
        "generation": 0,
        "count": 0,
        "vectors": None,
        "ids": None,
        "journal": journal,
        "config": config,
        "extra": {},
    }


def manifest_files(m: dict[str, Any]) -> set[str]:
    """The files of an index directory a manifest names: itself, the lock, its journal, its
    snapshot's vectors, ids and records, and the backend files of its extras."""
    names = {MANIFEST, LOCK, m["journal"]}
    names.update(m[key] for key in ("vectors", "ids", "records") if m.get(key))
    names.update(m.get("extra", {}).get("files", []))
    return names


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


def pread_rows(fd: int, offset: int, rows: np.ndarray, out: np.ndarray) -> None:
    """Read row ``rows[j]`` of a C-ordered 2-D array stored at byte ``offset`` of file ``fd`` into
    ``out[j]`` with one ``preadv`` per row. Raises :class:`OSError` on a short read."""
    if out.size == 0:
        return
    rb = out.shape[1] * out.itemsize
    mv = out.data.cast("B")
    pread = os.preadv
    for j, pos in enumerate((np.asarray(rows, dtype=np.int64) * rb + offset).tolist()):
        if pread(fd, [mv[j * rb : (j + 1) * rb]], pos) != rb:
            raise OSError(f"short read of row {int(rows[j])}")


def read_rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``arr[rows]`` (``rows``: integer positions) as a private array. A memory-mapped ``.npy``
    array is read with ``pread``, not through its mapping: on kernels that cache files in large
    folios (Linux 6.x on ext4 and xfs) a fault maps the whole folio, up to 2 MiB, so 1,024 rows
    scattered over a 500 MB snapshot mapped all of it into the process (issue 24: a build's peak
    RSS held one more copy of the vectors during each calibration). Other arrays are indexed."""
    rows = np.asarray(rows, dtype=np.int64)
    name = getattr(arr, "filename", None)
    if not isinstance(getattr(arr, "_mmap", None), mmap.mmap) or name is None or not arr.flags.c_contiguous:
        return np.asarray(arr[rows])
    out = np.empty((rows.size, *arr.shape[1:]), dtype=arr.dtype)
    if rows.size:
        if int(rows.min()) < 0 or int(rows.max()) >= arr.shape[0]:
            raise IndexError(f"row out of range [0, {arr.shape[0]})")
        fd = os.open(name, os.O_RDONLY)
        try:
            pread_rows(fd, _file_position(arr), rows, out.reshape(rows.size, -1))
        finally:
            os.close(fd)
    return out


def _file_position(arr: np.ndarray) -> int:
    """Byte position in its file of the first element of a ``numpy.memmap`` (or a view of one:
    a view keeps the ``offset`` of the array it came from)."""
    offset = int(getattr(arr, "offset", 0))
    start = offset - offset % mmap.ALLOCATIONGRANULARITY  # where numpy.memmap's mapping begins
    base = np.frombuffer(arr._mmap, dtype=np.uint8)  # type: ignore[attr-defined]
    try:
        return start + int(arr.ctypes.data) - int(base.ctypes.data)
    finally:
        del base


class RowReader:
    """A 2-D array's rows read by :func:`read_rows` (``reader[rows]``), for code that samples rows
    of a snapshot by fancy indexing (calibration query sets, a training sample); a slice is a view."""

    def __init__(self, arr: np.ndarray) -> None:
        self.array = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.ndim = arr.ndim

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return self.array[key]
        return read_rows(self.array, key)


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
