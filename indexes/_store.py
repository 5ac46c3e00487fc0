"""Durable vector storage shared by the exact and FAISS backends: snapshot + journal.

Layout of an index directory::

    manifest.json          the commit point: generation g, dim, count, file names, backend extras
    vectors.<g>.npy        float32 [count, dim], rows sorted by id (memory-mapped on open)
    ids.<g>.npy            int64 [count], ascending
    journal.<g>.log        changes since snapshot g (append-only, checksummed records)
    <backend files>.<g>    e.g. faiss.<g>.index
    LOCK                   flock()-ed by the one writer

Durability model:

* ``add``/``remove`` change memory only and queue one journal record per call.
* ``flush`` appends the queued records and fsyncs the journal: cost proportional to the changes.
  A record is ``[u32 length][u32 crc32][payload]``; replay stops at the first short or corrupt
  record, so a tail torn by ``kill -9`` is ignored (and truncated by the next writer).
* ``compact`` writes generation ``g+1`` beside ``g`` (each file: temp, fsync, rename), an empty
  ``journal.<g+1>.log``, fsyncs the directory, then atomically replaces ``manifest.json`` (temp,
  fsync, rename, directory fsync). Until that rename the old generation is the state on disk;
  after it the new one is. Old files are deleted afterwards (or by the next writer to open).
* Readers (``read_only=True``) take no lock: they load the manifest's generation and replay its
  journal; if a concurrent compaction deletes the files first, they retry with the new manifest.

Integrity: the manifest records the size and SHA-256 of every snapshot file of its generation
(vectors, ids and any backend file, whoever wrote it) and a CRC-32 per block of vector rows.
Opening checks sizes, shapes and that ids are ascending (cheap); :meth:`JournaledStore.verify`
reads everything and names the ids whose vector rows no longer match (for re-embedding).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._graph import pread_rows
from .errors import (
    DimensionMismatchError,
    IndexCorruptError,
    IndexExistsError,
    IndexInputError,
    IndexLockedError,
    IndexNotFoundError,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = "LOCK"
_JOURNAL_MAGIC = b"FGSJRNL1"
_JOURNAL_HEADER = struct.Struct("<8sIQ")  # magic, dim, generation
_RECORD = struct.Struct("<II")  # payload length, crc32(payload)
_OP = struct.Struct("<BQ")  # op code, number of ids
OP_ADD = 1
OP_REMOVE = 2
_COPY_ROWS = 16384
_OPEN_RETRIES = 20
_PREAD_MAX_ROWS = 65536
_DICT_LOOKUP_MAX = 4096
_CHECK_BLOCK_ROWS = 4096  # vector rows per CRC-32 in the manifest
_HASH_CHUNK = 1 << 22

#: Builds backend files for a new generation: (generation, vectors, ids) -> (manifest extras, files).
ExtraBuilder = Callable[[int, np.ndarray, np.ndarray], tuple[dict[str, Any], list[str]]]


# --------------------------------------------------------------------------- file helpers
def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and new files in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise IndexCorruptError(f"{mpath}: unsupported index format {manifest.get('format')!r}")
    return manifest


def _write_npy(path: Path, shape: tuple[int, ...], dtype: str, chunks: Iterator[np.ndarray]) -> None:
    """Stream chunks into a .npy file via a temp file, fsync and rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_npy(path: Path, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
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


def block_crcs(vecs: np.ndarray, rows: int = _CHECK_BLOCK_ROWS) -> list[int]:
    """CRC-32 of each block of ``rows`` vector rows: localises damage to the ids it affects."""
    return [zlib.crc32(np.ascontiguousarray(vecs[s : s + rows]).tobytes()) for s in range(0, len(vecs), rows)]


def encode_record(op: int, ids: np.ndarray, vectors: np.ndarray | None) -> bytes:
    payload = _OP.pack(op, ids.size) + ids.astype("<i8", copy=False).tobytes()
    if vectors is not None:
        payload += vectors.astype("<f4", copy=False).tobytes()
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def iter_records(f: Any, dim: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None]]:
    """Yield ``(end_offset, op, ids, vectors)`` for each intact record from the current position.

    Stops silently at the first torn or corrupt record: that is the tail of a flush that a crash
    interrupted, and it was never acknowledged.
    """
    while True:
        head = f.read(_RECORD.size)
        if len(head) < _RECORD.size:
            return
        length, crc = _RECORD.unpack(head)
        payload = f.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc or length < _OP.size:
            return
        op, n = _OP.unpack_from(payload)
        ids = np.frombuffer(payload, dtype="<i8", count=n, offset=_OP.size).astype(np.int64)
        vecs = None
        if op == OP_ADD:
            off = _OP.size + 8 * n
            if length != off + 4 * n * dim:
                return
            vecs = np.frombuffer(payload, dtype="<f4", offset=off).reshape(n, dim)
        elif op != OP_REMOVE or length != _OP.size + 8 * n:
            return
        yield f.tell(), op, ids, vecs


class _Growable:
    """Append-only float32 matrix + int64 id column with amortized doubling."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.vecs = np.zeros((0, dim), dtype=np.float32)
        self.ids = np.zeros(0, dtype=np.int64)

    def append(self, ids: np.ndarray, vecs: np.ndarray) -> int:
        start = self.n
        need = self.n + ids.size
        if need > self.ids.size:
            cap = max(need, 2 * self.ids.size, 1024)
            nv = np.zeros((cap, self.dim), dtype=np.float32)
            nv[: self.n] = self.vecs[: self.n]
            ni = np.full(cap, -1, dtype=np.int64)
            ni[: self.n] = self.ids[: self.n]
            self.vecs, self.ids = nv, ni
        self.vecs[start:need] = vecs
        self.ids[start:need] = ids
        self.n = need
        return start


class JournaledStore:
    """Snapshot (memory-mapped, sorted by id) + in-memory delta + journal. See module docstring."""

    def __init__(self, path: Path, *, read_only: bool) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.manifest: dict[str, Any] = {}
        self.dim = 0
        self.generation = 0
        self.version = 0  # bumped on every in-memory change (lets backends cache derived data)
        self._lock_fd: int | None = None
        self._base_fd: int | None = None
        self._base_offset = 0
        self._journal: Any = None  # writer: open journal file
        self._journal_size = 0  # bytes of intact records + header on disk
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._reset_memory()

    # ------------------------------------------------------------------ lifecycle
    def _reset_memory(self) -> None:
        if getattr(self, "_base_fd", None) is not None:
            os.close(self._base_fd)  # type: ignore[arg-type]
            self._base_fd = None
        self.base_vecs: np.ndarray = np.zeros((0, max(self.dim, 1)), dtype=np.float32)
        self.base_ids: np.ndarray = np.zeros(0, dtype=np.int64)
        self.base_alive: np.ndarray = np.zeros(0, dtype=bool)
        self.n_base_dead = 0
        self.delta = _Growable(max(self.dim, 1))
        self.delta_map: dict[int, int] = {}
        self.n_live = 0

    @classmethod
    def create(cls, path: Path, *, kind: str, dim: int, config: dict[str, Any]) -> JournaledStore:
        """Create an empty index directory (generation 0) and open it for writing."""
        path = Path(path)
        if (path / MANIFEST).exists():
            raise IndexExistsError(f"an index already exists at {path}; open it with open_index()")
        if path.exists() and not path.is_dir():
            raise IndexExistsError(f"{path} exists and is not a directory; choose another index path")
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, read_only=False)
        store._acquire_lock()
        try:
            if (path / MANIFEST).exists():  # lost a creation race
                raise IndexExistsError(f"an index already exists at {path}; open it with open_index()")
            store.dim = dim
            journal = f"journal.{0}.log"
            store._write_empty_journal(path / journal, dim, 0)
            manifest = {
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
            fsync_dir(path)
            atomic_write_bytes(path / MANIFEST, json.dumps(manifest, indent=1).encode())
            store._load(manifest)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, path: Path, *, kind: str | None, read_only: bool) -> JournaledStore:
        """Open an existing index directory: load the snapshot, replay the journal."""
        path = Path(path)
        store = cls(path, read_only=read_only)
        if not read_only:
            store._acquire_lock()
        try:
            manifest = store._load_with_retry()
            if kind is not None and manifest["kind"] != kind:
                raise IndexInputError(
                    f"{path} holds a {manifest['kind']!r} index, not {kind!r}; open it with kind={manifest['kind']!r}"
                )
            if not read_only:
                store._collect_garbage()
        except BaseException:
            store.close()
            raise
        return store

    def _acquire_lock(self) -> None:
        if not self.path.is_dir():
            raise IndexNotFoundError(f"no index at {self.path}; create one with create_index()")
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IndexLockedError(
                f"index {self.path} is open for writing by another process; wait for it, or open with read_only=True"
            ) from None
        self._lock_fd = fd

    def _load_with_retry(self) -> dict[str, Any]:
        last: Exception | None = None
        for _ in range(_OPEN_RETRIES):
            manifest = read_manifest(self.path)
            try:
                self._load(manifest)
                return manifest
            except FileNotFoundError as e:  # a writer compacted between manifest read and open
                if not self.read_only:
                    raise IndexCorruptError(f"index {self.path} is missing a file: {e.filename}") from e
                last = e
        raise IndexCorruptError(f"index {self.path} keeps changing or is missing files: {last}")

    def _load(self, manifest: dict[str, Any]) -> None:
        dim = int(manifest["dim"])
        count = int(manifest["count"])
        self.dim = dim
        self._reset_memory()
        self._check_sizes(manifest)
        if manifest["vectors"] is not None:
            vpath = self.path / manifest["vectors"]
            self.base_vecs = _load_npy(vpath, "<f4", (count, dim))
            self.base_ids = _load_npy(self.path / manifest["ids"], "<i8", (count,))
            if count and (self.base_ids[0] < 0 or not bool(np.all(self.base_ids[1:] > self.base_ids[:-1]))):
                raise IndexCorruptError(f"{self.path / manifest['ids']}: ids are not ascending (the file is damaged)")
            self._base_fd = os.open(vpath, os.O_RDONLY)
            self._base_offset = int(getattr(self.base_vecs, "offset", 0))
        elif count:
            raise IndexCorruptError(f"{self.path / MANIFEST}: count {count} but no vectors file")
        self.base_alive = np.ones(count, dtype=bool)
        self.n_live = count
        self.manifest = manifest
        self.generation = int(manifest["generation"])
        self._pending.clear()
        self._pending_bytes = 0
        jpath = self.path / manifest["journal"]
        with open(jpath, "rb") as f:
            self._check_journal_header(f, jpath)
            self._journal_size = self._replay(f, _JOURNAL_HEADER.size)
        if not self.read_only:
            if self._journal is not None:
                self._journal.close()
            self._journal = open(jpath, "r+b")  # noqa: SIM115 - held open until close()
            if os.fstat(self._journal.fileno()).st_size != self._journal_size:
                log.warning("discarding a torn journal tail in %s (an interrupted flush)", jpath)
                self._journal.truncate(self._journal_size)
                os.fsync(self._journal.fileno())
            self._journal.seek(self._journal_size)
        self.version += 1

    def _check_sizes(self, manifest: dict[str, Any]) -> None:
        """Every checksummed snapshot file has the size the manifest recorded (a cheap stat)."""
        for name, digest in (manifest.get("checksums") or {}).items():
            size = (self.path / name).stat().st_size  # FileNotFoundError: retried by readers
            if size != digest["size"]:
                raise IndexCorruptError(
                    f"{self.path / name} has {size} bytes, the manifest recorded {digest['size']} "
                    "(truncated or damaged)"
                )

    def verify(self) -> tuple[list[str], np.ndarray]:
        """Read every snapshot file: the names of files whose SHA-256 does not match the manifest,
        and the ids whose vector rows are damaged (all snapshot ids when the ids file itself is).
        Journals are covered by their per-record CRCs; generations written before checksums were
        recorded have nothing to compare and pass."""
        m = self.manifest
        bad = [
            name
            for name, digest in (m.get("checksums") or {}).items()
            if not (self.path / name).is_file() or file_digest(self.path / name) != digest
        ]
        ids = np.asarray(self.base_ids)
        if set(bad) - {m.get("vectors")}:  # the ids or a backend file (derived from all rows)
            return bad, ids.copy()
        damaged = np.zeros(0, dtype=np.int64)
        crcs = m.get("vector_crc32")
        if m.get("vectors") in bad and crcs is not None:
            now = block_crcs(self.base_vecs)
            blocks = [b for b, (a, c) in enumerate(zip(crcs, now, strict=False)) if a != c]
            damaged = np.concatenate(
                [ids[b * _CHECK_BLOCK_ROWS : (b + 1) * _CHECK_BLOCK_ROWS] for b in blocks] or [damaged]
            )
        elif m.get("vectors") in bad:
            damaged = ids.copy()
        return bad, damaged

    def _check_journal_header(self, f: Any, jpath: Path) -> None:
        head = f.read(_JOURNAL_HEADER.size)
        if len(head) < _JOURNAL_HEADER.size:
            raise IndexCorruptError(f"{jpath}: journal header is truncated")
        magic, dim, gen = _JOURNAL_HEADER.unpack(head)
        if magic != _JOURNAL_MAGIC or dim != self.dim or gen != self.generation:
            raise IndexCorruptError(f"{jpath}: journal header does not match {MANIFEST}")

    def _replay(self, f: Any, offset: int) -> int:
        f.seek(offset)
        end = offset
        for end, op, ids, vecs in iter_records(f, self.dim):  # noqa: B007
            if op == OP_ADD:
                assert vecs is not None
                self._apply_add(ids, vecs)
            else:
                self._apply_remove(ids)
        return end

    @staticmethod
    def _write_empty_journal(path: Path, dim: int, generation: int) -> None:
        with open(path, "wb") as f:
            f.write(_JOURNAL_HEADER.pack(_JOURNAL_MAGIC, dim, generation))
            f.flush()
            os.fsync(f.fileno())

    def has_updates(self) -> bool:
        """Whether another process has flushed anything :meth:`reload` would pick up: a new
        generation, or journal bytes past the records replayed. Reads the manifest and one file
        size, no vectors; a journal whose tail is still being written counts as an update."""
        manifest = read_manifest(self.path)
        if int(manifest["generation"]) != self.generation:
            return True
        try:
            return os.stat(self.path / manifest["journal"]).st_size != self._journal_size
        except FileNotFoundError:
            return True  # compacted meanwhile

    def reload(self) -> bool:
        """Pick up changes flushed by another process. Returns True when anything changed."""
        manifest = read_manifest(self.path)
        if int(manifest["generation"]) == self.generation:
            jpath = self.path / manifest["journal"]
            try:
                with open(jpath, "rb") as f:
                    before = self._journal_size
                    self._journal_size = self._replay(f, self._journal_size)
                    if self._journal_size != before:
                        self.version += 1
                    return self._journal_size != before
            except FileNotFoundError:
                pass  # compacted meanwhile: fall through to a full load
        self._load_with_retry()
        return True

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._reset_memory()

    # ------------------------------------------------------------------ lookups
    @property
    def n_base(self) -> int:
        return int(self.base_ids.size)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Global row of each id (base rows first, then delta rows), -1 if not stored."""
        rows = np.full(ids.size, -1, dtype=np.int64)
        nb = self.n_base
        if nb:
            pos = np.searchsorted(self.base_ids, ids)
            posc = np.minimum(pos, nb - 1)
            hit = (pos < nb) & (self.base_ids[posc] == ids) & self.base_alive[posc]
            rows[hit] = posc[hit]
        if self.delta_map:
            if ids.size <= _DICT_LOOKUP_MAX:
                get = self.delta_map.get
                for i, ident in enumerate(ids.tolist()):
                    j = get(ident)
                    if j is not None:
                        rows[i] = nb + j
            else:  # many ids (a large allowed-id filter): vectorized over the live delta rows
                live = np.flatnonzero(self.delta.ids[: self.delta.n] >= 0)
                d_ids = self.delta.ids[live]
                order = np.argsort(d_ids)
                d_ids, live = d_ids[order], live[order]
                pos = np.minimum(np.searchsorted(d_ids, ids), max(d_ids.size - 1, 0))
                hit = d_ids[pos] == ids if d_ids.size else np.zeros(ids.size, dtype=bool)
                rows[hit] = nb + live[pos[hit]]
        return rows

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of global rows (all must be valid)."""
        nb = self.n_base
        in_base = rows < nb
        if in_base.all():
            # one buffer: filling a second one of this size from a temporary costs a page fault per
            # 4 KiB (a search's 2,000 region rows: 3.4 ms against 0.13 ms, bench_query)
            return np.asarray(self.base_vecs[rows])
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        if in_base.any():
            out[in_base] = self.base_vecs[rows[in_base]]
        if not in_base.all():
            out[~in_base] = self.delta.vecs[rows[~in_base] - nb]
        return out

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Like :meth:`gather`, but snapshot rows are read with ``pread`` into a private buffer.

        Used for re-ranking a few hundred candidates per query: the rows come from the page cache
        without becoming resident pages of this process (as touched ``mmap`` pages would).
        """
        nb = self.n_base
        if self._base_fd is None or rows.size > _PREAD_MAX_ROWS:
            return self.gather(rows)
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        in_base = rows < nb
        if not in_base.all():
            out[~in_base] = self.delta.vecs[rows[~in_base] - nb]
        fd = self._base_fd
        off = self._base_offset
        if in_base.all():
            try:
                if pread_rows(fd, off, rows, out):  # one C call (the HNSW kernel's library)
                    return out
            except OSError as e:
                raise IndexCorruptError(f"{self.path}: cannot read the vectors file ({e})") from e
        mv = out.data.cast("B")
        rb = 4 * self.dim
        for j in np.flatnonzero(in_base).tolist():
            got = os.preadv(fd, [mv[j * rb : (j + 1) * rb]], off + int(rows[j]) * rb)
            if got != rb:
                raise IndexCorruptError(f"{self.path}: short read from the vectors file")
        return out

    def live_ids(self) -> np.ndarray:
        parts = [np.asarray(self.base_ids[self.base_alive])]
        d = self.delta.ids[: self.delta.n]
        parts.append(d[d >= 0])
        return np.sort(np.concatenate(parts))

    def base_dead_ids(self) -> np.ndarray:
        """Ids present in the snapshot but removed or replaced since (still in snapshot indexes)."""
        if not self.n_base_dead:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.base_ids[~self.base_alive])

    def iter_blocks(
        self, block_rows: int, *, base: bool = True, delta: bool = True
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(vectors, ids)`` blocks over stored rows; removed rows have id -1."""
        if base:
            for s in range(0, self.n_base, block_rows):
                e = min(s + block_rows, self.n_base)
                ids = np.asarray(self.base_ids[s:e])
                if self.n_base_dead:
                    ids = np.where(self.base_alive[s:e], ids, -1)
                yield self.base_vecs[s:e], ids
        if delta:
            for s in range(0, self.delta.n, block_rows):
                e = min(s + block_rows, self.delta.n)
                yield self.delta.vecs[s:e], self.delta.ids[s:e]

    # ------------------------------------------------------------------ changes
    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Insert or replace (validated by the caller). Queues a journal record."""
        self._apply_add(ids, vecs)
        self._queue(encode_record(OP_ADD, ids, vecs))

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids that are stored (checked by the caller). Queues a journal record."""
        self._apply_remove(ids)
        self._queue(encode_record(OP_REMOVE, ids, None))

    def _queue(self, record: bytes) -> None:
        self._pending.append(record)
        self._pending_bytes += len(record)

    def _apply_add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if vecs.shape[1] != self.dim:
            raise DimensionMismatchError(f"expected {self.dim}-d vectors, got {vecs.shape[1]}-d")
        self._apply_remove(ids)
        start = self.delta.append(ids, vecs)
        for j, ident in enumerate(ids.tolist()):
            self.delta_map[ident] = start + j
        self.n_live += ids.size
        self.version += 1

    def _apply_remove(self, ids: np.ndarray) -> None:
        rows = self.lookup(ids)
        nb = self.n_base
        base_rows = rows[(rows >= 0) & (rows < nb)]
        if base_rows.size:
            if not self.base_alive.flags.writeable:
                self.base_alive = self.base_alive.copy()
            self.base_alive[base_rows] = False
            self.n_base_dead += int(base_rows.size)
        delta_rows = rows[rows >= nb] - nb
        for j in delta_rows.tolist():
            del self.delta_map[int(self.delta.ids[j])]
            self.delta.ids[j] = -1
        self.n_live -= int(base_rows.size + delta_rows.size)
        self.version += 1

    # ------------------------------------------------------------------ durability
    @property
    def journal_bytes(self) -> int:
        """Bytes of changes not folded into the snapshot (on disk + queued)."""
        return self._journal_size - _JOURNAL_HEADER.size + self._pending_bytes

    @property
    def snapshot_bytes(self) -> int:
        return int(self.n_base) * (4 * self.dim + 8)

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def flush(self) -> int:
        """Append queued records to the journal and fsync. Returns bytes written."""
        if not self._pending:
            return 0
        data = b"".join(self._pending)
        self._journal.write(data)
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._journal_size += len(data)
        self._pending.clear()
        self._pending_bytes = 0
        return len(data)

    def wants_compaction(self, min_bytes: int, ratio: float) -> bool:
        return self.journal_bytes > 0 and self.journal_bytes >= max(min_bytes, ratio * self.snapshot_bytes)

    def compact(self, build_extra: ExtraBuilder | None = None, extra: dict[str, Any] | None = None) -> None:
        """Write generation g+1 (live rows sorted by id), commit it, switch to it.

        ``build_extra`` writes backend files for the new generation (each fsynced under its final
        name) and returns manifest extras; a crash before the manifest rename leaves generation g.
        """
        g1 = self.generation + 1
        alive_rows = np.flatnonzero(self.base_alive)
        d_rows = np.flatnonzero(self.delta.ids[: self.delta.n] >= 0)
        all_ids = np.concatenate([np.asarray(self.base_ids[alive_rows]), self.delta.ids[d_rows]])
        order = np.argsort(all_ids, kind="stable")
        n_new = int(all_ids.size)
        nb_alive = alive_rows.size
        vec_name = ids_name = None
        new_vecs = np.zeros((0, self.dim), dtype=np.float32)
        new_ids = np.zeros(0, dtype=np.int64)
        if n_new:
            vec_name, ids_name = f"vectors.{g1}.npy", f"ids.{g1}.npy"

            def vec_chunks() -> Iterator[np.ndarray]:
                for s in range(0, n_new, _COPY_ROWS):
                    sel = order[s : s + _COPY_ROWS]
                    from_base = sel < nb_alive
                    out = np.empty((sel.size, self.dim), dtype=np.float32)
                    if from_base.any():
                        out[from_base] = self.base_vecs[alive_rows[sel[from_base]]]
                    if not from_base.all():
                        out[~from_base] = self.delta.vecs[d_rows[sel[~from_base] - nb_alive]]
                    yield out

            _write_npy(self.path / vec_name, (n_new, self.dim), "<f4", vec_chunks())
            _write_npy(self.path / ids_name, (n_new,), "<i8", iter([all_ids[order]]))
            new_vecs = _load_npy(self.path / vec_name, "<f4", (n_new, self.dim))
            new_ids = _load_npy(self.path / ids_name, "<i8", (n_new,))
        extras: dict[str, Any] = dict(extra or {})
        if build_extra is not None:
            more, files = build_extra(g1, new_vecs, new_ids)
            extras.update(more)
            extras["files"] = list(files)
        crcs = block_crcs(new_vecs) if n_new else None
        journal = f"journal.{g1}.log"
        self._write_empty_journal(self.path / journal, self.dim, g1)
        fsync_dir(self.path)
        manifest = dict(self.manifest)
        manifest.update(generation=g1, count=n_new, vectors=vec_name, ids=ids_name, journal=journal, extra=extras)
        snapshot_files = [n for n in (vec_name, ids_name, *extras.get("files", [])) if n]
        manifest.update(checksums={name: file_digest(self.path / name) for name in snapshot_files}, vector_crc32=crcs)
        atomic_write_bytes(self.path / MANIFEST, json.dumps(manifest, indent=1).encode())
        # committed: switch memory to the new generation
        del new_vecs, new_ids
        self._load(manifest)
        self._collect_garbage()

    def set_config(self, config: dict[str, Any]) -> None:
        """Record a new config in the manifest at the next compaction."""
        self.manifest = dict(self.manifest, config=config)

    def referenced_files(self) -> set[str]:
        m = self.manifest
        names = {MANIFEST, LOCK, m["journal"]}
        for key in ("vectors", "ids"):
            if m.get(key):
                names.add(m[key])
        names.update(m.get("extra", {}).get("files", []))
        return names

    def _collect_garbage(self) -> None:
        """Delete files of older generations and temp files left by an interrupted save."""
        keep = self.referenced_files()
        for entry in self.path.iterdir():
            if entry.name not in keep and entry.is_file():
                with contextlib.suppress(OSError):
                    entry.unlink()

    # ------------------------------------------------------------------ accounting
    def bytes_on_disk(self) -> int:
        total = 0
        for name in self.referenced_files():
            with contextlib.suppress(OSError):
                total += (self.path / name).stat().st_size
        return total

    def bytes_in_memory(self) -> int:
        """Resident bytes this store owns (the snapshot's vectors are memory-mapped, not counted)."""
        return int(
            self.base_alive.nbytes
            + self.delta.vecs.nbytes
            + self.delta.ids.nbytes
            + 100 * len(self.delta_map)
            + self._pending_bytes
        )
