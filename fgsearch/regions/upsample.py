"""Bilinear upsampling of a patch grid as a matrix (shared by the numpy and torch auto proposers)."""

from __future__ import annotations

import numpy as np


def upsample_matrix(n: int, factor: int) -> np.ndarray:
    """``[n * factor, n]`` bilinear weights from cell centres to sub-cell centres (edges clamp)."""
    pos = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0, n - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
    frac = pos - i0
    m = np.zeros((n * factor, n), np.float64)
    rows = np.arange(n * factor)
    m[rows, i0] += 1.0 - frac
    if n > 1:
        m[rows, i0 + 1] += frac
    return m
