"""Plan stage of an index run: which files to read.

walk the roots (:func:`walk_roots`: each image file once, walk errors kept as entries) -> skip what
did not change since the catalog saw it (:func:`select_changed`: same path, size and mtime). Whether
a file is new content or a copy of known content is decided after it is hashed, by the runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fgsearch.catalog import Catalog
    from fgsearch.ingest.options import IndexOptions, IndexReport


def walk_roots(
    roots: list[str], opts: IndexOptions, exts: frozenset[str], report: IndexReport
) -> list[tuple[str, Any]]:
    """Walk stage: (root, entry) for every image file, each path once even when roots overlap
    (``photos photos/sub``); warns about roots that give nothing and links left unfollowed."""
    from fgsearch.scan import WalkStats, walk

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
            # a name that is not UTF-8 keeps its bytes (lone surrogates): it never equals the name
            # of a file literally called by its \xNN escape, and both are indexed
            if entry.path not in seen:
                seen.add(entry.path)
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
    return entries


def select_changed(
    catalog: Catalog, entries: list[tuple[str, Any]], opts: IndexOptions, run_id: int, report: IndexReport
) -> list[tuple[str, Any]]:
    """Skip stage: files whose path, size and mtime the catalog already has are marked seen (a
    known failure stays failed unless ``retry_failed``, and counts as failed, not as unchanged);
    walk errors are recorded. Returns the (root, entry) pairs left to read."""
    cat = catalog
    known_files = cat.file_states([e.path for _, e in entries if not e.error])
    todo: list[tuple[str, Any]] = []
    unchanged: list[str] = []
    for root, e in entries:
        if e.error:
            cat.record_failure(e.path, e.size, e.mtime_ns, e.error, run_id)
            report.note_failure(e.path, e.error)
            continue
        st = known_files.get(e.path)
        if (
            st is not None
            and st.size == e.size
            and st.mtime_ns == e.mtime_ns
            and (st.status == "ok" or (st.status == "failed" and not opts.retry_failed))
        ):
            unchanged.append(e.path)
            if st.status == "failed":  # counted once: failed (and unchanged since), never also as unchanged
                report.failed += 1
                report.failed_unchanged += 1
            continue
        todo.append((root, e))
    cat.mark_seen(unchanged, run_id)
    report.unchanged = len(unchanged) - report.failed_unchanged
    cat.commit()
    return todo
