"""Checks of the FAISS HNSW graphs the FAISS backend searches (:mod:`.check`).

fgsearch builds, stores and searches its HNSW graphs with FAISS (``IndexHNSWSQ`` searched with
``SearchParametersHNSW``); what it adds is a check, once per snapshot, of what FAISS's reader lets
through and FAISS's search would trust (entry point and levels in range). Issue 24 removed the
project's own C search kernel and its level-0 link reinforcement (see docs/kernel-decision.md).
"""

from __future__ import annotations

from .check import FAISS_RANGE, check_graph, faiss_version_reason

__all__ = ["FAISS_RANGE", "check_graph", "faiss_version_reason"]
