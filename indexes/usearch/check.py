"""What fgsearch checks in a usearch graph file before usearch maps and searches it (once per snapshot).

usearch 2.x (``Index.restore``/``view``) checks the file's magic, version and enum bytes and that
its nodes fit the file, but not the links: a file garbled inside its node region (same size) made
a search in a subprocess die of SIGSEGV or hang in 8 of 10 tries (see
tests/indexes/test_usearch_fuzz.py). :func:`check_graph_file` reads the file (memory-mapped, in
blocks of nodes) and refuses it, with one line naming the first violation, unless:

* the vector matrix in front holds ``rows`` x ``dim * bytes per code`` bytes and ``rows`` is the
  graph's node count;
* the header says usearch 2, inner product, the configured code type, 64-bit keys, 32-bit slots,
  ``dim`` dimensions, one vector per key, and as many present (and deleted) nodes as the snapshot
  has rows (and deleted nodes);
* the graph header has the configured connectivity (twice that on the base layer), an entry slot
  that is a node on the top level, and every node's level in ``[0, max_level]``;
* the nodes' sizes (from their levels) add up to the file's size exactly;
* every node repeats its level, every neighbour list has at most its capacity of links, every link
  is a node (``< size``), and a link on level ``l >= 1`` points to a node present on level ``l``;
* the keys of the present nodes are the snapshot's ids, each once, and the deleted nodes carry
  usearch's free key.

The cost is one pass over the graph's links (not its codes), in blocks of nodes, and the freed
blocks are given back to the system afterwards; ``bench/bench_indexes.py`` prints it for the
``fg-usearch`` backend as ``graph check on open``.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import IndexCorruptError

#: usearch's enum values in the file header (``metric_kind_t``, ``scalar_kind_t``)
METRIC_IP = 105
SCALAR = {"i8": (23, 1), "f16": (12, 2)}  # dtype -> (scalar kind, bytes per dimension)
KEY_U64, SLOT_U32 = 14, 15
FREE_KEY = np.uint64(2**64 - 1)  # the key usearch writes into a deleted node
MAX_LEVEL = 64  # usearch draws levels with probability 1/connectivity each: never near this
_HEAD = struct.Struct("<7sHHHBBBBQQQ?")  # index_dense_head_t (64 bytes with its padding)
_CORE = struct.Struct("<QQQQQ")  # size, connectivity, base connectivity, max level, entry slot
_NODES_PER_BLOCK = 4096  # small blocks: the gathers reuse the same heap memory


def check_graph_file(path: Path, *, dim: int, dtype: str, connectivity: int, ids: np.ndarray, deleted: int) -> None:
    """Raise :class:`IndexCorruptError` unless ``path`` is a usearch graph of the snapshot whose
    sorted ids are ``ids`` with ``deleted`` deleted nodes (see the module docstring)."""
    total = os.path.getsize(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r") if total else np.zeros(0, dtype=np.uint8)
    try:
        _check(buf, total, dim, dtype, connectivity, np.asarray(ids), deleted)
    finally:
        del buf
        _release_heap()


def _release_heap() -> None:
    """Give the check's freed blocks back to the system (glibc keeps them in the heap otherwise:
    measured at 50k x 512, +124 B/vector resident after an open, -21 after ``malloc_trim``)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return
    trim(0)


def _fail(why: str) -> IndexCorruptError:
    return IndexCorruptError(f"usearch graph: {why}")


def _check(buf: np.ndarray, total: int, dim: int, dtype: str, conn: int, ids: np.ndarray, deleted: int) -> None:
    if total < 8:
        raise _fail(f"{total} bytes, too short for a header")
    rows, cols = (int(x) for x in buf[:8].view("<u4"))
    kind, width = SCALAR[dtype]
    if cols != dim * width:
        raise _fail(f"vectors of {cols} bytes, expected {dim * width} ({dim} dimensions of {dtype})")
    at = 8 + rows * cols
    if at + 64 + _CORE.size > total:
        raise _fail(f"{rows} vectors of {cols} bytes do not fit the file's {total} bytes")
    magic, major, _minor, _patch, metric, scalar, key, slot, present, dead, dims, multi = _HEAD.unpack_from(
        bytes(buf[at : at + _HEAD.size])
    )
    if magic != b"usearch" or major != 2:
        raise _fail(f"not a usearch 2 index (magic {magic!r}, version {major})")
    if (metric, scalar, key, slot, multi) != (METRIC_IP, kind, KEY_U64, SLOT_U32, False):
        raise _fail(f"header kinds {(metric, scalar, key, slot, multi)} are not inner product over {dtype} codes")
    if dims != dim:
        raise _fail(f"{dims} dimensions, the snapshot has {dim}")
    if present != ids.size or dead != deleted:
        raise _fail(f"{present} present and {dead} deleted nodes, the snapshot has {ids.size} and {deleted}")
    at += 64
    size, c, base, top, entry = _CORE.unpack_from(bytes(buf[at : at + _CORE.size]))
    at += _CORE.size
    if size != rows or size != present + dead:
        raise _fail(f"{size} nodes for {rows} vectors ({present} present, {dead} deleted)")
    if c != conn or base != 2 * conn:
        raise _fail(f"connectivity {c} (base {base}), configured {conn} (base {2 * conn})")
    if top >= MAX_LEVEL or (size and entry >= size):
        raise _fail(f"top level {top} or entry slot {entry} out of range (nodes {size})")
    if size == 0:
        if at != total:
            raise _fail(f"{total - at} bytes after an empty graph")
        return
    if at + 2 * size > total:
        raise _fail("the level table does not fit the file")
    levels = buf[at : at + 2 * size].view("<i2").astype(np.int64)
    at += 2 * size
    if int(levels.min()) < 0 or int(levels.max()) > top:
        raise _fail(f"node levels out of range [0, {top}]")
    if int(levels[entry]) != top:
        raise _fail(f"the entry slot's level {int(levels[entry])} is not the top level {top}")
    base_bytes, upper_bytes = 4 * (1 + base), 4 * (1 + c)
    node_bytes = 10 + base_bytes + levels * upper_bytes
    offsets = at + np.concatenate([[0], np.cumsum(node_bytes)])
    if int(offsets[-1]) != total:
        raise _fail(f"the nodes end at byte {int(offsets[-1])}, the file has {total}")
    keys = np.empty(size, dtype=np.uint64)
    for s in range(0, size, _NODES_PER_BLOCK):
        keys[s : s + _NODES_PER_BLOCK] = _check_nodes(buf, offsets, levels, s, min(size, s + _NODES_PER_BLOCK), base, c)
    free = keys == FREE_KEY
    if int(free.sum()) != dead:
        raise _fail(f"{int(free.sum())} nodes carry the deleted key, the header says {dead}")
    live = np.sort(keys[~free])
    if live.size != ids.size or not np.array_equal(live, ids.astype(np.uint64)):
        raise _fail("its keys are not the snapshot's ids")


def _check_nodes(
    buf: np.ndarray, offsets: np.ndarray, levels: np.ndarray, lo: int, hi: int, base: int, conn: int
) -> np.ndarray:
    """Check nodes ``lo:hi`` (their level field and links); returns their keys."""
    size = levels.size
    head = 10 + 4 * (1 + base)
    rows = buf[offsets[lo:hi, None] + np.arange(head)]  # key, level, base-layer count and slots
    keys = rows[:, :8].copy().view("<u8")[:, 0]
    if not np.array_equal(rows[:, 8:10].copy().view("<i2")[:, 0], levels[lo:hi]):
        raise _fail(f"a node's level differs from the level table (nodes {lo} to {hi})")
    _check_links(rows[:, 10:].copy().view("<u4"), base, size, None, 0)
    upper = np.flatnonzero(levels[lo:hi] > 0) + lo
    for level in range(1, int(levels[lo:hi].max()) + 1):
        nodes = upper[levels[upper] >= level]
        start = offsets[nodes] + head + (level - 1) * 4 * (1 + conn)
        block = buf[start[:, None] + np.arange(4 * (1 + conn))].copy().view("<u4")
        _check_links(block, conn, size, levels, level)
    return keys


def _check_links(block: np.ndarray, cap: int, size: int, levels: np.ndarray | None, level: int) -> None:
    """``block``: rows of (count, ``cap`` slots); counts within ``cap``, counted slots < ``size``
    (and, on an upper ``level``, nodes present on it)."""
    count = block[:, 0].astype(np.int64)
    if count.size and int(count.max()) > cap:
        raise _fail(f"a neighbour list of {int(count.max())} links on level {level} (at most {cap})")
    used = np.arange(cap) < count[:, None]
    slots = block[:, 1:][used].astype(np.int64)
    if slots.size and int(slots.max()) >= size:
        raise _fail(f"a link on level {level} points past the last node")
    if levels is not None and slots.size and int(levels[slots].min()) < level:
        raise _fail(f"a link on level {level} points to a node below it")
