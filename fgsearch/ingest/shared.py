"""A runner for one of many writers: the work comes from the catalog's queue, not from this process.

Every writer of a library whose catalog is PostgreSQL and whose vector store every machine reaches
runs :func:`run_shared` on the same folders (on any machine). Each one plans (walk, skip what the
catalog has) and queues what changed (a file queued already keeps its row), then claims batches
until the queue is empty: prepare (threads) -> embed -> reserve -> upsert vectors -> complete, the
protocol of :class:`fgsearch.catalog.WorkQueue`. While a writer works on a batch it renews the
claim's lease every third of it (:func:`renewing`), so a batch may take longer than the lease; a
writer that dies stops renewing, its claim expires, and another takes it over and removes what the
dead one wrote (``Claim.undo``).

Deletions are not swept here: a sweep needs one run that saw every file; run ``fgsearch index``
alone (the exclusive writer) to drop files gone from the folders.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from fgsearch.ingest.embed import embed_batch
from fgsearch.ingest.options import IndexOptions, IndexReport, ProgressFn
from fgsearch.ingest.plan import select_changed, walk_roots
from fgsearch.ingest.prepare import Prepared, Preparer

if TYPE_CHECKING:
    from fgsearch.catalog import Claim, WorkItem, WorkQueue
    from fgsearch.library.store import LibraryStore
    from fgsearch.model import Encoder
    from fgsearch.regions import Proposer

log = logging.getLogger(__name__)

#: how long an idle writer waits before it asks the queue again (others hold the last claims)
POLL_S = 0.2


def run_shared(
    store: LibraryStore,
    encoder: Encoder,
    roots: Sequence[str],
    opts: IndexOptions,
    queue: WorkQueue,
    *,
    lease_s: float = 300.0,
    progress: ProgressFn | None = None,
    report: IndexReport | None = None,
) -> IndexReport:
    """Plan ``roots``, queue what changed, and index claimed batches until the queue is empty."""
    from fgsearch.decode import PixelBudget, routed_warnings
    from fgsearch.regions import make_proposer
    from fgsearch.scan import readable_extensions

    t0 = time.perf_counter()
    exts = readable_extensions(opts.extensions)
    report = report if report is not None else IndexReport()
    proposer = make_proposer(store.build.regions)
    cat = store.catalog
    run_id = cat.begin_run()
    abs_roots = [os.path.abspath(os.path.expanduser(r)) for r in roots]
    entries = walk_roots(abs_roots, opts, exts, report)
    report.scanned = len(entries)
    todo = select_changed(cat, entries, opts, run_id, report)
    for root in abs_roots:
        queue.enqueue([(e.path, e.size, e.mtime_ns) for r, e in todo if r == root], root=root)
    known = cat.content_hashes()  # bytes indexed already: a copy is linked, never decoded
    preparer = Preparer(encoder.transform, opts, known, PixelBudget(int(opts.max_megapixels * 1e6)), proposer)
    batch_size = opts.resolved_batch_size(encoder.on_accelerator)
    with routed_warnings(), ThreadPoolExecutor(opts.resolved_workers(), thread_name_prefix="fgsearch-decode") as pool:
        while True:
            claim = queue.claim(batch_size, lease_s)
            _undo(store, claim)
            if not claim.items:
                if not queue.counts()["total"]:
                    break
                time.sleep(POLL_S)  # the last batches are held by other writers (or a dead one's lease runs)
                continue
            entries_of = [(it.root, _Entry(it.path, it.size, it.mtime_ns)) for it in claim.items]
            with renewing(queue, claim.items, lease_s):
                preps = list(pool.map(preparer, entries_of))
                _index_claimed(store, encoder, proposer, queue, claim.items, preps, run_id, report)
            known.update(p.sha256 for p in preps if p.kind == "new")
            if progress:
                progress("index", report.indexed + report.reused + report.failed, len(todo), report.indexed)
    store.global_index.save()
    store.region_index.save()
    cat.end_run(run_id, report.to_dict())
    report.seconds = time.perf_counter() - t0
    return report


class _Entry:
    """A queued file as the prepare stage takes it (what the walk gave for it)."""

    __slots__ = ("mtime_ns", "path", "size")

    def __init__(self, path: str, size: int, mtime_ns: int) -> None:
        self.path, self.size, self.mtime_ns = path, size, mtime_ns


@contextmanager
def renewing(queue: WorkQueue, items: Sequence[WorkItem], lease_s: float) -> Iterator[None]:
    """Renew the lease of ``items`` every ``lease_s / 3`` seconds while the block runs (a thread).

    The lease then measures how long a writer may be silent before others take its work, not how
    long a batch may take: a slow batch (a big model on a CPU, a loaded machine) keeps its claim. A
    renewal that fails (the catalog unreachable for a moment) is logged and tried again at the next
    beat; a claim that is lost anyway is found at ``reserve``/``complete`` (:class:`ClaimLostError`)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_s / 3):
            try:
                queue.renew(items, lease_s)
            except Exception as e:  # the next beat tries again; a lost claim is caught at commit
                log.warning("renewing the claim on %d files failed: %s", len(items), e)

    thread = threading.Thread(target=beat, name="fgsearch-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _undo(store: LibraryStore, claim: Claim) -> None:
    """Remove the vectors a dead writer's expired claim wrote (their catalog rows are gone)."""
    cids, rids = claim.undo
    if cids:
        store.global_index.remove(np.asarray(cids, np.int64), missing="ignore")
        store.region_index.remove(np.asarray(rids, np.int64), missing="ignore")
        store.global_index.flush()
        store.region_index.flush()


def _index_claimed(
    store: LibraryStore,
    encoder: Encoder,
    proposer: Proposer,
    queue: WorkQueue,
    items: list[WorkItem],
    preps: list[Prepared],
    run_id: int,
    report: IndexReport,
) -> None:
    """One claimed batch: failures recorded, new images embedded and committed, copies linked."""
    new: list[tuple[WorkItem, Prepared]] = []
    copies: list[tuple[WorkItem, str]] = []
    for it, prep in zip(items, preps, strict=True):
        if prep.kind == "failed":
            queue.fail(it, prep.reason, run_id)
            report.note_failure(prep.path, prep.reason)
        elif prep.kind == "reuse":
            copies.append((it, prep.sha256))
        else:
            new.append((it, prep))
    if not new:
        later = queue.link(copies, run_id)
        report.reused += len(copies) - len(later)
        return
    emb = embed_batch(encoder, proposer, [p for _, p in new])
    contents = [
        {
            "sha256": p.sha256,
            "width": p.width,
            "height": p.height,
            "captured_at": p.captured_at,
            "boxes": [tuple(map(float, b)) for b in emb.boxes[i]],
            "proposer": proposer.name,
        }
        for i, (_, p) in enumerate(new)
    ]
    res = queue.reserve([it for it, _ in new], contents)
    row = {it.id: i for i, (it, _) in enumerate(new)}
    rows = [row[it.id] for it in res.items]
    if rows:
        from fgsearch.library.reuse import records_for

        records = records_for(store.global_index, [new[r][1].sha256 for r in rows], [emb.boxes[r] for r in rows])
        gpay = {"record": records[0]} if records else None
        store.global_index.add(np.asarray(res.content_ids, np.int64), emb.images[rows], upsert=True, payload=gpay)
        flat = [rid for rids in res.region_ids for rid in rids]
        if flat:
            owners = [cid for cid, rids in zip(res.content_ids, res.region_ids, strict=True) for _ in rids]
            ranks = [k for rids in res.region_ids for k in range(len(rids))]
            vectors = np.concatenate([emb.regions[r] for r in rows])
            payload: dict[str, list] = {"image_id": owners, "region": ranks}
            if records:
                payload["record"] = records[1]
            store.region_index.add(np.asarray(flat, np.int64), vectors, upsert=True, payload=payload)
        store.global_index.flush()
        store.region_index.flush()
        queue.complete(res, run_id)
        report.indexed += len(res.items)
        report.regions += len(flat)
    copies += res.copies
    later = queue.link(copies, run_id)
    report.reused += len(copies) - len(later)
