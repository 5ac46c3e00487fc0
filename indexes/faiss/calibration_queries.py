"""Sample queries for calibrating approximate search, and recall against exact search.

An approximate index is tuned (search breadth, re-rank depth) on sample queries whose true top 10
comes from exact search. The queries must look like the ones it will serve, and an image library
serves two kinds:

* **image queries** (``in_distribution_queries``): a stored vector plus Gaussian noise of norm
  ~0.5, normalized; cosine ~0.9 to its source. Easy for every index: the answer sits in the dense
  part of the collection the query came from.
* **text queries** (``cross_modal_queries``): CLIP-style models place text and image embeddings
  in different regions of the space (the "modality gap", Liang et al., NeurIPS 2022): image
  embeddings share a large common direction, text embeddings another; a caption's best image has
  cosine ~0.3 and its 100th ~0.15. Such queries lie far from every stored vector, where graph and
  IVF searches are at their weakest.

The caller should pass real text embeddings (the library passes its model's embeddings of a
built-in set of varied captions). When none are given, :func:`cross_modal_queries` synthesises
them from the stored vectors alone, matching those figures:

``q = normalize(a * t + b * u + c * m + noise)`` where ``m`` is the stored vectors' common direction
(their normalized mean), ``t`` the queries' own shared direction (random, orthogonal to ``m``),
``u`` the query's meaning: a target vector and its ``related`` nearest neighbours in a sample,
averaged with weights ``1/rank`` after removing their ``m`` component (a caption describes what a
few images share, not one image), and ``noise`` isotropic Gaussian. ``b`` is chosen by bisection
so that the median cosine of a query to its best match in the sample is ``target_cos`` (0.30);
``a = 0.6``, ``c = 0.05`` (text and image embeddings are nearly unrelated outside the meaning),
noise weight 0.5. On the benchmark's 1M sets this gives best / 10th / 100th match cosines of
0.31 / 0.30 / 0.27 (``clip``) and 0.31 / 0.28 / 0.25 (``isotropic``): closer together than real text
queries (CLIP ViT-B/16 on COCO: ~0.30 at rank 1, ~0.15 at rank 100), so calibration on them errs on
the side of a wider search. The module never imports torch or a model.
"""

from __future__ import annotations

import math

import numpy as np

#: Median best-match cosine of synthetic text queries (CLIP ViT-B/16: 0.28-0.33 on COCO captions).
TARGET_COS = 0.30
_SAMPLE_ROWS = 20_000


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ids, -1 ignored) present in ``found``."""
    hits = 0
    total = 0
    for f, t in zip(found, truth, strict=True):
        t = t[t >= 0]
        total += t.size
        hits += np.isin(t, f).sum()
    return float(hits / total) if total else 1.0


def _normalize(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12), dtype=np.float32)


def in_distribution_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Image-like queries: a stored vector plus Gaussian noise of norm ~0.5, normalized."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(vectors.shape[0], size=min(n, vectors.shape[0]), replace=False))
    q = np.asarray(vectors[rows], dtype=np.float32)
    q = q + rng.standard_normal(q.shape).astype(np.float32) * (0.5 / math.sqrt(q.shape[1]))
    return _normalize(q)


def cross_modal_queries(
    vectors: np.ndarray,
    n: int,
    seed: int,
    *,
    target_cos: float = TARGET_COS,
    related: int = 8,
    gap: float = 0.6,
    common: float = 0.05,
) -> np.ndarray:
    """Text-like queries for the stored ``vectors`` (see the module docstring for the recipe;
    ``gap`` is the weight ``a`` of the queries' own direction, ``common`` the weight ``c``)."""
    rng = np.random.default_rng(seed)
    total, dim = vectors.shape
    rows = np.sort(rng.choice(total, size=min(_SAMPLE_ROWS, total), replace=False))
    sample = np.asarray(vectors[rows], dtype=np.float32)
    m = _normalize(sample.mean(axis=0))
    t = np.asarray(rng.standard_normal(dim), dtype=np.float32)
    t = _normalize(t - (t @ m) * m)
    n = min(n, sample.shape[0])
    targets = rng.choice(sample.shape[0], size=n, replace=False)
    sims = sample[targets] @ sample.T
    r = min(related, sample.shape[0] - 1)
    near = np.argpartition(-sims, r, axis=1)[:, : r + 1]  # the r + 1 nearest, then in order:
    near = np.take_along_axis(near, np.argsort(-np.take_along_axis(sims, near, axis=1), axis=1), axis=1)
    weights = 1.0 / np.arange(1, r + 2)
    u = np.einsum("qr,qrd->qd", np.broadcast_to(weights, near.shape), sample[near])
    u = _normalize(u - (u @ m)[:, None] * m)
    noise = _normalize(rng.standard_normal((n, dim)).astype(np.float32))

    rest = gap * t + common * m + 0.5 * noise  # q(b) = normalize(rest + b * u)

    def build(b: float) -> np.ndarray:
        return _normalize(rest + b * u)

    # the bisection's cosines without a product per step: q(b) . s = (rest . s + b u . s) / |rest + b u|,
    # so two products with the sample serve all 20 steps (they were 20 products, ~1.5 s per set)
    rest_s, u_s = rest @ sample.T, u @ sample.T
    rr, ru, uu = (rest * rest).sum(axis=1), (rest * u).sum(axis=1), (u * u).sum(axis=1)
    lo, hi = 0.0, 4.0
    for _ in range(20):  # median best-match cosine grows with b
        b = 0.5 * (lo + hi)
        norm = np.sqrt(np.maximum(rr + 2 * b * ru + b * b * uu, 0.0))
        best = (rest_s + np.float32(b) * u_s).max(axis=1) / np.maximum(norm, 1e-12)
        if float(np.median(best)) < target_cos:
            lo = b
        else:
            hi = b
    return build(0.5 * (lo + hi))


#: The synthetic text-like sets a library with no real or served text queries calibrates on: one
#: generator would make the breadth depend on how hard that one draw is, so three kinds of text
#: query stand in, varying how far the best match is (cone strength), how many images a query
#: describes (spread) and how strong the modality gap is. Each must reach the goal.
CROSS_MODAL_VARIANTS: dict[str, dict[str, float]] = {
    "text": {"target_cos": TARGET_COS, "related": 8, "gap": 0.6, "common": 0.05},
    "text-far": {"target_cos": 0.24, "related": 24, "gap": 0.9, "common": 0.0},
    "text-near": {"target_cos": 0.38, "related": 2, "gap": 0.4, "common": 0.2},
}


def cross_modal_sets(vectors: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` queries of each of :data:`CROSS_MODAL_VARIANTS` (each with its own seed)."""
    return {
        name: cross_modal_queries(
            vectors,
            n,
            seed + 101 * i,
            target_cos=v["target_cos"],
            related=int(v["related"]),
            gap=v["gap"],
            common=v["common"],
        )
        for i, (name, v) in enumerate(CROSS_MODAL_VARIANTS.items())
    }
