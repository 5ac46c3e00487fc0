"""FAISS itself, imported lazily, and the small FAISS helpers the tiers share."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, IndexCorruptError

log = logging.getLogger(__name__)

#: Vectors added to a FAISS structure per call.
ADD_CHUNK = 65536


def load_faiss() -> Any:
    """The ``faiss`` module (a core dependency; a clear error where it is missing)."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
        raise BackendUnavailableError(
            "the faiss backend needs FAISS: pip install faiss-cpu (or fgsearch[gpu] for GPU FAISS)"
        ) from e
    return faiss


def mmap_flags(tier: str) -> int:
    """FAISS read flags that map a snapshot's file instead of reading it: the IVF lists, or the
    codes and graph of an HNSW index (``IO_FLAG_MMAP_IFC``; 0 on a FAISS build without it)."""
    faiss = load_faiss()
    return int(faiss.IO_FLAG_MMAP if tier == "ivf" else getattr(faiss, "IO_FLAG_MMAP_IFC", 0))


def prefetch(path: Any) -> None:
    """Have the kernel read a mapped file into the page cache, in the background. Mapped, a file
    that is not cached (after a reboot) is read page by page as searches touch it, each a random
    read (1M vectors: the first searches took ~140 ms instead of ~8); one sequential read ahead
    brings it in at disk speed while searches already run."""
    if not hasattr(os, "posix_fadvise"):
        return

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except OSError as e:  # only a hint: searches read what they need anyway
            log.debug("read-ahead of %s failed: %s", path, e)

    threading.Thread(target=run, name="fgsearch-prefetch", daemon=True).start()


#: Allowed ids up to this bound are passed to FAISS as a bitmap (at most 4 MiB): one bit test per
#: node the search meets, where ``IDSelectorBatch`` hashes (and building its hash set of 500k ids
#: took longer than the search it filters; bench_query.py).
BITMAP_MAX_ID = 1 << 25


def allowed_selector(ids: np.ndarray) -> Any:
    """A FAISS selector that lets only ``ids`` (non-negative int64) through."""
    faiss = load_faiss()
    top = int(ids.max()) if ids.size else 0
    if top >= BITMAP_MAX_ID:
        return faiss.IDSelectorBatch(ids)
    bits = np.zeros(top + 1, dtype=bool)
    bits[ids] = True
    bitmap = np.packbits(bits, bitorder="little")  # FAISS reads bit (i % 8) of byte i // 8
    sel = faiss.IDSelectorBitmap(bitmap.size, faiss.swig_ptr(bitmap))
    sel._keep = bitmap  # FAISS keeps a pointer: the bytes live as long as the selector
    return sel


def excluding(ids: np.ndarray) -> Any:
    """A FAISS selector that lets every id through except ``ids``."""
    faiss = load_faiss()
    batch = faiss.IDSelectorBatch(ids)
    sel = faiss.IDSelectorNot(batch)
    sel._keep = batch  # keep the wrapped selector alive as long as the outer one
    return sel


def read_faiss_file(fpath: Path, flags: int, generation: int) -> tuple[Any, bool]:
    """``(index, memory_mapped)``: ``faiss.read_index`` with ``flags``, or read into memory when
    memory-mapping fails. A file FAISS cannot read at all is an :class:`IndexCorruptError` naming
    the file in one line; FAISS's own text (a C++ function and source line) goes to the debug log."""
    faiss = load_faiss()
    try:
        return faiss.read_index(str(fpath), flags), bool(flags)
    except RuntimeError as e:
        error = e
        log.debug("FAISS cannot read %s with flags %#x: %s", fpath, flags, e)
    if flags:
        try:
            ann = faiss.read_index(str(fpath))
        except RuntimeError as e:
            log.debug("FAISS cannot read %s: %s", fpath, e)
        else:
            log.warning("cannot memory-map %s; reading it into memory", fpath)
            return ann, False
    raise IndexCorruptError(
        f"cannot read the backend files of generation {generation}: FAISS cannot read {fpath}"
    ) from error
