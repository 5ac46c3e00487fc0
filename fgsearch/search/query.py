"""What a search takes (:class:`SearchQuery`, :class:`Filters`, :class:`FusionWeights`) and
what it gives back (:class:`SearchHit`, :class:`QueryInfo`)."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from fgsearch.boxes import Box
from fgsearch.errors import ImageError, InputError
from fgsearch.scan import display_path


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
            raise InputError(
                "{filters.min_score} must be a finite number, got {got}", field="filters.min_score", got=self.min_score
            )

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
        for name, v in (("weights.global_", wg), ("weights.region", wr), ("weights.negative", self.negative)):
            if not np.isfinite(v) or v < 0:
                raise InputError("{field} must be a number >= 0, got {got}", field=name, got=v)
        if wg == 0 and wr == 0:
            raise InputError(
                "{weights.global_} and {weights.region} are both 0: give one of them a positive weight",
                field="weights.global_",
            )
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
            "path": display_path(self.path),  # text: --paths -0 prints a name's exact bytes
            "paths": [display_path(p) for p in self.paths],
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


def query_kind(q: SearchQuery) -> str:
    """Which head the query vector comes from: "image" (a whole image), "box" (an image region) or
    "text" (text, alone or with an image)."""
    if q.image is not None and (q.text is None or not q.text.strip()):
        return "box" if q.box is not None else "image"
    return "text"


def path_matches(path: str, glob: str | None, prefix: str | None) -> bool:
    """The path filter rule: fnmatch glob on the full path, or plain prefix."""
    if glob is not None and not fnmatch.fnmatch(path, glob):
        return False
    return prefix is None or path.startswith(prefix)


EMPTY_QUERY = "empty query: give {text}, {image}, or both"
TEXT_PATHS = ("short", "long", "box")


def check_query(q: SearchQuery, *, encoded: bool = False) -> None:
    """Every check of a query that needs no model and no library: run before either is loaded, so
    that a query that cannot be answered is refused at once (the CLI, the library and the server).
    ``encoded``: the query vector is given (:func:`~fgsearch.search.search_vector`); its text and
    image only say which kind of vector it is, and are not checked."""
    if not encoded and (q.text is None or not q.text.strip()) and q.image is None:
        raise InputError(EMPTY_QUERY, field="text")
    if q.k < 1:
        raise InputError("{k} must be at least 1, got {got}", field="k", got=q.k)
    if q.by not in ("image", "region"):
        raise InputError("{by} must be image or region, got {got!r}", field="by", got=q.by)
    if q.text_path not in (None, *TEXT_PATHS):
        raise InputError("{text_path} must be short, long or box (box: FG-CLIP 2 only), got {got!r}",
                         field="text_path", got=q.text_path)  # fmt: skip
    if q.box is not None and q.image is None:
        raise InputError("{box} needs {image} (the box is a region of the query image)", field="box")
    q.weights.resolve(query_kind(q))
    if not encoded and isinstance(q.image, (str, os.PathLike)) and not os.path.isfile(q.image):
        what = "not a regular file; give an image file" if os.path.exists(q.image) else "file does not exist"
        raise ImageError(f"cannot read query image {os.fsdecode(q.image)}: {what}")
