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

from fgsearch.search.encode import QueryVectors, encode_query, image_vector
from fgsearch.search.fusion import (
    SAMPLE_IMAGES,
    LibrarySample,
    best_regions,
    fused_scores,
    library_sample,
    sample_scores,
    standardise,
)
from fgsearch.search.query import (
    DEFAULT_WEIGHTS,
    Filters,
    FusionWeights,
    QueryInfo,
    SearchHit,
    SearchQuery,
    check_query,
    path_matches,
    query_kind,
)
from fgsearch.search.run import run_search, search_vector, validate_query

__all__ = [
    "DEFAULT_WEIGHTS",
    "SAMPLE_IMAGES",
    "Filters",
    "FusionWeights",
    "LibrarySample",
    "QueryInfo",
    "QueryVectors",
    "SearchHit",
    "SearchQuery",
    "best_regions",
    "check_query",
    "encode_query",
    "fused_scores",
    "image_vector",
    "library_sample",
    "path_matches",
    "query_kind",
    "run_search",
    "sample_scores",
    "search_vector",
    "standardise",
    "validate_query",
]
