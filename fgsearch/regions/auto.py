"""The ``auto`` proposer: class-agnostic proposals from each image's OWN dense feature map.

No extra weights. Segments come from two sources: cells grown from salient seeds (patches unlike
most of the image), and connected components of the neighbour-similarity graph at several
thresholds taken from the image's own similarity distribution (segments at several scales). Each
segment is scored by how much it stands out (mean similarity inside minus mean similarity to the
rest), boxed at sub-cell precision, deduplicated by IoU, and the best ``max_regions`` are kept.

It runs on numpy (any encoder runtime hands it numpy maps): the maps of one shape are proposed
for together with whole-batch array operations (:func:`auto_boxes_batch`);
``tests/reference_regions.py`` holds the same algorithm as plain loops over one image. Where the
model runs on a device (the GPU pipeline), :meth:`AutoProposer.after_tensors` runs the same
algorithm in torch operations on the maps where they are (:mod:`fgsearch.regions.auto_torch`):
the same boxes, without copying the maps to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fgsearch.regions.base import ImageBoxes, RegionSettings, no_boxes
from fgsearch.regions.upsample import upsample_matrix

WIDE = np.float64  # thresholds and boxes are computed in float64, as the reference does


class AutoProposer:
    """Boxes from the dense map, after the forward pass."""

    name = "auto"
    uses_dense = True

    def __init__(self, settings: RegionSettings) -> None:
        self.settings = settings
        self.wants_regions = settings.needs_dense

    def before(self, path: str, root: str | None, width: int, height: int) -> ImageBoxes:
        return ImageBoxes(no_boxes())

    def after(self, dense: list[np.ndarray]) -> list[np.ndarray]:
        return [boxes for boxes, _ in auto_boxes_batch(dense, self.settings)]

    def after_tensors(self, dense: list[Any]) -> list[Any]:
        """:meth:`after` on torch tensors, on their device; the boxes stay there."""
        from fgsearch.regions.auto_torch import auto_boxes_torch

        return [boxes for boxes, _ in auto_boxes_torch(dense, self.settings)]

    def run_warnings(self, seen: Sequence[ImageBoxes]) -> list[str]:
        return []


def auto_boxes(dense: np.ndarray, settings: RegionSettings | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Proposals from one image's dense map ``[h, w, P]`` -> (boxes ``[K, 4]``, scores ``[K]``),
    best first. See :func:`auto_boxes_batch`."""
    return auto_boxes_batch([dense], settings)[0]


def auto_boxes_batch(
    dense: np.ndarray | Sequence[np.ndarray], settings: RegionSettings | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per map (``[B, h, w, P]`` or a list of ``[h_i, w_i, P]``): boxes ``[K, 4]`` (normalised
    x1, y1, x2, y2, float32, best first) and their scores ``[K]``. Maps of one shape are
    proposed for together; padding a batch to its largest segment count changes nothing."""
    s = settings or RegionSettings()
    maps = [np.asarray(d, np.float32) for d in dense]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(m.shape, []).append(i)
    out: list[tuple[np.ndarray, np.ndarray]] = [(no_boxes(), np.zeros(0, np.float32))] * len(maps)
    for idx in groups.values():
        for i, got in zip(idx, _propose_same_shape(np.stack([maps[i] for i in idx]), s), strict=True):
            out[i] = got
    return out


def _propose_same_shape(dense: np.ndarray, s: RegionSettings) -> list[tuple[np.ndarray, np.ndarray]]:
    """The algorithm on ``[B, h, w, P]`` maps of one shape."""
    b, h, w, _ = dense.shape
    total = h * w
    empty = [(no_boxes(), np.zeros(0, np.float32)) for _ in range(b)]
    if total < 2 or b == 0 or s.max_regions == 0:
        return empty
    sim = _similarity(dense.reshape(b, total, -1))
    member = np.concatenate([_seed_segments(sim, s, h, w), *_graph_segments(sim, s, h, w)], axis=1)
    n = member.sum(axis=-1)
    valid = (n >= max(s.min_cells, 1)) & (n <= 0.9 * total)
    member, valid = _keep_rows(member, valid)
    if member.shape[1] == 0:
        return empty
    member, valid = _keep_rows(member, valid & ~_repeated(member, valid))
    fm = member.astype(WIDE)
    n = fm.sum(axis=-1)
    # [B, S, T]: per segment, each cell's summed similarity to the segment's cells; summed in
    # float64 and rounded, so that another BLAS (the torch form, a GPU) rounds to the same float32
    a = (fm @ sim.astype(WIDE)).astype(np.float32)
    scores = _contrast(a, fm, n, total)
    boxes = _refine_boxes(a, member, n, h, w).astype(np.float32)  # float32 from here on, as stored
    keep = _suppress(boxes.astype(WIDE), scores, valid, s.iou_threshold, s.max_regions)
    return [(boxes[i, k], scores[i, k].astype(np.float32)) for i, k in enumerate(keep)]


def _similarity(f: np.ndarray) -> np.ndarray:
    """``[B, T, T]`` float32 cosine similarities of the cells: computed in float64 and rounded,
    so that another BLAS or the torch form on a GPU gets the same float32 values (unless a value
    lies within float64 rounding of a float32 boundary)."""
    f64 = f.astype(WIDE)
    f64 = f64 / np.maximum(np.linalg.norm(f64, axis=-1, keepdims=True), 1e-12)
    return (f64 @ f64.transpose(0, 2, 1)).astype(np.float32)


def _seed_segments(sim: np.ndarray, s: RegionSettings, h: int, w: int) -> np.ndarray:
    """``[B, k, T]``: cells grown from the ``k`` most salient seeds (the seed's connected component
    among cells closer to it than to the image's median similarity)."""
    b, total, _ = sim.shape
    saliency = 1.0 - (sim.sum(axis=-1, dtype=WIDE) - 1.0) / (total - 1)
    k = min(max(2 * s.max_regions, 8), total)
    seeds = np.argsort(-saliency, axis=1, kind="stable")[:, :k]  # [B, k]
    rows = np.take_along_axis(sim, seeds[:, :, None], axis=1).astype(WIDE)  # [B, k, T]
    lo = np.quantile(rows, 0.5, axis=-1, keepdims=True)
    inside = (rows - lo) / np.maximum(1.0 - lo, 1e-6) > 0.5
    np.put_along_axis(inside, seeds[:, :, None], True, axis=2)
    g = inside.reshape(b * k, h, w)
    lab = _label(g[:, :, :-1] & g[:, :, 1:], g[:, :-1] & g[:, 1:]).reshape(b, k, total)
    return lab == np.take_along_axis(lab, seeds[:, :, None], axis=2)


def _graph_segments(sim: np.ndarray, s: RegionSettings, h: int, w: int) -> list[np.ndarray]:
    """``[B, Q * T, T]``: components of the neighbour graph keeping each fraction ``thresholds``
    of the most similar links; one row per possible label (a cell index) and threshold."""
    b, total, _ = sim.shape
    cells = np.arange(total).reshape(h, w)
    right = sim[:, cells[:, :-1].reshape(-1), cells[:, 1:].reshape(-1)].reshape(b, h, w - 1)
    down = sim[:, cells[:-1].reshape(-1), cells[1:].reshape(-1)].reshape(b, h - 1, w)
    edges = np.concatenate([right.reshape(b, -1), down.reshape(b, -1)], axis=1)
    if not (edges.shape[1] and s.thresholds):
        return []
    q = 1.0 - np.asarray(s.thresholds, WIDE)
    ts = np.quantile(edges.astype(WIDE), q, axis=1).T[:, :, None, None]  # [B, Q, 1, 1]
    nq = ts.shape[1]
    rl = (right.astype(WIDE)[:, None] >= ts).reshape(b * nq, h, w - 1)
    dl = (down.astype(WIDE)[:, None] >= ts).reshape(b * nq, h - 1, w)
    comp = _label(rl, dl).reshape(b, nq, 1, total)
    return [(comp == np.arange(total).reshape(1, 1, total, 1)).reshape(b, nq * total, total)]


def _label(right: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Connected components of a batch of h x w grids, all at once.

    ``right[b, y, x]`` links cell (y, x) to (y, x + 1) and ``down[b, y, x]`` links it to (y + 1, x).
    Returns ``[B, h * w]`` labels: each cell gets the smallest flat index in its component. Labels
    spread along links as minima, with pointer jumping (a cell takes its label's label), until
    nothing changes."""
    b, h, w = right.shape[0], down.shape[1] + 1, right.shape[2] + 1
    lab = np.broadcast_to(np.arange(h * w).reshape(1, h, w), (b, h, w)).copy()
    big = h * w
    while True:
        cur = lab.copy()
        np.minimum(lab[:, :, :-1], np.where(right, cur[:, :, 1:], big), out=lab[:, :, :-1])
        np.minimum(lab[:, :, 1:], np.where(right, cur[:, :, :-1], big), out=lab[:, :, 1:])
        np.minimum(lab[:, :-1], np.where(down, cur[:, 1:], big), out=lab[:, :-1])
        np.minimum(lab[:, 1:], np.where(down, cur[:, :-1], big), out=lab[:, 1:])
        flat = lab.reshape(b, h * w)
        flat = np.take_along_axis(flat, flat, axis=1)
        flat = np.take_along_axis(flat, flat, axis=1)
        lab = flat.reshape(b, h, w)
        if np.array_equal(lab, cur):
            return flat


def _keep_rows(member: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the valid segments ``member[b, s]`` (``valid[b, s]``) of each image, in order, padded
    with empty invalid rows to the batch's largest count."""
    keep = int(valid.sum(axis=1).max()) if valid.size else 0
    order = np.argsort((~valid).astype(np.uint8), axis=1, kind="stable")[:, :keep]  # valid first
    valid = np.take_along_axis(valid, order, axis=1)
    member = np.take_along_axis(member, order[:, :, None], axis=1) & valid[:, :, None]
    return member, valid


def _repeated(member: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[B, S]``: valid segments with the same cells as an earlier valid one."""
    fm = member.astype(np.float32)
    n = fm.sum(axis=-1)
    inter = fm @ fm.transpose(0, 2, 1)  # [B, S, S] cells in common (exact small integers)
    same = (inter == n[:, :, None]) & (inter == n[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    segs = member.shape[1]
    earlier = np.tril(np.ones((segs, segs), bool), -1)
    return (same & earlier).any(axis=-1)


def _contrast(a: np.ndarray, fm: np.ndarray, n: np.ndarray, total: int) -> np.ndarray:
    """Mean similarity inside each segment minus its mean similarity to the rest (in float64 from
    the float32 sums ``a``, rounded to float32: ties stay ties whatever order a sum takes)."""
    a = a.astype(WIDE)
    inside_sum = (a * fm).sum(axis=-1)
    pairs = np.maximum(n * (n - 1), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside_mean = np.where(n > 1, (inside_sum - n) / pairs, np.ones_like(n))
    across = (a * (1.0 - fm)).sum(axis=-1) / np.maximum(n * (total - n), 1.0)
    return (inside_mean - across).astype(np.float32)


def _extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``[..., n, m]`` boolean masks: ``[..., 4]`` first column, first row, last column, last
    row that hold a true value, and whether any does."""
    rows, cols = np.asarray(mask.any(axis=-1)), np.asarray(mask.any(axis=-2))
    n, m = rows.shape[-1], cols.shape[-1]
    y0, y1 = rows.argmax(axis=-1), n - 1 - rows[..., ::-1].argmax(axis=-1)
    x0, x1 = cols.argmax(axis=-1), m - 1 - cols[..., ::-1].argmax(axis=-1)
    return np.stack([x0, y0, x1, y1], axis=-1), np.asarray(rows.any(axis=-1))


def _refine_boxes(
    seg_sim: np.ndarray, member: np.ndarray, n: np.ndarray, h: int, w: int, factor: int = 4, level: float = 0.5
) -> np.ndarray:
    """Boxes ``[B, S, 4]`` of segments at sub-cell precision.

    Each cell's similarity to a segment's mean vector (``seg_sim[b, s, c]`` sums cell c's
    similarities to the segment's cells; divided by the segment's size it is c's similarity to
    the segment's mean vector) is rescaled so the segment is ~1 and the rest ~0; partly covered
    cells fall in between. The map is upsampled bilinearly and the box is the extent of the part
    above ``level``, searched within one cell around the segment; a segment whose map has no
    contrast keeps its cell box."""
    b, smax, total = member.shape
    fm = member.astype(WIDE)
    size = n.astype(WIDE)
    ext, _ = _extent(member.reshape(b, smax, h, w))
    cell = (ext + np.array([0, 0, 1, 1])).astype(WIDE) / np.array([w, h, w, h], WIDE)
    sim = seg_sim.astype(WIDE) / np.maximum(size, 1.0)[..., None]
    out_n = total - size
    hi = (sim * fm).sum(axis=-1) / np.maximum(size, 1.0)
    lo = (sim * (1.0 - fm)).sum(axis=-1) / np.maximum(out_n, 1.0)
    ok = (out_n > 0) & (hi - lo >= 1e-6)
    t = (sim - lo[..., None]) / np.where(ok, hi - lo, np.ones_like(hi))[..., None]
    up = upsample_matrix(h, factor) @ t.reshape(b, smax, h, w) @ upsample_matrix(w, factor).T
    ys = np.arange(h * factor) // factor
    xs = np.arange(w * factor) // factor
    win_y = (ys >= ext[..., 1:2] - 1) & (ys <= ext[..., 3:4] + 1)  # [B, S, h*f]
    win_x = (xs >= ext[..., 0:1] - 1) & (xs <= ext[..., 2:3] + 1)
    above = (up > level) & win_y[..., :, None] & win_x[..., None, :]
    fine, found = _extent(above)
    fscale = np.array([w * factor, h * factor, w * factor, h * factor], WIDE)
    fine_box = (fine + np.array([0, 0, 1, 1])).astype(WIDE) / fscale
    return np.where((ok & found)[..., None], fine_box, cell)


def _suppress(boxes: np.ndarray, scores: np.ndarray, valid: np.ndarray, iou: float, limit: int) -> list[Any]:
    """Greedy non-maximum suppression for a batch ``[B, S, 4]``: per image, the indices kept, best
    score first (ties in order), none overlapping a better kept box by more than ``iou``."""
    b, smax, _ = boxes.shape
    order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")
    bx = np.take_along_axis(boxes, order[..., None], axis=1)
    ok = np.take_along_axis(valid, order, axis=1)
    area = np.maximum(bx[..., 2] - bx[..., 0], 0) * np.maximum(bx[..., 3] - bx[..., 1], 0)
    lt = np.maximum(bx[:, :, None, :2], bx[:, None, :, :2])
    rb = np.minimum(bx[:, :, None, 2:], bx[:, None, :, 2:])
    wh = np.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, :, None] + area[:, None, :] - inter
    ious = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    kept = np.zeros((b, smax), bool)
    count = np.zeros(b, np.int64)
    for i in range(min(smax, int(ok.sum(axis=1).max()))):
        take = ok[:, i] & (count < limit) & ~((ious[:, i] > iou) & kept).any(axis=-1)
        kept[:, i] = take
        count += take
    return [order[j][kept[j]] for j in range(b)]
