"""Durable vector storage shared by the exact and FAISS backends: snapshot + journal.

Layout of an index directory::

    manifest.json          the commit point: generation g, dim, count, file names, backend extras
    vectors.<g>.npy        float32 [count, dim], rows sorted by id (memory-mapped on open)
    ids.<g>.npy            int64 [count], ascending
    records.<g>.npy        uint8 [count, width], optional (format 2): per row, bytes the owner gave
                           with the row (a library's content hash and box), for rebuilding without
                           its catalog; all zero where none was given
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
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexCorruptError, IndexExistsError, IndexInputError, IndexLockedError, IndexNotFoundError
from ..faults import faults
from .files import (
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    atomic_write_bytes,
    block_crcs,
    check_snapshot,
    empty_manifest,
    file_digest,
    fsync_dir,
    load_npy,
    manifest_files,
    read_manifest,
    release_pages,
    write_npy,
)
from .journal import (
    JOURNAL_HEADER,
    OP_ADD,
    OP_REMOVE,
    check_journal_header,
    encode_record,
    iter_records,
    write_empty_journal,
)
from .rows import StoredRows

log = logging.getLogger(__name__)

_COPY_ROWS = 16384
_OPEN_RETRIES = 20

#: Builds backend files for a new generation: (generation, vectors, ids) -> (manifest extras, files).
ExtraBuilder = Callable[[int, np.ndarray, np.ndarray], tuple[dict[str, Any], list[str]]]


#: Names of files a backend keeps in its index directory across snapshots (no snapshot lists them;
#: garbage collection leaves them), registered by the backend's module, e.g. the FAISS backend's
#: record of served queries.
KEPT_FILES: set[str] = set()


class JournaledStore(StoredRows):
    """Snapshot (memory-mapped, sorted by id) + in-memory delta + journal. See module docstring."""

    def __init__(self, path: Path, *, read_only: bool) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.manifest: dict[str, Any] = {}
        self.dim = 0
        self.generation = 0
        self.version = 0  # bumped on every in-memory change (lets backends cache derived data)
        self._lock_fd: int | None = None
        self._base_fd = None
        self._base_offset = 0
        self._journal: Any = None  # writer: open journal file
        self._journal_size = 0  # bytes of intact records + header on disk
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.record_width = 0  # bytes per row of the records file (0: no records)
        self.record_meta: dict[str, Any] = {}  # what the records were made with (e.g. the model)
        self.base_records: np.ndarray | None = None  # [n_base, width], aligned with base_ids
        self.delta_records = np.zeros((0, 0), dtype=np.uint8)  # [>= delta rows given records, width]
        self._reset_memory()

    # ------------------------------------------------------------------ lifecycle
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
            write_empty_journal(path / journal, dim, 0)
            manifest = empty_manifest(kind, dim, config, journal)
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
            self.base_vecs = load_npy(vpath, "<f4", (count, dim))
            self.base_ids = load_npy(self.path / manifest["ids"], "<i8", (count,))
            if count and (self.base_ids[0] < 0 or not bool(np.all(self.base_ids[1:] > self.base_ids[:-1]))):
                raise IndexCorruptError(f"{self.path / manifest['ids']}: ids are not ascending (the file is damaged)")
            self._base_fd = os.open(vpath, os.O_RDONLY)
            self._base_offset = int(getattr(self.base_vecs, "offset", 0))
        elif count:
            raise IndexCorruptError(f"{self.path / MANIFEST}: count {count} but no vectors file")
        self.record_width = int(manifest.get("record_width") or 0)
        self.record_meta = dict(manifest.get("record_meta") or {})
        self.base_records = None
        if manifest.get("records"):
            self.base_records = load_npy(self.path / manifest["records"], "|u1", (count, self.record_width))
        self.delta_records = np.zeros((0, self.record_width), dtype=np.uint8)
        self.base_alive = np.ones(count, dtype=bool)
        self.n_live = count
        self.manifest = manifest
        self._snapshot_config = manifest.get("config")
        self.generation = int(manifest["generation"])
        self._pending.clear()
        self._pending_bytes = 0
        jpath = self.path / manifest["journal"]
        with open(jpath, "rb") as f:
            check_journal_header(f, jpath, self.dim, self.generation)
            self._journal_size = self._replay(f, JOURNAL_HEADER.size)
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
        and the ids whose vector rows are damaged (see :func:`.files.check_snapshot`)."""
        return check_snapshot(self.path, self.manifest, np.asarray(self.base_ids), self.base_vecs)

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

    # ------------------------------------------------------------------ changes
    def add(self, ids: np.ndarray, vecs: np.ndarray, records: np.ndarray | None = None) -> None:
        """Insert or replace (validated by the caller). Queues a journal record. ``records``
        (uint8 ``[n, width]``) is kept with the rows and written with the next snapshot (the
        journal does not carry it: rows not yet in a snapshot have no record after a reopen)."""
        if records is not None and self.record_width and records.shape[1] != self.record_width:
            raise IndexInputError(
                f"records of {records.shape[1]} bytes per row, but {self.path} keeps {self.record_width}"
            )
        start = self.delta.n
        self._apply_add(ids, vecs)
        if records is not None:
            self._put_records(start, records)
        self._queue(encode_record(OP_ADD, ids, vecs))

    def _put_records(self, start: int, records: np.ndarray) -> None:
        width = self.record_width = records.shape[1]
        need = start + records.shape[0]
        if self.delta_records.shape[0] < need or self.delta_records.shape[1] != width:
            grown = np.zeros((max(need, int(self.delta.ids.size)), width), dtype=np.uint8)
            if self.delta_records.shape[1] == width:
                grown[: self.delta_records.shape[0]] = self.delta_records
            self.delta_records = grown
        self.delta_records[start:need] = records

    def set_record_meta(self, meta: dict[str, Any]) -> None:
        """What the records are made with (e.g. the model), written with the next snapshot."""
        self.record_meta = dict(meta)

    def _records_of_rows(self, base_rows: np.ndarray, delta_rows: np.ndarray) -> np.ndarray:
        """Records of some base rows then some delta rows (zeros where none was kept)."""
        out = np.zeros((base_rows.size + delta_rows.size, self.record_width), dtype=np.uint8)
        if self.base_records is not None and base_rows.size:
            out[: base_rows.size] = self.base_records[base_rows]
        kept = delta_rows < self.delta_records.shape[0]
        if kept.any():
            part = np.zeros((delta_rows.size, self.record_width), dtype=np.uint8)
            part[kept] = self.delta_records[delta_rows[kept]]
            out[base_rows.size :] = part
        return out

    def live_records(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids of the live rows and their records (``[n, width]``, all zero where none was kept)."""
        alive_rows = np.flatnonzero(self.base_alive)
        d_rows = np.flatnonzero(self.delta.ids[: self.delta.n] >= 0)
        ids = np.concatenate([np.asarray(self.base_ids[alive_rows]), self.delta.ids[d_rows]])
        return ids, self._records_of_rows(alive_rows, d_rows)

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids that are stored (checked by the caller). Queues a journal record."""
        self._apply_remove(ids)
        self._queue(encode_record(OP_REMOVE, ids, None))

    def _queue(self, record: bytes) -> None:
        self._pending.append(record)
        self._pending_bytes += len(record)

    @property
    def journal_bytes(self) -> int:
        """Bytes of changes not folded into the snapshot (on disk + queued)."""
        return self._journal_size - JOURNAL_HEADER.size + self._pending_bytes

    @property
    def snapshot_bytes(self) -> int:
        return int(self.n_base) * (4 * self.dim + 8)

    @property
    def unchanged(self) -> bool:
        """Whether a compaction would write the snapshot it has again (then a save writes nothing):
        a generation exists, no change is journaled or queued, config, records' meta and format as
        the snapshot's."""
        m = self.manifest
        return (
            self.generation >= 1
            and self.journal_bytes == 0
            and m.get("format") == FORMAT_VERSION
            and m.get("config") == self._snapshot_config
            and self.record_meta == dict(m.get("record_meta") or {})
        )

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
        vec_name = ids_name = rec_name = None
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
                    release_pages(self.base_vecs)  # never all of the old snapshot resident
                    yield out

            write_npy(self.path / vec_name, (n_new, self.dim), "<f4", vec_chunks())
            write_npy(self.path / ids_name, (n_new,), "<i8", iter([all_ids[order]]))
            if self.record_width:
                rec_name = f"records.{g1}.npy"
                width = self.record_width

                def rec_chunks() -> Iterator[np.ndarray]:
                    for s in range(0, n_new, _COPY_ROWS):
                        sel = order[s : s + _COPY_ROWS]
                        from_base = sel < nb_alive
                        recs = self._records_of_rows(alive_rows[sel[from_base]], d_rows[sel[~from_base] - nb_alive])
                        out = np.empty((sel.size, width), dtype=np.uint8)
                        n_b = int(from_base.sum())
                        out[from_base], out[~from_base] = recs[:n_b], recs[n_b:]
                        yield out

                write_npy(self.path / rec_name, (n_new, width), "|u1", rec_chunks())
            new_vecs = load_npy(self.path / vec_name, "<f4", (n_new, self.dim))
            new_ids = load_npy(self.path / ids_name, "<i8", (n_new,))
        extras: dict[str, Any] = dict(extra or {})
        if build_extra is not None:
            more, files = build_extra(g1, new_vecs, new_ids)
            extras.update(more)
            extras["files"] = list(files)
        crcs = block_crcs(new_vecs) if n_new else None
        journal = f"journal.{g1}.log"
        write_empty_journal(self.path / journal, self.dim, g1)
        fsync_dir(self.path)
        manifest = dict(self.manifest)
        manifest.update(generation=g1, count=n_new, vectors=vec_name, ids=ids_name, journal=journal, extra=extras)
        manifest.update(format=FORMAT_VERSION, records=rec_name, record_width=self.record_width if rec_name else 0)
        manifest.update(record_meta=self.record_meta)
        snapshot_files = [n for n in (vec_name, ids_name, rec_name, *extras.get("files", [])) if n]
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
        return manifest_files(self.manifest) | KEPT_FILES

    def _collect_garbage(self) -> None:
        """Delete files of older generations and temp files left by an interrupted save."""
        faults.reach("store.collect_garbage", self.path)
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
