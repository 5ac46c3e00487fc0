"""The straightforward (loop-based) form of the ``auto`` proposer, kept as the specification that
the vectorised :func:`fgsearch.regions.auto_boxes` is tested against. Not used by the package."""

from __future__ import annotations

import numpy as np

from fgsearch.boxes import nms
from fgsearch.regions import RegionSettings


def _components(mask_right: np.ndarray, mask_down: np.ndarray) -> np.ndarray:
    """Connected components of an h x w grid given which right/down neighbour links are on."""
    h, w = mask_down.shape[0] + 1, mask_right.shape[1] + 1
    parent = np.arange(h * w)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for y, x in zip(*np.nonzero(mask_right), strict=True):
        a, b = find(y * w + x), find(y * w + x + 1)
        if a != b:
            parent[max(a, b)] = min(a, b)
    for y, x in zip(*np.nonzero(mask_down), strict=True):
        a, b = find(y * w + x), find((y + 1) * w + x)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(h * w)]).reshape(h, w)


def _upsample(t: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of a cell map (values at cell centres) by an integer factor."""
    h, w = t.shape
    ys = (np.arange(h * factor) + 0.5) / factor - 0.5
    xs = (np.arange(w * factor) + 0.5) / factor - 0.5
    rows = np.stack([np.interp(ys, np.arange(h), t[:, j]) for j in range(w)], axis=1)  # [h*f, w]
    return np.stack([np.interp(xs, np.arange(w), rows[i]) for i in range(h * factor)])  # [h*f, w*f]


def _refine_box(
    f: np.ndarray, cells: np.ndarray, h: int, w: int, factor: int = 4, level: float = 0.5
) -> tuple[float, ...]:
    """Box of a segment at sub-cell precision.

    Each cell's similarity to the segment's mean vector is rescaled so the segment is ~1 and the
    rest ~0; partly covered cells fall in between. The map is upsampled bilinearly and the box is
    the extent of the part above 0.5, searched within one cell around the segment."""
    ys, xs = np.divmod(cells, w)
    cell_box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
    if len(cells) == h * w:
        return cell_box
    proto = f[cells].mean(axis=0)
    sim = (f @ proto).reshape(h, w)
    inside = np.zeros(h * w, bool)
    inside[cells] = True
    lo, hi = float(sim.reshape(-1)[~inside].mean()), float(sim.reshape(-1)[inside].mean())
    if hi - lo < 1e-6:
        return cell_box
    t = _upsample((sim - lo) / (hi - lo), factor)
    y0, y1 = max(0, ys.min() - 1) * factor, min(h, ys.max() + 2) * factor
    x0, x1 = max(0, xs.min() - 1) * factor, min(w, xs.max() + 2) * factor
    win = t[y0:y1, x0:x1] > level
    if not win.any():
        return cell_box
    rr = np.nonzero(win.any(axis=1))[0]
    cc = np.nonzero(win.any(axis=0))[0]
    return (
        (x0 + cc[0]) / (w * factor),
        (y0 + rr[0]) / (h * factor),
        (x0 + cc[-1] + 1) / (w * factor),
        (y0 + rr[-1] + 1) / (h * factor),
    )


def _grow(sim_row: np.ndarray, seed: int, h: int, w: int, level: float = 0.5) -> np.ndarray:
    """Cells connected to ``seed`` whose similarity to it is closer to the seed than to the background
    (the seed's median similarity)."""
    lo = float(np.median(sim_row))
    inside = (sim_row - lo) / max(1.0 - lo, 1e-6) > level
    seen = np.zeros(h * w, bool)
    stack, seen[seed] = [seed], True
    while stack:
        c = stack.pop()
        y, x = divmod(c, w)
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w:
                k = ny * w + nx
                if not seen[k] and inside[k]:
                    seen[k] = True
                    stack.append(k)
    return np.nonzero(seen)[0]


def reference_auto_boxes(dense: np.ndarray, settings: RegionSettings | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Proposals from one image's dense map ``[h, w, P]`` -> (boxes ``[K, 4]``, scores ``[K]``).

    Two sources of segments: cells grown from salient seeds (cells unlike most of the image), and
    connected components of the neighbour-similarity graph at several thresholds. Each segment is
    scored by contrast (mean similarity inside minus mean similarity to the rest) and boxed at
    sub-cell precision (:func:`_refine_box`)."""
    s = settings or RegionSettings()
    h, w, _ = dense.shape
    total = h * w
    f = dense.astype(np.float32).reshape(total, -1)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    if total < 2:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    sim = f @ f.T
    segments: dict[bytes, np.ndarray] = {}
    saliency = 1.0 - (sim.sum(axis=1) - 1.0) / (total - 1)
    for seed in np.argsort(-saliency)[: max(2 * s.max_regions, 8)]:
        cells = _grow(sim[seed], int(seed), h, w)
        segments.setdefault(cells.tobytes(), cells)
    g = f.reshape(h, w, -1)
    right = (g[:, :-1] * g[:, 1:]).sum(-1)
    down = (g[:-1] * g[1:]).sum(-1)
    edges = np.concatenate([right.ravel(), down.ravel()])
    if edges.size:
        for q in s.thresholds:
            t = float(np.quantile(edges, 1.0 - q))
            labels = _components(right >= t, down >= t).ravel()
            for lab in np.unique(labels):
                cells = np.nonzero(labels == lab)[0]
                segments.setdefault(cells.tobytes(), cells)
    cand: list[tuple[float, ...]] = []
    scores: list[float] = []
    for cells in segments.values():
        n = len(cells)
        if n < s.min_cells or n > 0.9 * total:
            continue
        inside = (sim[np.ix_(cells, cells)].sum() - n) / (n * (n - 1)) if n > 1 else 1.0
        mask = np.ones(total, bool)
        mask[cells] = False
        across = sim[np.ix_(cells, np.nonzero(mask)[0])].mean()
        cand.append(_refine_box(f, cells, h, w))
        scores.append(float(inside - across))
    if not cand:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    arr = np.asarray(cand, np.float32)
    sc = np.asarray(scores, np.float32)
    keep = nms(arr, sc, s.iou_threshold, limit=s.max_regions)
    return arr[keep], sc[keep]
