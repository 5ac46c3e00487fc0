"""Search: a text and/or image query against a library's global and region vectors.

Fusion (one image ranking from two kinds of evidence). For each candidate image, with ``q`` the
L2-normalised query vector::

    global_score = <q, image vector>
    region_score = max over the image's regions r of <q, r>     (the best-matching box)
    score        = w_global * global_score + w_region * region_score
                   - w_negative * max(<n, image vector>, best region of n)   (with --not text n)

Candidates are the union of the top hits of both indexes (over-fetched); every candidate's two
scores are then computed exactly from its stored vectors, so the ranking does not depend on which
list found it. Defaults: ``w_global = 0.25``, ``w_region = 0.75``, ``w_negative = 0.5``. With ``by="region"``
the regions themselves are ranked by ``<q, r>``.

Text walks: the image vectors are compared with the text's global walk (short or long, by length);
region vectors are compared with the family's REGION walk, which for FG-CLIP 2 is its box walk for
texts that fit the short length (object phrases, as the model was trained) and the long walk
otherwise; FG-CLIP uses the same walk for both. A forced ``text_path`` applies to both.

Probabilities: for a text query on a family with a calibration (FG-CLIP 2:
``sigmoid(cos * exp(logit_scale) + logit_bias)``) every hit also reports the model's own
probability for its global and its region cosine; ranking stays on the cosines.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.boxes import Box
from fgsearch.errors import ImageError, InputError, LibraryError

if TYPE_CHECKING:
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


@dataclass(frozen=True)
class FusionWeights:
    """Region evidence weighs more by default: finding things INSIDE images is FG-CLIP's point, and
    a short object query matches its box far better than the whole frame."""

    global_: float = 0.25
    region: float = 0.75
    negative: float = 0.5


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
    text_path: str | None = None  # force "short"/"long"; None = the model layer's rule


@dataclass(frozen=True)
class SearchHit:
    """One result. ``box`` is the best-matching region (normalised x1,y1,x2,y2) or None."""

    rank: int
    score: float
    global_score: float
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
            "global_score": round(self.global_score, 6),
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
            img = open_image(image).image  # the indexer's guards: format allow-list, pixel limit, regular file
        except FileNotFoundError as e:
            raise ImageError(f"query image {image} does not exist") from e
        except Exception as e:
            raise ImageError(f"cannot read query image {image}: {e}") from e
    if box is None:
        return lib.encoder.encode_images([img]).image[0]
    out = lib.encoder.encode_images([img], boxes=[np.asarray([box.as_tuple()], np.float32)])
    return out.regions[0][0]


def run_search(lib: Library, q: SearchQuery, info: QueryInfo | None = None) -> list[SearchHit]:
    """Run a query against an open library (see the module docstring for the scoring)."""
    import time

    info = info if info is not None else QueryInfo()
    if q.k < 1:
        raise InputError(f"-k/--top must be at least 1, got {q.k}")
    if q.by not in ("image", "region"):
        raise InputError(f"--by must be image or region, got {q.by!r}")
    if lib.global_index.count() == 0:
        raise LibraryError(f"library {lib.path} is empty; index some images first (`fgsearch index PHOTOS`)")
    t0 = time.perf_counter()
    qv = encode_query(lib, q, info)
    t1 = time.perf_counter()
    info.encode_ms = (t1 - t0) * 1000
    hits = _search_regions(lib, q, qv.region) if q.by == "region" else _search_images(lib, q, qv)
    info.search_ms = (time.perf_counter() - t1) * 1000
    cal = lib.encoder.calibration if qv.calibrated else None
    if cal is None:
        return hits
    return [
        replace(
            h,
            probability=None if h.global_score != h.global_score else float(cal.probability(h.global_score)),
            region_probability=None if h.region_score is None else float(cal.probability(h.region_score)),
        )
        for h in hits
    ]


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


def _search_images(lib: Library, q: SearchQuery, vecs: QueryVectors) -> list[SearchHit]:
    qv, rv, neg = vecs.image, vecs.region, vecs.negative
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
    rows = lib.catalog.contents_by_ids(sorted(cand))  # skips ids the catalog no longer knows
    if not rows:
        return []
    ids = np.asarray([row.id for row in rows], np.int64)
    gvec = lib.global_index.get(ids)
    gscore = gvec @ qv
    region_map = lib.catalog.region_arrays(ids.tolist())  # content id -> (region ids, boxes [K, 4])
    empty = (np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    per = [region_map.get(cid, empty) for cid in ids.tolist()]
    all_rids = np.concatenate([r for r, _ in per]) if per else np.zeros(0, np.int64)
    rvec = lib.region_index.get(all_rids) if len(all_rids) else np.zeros((0, qv.shape[0]), np.float32)
    rscore_all = rvec @ rv
    nscore_all = rvec @ neg if neg is not None and len(rvec) else None
    w = q.weights
    scored = []
    pos = 0
    for i in range(len(ids)):
        rids, rboxes = per[i]
        best_box, best_rid, best_r = None, None, None
        neg_score = float(gvec[i] @ neg) if neg is not None else 0.0
        if len(rids):
            seg = rscore_all[pos : pos + len(rids)]
            j = int(np.argmax(seg))
            best_r = float(seg[j])
            best_rid, best_box = int(rids[j]), Box.clipped(*map(float, rboxes[j]))
            if nscore_all is not None:
                neg_score = max(neg_score, float(nscore_all[pos : pos + len(rids)].max()))
            pos += len(rids)
        s = w.global_ * float(gscore[i]) + w.region * (best_r if best_r is not None else float(gscore[i]))
        if neg is not None:
            s -= w.negative * neg_score
        scored.append((s, float(gscore[i]), best_r, best_box, best_rid, rows[i]))
    scored.sort(key=lambda t: (-t[0], t[5].id))
    if q.filters.min_score is not None:
        scored = [t for t in scored if t[0] >= q.filters.min_score]
    return [
        _hit(rank, sc, gs, rs, box, rid, row) for rank, (sc, gs, rs, box, rid, row) in enumerate(scored[: q.k], start=1)
    ]


def _hit(
    rank: int,
    score: float,
    global_score: float,
    region_score: float | None,
    box: Box | None,
    region_id: int | None,
    row: Any,
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
    hits: list[SearchHit] = []
    for rid, s in pairs:
        if rid not in info:
            continue
        if q.filters.min_score is not None and s < q.filters.min_score:
            continue
        box, row = info[rid]
        hits.append(_hit(len(hits) + 1, s, float("nan"), s, box, rid, row))
        if len(hits) >= q.k:
            break
    return hits


def path_matches(path: str, glob: str | None, prefix: str | None) -> bool:
    """The path filter rule: fnmatch glob on the full path, or plain prefix."""
    if glob is not None and not fnmatch.fnmatch(path, glob):
        return False
    return prefix is None or path.startswith(prefix)
