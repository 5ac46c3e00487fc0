"""The indexing pipeline, in stages: plan (walk, skip what did not change) -> prepare (read,
hash, decode, preprocess: worker threads) -> new or copy -> embed (batched forward pass with
region proposals) -> commit (the one writer) -> prune. See :mod:`fgsearch.ingest.runner`.

Unchanged files (same path, size and mtime) are skipped without being read; a file whose bytes
hash to known content is linked to that content's vectors without decoding (renames, moves,
duplicates); a crash at any point loses at most the batch in flight (:mod:`fgsearch.ingest.commit`).
"""

from fgsearch.ingest.options import IndexOptions, IndexReport, ProgressFn
from fgsearch.ingest.runner import Mapper, run_index

__all__ = ["IndexOptions", "IndexReport", "Mapper", "ProgressFn", "run_index"]
