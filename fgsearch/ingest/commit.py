"""Commit stage of an index run: the one writer of a library's store.

Consistency protocol, per batch of new images (:meth:`Committer.store`):

1. the catalog reserves content and region ids in state ``pending`` (commit);
2. the vectors go into both vector indexes, which are flushed (journaled, fsynced);
3. the catalog marks the contents ``ok`` and writes their file rows (commit).

A crash between 1 and 3 leaves ``pending`` rows; the next writer removes their ids from the
indexes and drops them before doing anything else (:func:`fgsearch.library.doctor.recover`). Ids
are never reused, so an orphan vector can never be mistaken for a new image. A copy (bytes that
hash to known content) is linked to that content's vectors once the content is committed.

When the catalog and both vector indexes live in one PostgreSQL database (the pgvector backend),
the three steps are ONE transaction: the reserved rows, the vectors and the confirmation commit
together or not at all, so a crash leaves neither ``pending`` rows nor orphan vectors. The indexes
then flush only to build or calibrate their search (the batch is committed already).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.library.reuse import records_for

if TYPE_CHECKING:
    from fgsearch.ingest.embed import Embedded
    from fgsearch.ingest.options import IndexReport
    from fgsearch.ingest.prepare import Prepared
    from fgsearch.library.store import LibraryStore


class Committer:
    """Writes one run's results into the store: failures, new contents with their vectors, copies."""

    def __init__(self, store: LibraryStore, run_id: int, report: IndexReport, proposer_name: str) -> None:
        self.store = store
        self.run_id = run_id
        self.report = report
        self.proposer_name = proposer_name
        self._joint: bool | None = None  # catalog and vectors in one database (asked once)

    def one_transaction(self) -> bool:
        """Whether a batch's catalog rows and vectors can commit in one transaction: the catalog is
        PostgreSQL and both indexes write on its connection to the same database (``joins``)."""
        if self._joint is None:
            cat, idxs = self.store.catalog, (self.store.global_index, self.store.region_index)
            self._joint = False
            if cat.pg and all(callable(getattr(i, "joins", None)) for i in idxs):
                with cat.transaction() as conn:
                    self._joint = all(i.joins(conn) for i in idxs)  # type: ignore[attr-defined]
        return self._joint

    def failure(self, prep: Prepared) -> None:
        self.store.catalog.record_failure(prep.path, prep.size, prep.mtime_ns, prep.reason, self.run_id)
        self.report.note_failure(prep.path, prep.reason)

    def store_batch(self, batch: Sequence[Prepared], emb: Embedded) -> None:
        """The three-step commit of a batch of new images (see the module docstring)."""
        cat, gidx, ridx = self.store.catalog, self.store.global_index, self.store.region_index
        items = [
            {
                "sha256": p.sha256,
                "width": p.width,
                "height": p.height,
                "captured_at": p.captured_at,
                "boxes": [tuple(map(float, b)) for b in emb.boxes[i]],
                "proposer": self.proposer_name,
            }
            for i, p in enumerate(batch)
        ]
        files = [(p.path, p.size, p.mtime_ns) for p in batch]
        joint = self.one_transaction()  # steps 1-3 in one transaction: flush after its commit
        with cat.transaction() if joint else contextlib.nullcontext() as conn:
            content_ids, region_ids = cat.reserve_contents(items)
            n_regions = self._add_vectors(content_ids, region_ids, batch, emb, {"connection": conn} if joint else {})
            if not joint:  # the vectors are durable before the contents are marked ok
                gidx.flush()
                ridx.flush()
            cat.confirm_contents(content_ids, files, self.run_id)
        if joint:
            gidx.flush()
            ridx.flush()
        self.report.indexed += len(batch)
        self.report.regions += n_regions

    def _add_vectors(
        self,
        content_ids: list[int],
        region_ids: list[list[int]],
        batch: Sequence[Prepared],
        emb: Embedded,
        joint: dict[str, Any],
    ) -> int:
        """Add a batch's global and region vectors (``joint``: the catalog's connection), each with
        its record where the backend keeps records (what a rebuild without the catalog needs);
        returns the number of regions."""
        gidx = self.store.global_index
        records = records_for(gidx, [p.sha256 for p in batch], emb.boxes)
        gidx.add(
            np.asarray(content_ids, np.int64), emb.images, payload={"record": records[0]} if records else None, **joint
        )
        flat_regions = [rid for rids in region_ids for rid in rids]
        if flat_regions:
            owners = [cid for cid, rids in zip(content_ids, region_ids, strict=True) for _ in rids]
            ranks = [k for rids in region_ids for k in range(len(rids))]
            payload: dict[str, list] = {"image_id": owners, "region": ranks}
            if records:
                payload["record"] = records[1]
            self.store.region_index.add(
                np.asarray(flat_regions, np.int64), np.concatenate(emb.regions), payload=payload, **joint
            )
        return len(flat_regions)

    def link_copies(self, copies: Sequence[Prepared]) -> None:
        """Files whose content is committed: their rows point at that content's vectors."""
        if not copies:
            return
        for p in copies:
            self.store.catalog.link_file(p.path, p.size, p.mtime_ns, p.sha256, self.run_id)
        self.report.reused += len(copies)
        self.store.catalog.commit()


def prune(store: LibraryStore, run_id: int, roots: list[str], unselected: bool) -> int:
    """Sweep: drop the files under ``roots`` that are gone from disk, and contents no file uses any
    more. Files still on disk that this run did not select (``--include``, ``--exclude``, hidden)
    are kept unless ``unselected`` says to drop them too. Returns the number of files dropped."""
    from fgsearch.ingest.sources import source_exists

    cat = store.catalog
    if not unselected:
        cat.mark_seen([p for p in cat.unseen_paths(run_id, roots) if source_exists(p)], run_id)
        cat.commit()
    removed_contents, removed_regions = cat.sweep(run_id, roots)
    if len(removed_contents) or len(removed_regions):
        store.global_index.remove(np.asarray(removed_contents, np.int64), missing="ignore")
        store.region_index.remove(np.asarray(removed_regions, np.int64), missing="ignore")
        store.global_index.flush()
        store.region_index.flush()
    return cat.last_sweep_files
