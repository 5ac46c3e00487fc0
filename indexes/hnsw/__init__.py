"""fgsearch's HNSW search kernel for FAISS graphs.

* ``_hnsw_kernel.c``: the C source (built by ``pip install`` as ``fgsearch.indexes.hnsw._hnsw_kernel``,
  loaded by :mod:`fgsearch.indexes.native`);
* :mod:`.kernel`: its ctypes wrapper (:class:`HnswKernel`, which variant the CPU runs);
* :mod:`.links`: level-0 link reinforcement after a FAISS build.
"""

from __future__ import annotations

from .kernel import ENV, ISAS, MAX_LEVEL0_LINKS, HnswKernel, kernel_isa, kernel_missing_reason
from .links import reinforce_links

__all__ = ["ENV", "ISAS", "MAX_LEVEL0_LINKS", "HnswKernel", "kernel_isa", "kernel_missing_reason", "reinforce_links"]
