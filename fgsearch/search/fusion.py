"""Fusion: one image ranking from the global and the region channel, each standardised against
the library's own score distribution for the query (see :mod:`fgsearch.search`)."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fgsearch.library.store import LibraryStore

SAMPLE_IMAGES = 256  # images whose scores give each channel's mean and spread for a query


@dataclass(frozen=True)
class LibrarySample:
    """Stored vectors of a fixed sample of the library's images: each channel's score distribution
    for a query is measured on it. ``counts[i]`` regions of image ``i`` are consecutive rows of
    ``regions``."""

    key: tuple[int, int]  # (global count, region count) it was drawn at
    images: np.ndarray  # [S, D]
    regions: np.ndarray  # [sum(counts), D]
    counts: np.ndarray  # [S]


_SAMPLES: weakref.WeakKeyDictionary[LibraryStore, LibrarySample] = weakref.WeakKeyDictionary()
_SAMPLES_LOCK = threading.Lock()


def library_sample(store: LibraryStore) -> LibrarySample:
    """The library's sample (up to :data:`SAMPLE_IMAGES` images evenly spaced by id), cached per
    open store and re-drawn when the index counts change."""
    key = (store.global_index.count(), store.region_index.count())
    with _SAMPLES_LOCK:
        cached = _SAMPLES.get(store)
    if cached is not None and cached.key == key:
        return cached
    ids = np.asarray(sorted(store.catalog.filter_contents()), np.int64)
    ids = ids[store.global_index.contains(ids)] if len(ids) else ids  # a reader's view may lag its catalog
    if len(ids) > SAMPLE_IMAGES:
        ids = ids[np.linspace(0, len(ids) - 1, SAMPLE_IMAGES).round().astype(np.int64)]
    regions = store.catalog.region_ids_by_content(ids.tolist()) if key[1] else {}
    rids = [regions.get(int(c), np.zeros(0, np.int64)) for c in ids]
    rids = [r[store.region_index.contains(r)] if len(r) else r for r in rids]
    counts = np.asarray([len(r) for r in rids], np.int64)
    all_rids = np.concatenate(rids) if rids else np.zeros(0, np.int64)
    images = store.global_index.get(ids)
    rvec = store.region_index.get(all_rids) if len(all_rids) else np.zeros((0, images.shape[1]), np.float32)
    sample = LibrarySample(key, images, rvec, counts)
    with _SAMPLES_LOCK:
        _SAMPLES[store] = sample
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
