"""The compiled helper library (``hnsw/_hnsw_kernel.c``, built by ``pip install``), loaded with ctypes.

One shared library holds two things: the HNSW search kernel (wrapped by :mod:`.hnsw.kernel`) and
``fg_pread_rows``, a batched ``pread`` of vector rows that the journaled store uses to re-rank
candidates (:func:`pread_rows`). This module only loads the library and declares its C signatures,
so the store depends on it without depending on the search kernel. Where the extension was not
built, :func:`load_library` returns None and :func:`missing_reason` says why.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

_lib: Any = None
_lib_error: str | None = None
_lock = threading.Lock()


def load_library() -> Any:
    """The kernel's shared library (ctypes), or None with :func:`missing_reason` saying why."""
    global _lib, _lib_error
    with _lock:
        if _lib is not None or _lib_error is not None:
            return _lib
        built = _extension_file()
        if built is None:
            _lib_error = "the C extension fgsearch.indexes.hnsw._hnsw_kernel is not built"
            return None
        try:
            _lib = _declare(ctypes.CDLL(str(built)))
        except OSError as e:
            _lib_error = f"the C extension {built} cannot be loaded ({e})"
        return _lib


def _extension_file() -> Path | None:
    """Where pip built the extension (beside its source, ``hnsw/``). Found by name, not imported:
    importing it would import the ``hnsw`` package, whose wrapper loads this module."""
    import importlib.machinery

    folder = Path(__file__).resolve().parent / "hnsw"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (folder / f"_hnsw_kernel{suffix}").is_file():
            return folder / f"_hnsw_kernel{suffix}"
    return None


def _declare(lib: Any) -> Any:
    """Set the C signatures of the library's functions."""
    p = ctypes.c_void_p
    lib.fg_hnsw_isa.restype = ctypes.c_int
    lib.fg_hnsw_scratch_bytes.restype = ctypes.c_int64
    lib.fg_hnsw_scratch_bytes.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.fg_pread_rows.restype = ctypes.c_int64
    lib.fg_pread_rows.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, p]
    lib.fg_hnsw_search.restype = ctypes.c_int
    lib.fg_hnsw_search.argtypes = [
        ctypes.c_int,  # isa
        p, p, p,  # neighbors, offsets, cum_nneighbor_per_level
        ctypes.c_int32, ctypes.c_int32,  # entry point, max level
        p, ctypes.c_int64, ctypes.c_int,  # codes, n, d
        p, p, ctypes.c_int64,  # vdiff, queries, nq
        ctypes.c_int, ctypes.c_int,  # ef, r
        p, p, p,  # excluded, visited, scratch
        p, p,  # out ids, out scores
    ]  # fmt: skip
    return lib


def missing_reason() -> str | None:
    """Why the library is unavailable (None when it is built)."""
    load_library()
    return _lib_error


def pread_rows(fd: int, base: int, rows: np.ndarray, out: np.ndarray) -> bool:
    """Read float32 rows ``rows`` of a file (row ``i`` at ``base + i * row bytes``) into ``out``.

    One C call instead of one ``os.preadv`` per row. Returns False when the kernel is not built
    (the caller reads them itself); raises OSError on a short read.
    """
    lib = load_library()
    if lib is None or os.name == "nt":
        return False
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    row_bytes = out.shape[1] * out.itemsize
    got = lib.fg_pread_rows(fd, base, row_bytes, rows.ctypes.data, rows.size, out.ctypes.data)
    if got != rows.size:
        raise OSError(f"short read of row {int(rows[max(got, 0)])} ({row_bytes} bytes at offset {base})")
    return True
