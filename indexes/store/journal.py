"""The journal of a file-backed index: checksummed change records appended since the last snapshot.

``journal.<g>.log`` starts with a header (magic, dim, generation g); each record is
``[u32 length][u32 crc32][payload]`` where the payload is an op code (add or remove), the ids and,
for adds, their vectors. Replay stops at the first short or corrupt record: that is the tail of a
flush a crash interrupted, which was never acknowledged.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexCorruptError
from .files import MANIFEST

JOURNAL_MAGIC = b"FGSJRNL1"
JOURNAL_HEADER = struct.Struct("<8sIQ")  # magic, dim, generation
_RECORD = struct.Struct("<II")  # payload length, crc32(payload)
_OP = struct.Struct("<BQ")  # op code, number of ids
OP_ADD = 1
OP_REMOVE = 2


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


def write_empty_journal(path: Path, dim: int, generation: int) -> None:
    """A new journal holding only its header, fsynced."""
    with open(path, "wb") as f:
        f.write(JOURNAL_HEADER.pack(JOURNAL_MAGIC, dim, generation))
        f.flush()
        os.fsync(f.fileno())


def check_journal_header(f: Any, jpath: Path, dim: int, generation: int) -> None:
    """The journal open in ``f`` belongs to the snapshot (``dim``, ``generation``) of the manifest."""
    head = f.read(JOURNAL_HEADER.size)
    if len(head) < JOURNAL_HEADER.size:
        raise IndexCorruptError(f"{jpath}: journal header is truncated")
    magic, jdim, gen = JOURNAL_HEADER.unpack(head)
    if magic != JOURNAL_MAGIC or jdim != dim or gen != generation:
        raise IndexCorruptError(f"{jpath}: journal header does not match {MANIFEST}")
