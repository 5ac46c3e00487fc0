"""Search: a text and/or image query against a library's global and region vectors.

Fusion (one image ranking from two kinds of evidence). For each candidate image, with ``q`` the
L2-normalised query vector, two channels::

    global_score = <q, image vector>
    region_score = max over the image's regions r of <q, r>     (the best-matching box; an image
                                                                 without regions uses global_score)

The channels come from different heads (the region vectors from the dense value-path map) and do
not share a scale: on a random model every image vector has cosine ~1.000 +- 0.0001 with an image
query while region scores spread over +-0.05. So each channel is standardised against the
library's own score distribution for this query: ``z(s) = (s - mean) / std`` of the same channel
over a fixed sample of the library (up to ``SAMPLE_IMAGES`` images, evenly spaced by id, re-drawn
when the indexes change), and::

    score = w_global * z_global + w_region * z_region
            - w_negative * (the same fused score of the --not text n)

Default weights follow the head the query vector comes from (:data:`DEFAULT_WEIGHTS`): a text (or
text + image) query uses both channels, 0.25 / 0.75; an image without a box is an image-space vector
compared like for like with image vectors, global only (any region weight lets region scores of
other images outrank an exact self-match: measured in ``bench/bench_fusion.py``); an image region
(``box``) is a region vector, region only. ``w_negative = 0.5``. Weights given by the caller apply
to every kind. Candidates are the union of the top hits of both indexes (over-fetched); every
candidate's two scores are then computed exactly from its stored vectors, so the ranking does not
depend on which list found it. With ``by="region"`` the regions themselves are ranked by ``<q, r>``.

Text walks: the image channel compares the text's global walk (short or long, by length) with image
vectors; the region channel compares the family's REGION walk with region vectors, which for
FG-CLIP 2 is its box walk for texts that fit the short length (object phrases, as the model was
trained) and the long walk otherwise; FG-CLIP uses one walk for both. A forced ``text_path``
applies to both.

Probabilities: for a text query on a family with a calibration (FG-CLIP 2:
``sigmoid(cos * exp(logit_scale) + logit_bias)``) every hit also reports the model's own
probability for its global and its region cosine; ranking stays on the scores above.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.boxes import Box
from fgsearch.errors import ImageError, InputError, LibraryError

if TYPE_CHECKING:
    from fgsearch.catalog import ContentRow
    from fgsearch.library import Library

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Filters:
    """Restrict results: path glob or prefix, capture / modification time range, minimum score."""

    path_glob: str | None = None
    path_prefix: str | None = None
    captured_after: datetime | None = None
    captured_before: datetime | None = None
    modified_after: datetime | None = None
    modified_before: datetime | None = None
    min_score: float | None = None

    def __post_init__(self) -> None:
        if self.min_score is not None and not np.isfinite(self.min_score):  # NaN kept nothing, silently
            raise InputError(f"--min-score must be a finite number, got {self.min_score}")

    @property
    def restricts_ids(self) -> bool:
        return any(
            v is not None
            for v in (
                self.path_glob,
                self.path_prefix,
                self.captured_after,
                self.captured_before,
                self.modified_after,
                self.modified_before,
            )
        )


DEFAULT_WEIGHTS: dict[str, tuple[float, float]] = {
    "text": (0.25, 0.75),  # region evidence weighs more: a short object query matches its box best
    "image": (1.0, 0.0),  # image vector vs image vectors: like for like, a self-match has cosine ~1
    "box": (0.0, 1.0),  # region vector vs region vectors
}
SAMPLE_IMAGES = 256  # images whose scores give each channel's mean and spread for a query


@dataclass(frozen=True)
class FusionWeights:
    """Channel weights on standardised scores; ``None`` takes the query kind's default
    (:data:`DEFAULT_WEIGHTS`)."""

    global_: float | None = None
    region: float | None = None
    negative: float = 0.5

    def resolve(self, kind: str) -> tuple[float, float]:
        """(w_global, w_region) for a query of this kind ("text", "image" or "box")."""
        dg, dr = DEFAULT_WEIGHTS[kind]
        wg = dg if self.global_ is None else self.global_
        wr = dr if self.region is None else self.region
        for name, v in (("--w-global", wg), ("--w-region", wr), ("--w-not", self.negative)):
            if not np.isfinite(v) or v < 0:
                raise InputError(f"{name} must be a number >= 0, got {v}")
        if wg == 0 and wr == 0:
            raise InputError("--w-global and --w-region are both 0: give one of them a positive weight")
        return wg, wr


@dataclass(frozen=True)
class SearchQuery:
    """Everything a search takes. At least one of ``text`` and ``image`` is needed."""

    text: str | None = None
    image: Any = None  # a path or a PIL image
    box: Box | None = None  # restrict the query image to this region (normalised x1,y1,x2,y2)
    negative: str | None = None
    k: int = 10
    by: str = "image"  # "image" or "region"
    filters: Filters = field(default_factory=Filters)
    weights: FusionWeights = field(default_factory=FusionWeights)
    text_path: str | None = None  # force a walk ("short", "long"; FG-CLIP 2 also "box"); None = the rule


@dataclass(frozen=True)
class SearchHit:
    """One result. ``box`` is the best-matching region (normalised x1,y1,x2,y2) or None. ``score`` is
    the fused, standardised score for an image result and the cosine for a region result; ``paths``
    lists only the paths that pass the query's path and modification-time filters."""

    rank: int
    score: float
    global_score: float | None  # None for a region result (by="region")
    region_score: float | None
    path: str
    paths: tuple[str, ...]
    box: Box | None
    region_id: int | None
    image_id: int
    width: int
    height: int
    captured_at: datetime | None
    probability: float | None = None  # the model's probability for global_score (text queries, calibrated families)
    region_probability: float | None = None  # the same for region_score

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            "global_score": None if self.global_score is None else round(self.global_score, 6),
            "region_score": None if self.region_score is None else round(self.region_score, 6),
            "path": self.path,
            "paths": list(self.paths),
            "box": None if self.box is None else [round(v, 5) for v in self.box.as_tuple()],
            "region_id": self.region_id,
            "image_id": self.image_id,
            "width": self.width,
            "height": self.height,
            "captured_at": self.captured_at.isoformat() if self.captured_at else None,
            "probability": None if self.probability is None else round(self.probability, 6),
            "region_probability": None if self.region_probability is None else round(self.region_probability, 6),
        }


@dataclass
class QueryInfo:
    """What the search did, for display: which text path, what got truncated, timings."""

    text_path: str | None = None
    region_walk: str | None = None  # the walk region vectors were matched with
    truncated_tokens: int = 0
    encode_ms: float = 0.0
    search_ms: float = 0.0
    notices: list[str] = field(default_factory=list)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


@dataclass
class QueryVectors:
    """A query as vectors: for images, for regions (the family's region walk), and a negative."""

    image: np.ndarray
    region: np.ndarray
    negative: np.ndarray | None
    calibrated: bool  # a text-only query on a family whose scores have a probability


def encode_query(lib: Library, q: SearchQuery, info: QueryInfo) -> QueryVectors:
    """Query vectors (and negative vector) from text and/or image."""
    from fgsearch.model import TextTruncatedWarning

    enc = lib.encoder
    if (q.text is None or not q.text.strip()) and q.image is None:
        raise InputError("empty query: give a text, --image PATH, or both")
    parts: list[np.ndarray] = []
    region_parts: list[np.ndarray] = []
    if q.text is not None and q.text.strip():
        path = q.text_path or enc.text_path(q.text).value
        walk = q.text_path or enc.region_walk(q.text).value
        info.text_path, info.region_walk = path, walk
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TextTruncatedWarning)
            parts.append(enc.encode_texts([q.text], path=path)[0])
            region_parts.append(parts[-1] if walk == path else enc.encode_texts([q.text], path=walk)[0])
        for w in caught:
            if issubclass(w.category, TextTruncatedWarning) and str(w.message) not in info.notices:
                info.notices.append(str(w.message))
    if q.image is not None:
        parts.append(_image_vector(lib, q.image, q.box))
        region_parts.append(parts[-1])
    neg = enc.encode_texts([q.negative])[0] if q.negative else None
    calibrated = q.image is None and enc.calibration is not None
    return QueryVectors(_unit(np.sum(parts, axis=0)), _unit(np.sum(region_parts, axis=0)), neg, calibrated)


def _image_vector(lib: Library, image: Any, box: Box | None) -> np.ndarray:
    from PIL import Image

    from fgsearch.decode import open_image

    if isinstance(image, Image.Image):
        img = image
    else:
        try:
            # the indexer's guards (format allow-list, pixel limit, regular file); `query` has no flag
            # that raises the limit, so the reason names none
            img = open_image(image, limit_flag=None).image
        except Exception as e:
            raise ImageError(f"cannot read query image {image}: {e}") from e
    if box is None:
        return lib.encoder.encode_images([img]).image[0]
    out = lib.encoder.encode_images([img], boxes=[np.asarray([box.as_tuple()], np.float32)])
    return out.regions[0][0]


def run_search(
    lib: Library, q: SearchQuery, info: QueryInfo | None = None, *, search_lock: threading.Lock | None = None
) -> list[SearchHit]:
    """Run a query against an open library (see the module docstring for the scoring).

    ``search_lock``: held for the search half only, after the query is encoded (a server encodes
    concurrent queries together, then searches them one at a time)."""
    info = info if info is not None else QueryInfo()
    _validate(lib, q)
    t0 = time.perf_counter()
    qv = encode_query(lib, q, info)
    info.encode_ms = (time.perf_counter() - t0) * 1000
    with search_lock if search_lock is not None else contextlib.nullcontext():
        t1 = time.perf_counter()  # the search itself, not the wait for the lock
        if q.by == "region":
            hits = _search_regions(lib, q, qv.region)
        else:
            hits = _search_images(lib, q, qv.image, qv.negative, region_vector=qv.region)
        info.search_ms = (time.perf_counter() - t1) * 1000
    cal = lib.encoder.calibration if qv.calibrated else None
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
    lib: Library, q: SearchQuery, vector: np.ndarray, negative: np.ndarray | None = None
) -> list[SearchHit]:
    """Like :func:`run_search` for an already encoded, L2-normalised query vector (e.g. a stored one:
    "more like this"). ``q`` gives ``k``, ``by``, filters and weights; its text/image/box fields say
    which kind of vector it is (see :func:`query_kind`)."""
    _validate(lib, q)
    return _search_regions(lib, q, vector) if q.by == "region" else _search_images(lib, q, vector, negative)


def _validate(lib: Library, q: SearchQuery) -> None:
    """Reject a bad query before any model runs."""
    if q.k < 1:
        raise InputError(f"-k/--top must be at least 1, got {q.k}")
    if q.by not in ("image", "region"):
        raise InputError(f"--by must be image or region, got {q.by!r}")
    q.weights.resolve(query_kind(q))
    if lib.global_index.count() == 0:
        raise LibraryError(f"library {lib.path} is empty; index some images first (`fgsearch index PHOTOS`)")


def _allowed(lib: Library, f: Filters) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not f.restricts_ids:
        return None, None
    content_ids = lib.catalog.filter_contents(
        path_glob=f.path_glob,
        path_prefix=f.path_prefix,
        captured_after=f.captured_after,
        captured_before=f.captured_before,
        modified_after=f.modified_after,
        modified_before=f.modified_before,
    )
    region_ids = lib.catalog.region_ids_of(content_ids)
    return np.asarray(content_ids, np.int64), np.asarray(region_ids, np.int64)


def query_kind(q: SearchQuery) -> str:
    """Which head the query vector comes from: "image" (a whole image), "box" (an image region) or
    "text" (text, alone or with an image)."""
    if q.image is not None and (q.text is None or not q.text.strip()):
        return "box" if q.box is not None else "image"
    return "text"


@dataclass(frozen=True)
class LibrarySample:
    """Stored vectors of a fixed sample of the library's images: each channel's score distribution
    for a query is measured on it. ``counts[i]`` regions of image ``i`` are consecutive rows of
    ``regions``."""

    key: tuple[int, int]  # (global count, region count) it was drawn at
    images: np.ndarray  # [S, D]
    regions: np.ndarray  # [sum(counts), D]
    counts: np.ndarray  # [S]


_SAMPLES: weakref.WeakKeyDictionary[Library, LibrarySample] = weakref.WeakKeyDictionary()
_SAMPLES_LOCK = threading.Lock()


def library_sample(lib: Library) -> LibrarySample:
    """The library's sample (up to :data:`SAMPLE_IMAGES` images evenly spaced by id), cached per
    open library and re-drawn when the index counts change."""
    key = (lib.global_index.count(), lib.region_index.count())
    with _SAMPLES_LOCK:
        cached = _SAMPLES.get(lib)
    if cached is not None and cached.key == key:
        return cached
    ids = np.asarray(sorted(lib.catalog.filter_contents()), np.int64)
    ids = ids[lib.global_index.contains(ids)] if len(ids) else ids  # a reader's view may lag its catalog
    if len(ids) > SAMPLE_IMAGES:
        ids = ids[np.linspace(0, len(ids) - 1, SAMPLE_IMAGES).round().astype(np.int64)]
    regions = lib.catalog.region_ids_by_content(ids.tolist()) if key[1] else {}
    rids = [regions.get(int(c), np.zeros(0, np.int64)) for c in ids]
    rids = [r[lib.region_index.contains(r)] if len(r) else r for r in rids]
    counts = np.asarray([len(r) for r in rids], np.int64)
    all_rids = np.concatenate(rids) if rids else np.zeros(0, np.int64)
    images = lib.global_index.get(ids)
    rvec = lib.region_index.get(all_rids) if len(all_rids) else np.zeros((0, images.shape[1]), np.float32)
    sample = LibrarySample(key, images, rvec, counts)
    with _SAMPLES_LOCK:
        _SAMPLES[lib] = sample
    return sample


def best_regions(gscore: np.ndarray, rscore: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the region channel and the row in ``rscore`` of its best region (-1 for an image
    without regions, whose region channel is its global score). Image ``i`` owns ``counts[i]``
    consecutive entries of ``rscore``."""
    best = gscore.astype(np.float64)
    arg = np.full(len(counts), -1, np.int64)
    has = counts > 0
    if has.any():
        best[has] = np.maximum.reduceat(rscore, (np.cumsum(counts) - counts)[has])
        owner = np.repeat(np.arange(len(counts)), counts)
        at_max = np.flatnonzero(rscore == best[owner])
        images, first = np.unique(owner[at_max], return_index=True)  # the first row at each image's max
        arg[images] = at_max[first]
    return best, arg


def standardise(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` of the reference scores; a channel with no spread carries no evidence (0)."""
    sd = float(reference.std()) if len(reference) > 1 else 0.0
    if sd < 1e-9:
        return np.zeros_like(x, dtype=np.float64)
    return (x - float(reference.mean())) / sd


def sample_scores(sample: LibrarySample, qv: np.ndarray, rv: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The query's global and region channels (``rv``, default ``qv``, for the region channel) over
    the library sample: the reference distributions."""
    sg = _dot(sample.images, qv)
    return sg, best_regions(sg, _dot(sample.regions, qv if rv is None else rv), sample.counts)[0]


def fused_scores(
    qv: np.ndarray,
    images: np.ndarray,
    regions: np.ndarray,
    counts: np.ndarray,
    sample: LibrarySample,
    w: tuple[float, float],
    rv: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fused score, global score, region score, best-region row) of each candidate image for the
    query vector ``qv`` (``rv`` for the region channel: the region walk; default ``qv``), each
    channel standardised against ``sample`` (see the module docstring)."""
    rv = qv if rv is None else rv
    g = _dot(images, qv)
    r, arg = best_regions(g, _dot(regions, rv), counts)
    sg, sr = sample_scores(sample, qv, rv)
    fused = w[0] * standardise(g, sg) + w[1] * standardise(r, sr)
    return fused, g, r, arg


def _dot(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``vectors @ q`` on one thread: for these few thousand rows a multi-threaded BLAS matrix-vector
    product costs ~25 ms on a busy 2-core machine (thread hand-offs) against ~0.1-1 ms here."""
    return np.einsum("ij,j->i", vectors, q)


def _search_images(
    lib: Library, q: SearchQuery, qv: np.ndarray, neg: np.ndarray | None, region_vector: np.ndarray | None = None
) -> list[SearchHit]:
    rv = qv if region_vector is None else region_vector
    weights = q.weights.resolve(query_kind(q))
    allowed_g, allowed_r = _allowed(lib, q.filters)
    if allowed_g is not None and len(allowed_g) == 0:
        return []
    fetch = max(4 * q.k, 40)  # candidates per index; each is then scored exactly
    g = lib.global_index.search(qv[None], fetch, allowed_ids=allowed_g)
    cand = set(int(i) for i in g.ids[0] if i >= 0)
    if lib.region_index.count():
        r = lib.region_index.search(rv[None], 2 * fetch, allowed_ids=allowed_r)
        rids = [int(i) for i in r.ids[0] if i >= 0]
        cand |= set(lib.catalog.contents_of_regions(rids))
    if not cand:
        return []
    cids = lib.catalog.indexed_among(sorted(cand))  # skips ids that are not indexed images (pending, dropped)
    region_map = lib.catalog.region_ids_by_content(cids)  # content id -> region ids, rank order
    cids = lib.visible_contents(cids, region_map)  # and a reader skips images its index view does not hold yet
    if not cids:
        return []
    ids = np.asarray(cids, np.int64)
    gvec = lib.global_index.get(ids)
    empty = np.zeros(0, np.int64)
    per = [region_map.get(cid, empty) for cid in cids]
    counts = np.asarray([len(rids) for rids in per], np.int64)
    all_rids = np.concatenate(per)
    rvec = lib.region_index.get(all_rids) if len(all_rids) else np.zeros((0, qv.shape[0]), np.float32)
    sample = library_sample(lib)
    score, gscore, rscore, arg = fused_scores(qv, gvec, rvec, counts, sample, weights, rv)
    if neg is not None:
        score = score - q.weights.negative * fused_scores(neg, gvec, rvec, counts, sample, weights)[0]
    bad = ~np.isfinite(score)
    if bad.any():
        cid = cids[int(np.argmax(bad))]
        found = lib.catalog.contents_by_ids([cid])
        raise _damaged(lib, found[0].path if found else f"image {cid}")
    own = _query_file_content(lib, q)  # an exact tie goes to the query's own file (pixel-identical copies)
    order = sorted(range(len(cids)), key=lambda i: (-score[i], cids[i] != own, cids[i]))
    if q.filters.min_score is not None:
        order = [i for i in order if score[i] >= q.filters.min_score]
    # Rows (paths, size, date) only for the results, in rank order: the catalog may have dropped an
    # image since, and a path filter may leave an image with no path, so read on until k are found.
    picked: list[tuple[int, ContentRow]] = []
    at = 0
    while len(picked) < q.k and at < len(order):
        chunk = order[at : at + q.k - len(picked) + 4]
        at += len(chunk)
        rows = {r.id: r for r in _restrict_paths(lib, lib.catalog.contents_by_ids([cids[i] for i in chunk]), q.filters)}
        for i in chunk:
            if cids[i] in rows and len(picked) < q.k:
                picked.append((i, rows[cids[i]]))
    boxes = lib.catalog.region_boxes([int(all_rids[arg[i]]) for i, _ in picked if arg[i] >= 0])
    hits = []
    for rank, (i, row) in enumerate(picked, start=1):
        j = int(arg[i])
        rid = None if j < 0 else int(all_rids[j])
        region = None if j < 0 else float(rscore[i])
        hits.append(
            _hit(rank, float(score[i]), float(gscore[i]), region, None if rid is None else boxes.get(rid), rid, row)
        )
    return hits


def _query_file_content(lib: Library, q: SearchQuery) -> int | None:
    """The indexed image of a whole-image query given as a path, if the library holds that file."""
    if q.image is None or q.box is not None or not isinstance(q.image, str | os.PathLike):
        return None
    from fgsearch.scan import display_path

    return lib.catalog.content_of_path(display_path(os.path.abspath(os.path.expanduser(os.fspath(q.image)))))


def _damaged(lib: Library, path: str) -> LibraryError:
    """A score that is not a number comes from a damaged stored vector: never rank or print it."""
    return LibraryError(f"library {lib.path} holds non-finite vectors for {path}; run `fgsearch doctor --repair`")


def _restrict_paths(lib: Library, rows: list[ContentRow], f: Filters) -> list[ContentRow]:
    """The rows with only the paths that pass the filters: a copy elsewhere of the same bytes is
    not a match of ``--under`` / ``--path``. Rows left with no path are dropped."""
    if not any(v is not None for v in (f.path_glob, f.path_prefix, f.modified_after, f.modified_before)):
        return rows
    keep = lib.catalog.matching_paths(
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


def _search_regions(lib: Library, q: SearchQuery, qv: np.ndarray) -> list[SearchHit]:
    _, allowed_r = _allowed(lib, q.filters)
    if allowed_r is not None and len(allowed_r) == 0:
        return []
    if lib.region_index.count() == 0:
        raise LibraryError(f"library {lib.path} has no region vectors (built with --regions none)")
    r = lib.region_index.search(qv[None], max(2 * q.k, 20), allowed_ids=allowed_r)
    pairs = [(int(i), float(s)) for i, s in zip(r.ids[0], r.scores[0], strict=True) if i >= 0]
    info = lib.catalog.regions_by_ids([i for i, _ in pairs])  # region id -> (Box, content row)
    rows = {
        row.id: row for row in _restrict_paths(lib, list({row.id: row for _, row in info.values()}.values()), q.filters)
    }
    hits: list[SearchHit] = []
    for rid, s in pairs:
        if rid not in info or info[rid][1].id not in rows:
            continue
        if q.filters.min_score is not None and s < q.filters.min_score:
            continue
        box, row = info[rid]
        if not np.isfinite(s):
            raise _damaged(lib, row.path)
        hits.append(_hit(len(hits) + 1, s, None, s, box, rid, rows[row.id]))
        if len(hits) >= q.k:
            break
    return hits


def path_matches(path: str, glob: str | None, prefix: str | None) -> bool:
    """The path filter rule: fnmatch glob on the full path, or plain prefix."""
    if glob is not None and not fnmatch.fnmatch(path, glob):
        return False
    return prefix is None or path.startswith(prefix)
