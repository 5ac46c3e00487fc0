"""The journaled snapshot store shared by the file-backed backends (exact, faiss).

* :mod:`.files`: manifest, atomic writes, ``.npy`` snapshots, digests;
* :mod:`.journal`: the checksummed change records appended between snapshots;
* :mod:`.rows`: the rows in memory (memory-mapped snapshot + delta) and their lookups;
* :mod:`.journaled`: :class:`JournaledStore`, which ties them together (open, flush, compact).
"""

from __future__ import annotations

from .files import MANIFEST, read_manifest
from .journaled import ExtraBuilder, JournaledStore

__all__ = ["MANIFEST", "ExtraBuilder", "JournaledStore", "read_manifest"]
