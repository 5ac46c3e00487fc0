"""The indexing pipeline: walk -> read + hash -> decode + preprocess (worker threads) ->
batched forward pass (global + regions) -> vectors and catalog rows committed together.

Consistency protocol, per batch of new images:

1. the catalog reserves content and region ids in state ``pending`` (commit);
2. the vectors go into both vector indexes, which are flushed (journaled, fsynced);
3. the catalog marks the contents ``ok`` and writes their file rows (commit).

A crash between 1 and 3 leaves ``pending`` rows; the next writer removes their ids from the
indexes and drops them before doing anything else (:func:`recover`). Ids are never reused, so an
orphan vector can never be mistaken for a new image. Unchanged files (same path, size and mtime)
are skipped without being read; a file whose bytes hash to known content is linked to that
content's vectors without decoding (renames, moves, duplicates).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.errors import FgsearchError, InputError
from fgsearch.regions import RegionSettings, SidecarBoxes, SidecarMatch, auto_boxes_batch, propose

if TYPE_CHECKING:
    from fgsearch.decode import PixelBudget
    from fgsearch.library import Library

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexOptions:
    """What ``fgsearch index`` does; defaults are what a user expects."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()  # extra file extensions to walk (Pillow-readable ones are walked anyway)
    hidden: bool = False
    prune: bool = True
    retry_failed: bool = False
    batch_size: int = 0  # images per forward pass and per commit; 0 = 32 on a CPU, 256 on a GPU
    workers: int = 0  # decode threads; 0 = min(8, CPU count)
    max_megapixels: float = 100.0
    min_side: int = 16
    fast_decode: bool = False  # JPEG draft decoding: faster, not bit-exact with the reference resize
    follow_links: bool = False  # follow symbolic links that lead outside the indexed folders
    prune_unselected: bool = False  # also drop files still on disk that include/exclude/hidden left out

    def resolved_workers(self) -> int:
        return self.workers if self.workers > 0 else min(8, os.cpu_count() or 2)

    def resolved_batch_size(self, device_type: str) -> int:
        """A GPU gets bigger batches: the per-batch commit (fsync of both indexes and the catalog)
        would otherwise cost as much as its forward pass."""
        if self.batch_size < 0:
            raise InputError(f"--batch-size must be >= 1 (or 0 for automatic), got {self.batch_size}")
        if self.batch_size > 0:
            return self.batch_size
        return 256 if device_type == "cuda" else 32


@dataclass
class IndexReport:
    """Counts of one run, and the failures it recorded (path, reason)."""

    scanned: int = 0
    unchanged: int = 0
    indexed: int = 0
    reused: int = 0
    failed: int = 0
    pruned: int = 0
    regions: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # things a user should hear about (not failures)

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "unchanged": self.unchanged,
            "indexed": self.indexed,
            "reused": self.reused,
            "failed": self.failed,
            "pruned": self.pruned,
            "regions": self.regions,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
            "warnings": list(self.warnings),
        }


@dataclass
class _Prepared:
    kind: str  # "new", "reuse", "failed"
    path: str
    size: int
    mtime_ns: int
    sha256: str = ""
    pixels: Any = None  # the model family's preprocessed item (ImageItem)
    width: int = 0
    height: int = 0
    captured_at: Any = None
    boxes: np.ndarray | None = None
    sidecar: SidecarMatch | None = None  # what the sidecar said about this image, if one is in use
    reason: str = ""


ProgressFn = Callable[[str, int, int, int], None]  # (stage, files done, files to do, images embedded)


@dataclass
class _Worker:
    """What a decode worker needs: read, hash, decode and preprocess one file at a time.

    ``known`` holds the hashes already embedded or queued for embedding; it only grows, so a hit
    means the decode can be skipped. A miss decides nothing: the main thread decides new vs reuse
    (:func:`run_index`), because an earlier copy may be queued after this worker looked.
    ``budget`` bounds the pixels decoded at once by all workers together (peak memory)."""

    lib: Library
    opts: IndexOptions
    known: set[str]
    budget: PixelBudget
    sidecar: SidecarBoxes | None

    def __call__(self, item: tuple[str, Any]) -> _Prepared:
        """One file; never raises for a bad file (the reason is in the result)."""
        from fgsearch.decode import UnsafeFileError, open_regular

        root, entry = item
        base = _Prepared("failed", entry.path, entry.size, entry.mtime_ns)
        try:
            with open_regular(entry.path) as f:
                source = _read_and_hash(f, base)
                if base.sha256 in self.known:
                    base.kind = "reuse"
                    return base
                return self._decode(source, base, root)  # never raises
        except UnsafeFileError:
            base.reason = "not a regular file (a pipe, device or socket); it is never read"
        except PermissionError:
            base.reason = "permission denied; make the file readable (chmod +r)"
        except OSError as e:
            base.reason = f"cannot read: {e.strerror or e}"
        return base

    def _decode(self, source: bytes | Any, base: _Prepared, root: str | None) -> _Prepared:
        from fgsearch.decode import load_image

        transform = self.lib.encoder.transform
        try:
            with self.budget.hold() as reserve:  # the full-size image lives until item()
                loaded = load_image(
                    source,
                    max_megapixels=self.opts.max_megapixels,
                    min_side=self.opts.min_side,
                    draft=transform.image_size if self.opts.fast_decode else None,
                    reserve=reserve,
                )
                base.pixels = transform.item(loaded.image)
                base.width, base.height, base.captured_at = loaded.width, loaded.height, loaded.captured_at
                heard = loaded.warnings
                del loaded  # the full-size image is freed before its pixels go back to the budget
            for warning in heard:
                logger.info("%s: %s", base.path, warning)
            if self.sidecar is not None:
                from fgsearch.boxes import boxes_array

                base.sidecar = self.sidecar.match(base.path, root, base.width, base.height)
                base.boxes = boxes_array(base.sidecar.boxes)
        except FgsearchError as e:  # ImageError, or a sidecar's DataError
            base.reason = str(e)
            return base
        except Exception as e:  # a decoder bug on one odd file must not stop the run
            logger.debug("unexpected error on %s", base.path, exc_info=True)
            base.reason = f"cannot decode ({type(e).__name__}: {e})"
            return base
        base.kind = "new"
        return base


READ_WHOLE_BYTES = 64 << 20  # smaller files are read once into memory; bigger ones are streamed


def _read_and_hash(f: Any, base: _Prepared) -> bytes | Any:
    """SHA-256 of the file into ``base.sha256``; returns what to decode from: the bytes themselves
    for ordinary files, or the file (rewound) for big ones, so a worker never holds a huge file."""
    digest = hashlib.sha256()
    head = f.read(READ_WHOLE_BYTES + 1)
    digest.update(head)
    if len(head) <= READ_WHOLE_BYTES:
        base.sha256 = digest.hexdigest()
        return head
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    base.sha256 = digest.hexdigest()
    f.seek(0)
    return f


def _ordered(
    pool: ThreadPoolExecutor, fn: Callable[[Any], _Prepared], items: Sequence[Any], ahead: int
) -> Iterator[_Prepared]:
    """Map ``fn`` over items in worker threads, yielding in order with bounded look-ahead."""
    pending: list[Future[_Prepared]] = []
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            break
    while pending:
        fut = pending.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))
        yield fut.result()


def run_index(
    lib: Library,
    roots: Sequence[str],
    opts: IndexOptions,
    progress: ProgressFn | None = None,
    max_failures_listed: int = 20,
) -> IndexReport:
    """Index ``roots`` into an open, writable library; see the module docstring for guarantees.

    Stages: walk (:func:`_walk_roots`) -> skip what did not change (:func:`_select_changed`) ->
    read, hash and decode in worker threads (:class:`_Worker`) -> new or copy, batched forward
    pass and commit in this thread (:class:`_Assembler`) -> prune (:func:`_prune`)."""
    from fgsearch.decode import PixelBudget, routed_warnings
    from fgsearch.scan import readable_extensions

    t0 = time.perf_counter()
    exts = readable_extensions(opts.extensions)  # a bad --ext fails before anything is recorded
    batch_size = opts.resolved_batch_size(lib.encoder.device.type)
    report = IndexReport()
    cat = lib.catalog
    _heal(lib, report)
    settings = lib.region_settings
    run_id = cat.begin_run()
    roots = [os.path.abspath(os.path.expanduser(r)) for r in roots]
    entries = _walk_roots(roots, opts, exts, report)
    report.scanned = len(entries)
    todo = _select_changed(lib, entries, opts, run_id, report, max_failures_listed)

    sidecar = SidecarBoxes(settings.sidecar) if settings.proposer == "sidecar" and settings.sidecar else None
    assembler = _Assembler(lib, settings, run_id, batch_size, report, cat.content_hashes(), max_failures_listed)
    work = _Worker(lib, opts, assembler.reserved, PixelBudget(int(opts.max_megapixels * 1e6)), sidecar)
    done = 0
    if progress:
        progress("index", 0, len(todo), 0)
    with (
        routed_warnings(),
        ThreadPoolExecutor(max_workers=opts.resolved_workers(), thread_name_prefix="fgsearch-decode") as pool,
    ):
        for prep in _ordered(pool, work, todo, ahead=max(2 * batch_size, 8)):
            done += 1
            assembler.add(prep)
            if progress:
                progress("index", done, len(todo), report.indexed)
        assembler.flush()
    cat.commit()
    if progress:
        progress("index", done, len(todo), report.indexed)
    if sidecar is not None:
        report.warnings.extend(assembler.sidecar_notes.warnings(settings.sidecar or ""))

    if opts.prune:
        _prune(lib, run_id, roots, opts.prune_unselected)
        report.pruned = cat.last_sweep_files
    lib.global_index.save()
    lib.region_index.save()
    cat.end_run(run_id, report.to_dict())
    report.seconds = time.perf_counter() - t0
    return report


def _select_changed(
    lib: Library, entries: list[tuple[str, Any]], opts: IndexOptions, run_id: int, report: IndexReport, limit: int
) -> list[tuple[str, Any]]:
    """Skip stage: files whose path, size and mtime the catalog already has are marked seen (a
    known failure stays failed unless ``retry_failed``); walk errors are recorded. Returns the
    (root, entry) pairs left to read."""
    cat = lib.catalog
    known_files = cat.file_states([e.path for _, e in entries if not e.error])
    todo: list[tuple[str, Any]] = []
    unchanged: list[str] = []
    for root, e in entries:
        if e.error:
            cat.record_failure(e.path, e.size, e.mtime_ns, e.error, run_id)
            _note_failure(report, e.path, e.error, limit)
            continue
        st = known_files.get(e.path)
        if (
            st is not None
            and st.size == e.size
            and st.mtime_ns == e.mtime_ns
            and (st.status == "ok" or (st.status == "failed" and not opts.retry_failed))
        ):
            unchanged.append(e.path)
            if st.status == "failed":
                report.failed += 1
            continue
        todo.append((root, e))
    cat.mark_seen(unchanged, run_id)
    report.unchanged = len(unchanged)
    cat.commit()
    return todo


@dataclass
class _Assembler:
    """Main-thread stage: takes the workers' results in walk order, decides new content or copy,
    and embeds and commits a batch whenever one is full.

    ``reserved`` holds the content already embedded plus the content queued for embedding by this
    run. Only this thread adds to it, as it assembles batches, so a second copy of the same bytes
    is always linked to the first (committed in its batch before any link is written), never
    reserved twice, however far ahead the workers decoded it."""

    lib: Library
    settings: RegionSettings
    run_id: int
    batch_size: int
    report: IndexReport
    reserved: set[str]
    failures_listed: int
    batch: list[_Prepared] = field(default_factory=list)
    links: list[_Prepared] = field(default_factory=list)
    sidecar_notes: _SidecarNotes = field(default_factory=lambda: _SidecarNotes())

    def add(self, prep: _Prepared) -> None:
        if prep.kind == "failed":
            self.lib.catalog.record_failure(prep.path, prep.size, prep.mtime_ns, prep.reason, self.run_id)
            _note_failure(self.report, prep.path, prep.reason, self.failures_listed)
        elif prep.sha256 in self.reserved:  # a worker's "reuse", or a copy it decoded before its original was queued
            self.links.append(prep)
        else:
            self.batch.append(prep)
            self.reserved.add(prep.sha256)
            if prep.sidecar is not None:
                self.sidecar_notes.note(prep.sidecar)
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Embed and commit the batch, then link the copies (their content is committed by now)."""
        if self.batch:
            self.report.regions += _embed_and_store(self.lib, self.batch, self.settings, self.run_id)
            self.report.indexed += len(self.batch)
        if self.links:
            for p in self.links:
                self.lib.catalog.link_file(p.path, p.size, p.mtime_ns, p.sha256, self.run_id)
            self.report.reused += len(self.links)
            self.lib.catalog.commit()
        self.batch, self.links = [], []


def _walk_roots(
    roots: list[str], opts: IndexOptions, exts: frozenset[str], report: IndexReport
) -> list[tuple[str, Any]]:
    """Walk stage: (root, entry) for every image file, each path once even when roots overlap
    (``photos photos/sub``); warns about roots that give nothing and links left unfollowed."""
    from fgsearch.scan import NOT_UTF8, WalkStats, walk

    entries: list[tuple[str, Any]] = []
    seen: set[str] = set()
    outside: set[str] = set()
    for root in roots:
        stats = WalkStats()
        found = 0
        for entry in walk(
            [root],
            include=opts.include,
            exclude=opts.exclude,
            hidden=opts.hidden,
            extensions=exts,
            follow_links=opts.follow_links,
            within=roots,
            stats=stats,
        ):
            found += 1
            # a name that is not UTF-8 is shown (and stored) with \xNN escapes, which a real file
            # may be literally called: the two are different files, neither may hide the other
            key = ("\0" if entry.error == NOT_UTF8 else "") + entry.path
            if key not in seen:
                seen.add(key)
                entries.append((root, entry))
        outside.update(stats.links_outside)
        if not found and stats.filtered:
            report.warnings.append(
                f"--include/--exclude left no image in {root} ({stats.filtered} image files there did not match)"
            )
        elif not found:
            report.warnings.append(f"no image files in {root}; give a folder that holds images")
    if outside:
        report.warnings.append(
            f"skipped {len(outside)} symbolic link(s) leading outside the indexed folders (e.g. {min(outside)}); "
            "--follow-links follows them"
        )
    named = {e.path for _, e in entries if e.error != NOT_UTF8}
    clash = [e.path for _, e in entries if e.error == NOT_UTF8 and e.path in named]
    if clash:  # reported here, never recorded: the catalog row of that path is the other file's
        entries = [(r, e) for r, e in entries if not (e.error == NOT_UTF8 and e.path in named)]
        report.warnings.extend(
            f"skipping a file shown as {p} (its name is not valid UTF-8; another file is called that): rename it"
            for p in sorted(clash)
        )
    return entries


def _prune(lib: Library, run_id: int, roots: list[str], unselected: bool) -> None:
    """Sweep stage: drop the files under ``roots`` that are gone from disk, and contents no file
    uses any more. Files still on disk that this run did not select (``--include``, ``--exclude``,
    hidden) are kept unless ``unselected`` says to drop them too."""
    cat = lib.catalog
    if not unselected:
        cat.mark_seen([p for p in cat.unseen_paths(run_id, roots) if os.path.isfile(p)], run_id)
        cat.commit()
    removed_contents, removed_regions = cat.sweep(run_id, roots)
    if len(removed_contents) or len(removed_regions):
        lib.global_index.remove(np.asarray(removed_contents, np.int64), missing="ignore")
        lib.region_index.remove(np.asarray(removed_regions, np.int64), missing="ignore")
        lib.global_index.flush()
        lib.region_index.flush()


@dataclass
class _SidecarNotes:
    """What the sidecar said over a run: boxes it gave that were skipped, and whether it
    mentioned any image at all (a sidecar that matches nothing is a mistake worth a warning)."""

    images: int = 0
    matched: int = 0
    skipped: list[str] = field(default_factory=list)

    def note(self, match: SidecarMatch) -> None:
        self.images += 1
        self.matched += match.source is not None
        self.skipped.extend(match.skipped)
        for reason in match.skipped:
            logger.info("%s", reason)

    def warnings(self, spec: str, listed: int = 10) -> list[str]:
        out = self.skipped[:listed]
        if len(self.skipped) > listed:
            out.append(f"... {len(self.skipped)} sidecar boxes skipped in all")
        if self.images and not self.matched:
            where = "no IMAGE.json file beside any image" if spec == "per-image" else f"{spec} names none of them"
            out.append(f"--regions sidecar: {where}; the {self.images} new images have no region vectors")
        return out


def _note_failure(report: IndexReport, path: str, reason: str, limit: int) -> None:
    report.failed += 1
    if len(report.failures) < limit:
        report.failures.append((path, reason))
    logger.info("skipping %s: %s", path, reason)


def _embed_and_store(lib: Library, batch: list[_Prepared], settings: RegionSettings, run_id: int) -> int:
    """Forward pass for a batch, then the three-step commit. Returns the number of regions stored."""
    enc = lib.encoder
    # images of different shapes (FG-CLIP 2) share one batch: padded, with masks
    pixels = enc.transform.collate([p.pixels for p in batch])
    if settings.needs_dense and settings.proposer == "auto":
        # all images of one dense-map shape at once, on the model's device
        out, boxes = enc.encode_proposed(pixels, lambda dense: [b for b, _ in auto_boxes_batch(dense, settings)])
    elif settings.needs_dense:
        given = [propose(settings, None)[0] if p.boxes is None else p.boxes[: settings.max_regions] for p in batch]
        out = enc.encode_pixels(pixels, given)
        boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in given]
    else:
        out = enc.encode_pixels(pixels, None)
        boxes = [np.zeros((0, 4), np.float32) for _ in batch]
    items = [
        {
            "sha256": p.sha256,
            "width": p.width,
            "height": p.height,
            "captured_at": p.captured_at,
            "boxes": [tuple(map(float, b)) for b in boxes[i]],
            "proposer": settings.proposer,
        }
        for i, p in enumerate(batch)
    ]
    content_ids, region_ids = lib.catalog.reserve_contents(items)
    lib.global_index.add(np.asarray(content_ids, np.int64), out.image)
    flat_regions = [rid for rids in region_ids for rid in rids]
    if flat_regions:
        owners = [cid for cid, rids in zip(content_ids, region_ids, strict=True) for _ in rids]
        ranks = [k for rids in region_ids for k in range(len(rids))]
        lib.region_index.add(
            np.asarray(flat_regions, np.int64),
            np.concatenate(out.regions),
            payload={"image_id": owners, "region": ranks},
        )
    lib.global_index.flush()
    lib.region_index.flush()
    files = [(p.path, p.size, p.mtime_ns) for p in batch]
    lib.catalog.confirm_contents(content_ids, files, run_id)
    return len(flat_regions)


def _heal(lib: Library, report: IndexReport) -> None:
    """If the vector indexes no longer hold what the catalog says (a deleted or restored index
    folder), make them agree first: images without vectors are then embedded again by this run.
    Said in the run's warnings (a log line would cut through the progress bar)."""
    counts = lib.catalog.counts()
    if counts["images"] == lib.global_index.count() and counts["regions"] == lib.region_index.count():
        return
    doctor = lib.doctor(repair=True)
    missing = doctor["global"]["missing_vectors"] + doctor["regions"]["missing_vectors"]
    orphans = doctor["global"]["orphan_vectors"] + doctor["regions"]["orphan_vectors"]
    if missing or orphans:
        report.warnings.append(
            f"catalog and vector indexes disagreed ({missing} vectors missing, {orphans} unknown): repaired; "
            "images without vectors are embedded again by this run"
        )
        logger.info("%s", report.warnings[-1])


def recover(lib: Library) -> int:
    """Undo batches a crashed writer left half-done (ids reserved, vectors maybe written)."""
    content_ids, region_ids = lib.catalog.pending_contents()
    if not content_ids:
        return 0
    logger.warning("recovering %d images from an interrupted run", len(content_ids))
    lib.global_index.remove(np.asarray(content_ids, np.int64), missing="ignore")
    lib.region_index.remove(np.asarray(region_ids, np.int64), missing="ignore")
    lib.global_index.flush()
    lib.region_index.flush()
    lib.catalog.drop_contents(content_ids)
    return len(content_ids)
