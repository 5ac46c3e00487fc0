"""Evaluation metrics in pure numpy: retrieval recall@K, hard-negative accuracy, top-K accuracy.

Every metric is returned in PERCENT (0-100), the unit the paper reports.

Ties. Scores from a real model almost never tie, but tiny or degenerate models do, and a metric
must not reward them for it. Two policies, chosen by ``ties``:

* ``"pessimistic"`` (default): a wrong item that scores EQUAL to the best correct item is ranked
  before it. A query whose correct items all tie with every candidate therefore scores like the
  worst case, never like the best. Ties among correct items do not matter (any of them may come
  first).
* ``"index"``: a stable sort by descending score, lower gallery index first among equal scores
  (what ``np.argsort(-s, kind="stable")`` gives).

The reference FG-CLIP scripts rank with ``argsort`` (ties broken by the sort's internal order) and
count an FG-OVD item as correct when the positive EQUALS the maximum (a tie wins); we count a tie
as a miss, so on data with exact ties our numbers are a lower bound of theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from fgsearch.errors import InputError

Ties = Literal["pessimistic", "index"]
Relevant = Sequence[Sequence[int]]

ROWS_PER_BLOCK = (
    1024  # query rows scored at a time (a 25k x 5k similarity matrix is fine; a 25k x 5k bool per row block too)
)


def _check_sim(sim: np.ndarray, name: str = "similarity") -> np.ndarray:
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise InputError(f"{name} must be a 2-D [queries, gallery] matrix, got shape {sim.shape}")
    if not np.all(np.isfinite(sim)):
        raise InputError(f"{name} holds NaN or infinite scores; check the model outputs")
    return sim


def first_hit_ranks(
    sim: np.ndarray, relevant: Relevant, ties: Ties = "pessimistic", *, rows_per_block: int = ROWS_PER_BLOCK
) -> np.ndarray:
    """0-based rank of the best-ranked correct gallery item for each query (row of ``sim``).

    ``relevant[q]`` lists the correct gallery indices of query q (one or more; duplicates are fine).
    A query hits at K when its rank is below K. See the module docstring for ``ties``.
    ``rows_per_block`` bounds memory (queries scored at a time); it never changes the ranks.
    """
    sim = _check_sim(sim)
    nq, ng = sim.shape
    if len(relevant) != nq:
        raise InputError(f"got ground truth for {len(relevant)} queries but the matrix has {nq} rows")
    if ties not in ("pessimistic", "index"):
        raise InputError(f"ties must be 'pessimistic' or 'index', got {ties!r}")
    ranks = np.empty(nq, dtype=np.int64)
    cols = np.arange(ng)
    for s in range(0, nq, rows_per_block):
        block = sim[s : s + rows_per_block].astype(np.float64, copy=False)
        gt = np.zeros(block.shape, dtype=bool)
        for r, items in enumerate(relevant[s : s + rows_per_block]):
            idx = np.asarray(list(items), dtype=np.int64)
            if idx.size == 0:
                raise InputError(f"query {s + r} has no correct item; every query needs at least one")
            if idx.min() < 0 or idx.max() >= ng:
                raise InputError(f"query {s + r} names gallery item {idx.max()} outside 0..{ng - 1}")
            gt[r, idx] = True
        best = np.where(gt, block, -np.inf).max(axis=1, keepdims=True)
        if ties == "pessimistic":
            ranks[s : s + len(block)] = ((block >= best) & ~gt).sum(axis=1)
        else:
            at_best = gt & (block == best)
            first = np.argmax(at_best, axis=1)[:, None]  # lowest index among the best correct items
            ranks[s : s + len(block)] = (block > best).sum(axis=1) + ((block == best) & (cols < first)).sum(axis=1)
    return ranks


def recall_at_k(
    sim: np.ndarray, relevant: Relevant, ks: Iterable[int] = (1, 5, 10), ties: Ties = "pessimistic"
) -> dict[int, float]:
    """Recall@K in percent: the share of queries with ANY correct item among their top K."""
    ranks = first_hit_ranks(sim, relevant, ties)
    if len(ranks) == 0:
        raise InputError("recall needs at least one query")
    return {int(k): float(100.0 * np.mean(ranks < k)) for k in ks}


def invert(relevant: Relevant, n_gallery: int) -> list[list[int]]:
    """Swap the roles of queries and gallery: ``out[g]`` lists the queries that name g as correct."""
    out: list[list[int]] = [[] for _ in range(n_gallery)]
    for q, items in enumerate(relevant):
        for g in set(items):
            out[g].append(q)
    return out


def retrieval_metrics(
    sim_image_text: np.ndarray,
    text_images: Relevant,
    ks: Iterable[int] = (1, 5, 10),
    ties: Ties = "pessimistic",
) -> dict[str, float]:
    """Image<->text retrieval in percent: ``t2i_r{K}`` and ``i2t_r{K}``.

    ``sim_image_text`` is ``[images, texts]``; ``text_images[t]`` lists the correct images of text t
    (usually exactly one; several captions per image are the usual case, several images per text
    cover duplicate images). An image without any caption is an error, since i2t recall would be
    undefined for it.
    """
    sim = _check_sim(sim_image_text, "image-text similarity")
    n_img, n_txt = sim.shape
    if len(text_images) != n_txt:
        raise InputError(f"got ground truth for {len(text_images)} texts but the matrix has {n_txt} columns")
    image_texts = invert(text_images, n_img)
    empty = [i for i, t in enumerate(image_texts) if not t]
    if empty:
        raise InputError(f"{len(empty)} images have no caption (first: image {empty[0]}); drop them first")
    ks = tuple(ks)
    out: dict[str, float] = {}
    for k, v in recall_at_k(sim.T, text_images, ks, ties).items():
        out[f"t2i_r{k}"] = v
    for k, v in recall_at_k(sim, image_texts, ks, ties).items():
        out[f"i2t_r{k}"] = v
    return out


def hard_negative_accuracy(scores: Sequence[np.ndarray]) -> float:
    """Percent of items whose positive scores STRICTLY above every one of its negatives.

    ``scores[i]`` is a 1-D array: the positive's score first, then the negatives' scores (at least
    one). A tie with a negative is a miss.
    """
    if len(scores) == 0:
        raise InputError("hard-negative accuracy needs at least one item")
    correct = 0
    for i, s in enumerate(scores):
        arr = np.asarray(s, dtype=np.float64).reshape(-1)
        if arr.size < 2:
            raise InputError(f"item {i} has no negative; hard-negative accuracy needs a positive and >= 1 negative")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"item {i} holds NaN or infinite scores")
        correct += int(arr[0] > arr[1:].max())
    return float(100.0 * correct / len(scores))


def topk_accuracy(
    scores: np.ndarray, labels: Sequence[int] | np.ndarray, k: int = 1, ties: Ties = "pessimistic"
) -> float:
    """Percent of rows whose true class (``labels[i]``) is among the top ``k`` of ``scores[i]``."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    return recall_at_k(scores, [[int(c)] for c in labels], (k,), ties)[k]
