"""Running a search on a library's store: candidates from both indexes, exact fused scores,
rows from the catalog (see :mod:`fgsearch.search` for the scoring)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from fgsearch.boxes import Box
from fgsearch.errors import LibraryError
from fgsearch.search.encode import encode_query
from fgsearch.search.fusion import fused_scores, library_sample
from fgsearch.search.query import Filters, QueryInfo, SearchHit, SearchQuery, check_query, query_kind

if TYPE_CHECKING:
    from fgsearch.catalog import ContentRow
    from fgsearch.library.store import LibraryStore
    from fgsearch.model import Encoder


def run_search(
    store: LibraryStore,
    encoder: Encoder,
    q: SearchQuery,
    info: QueryInfo | None = None,
    *,
    search_lock: threading.Lock | None = None,
) -> list[SearchHit]:
    """Run a query against a library's store with its encoder (see :mod:`fgsearch.search`).

    ``search_lock``: held for the search half only, after the query is encoded (a server encodes
    concurrent queries together, then searches them one at a time)."""
    info = info if info is not None else QueryInfo()
    validate_query(store, q)
    t0 = time.perf_counter()
    qv = encode_query(encoder, q, info)
    info.encode_ms = (time.perf_counter() - t0) * 1000
    with search_lock if search_lock is not None else contextlib.nullcontext():
        t1 = time.perf_counter()  # the search itself, not the wait for the lock
        if q.by == "region":
            hits = _search_regions(store, q, qv.region)
        else:
            hits = _search_images(store, q, qv.image, qv.negative, region_vector=qv.region)
        info.search_ms = (time.perf_counter() - t1) * 1000
    cal = encoder.calibration if qv.calibrated else None
    if cal is None:
        return hits
    return [
        replace(
            h,
            probability=None if h.global_score is None else float(cal.probability(h.global_score)),
            region_probability=None if h.region_score is None else float(cal.probability(h.region_score)),
        )
        for h in hits
    ]


def search_vector(
    store: LibraryStore, q: SearchQuery, vector: np.ndarray, negative: np.ndarray | None = None
) -> list[SearchHit]:
    """Like :func:`run_search` for an already encoded, L2-normalised query vector (e.g. a stored one:
    "more like this"). ``q`` gives ``k``, ``by``, filters and weights; its text/image/box fields say
    which kind of vector it is (see :func:`query_kind`)."""
    validate_query(store, q, encoded=True)
    return _search_regions(store, q, vector) if q.by == "region" else _search_images(store, q, vector, negative)


def validate_query(store: LibraryStore, q: SearchQuery, *, encoded: bool = False) -> None:
    """Reject a bad query before any model runs: :func:`check_query`, and a library with nothing
    to search."""
    check_query(q, encoded=encoded)
    if store.global_index.count() == 0:
        raise LibraryError(f"library {store.path} is empty; index some images first (`fgsearch index PHOTOS`)")


def _allowed(store: LibraryStore, f: Filters) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not f.restricts_ids:
        return None, None
    content_ids = store.catalog.filter_contents(
        path_glob=f.path_glob,
        path_prefix=f.path_prefix,
        captured_after=f.captured_after,
        captured_before=f.captured_before,
        modified_after=f.modified_after,
        modified_before=f.modified_before,
    )
    return np.asarray(content_ids, np.int64), store.catalog.region_id_array(content_ids)


def _search_images(
    store: LibraryStore, q: SearchQuery, qv: np.ndarray, neg: np.ndarray | None, region_vector: np.ndarray | None = None
) -> list[SearchHit]:
    """Images ranked by the fused score: candidates from both indexes, each scored exactly."""
    rv = qv if region_vector is None else region_vector
    weights = q.weights.resolve(query_kind(q))
    cids = _candidates(store, q, qv, rv)
    if not cids:
        return []
    region_map = store.catalog.region_ids_by_content(cids)  # content id -> region ids, rank order
    cids = store.visible_contents(cids, region_map)  # and a reader skips images its index view does not hold yet
    if not cids:
        return []
    gvec = store.global_index.get(np.asarray(cids, np.int64))
    empty = np.zeros(0, np.int64)
    per = [region_map.get(cid, empty) for cid in cids]
    counts = np.asarray([len(rids) for rids in per], np.int64)
    all_rids = np.concatenate(per)
    rvec = store.region_index.get(all_rids) if len(all_rids) else np.zeros((0, qv.shape[0]), np.float32)
    sample = library_sample(store)
    score, gscore, rscore, arg = fused_scores(qv, gvec, rvec, counts, sample, weights, rv)
    if neg is not None:
        score = score - q.weights.negative * fused_scores(neg, gvec, rvec, counts, sample, weights)[0]
    bad = ~np.isfinite(score)
    if bad.any():
        cid = cids[int(np.argmax(bad))]
        found = store.catalog.contents_by_ids([cid])
        raise _damaged(store, found[0].path if found else f"image {cid}")
    own, own_path = _query_file(store, q)
    order = _ranked(score, cids, own)
    if q.filters.min_score is not None:
        order = [i for i in order if score[i] >= q.filters.min_score]
    picked = [(i, _own_path_first(row, own, own_path)) for i, row in _pick_rows(store, q, cids, order)]
    boxes = store.catalog.region_boxes([int(all_rids[arg[i]]) for i, _ in picked if arg[i] >= 0])
    hits = []
    for rank, (i, row) in enumerate(picked, start=1):
        j = int(arg[i])
        rid = None if j < 0 else int(all_rids[j])
        region = None if j < 0 else float(rscore[i])
        hits.append(
            _hit(rank, float(score[i]), float(gscore[i]), region, None if rid is None else boxes.get(rid), rid, row)
        )
    return hits


def _candidates(store: LibraryStore, q: SearchQuery, qv: np.ndarray, rv: np.ndarray) -> list[int]:
    """Indexed images among the top hits of both indexes (over-fetched), within the filters."""
    allowed_g, allowed_r = _allowed(store, q.filters)
    if allowed_g is not None and len(allowed_g) == 0:
        return []
    fetch = max(4 * q.k, 40)  # candidates per index; each is then scored exactly
    g = store.global_index.search(qv[None], fetch, allowed_ids=allowed_g)
    cand = set(int(i) for i in g.ids[0] if i >= 0)
    if store.region_index.count():
        r = store.region_index.search(rv[None], 2 * fetch, allowed_ids=allowed_r)
        rids = [int(i) for i in r.ids[0] if i >= 0]
        cand |= set(store.catalog.contents_of_regions(rids))
    if not cand:
        return []
    return store.catalog.indexed_among(sorted(cand))  # skips ids that are not indexed images (pending, dropped)


def _pick_rows(store: LibraryStore, q: SearchQuery, cids: list[int], order: list[int]) -> list[tuple[int, ContentRow]]:
    """Rows (paths, size, date) only for the results, in rank order: the catalog may have dropped an
    image since, and a path filter may leave an image with no path, so read on until k are found."""
    picked: list[tuple[int, ContentRow]] = []
    at = 0
    while len(picked) < q.k and at < len(order):
        chunk = order[at : at + q.k - len(picked) + 4]
        at += len(chunk)
        found = store.catalog.contents_by_ids([cids[i] for i in chunk])
        rows = {r.id: r for r in _restrict_paths(store, found, q.filters)}
        for i in chunk:
            if cids[i] in rows and len(picked) < q.k:
                picked.append((i, rows[cids[i]]))
    return picked


# Scores this close to the query file's own score are a tie: pixel-identical files (a PNG and a
# BMP of the same pixels) have the same vectors up to the last bits of a batched, possibly
# reduced-precision forward pass, so their order would otherwise be chance.
OWN_FILE_TIE = 1e-4


def _ranked(score: np.ndarray, cids: list[int], own: int | None) -> list[int]:
    """Positions of ``cids`` best first; the query's own image first among those tied with it
    (within :data:`OWN_FILE_TIE`), then the others of that tie by score, then by id."""
    if own is None or own not in cids:
        return sorted(range(len(cids)), key=lambda i: (-score[i], cids[i]))
    mine = float(score[cids.index(own)])

    def key(i: int) -> tuple[float, bool, float, int]:
        s = float(score[i])
        tied = abs(s - mine) <= OWN_FILE_TIE  # a monotone snap: the order outside the tie is unchanged
        return (-(mine if tied else s), cids[i] != own, -s, cids[i])

    return sorted(range(len(cids)), key=key)


def _query_file(store: LibraryStore, q: SearchQuery) -> tuple[int | None, str | None]:
    """The indexed image of a whole-image query given as a path, and that path as the catalog
    keeps it (its exact name); ``(None, None)`` when the query is not such a file of the library."""
    if q.image is None or q.box is not None or not isinstance(q.image, str | os.PathLike):
        return None, None
    path = os.fsdecode(os.path.abspath(os.path.expanduser(os.fspath(q.image))))
    cid = store.catalog.content_of_path(path)
    return (cid, path) if cid is not None else (None, None)


def _own_path_first(row: ContentRow, own: int | None, own_path: str | None) -> ContentRow:
    """The hit of the query's own image names the query's file: byte-identical copies share one
    image, whose path would otherwise be the first by name (another file)."""
    if own is None or row.id != own or row.path == own_path or own_path not in row.paths:
        return row
    return replace(row, path=own_path)


def _damaged(store: LibraryStore, path: str) -> LibraryError:
    """A score that is not a number comes from a damaged stored vector: never rank or print it."""
    return LibraryError(f"library {store.path} holds non-finite vectors for {path}; run `fgsearch doctor --repair`")


def _restrict_paths(store: LibraryStore, rows: list[ContentRow], f: Filters) -> list[ContentRow]:
    """The rows with only the paths that pass the filters: a copy elsewhere of the same bytes is
    not a match of ``--under`` / ``--path``. Rows left with no path are dropped."""
    if not any(v is not None for v in (f.path_glob, f.path_prefix, f.modified_after, f.modified_before)):
        return rows
    keep = store.catalog.matching_paths(
        [row.id for row in rows],
        path_glob=f.path_glob,
        path_prefix=f.path_prefix,
        modified_after=f.modified_after,
        modified_before=f.modified_before,
    )
    return [replace(row, path=keep[row.id][0], paths=tuple(keep[row.id])) for row in rows if keep.get(row.id)]


def _hit(
    rank: int,
    score: float,
    global_score: float | None,
    region_score: float | None,
    box: Box | None,
    region_id: int | None,
    row: ContentRow,
) -> SearchHit:
    """A result for one catalog content row."""
    return SearchHit(
        rank=rank,
        score=score,
        global_score=global_score,
        region_score=region_score,
        path=row.path,
        paths=tuple(row.paths),
        box=box,
        region_id=region_id,
        image_id=row.id,
        width=row.width,
        height=row.height,
        captured_at=row.captured_at,
    )


def _search_regions(store: LibraryStore, q: SearchQuery, qv: np.ndarray) -> list[SearchHit]:
    _, allowed_r = _allowed(store, q.filters)
    if allowed_r is not None and len(allowed_r) == 0:
        return []
    if store.region_index.count() == 0:
        raise LibraryError(f"library {store.path} has no region vectors (built with --regions none)")
    r = store.region_index.search(qv[None], max(2 * q.k, 20), allowed_ids=allowed_r)
    pairs = [(int(i), float(s)) for i, s in zip(r.ids[0], r.scores[0], strict=True) if i >= 0]
    info = store.catalog.regions_by_ids([i for i, _ in pairs])  # region id -> (Box, content row)
    rows = {
        row.id: row
        for row in _restrict_paths(store, list({row.id: row for _, row in info.values()}.values()), q.filters)
    }
    own, own_path = _query_file(store, q)
    hits: list[SearchHit] = []
    for rid, s in pairs:
        if rid not in info or info[rid][1].id not in rows:
            continue
        if q.filters.min_score is not None and s < q.filters.min_score:
            continue
        box, row = info[rid]
        if not np.isfinite(s):
            raise _damaged(store, row.path)
        hits.append(_hit(len(hits) + 1, s, None, s, box, rid, _own_path_first(rows[row.id], own, own_path)))
        if len(hits) >= q.k:
            break
    return hits
