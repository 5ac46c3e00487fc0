"""A query as vectors: text (by the family's text path and region walk), image, image region,
and the negative text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.boxes import Box
from fgsearch.errors import ImageError
from fgsearch.search.query import check_query

if TYPE_CHECKING:
    from fgsearch.model import Encoder
    from fgsearch.search.query import QueryInfo, SearchQuery


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


@dataclass
class QueryVectors:
    """A query as vectors: for images, for regions (the family's region walk), and a negative."""

    image: np.ndarray
    region: np.ndarray
    negative: np.ndarray | None
    calibrated: bool  # a text-only query on a family whose scores have a probability


def encode_query(enc: Encoder, q: SearchQuery, info: QueryInfo) -> QueryVectors:
    """Query vectors (and negative vector) from text and/or image."""
    from fgsearch.model.tokenizer import collecting_truncations

    check_query(q)  # also checked before the model loads (Library.search); here for direct callers
    parts: list[np.ndarray] = []
    region_parts: list[np.ndarray] = []
    if q.text is not None and q.text.strip():
        path = q.text_path or enc.text_path(q.text).value
        walk = q.text_path or enc.region_walk(q.text).value
        info.text_path, info.region_walk = path, walk
        with collecting_truncations() as notices:  # this thread's only (a server runs many queries)
            parts.append(enc.encode_texts([q.text], path=path)[0])
            region_parts.append(parts[-1] if walk == path else enc.encode_texts([q.text], path=walk)[0])
        info.notices.extend(n for n in notices if n not in info.notices)
    if q.image is not None:
        parts.append(image_vector(enc, q.image, q.box))
        region_parts.append(parts[-1])
    neg = enc.encode_texts([q.negative])[0] if q.negative else None
    calibrated = q.image is None and enc.calibration is not None
    return QueryVectors(_unit(np.sum(parts, axis=0)), _unit(np.sum(region_parts, axis=0)), neg, calibrated)


def image_vector(enc: Encoder, image: Any, box: Box | None) -> np.ndarray:
    """A query image (a path or a PIL image) as a vector: the whole image, or its ``box`` region."""
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
        return enc.encode_images([img]).image[0]
    out = enc.encode_images([img], boxes=[np.asarray([box.as_tuple()], np.float32)])
    return out.regions[0][0]
