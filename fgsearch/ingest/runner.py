"""The index run: plan -> prepare (worker threads) -> new or copy -> embed -> commit -> prune.

:func:`run_index` runs the stages of :mod:`~fgsearch.ingest.plan`, :mod:`~fgsearch.ingest.prepare`,
:mod:`~fgsearch.ingest.embed` and :mod:`~fgsearch.ingest.commit` with threads in one process: files
are prepared ahead in a thread pool and come back in walk order; this thread decides new content
or copy, embeds a batch whenever one is full and commits it. Another runner (processes, machines)
maps the same stage functions and keeps one writer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from fgsearch.ingest.batcher import Batcher
from fgsearch.ingest.commit import Committer, prune
from fgsearch.ingest.device import DevicePreparer
from fgsearch.ingest.options import IndexOptions, IndexReport, ProgressFn
from fgsearch.ingest.plan import select_changed, walk_roots
from fgsearch.ingest.prepare import Prepared, Preparer, ordered

if TYPE_CHECKING:
    from fgsearch.library.store import LibraryStore
    from fgsearch.model import Encoder
    from fgsearch.regions import ImageBoxes, Proposer


class Mapper(Protocol):
    """Runs the prepare and embed stages of a run's planned files somewhere (threads in this
    process: :func:`prepare_and_embed`; Ray workers: :class:`fgsearch.ingest.ray_runner.RayMapper`)
    and hands every result, in plan order, to this process's one writer (``committer``).
    ``reserved``: the content hashes the library holds (the mapper adds what it queues). Returns
    what the proposer said of each new image (for its end-of-run warnings)."""

    def __call__(
        self,
        store: LibraryStore,
        encoder: Encoder,
        committer: Committer,
        todo: list[tuple[str, Any]],
        reserved: set[str],
        opts: IndexOptions,
        progress: ProgressFn | None,
    ) -> Sequence[ImageBoxes]: ...


def run_index(
    store: LibraryStore,
    encoder: Encoder,
    roots: Sequence[str],
    opts: IndexOptions,
    progress: ProgressFn | None = None,
    report: IndexReport | None = None,
    mapper: Mapper | None = None,
) -> IndexReport:
    """Index ``roots`` (folders, files or object-store URLs) into an open, writable store with
    ``encoder`` (see :mod:`fgsearch.ingest.commit` for what survives a crash). ``report``: one to
    fill in, e.g. holding the warnings of what the caller did first (the library's heal step).
    ``mapper``: where the prepare and embed stages run (default: threads of this process)."""
    from fgsearch.ingest.sources import is_url, walk_urls
    from fgsearch.scan import readable_extensions

    t0 = time.perf_counter()
    from fgsearch.ingest.pipeline import resolve_pipeline

    exts = readable_extensions(opts.extensions)  # a bad --ext fails before anything is recorded
    resolve_pipeline(opts, encoder)  # so does a --pipeline this model or device cannot run
    report = report if report is not None else IndexReport()
    cat = store.catalog
    abs_roots = [r if is_url(r) else os.path.abspath(os.path.expanduser(r)) for r in roots]
    urls = [r for r in abs_roots if is_url(r)]
    url_entries = walk_urls(urls, opts, exts, report) if urls else []  # a bad URL fails before the run begins
    run_id = cat.begin_run()
    entries = walk_roots([r for r in abs_roots if not is_url(r)], opts, exts, report) + url_entries
    report.scanned = len(entries)
    todo = select_changed(cat, entries, opts, run_id, report)
    proposer = _proposer_for(store)
    committer = Committer(store, run_id, report, proposer.name)
    if store.reuse is not None:  # a rebuild from the vector files: the serial batcher takes their vectors
        mapper, opts = None, replace(opts, pipeline="serial")
    seen = (mapper or prepare_and_embed)(store, encoder, committer, todo, cat.content_hashes(), opts, progress)
    store.reuse = None  # a rebuild's recorded vectors: used by its first run only (frees them)
    cat.commit()
    report.warnings.extend(proposer.run_warnings(seen))
    if opts.prune:
        report.pruned = prune(store, run_id, abs_roots, opts.prune_unselected)
    store.global_index.save()
    store.region_index.save()
    cat.end_run(run_id, report.to_dict())
    report.seconds = time.perf_counter() - t0
    return report


def prepare_and_embed(
    store: LibraryStore,
    encoder: Encoder,
    committer: Committer,
    todo: list[tuple[str, Any]],
    reserved: set[str],
    opts: IndexOptions,
    progress: ProgressFn | None,
) -> Sequence[ImageBoxes]:
    """The thread mapper: prepare the planned files in worker threads (in walk order), embed and
    commit in this thread (or, with ``--pipeline``, in the pipeline's threads:
    :mod:`fgsearch.ingest.pipeline`)."""
    batch_size = opts.resolved_batch_size(encoder.on_accelerator)
    batcher = _batcher(encoder, _proposer_for(store), committer, batch_size, reserved, opts)
    try:
        _prepare_and_embed(batcher, opts, todo, progress, committer.report)
    finally:
        batcher.close()  # what was handed off is committed, even on Ctrl-C
    times = getattr(batcher, "times", None)
    if times is not None:
        committer.report.stage_seconds = {k: round(v, 3) for k, v in times.seconds.items()}
    return batcher.seen


def _prepare_and_embed(
    batcher: Batcher, opts: IndexOptions, todo: list, progress: ProgressFn | None, report: IndexReport
) -> None:
    """Prepare the planned files in worker threads (in walk order) and feed them to the batcher."""
    from fgsearch.decode import PixelBudget, routed_warnings

    budget = PixelBudget(int(opts.max_megapixels * 1e6))
    kind = DevicePreparer if getattr(batcher, "stager", None) is not None else Preparer
    preparer = kind(batcher.encoder.transform, opts, batcher.reserved, budget, batcher.proposer)
    times = getattr(batcher, "times", None)
    prepare = preparer if times is None else _timed(preparer, times)
    done = 0
    if progress:
        progress("index", 0, len(todo), 0)
    with (
        routed_warnings(),
        ThreadPoolExecutor(max_workers=opts.resolved_workers(), thread_name_prefix="fgsearch-decode") as pool,
    ):
        for prep in ordered(pool, prepare, todo, ahead=max(2 * batcher.batch_size, 8)):
            done += 1
            batcher.add(prep)
            if progress:
                progress("index", done, len(todo), report.indexed)
        batcher.flush()
    if progress:
        progress("index", done, len(todo), report.indexed)


def _batcher(
    encoder: Encoder, proposer: Proposer, committer: Committer, size: int, known: set[str], opts: IndexOptions
) -> Batcher:
    """The serial batcher, or the pipelined one (:mod:`fgsearch.ingest.pipeline`) as ``opts.pipeline`` says."""
    from fgsearch.ingest.pipeline import PipelinedBatcher, resolve_pipeline

    pipeline = resolve_pipeline(opts, encoder)
    if pipeline == "serial":
        return Batcher(encoder, proposer, committer, size, known)
    stager = None
    if pipeline == "device":
        from fgsearch.ingest.device import DeviceStager

        stager = DeviceStager(encoder.transform, encoder.device_name, max_megapixels=opts.max_megapixels)
    return PipelinedBatcher(encoder, proposer, committer, size, known, stager=stager)


def _timed(preparer: Preparer, times: Any) -> Any:
    """The preparer, its seconds (summed over the worker threads) added to ``prepare``."""

    def run(item: Any) -> Prepared:
        with times.timed("prepare"):
            return preparer(item)

    return run


def _proposer_for(store: LibraryStore) -> Proposer:
    from fgsearch.regions import make_proposer

    return make_proposer(store.build.regions)
