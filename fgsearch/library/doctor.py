"""Keeping the catalog and the vector indexes in agreement: the doctor (check and repair), the
recovery of batches a crashed writer left half-done, and the heal step an index run starts with.

Every function takes the :class:`~fgsearch.library.store.LibraryStore` it checks; reads go
through :meth:`~fgsearch.library.store.LibraryStore.consistent`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.errors import LibraryError
from fgsearch.indexes import INDEX_NAMES
from fgsearch.library.store import storage_errors

if TYPE_CHECKING:
    from fgsearch.library.store import LibraryStore

logger = logging.getLogger(__name__)

SETTLE_S = 2.0  # how long a read-only check waits for a writer's batch in flight to land


def doctor(
    store: LibraryStore, repair: bool = False, *, full: bool = False, after_salvage: bool = False
) -> dict[str, Any]:
    """Check the catalog file (SQLite's ``quick_check``; ``full``: ``integrity_check``) and that
    catalog and indexes agree; with ``repair``, make them agree.

    Vectors the catalog does not know are removed; catalog rows whose vectors are missing are
    dropped and their files marked for re-indexing (the next ``index`` run embeds them again).
    ``after_salvage``: the catalog was just salvaged, so a region vector it no longer knows may
    belong to an image whose other regions were recovered: that image is re-queued too.
    A read-only check while another process indexes reports only disagreements that persist:
    a batch in flight (vectors written, catalog not yet confirmed) is not one. A damaged catalog
    is reported here; its salvage (``fgsearch doctor --repair``) is :func:`fgsearch.library.repair.examine`.
    """
    from fgsearch.catalog.health import check_catalog, check_postgres_catalog, damaged_message

    if store.catalog.pg:  # reachability and schema: PostgreSQL keeps its own pages
        check = check_postgres_catalog(store.catalog)
    else:
        check = check_catalog(store.catalog.path, full=full)
    if not check.ok:
        if repair:
            raise LibraryError(damaged_message(store.catalog.path, check.problems[0]))
        return {"catalog_check": check.to_dict(), "consistent": False, "repaired": False}
    found, counts = store.consistent(lambda: disagreements(store))
    if store.read_only and any(v.size for v in found.values()):
        found = _persisting(store, found)
    damaged = store.consistent(lambda: _damaged(store))
    report: dict[str, Any] = {"catalog_check": check.to_dict(), "damaged_files": damaged["files"]}
    report["pending"] = pending(store)
    for name in INDEX_NAMES:
        cat_n, idx_n = counts[name]
        report[name] = {
            "catalog": cat_n,
            "index": idx_n,
            "orphan_vectors": int(found[name + "_orphan"].size),
            "missing_vectors": int(found[name + "_missing"].size),
            "damaged_vectors": int(damaged[name].size),
        }
    report["below_goal"] = store.consistent(
        lambda: recall_below_goal({n: i.stats().params for n, i in zip(INDEX_NAMES, store.indexes, strict=True)})
    )
    ok = not any(v.size for v in found.values()) and not damaged["files"]
    report["requeued_images"] = 0
    if repair and not ok:
        if store.read_only:
            raise LibraryError("doctor --repair needs a writable library")
        with storage_errors(store.path):
            report["requeued_images"] = _repair(store, found, damaged, after_salvage)
    report["consistent"] = ok
    report["repaired"] = bool(repair and not ok)
    return report


def pending(store: LibraryStore, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Images a run reserved and has not confirmed: ``writer`` is the PID of the run in flight
    (they are its batch), or None when no writer holds the lock (an interrupted run left them:
    the next ``index`` or ``doctor --repair`` undoes them and embeds those images again)."""
    from fgsearch.catalog import WriteLock

    counts = counts if counts is not None else store.catalog.counts()
    n = counts["images_pending"]
    writer = None
    if n and store.read_only:
        writer = WriteLock(store.path).holder()
    return {"images": n, "regions": counts["regions_pending"], "writer": writer}


def recall_below_goal(params: dict[str, dict[str, Any]]) -> list[str]:
    """One line per index whose measured recall@10 is below its goal: on the queries it served
    (``params["served"]``), or on its calibration sets when no breadth reached the goal."""
    lines = []
    for name, p in params.items():
        served = p.get("served") or {}
        cal = p.get("calibration") or {}
        if served.get("below_goal"):
            lines.append(
                f"{name} index: recall@10 {served['recall10']:.3f} on {served['queries']} served queries "
                f"(measured {served['measured_at']}) is below the goal {served['goal_recall10']:.3f}; "
                "searches may miss matches (a fixed ef_search/nprobe setting is kept as set; otherwise "
                "no breadth up to max_ef_search reached it)"
            )
        elif cal and cal.get("reached") is False:
            worst = min((v["recall10"] for v in cal.get("sets", {}).values()), default=0.0)
            lines.append(
                f"{name} index: recall@10 {worst:.3f} on its calibration queries is below the goal "
                f"{cal['goal_recall10']:.3f} at the widest breadth tried; searches may miss matches"
            )
    return lines


def _repair(store: LibraryStore, found: dict[str, Any], damaged: dict[str, Any], after_salvage: bool) -> int:
    """Remove orphan vectors; drop images with missing or damaged vectors (their files are
    re-queued, so the next ``index`` run embeds them again); write clean snapshots. Returns how
    many images were re-queued."""
    gidx, ridx = store.indexes
    gidx.remove(found["global_orphan"], missing="ignore")
    ridx.remove(found["regions_orphan"], missing="ignore")
    broken = set(map(int, found["global_missing"])) | set(map(int, damaged["global"]))
    regions_lost = list(map(int, np.union1d(found["regions_missing"], damaged["regions"])))
    broken |= set(store.catalog.contents_of_regions(regions_lost))
    if after_salvage:
        broken |= incomplete_after_salvage(store, found["regions_orphan"], found["global_orphan"])
    if broken:
        _, region_ids = store.catalog.drop_contents(sorted(broken), keep_files_for_reindex=True)
        gidx.remove(np.asarray(sorted(broken), np.int64), missing="ignore")
        ridx.remove(np.asarray(region_ids, np.int64), missing="ignore")
    for idx in (gidx, ridx):
        idx.flush()
    for idx in (gidx, ridx):
        idx.save()
    return len(broken)


def incomplete_after_salvage(store: LibraryStore, region_orphans: Any, global_orphans: Any) -> set[int]:
    """Recovered images that may have lost some of their region rows in a salvage.

    A run inserts an image's regions right after it, so region ids follow image ids. A region
    vector the salvaged catalog does not know lies between two recovered regions (of images
    ``a <= b``; before the first or after the last, ``a`` or ``b`` is open); it belongs to one of
    the images ``a..b``. If an image whose row was lost (an orphan global vector) lies strictly
    between ``a`` and ``b``, the region was that image's and is gone with it; otherwise every
    recovered image in ``a..b`` is re-queued, except ``b`` when its first region after the gap has
    rank 0 (it lost nothing before it). ``a`` may be one image more than was lost, and an image
    that has no regions at all inside a gap is re-queued too: the price of not knowing."""
    if not len(region_orphans):
        return set()
    rids, owners, ranks = store.catalog.region_owners()  # by region id
    images = np.asarray(sorted(store.catalog.all_vector_ids()[0]), np.int64)  # every recovered image
    lost_images = np.unique(np.asarray(global_orphans, np.int64))
    out: set[int] = set()
    for i in np.unique(np.searchsorted(rids, np.asarray(region_orphans, np.int64))).tolist():  # one per gap
        lo = int(owners[i - 1]) if i > 0 else -1  # before the first recovered region: any image up to hi
        hi = int(owners[i]) if i < rids.size else int(np.iinfo(np.int64).max)
        if np.any((lost_images > lo) & (lost_images < hi)):
            continue
        # hi's first region after the gap has rank 0: hi lost none before it (a region list starts at 0)
        top = hi - 1 if i < rids.size and ranks[i] == 0 and lo != hi else hi
        out |= set(images[(images >= lo) & (images <= top)].tolist())
    return out


def disagreements(store: LibraryStore) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """Orphan vectors (ids the catalog has never reserved, or has deleted) and missing vectors
    (confirmed catalog ids absent from the index), per index. Read the indexes first: every id
    in them was reserved in the catalog before it was written."""
    idx = {"global": store.global_index.ids(), "regions": store.region_index.ids()}
    confirmed = store.catalog.all_vector_ids()
    known = store.catalog.all_vector_ids(include_pending=True)
    out: dict[str, Any] = {}
    counts: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(INDEX_NAMES):
        ok_ids = np.asarray(confirmed[i], np.int64)
        out[name + "_orphan"] = np.setdiff1d(idx[name], np.asarray(known[i], np.int64))
        out[name + "_missing"] = np.setdiff1d(ok_ids, idx[name])
        counts[name] = (int(ok_ids.size), int(idx[name].size))
    return out, counts


def _damaged(store: LibraryStore) -> dict[str, Any]:
    """Snapshot files that fail their checksums, and the ids of each index whose stored vectors
    they make untrustworthy (every full read of the index files happens here)."""
    out: dict[str, Any] = {"files": []}
    for name, idx in zip(INDEX_NAMES, store.indexes, strict=True):
        files, ids = idx.verify()
        out["files"] += [f"{name}/{f}" for f in files]
        out[name] = ids
    return out


def _persisting(store: LibraryStore, found: dict[str, Any]) -> dict[str, Any]:
    """Keep only the disagreements that are still there after the writer (if any) has had time
    to finish the batch or deletion it was in the middle of."""
    deadline = time.monotonic() + SETTLE_S
    while any(v.size for v in found.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
        again, _ = store.consistent(lambda: disagreements(store))
        found = {k: np.intersect1d(v, again[k]) for k, v in found.items()}
    return found


def heal(store: LibraryStore) -> str | None:
    """If the vector indexes no longer hold what the catalog says (a deleted or restored index
    folder), make them agree first: images without vectors are then embedded again by the run.
    Returns the warning for the run's report (a log line would cut through the progress bar)."""
    counts = store.catalog.counts()
    if counts["images"] == store.global_index.count() and counts["regions"] == store.region_index.count():
        return None
    report = doctor(store, repair=True)
    missing = report["global"]["missing_vectors"] + report["regions"]["missing_vectors"]
    orphans = report["global"]["orphan_vectors"] + report["regions"]["orphan_vectors"]
    if not (missing or orphans):
        return None
    warning = (
        f"catalog and vector indexes disagreed ({missing} vectors missing, {orphans} unknown): repaired; "
        "images without vectors are embedded again by this run"
    )
    logger.info("%s", warning)
    return warning


def recover(store: LibraryStore) -> int:
    """Undo batches a crashed writer left half-done (ids reserved, vectors maybe written)."""
    content_ids, region_ids = store.catalog.pending_contents()
    if not content_ids:
        return 0
    logger.warning("recovering %d images from an interrupted run", len(content_ids))
    store.global_index.remove(np.asarray(content_ids, np.int64), missing="ignore")
    store.region_index.remove(np.asarray(region_ids, np.int64), missing="ignore")
    store.global_index.flush()
    store.region_index.flush()
    store.catalog.drop_contents(content_ids)
    return len(content_ids)
