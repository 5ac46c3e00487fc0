"""The ``auto`` proposer in torch operations, on the device where the dense maps already are.

The same algorithm as :mod:`fgsearch.regions.auto` (numpy), step for step, so that the boxes are
the same (``tests/regions/test_auto_torch.py`` compares them on many maps, ties and edge cases
included). The GPU pipeline uses it so the dense maps never leave the device: the boxes come back
as device tensors, RoIAlign runs on them there (:func:`fgsearch.model.roi.roi_pool`), and only the
vectors and boxes are copied to the host.

Where the numpy code works in float64 this does too; the matrix products and sums that decide
(similarities, saliencies, segment sums, scores) run in float64 in both forms and are rounded to
float32, so another BLAS, summation order or a GPU (float64 products never use TF32) changes a
decision only if a float64 result lies within rounding of a float32 boundary; exact ties stay
ties and are broken by position, as numpy's stable sorts do.

Shapes must be known on the host, so three kinds of values leave the device during a call (each
a host sync): the convergence test of the component labelling (every :data:`LABEL_STEPS` steps,
two labellings per map shape), the largest number of valid segments (the padded width of the
per-segment tensors), and the number of boxes each image keeps (that is the result leaving the
device). Everything else, the greedy suppression included, is queued without waiting; the
upsampling matrices are copied to the device once per map shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from fgsearch.regions.base import RegionSettings
from fgsearch.regions.upsample import upsample_matrix

if TYPE_CHECKING:
    from torch import Tensor

LABEL_STEPS = 4  # labelling steps between two convergence tests (each test is a host sync)
REFINE_VALUES = 1 << 26  # sub-cell map values refined at once (512 MiB of float64)


def auto_boxes_torch(
    dense: Tensor | Sequence[Tensor], settings: RegionSettings | None = None
) -> list[tuple[Tensor, Tensor]]:
    """Per map (``[B, h, w, P]`` or a list of ``[h_i, w_i, P]`` tensors, any device): boxes
    ``[K, 4]`` (normalised x1, y1, x2, y2, float32, best first) and scores ``[K]`` on the maps'
    device; the same boxes as :func:`fgsearch.regions.auto.auto_boxes_batch`."""
    import torch

    s = settings or RegionSettings()
    maps = list(dense)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(tuple(m.shape), []).append(i)
    out: list[tuple[Tensor, Tensor]] = [_none(m) for m in maps]
    with torch.inference_mode(), torch.autocast(maps[0].device.type if maps else "cpu", enabled=False):
        for idx in groups.values():
            stacked = torch.stack([maps[i] for i in idx]).float()
            for i, got in zip(idx, _propose_same_shape(stacked, s), strict=True):
                out[i] = got
    return out


def _none(ref: Tensor) -> tuple[Tensor, Tensor]:
    """No boxes and no scores, on ``ref``'s device."""
    import torch

    return ref.new_zeros((0, 4), dtype=torch.float32), ref.new_zeros((0,), dtype=torch.float32)


def _propose_same_shape(dense: Tensor, s: RegionSettings) -> list[tuple[Tensor, Tensor]]:
    """The algorithm on ``[B, h, w, P]`` float32 maps of one shape."""
    import torch

    b, h, w, _ = dense.shape
    total = h * w
    empty = [_none(dense) for _ in range(b)]
    if total < 2 or b == 0 or s.max_regions == 0:
        return empty
    sim = _similarity(dense.reshape(b, total, -1))
    member = torch.cat([_seed_segments(sim, s, h, w), *_graph_segments(sim, s, h, w)], dim=1)
    n = member.sum(dim=-1)
    valid = (n >= max(s.min_cells, 1)) & (n <= 0.9 * total)
    member, valid = _keep_rows(member, valid)
    if member.shape[1] == 0:
        return empty
    valid = valid & ~_repeated(member, valid)  # the numpy form compacts again; the order is the same
    fm = member.to(torch.float64)
    n = fm.sum(dim=-1)
    a = (fm @ sim.to(torch.float64)).to(torch.float32)  # [B, S, T], rounded as in the numpy form
    scores = _contrast(a, fm, n, total)
    # the sub-cell maps are [B, S, 4h, 4w] float64: refined a few images at a time (same boxes)
    step = max(1, REFINE_VALUES // max(1, member.shape[1] * total * 16))
    boxes = torch.cat(
        [_refine_boxes(a[i : i + step], member[i : i + step], n[i : i + step], h, w) for i in range(0, b, step)]
    ).to(torch.float32)
    keep, count = _suppress(boxes.to(torch.float64), scores, valid, s.iou_threshold, s.max_regions)
    counts = count.tolist()  # the result leaves the device: how many boxes each image keeps
    kb = torch.gather(boxes, 1, keep[..., None].expand(-1, -1, 4))
    ks = torch.gather(scores, 1, keep)
    return [(kb[i, : counts[i]], ks[i, : counts[i]]) for i in range(b)]


def _similarity(f: Tensor) -> Tensor:
    """``[B, T, T]`` float32 cosine similarities of the cells (computed in float64, then rounded)."""
    import torch

    f64 = f.to(torch.float64)
    f64 = f64 / torch.linalg.vector_norm(f64, dim=-1, keepdim=True).clamp_min(1e-12)
    return (f64 @ f64.transpose(1, 2)).to(torch.float32)


def _quantile(x: Tensor, q: float) -> Tensor:
    """numpy's default (``linear``) quantile of the last axis, bit for bit (float64 ``x``)."""
    import math

    n = x.shape[-1]
    srt = x.sort(dim=-1).values
    vi = (n - 1) * q
    if vi >= n - 1:
        return srt[..., -1]
    lo = math.floor(vi)
    g = vi - lo
    a, b = srt[..., lo], srt[..., lo + 1]
    diff = b - a
    return b - diff * (1 - g) if g >= 0.5 else a + diff * g


def _seed_segments(sim: Tensor, s: RegionSettings, h: int, w: int) -> Tensor:
    """``[B, k, T]`` bool: cells grown from the ``k`` most salient seeds (see the numpy form)."""
    import torch

    b, total, _ = sim.shape
    saliency = 1.0 - (sim.to(torch.float64).sum(dim=-1) - 1.0) / (total - 1)
    k = min(max(2 * s.max_regions, 8), total)
    seeds = torch.argsort(-saliency, dim=1, stable=True)[:, :k]  # [B, k]
    rows = torch.gather(sim, 1, seeds[:, :, None].expand(-1, -1, total)).to(torch.float64)
    lo = _quantile(rows, 0.5)[..., None]
    inside = (rows - lo) / torch.clamp_min(1.0 - lo, 1e-6) > 0.5
    inside.scatter_(2, seeds[:, :, None], True)
    g = inside.reshape(b * k, h, w)
    lab = _label(g[:, :, :-1] & g[:, :, 1:], g[:, :-1] & g[:, 1:]).reshape(b, k, total)
    return lab == torch.gather(lab, 2, seeds[:, :, None])


def _graph_segments(sim: Tensor, s: RegionSettings, h: int, w: int) -> list[Tensor]:
    """``[B, Q * T, T]`` bool: components of the neighbour graph at each threshold (numpy form)."""
    import torch

    b, total, _ = sim.shape
    cells = torch.arange(total, device=sim.device).reshape(h, w)
    right = sim[:, cells[:, :-1].reshape(-1), cells[:, 1:].reshape(-1)].reshape(b, h, w - 1)
    down = sim[:, cells[:-1].reshape(-1), cells[1:].reshape(-1)].reshape(b, h - 1, w)
    edges = torch.cat([right.reshape(b, -1), down.reshape(b, -1)], dim=1).to(torch.float64)
    if not (edges.shape[1] and s.thresholds):
        return []
    qs = [1.0 - float(t) for t in np.asarray(s.thresholds, np.float64)]
    ts = torch.stack([_quantile(edges, q) for q in qs], dim=1)[:, :, None, None]  # [B, Q, 1, 1]
    nq = ts.shape[1]
    rl = (right.to(torch.float64)[:, None] >= ts).reshape(b * nq, h, w - 1)
    dl = (down.to(torch.float64)[:, None] >= ts).reshape(b * nq, h - 1, w)
    comp = _label(rl, dl).reshape(b, nq, 1, total)
    return [(comp == torch.arange(total, device=sim.device).reshape(1, 1, total, 1)).reshape(b, nq * total, total)]


def _label(right: Tensor, down: Tensor) -> Tensor:
    """Connected components of a batch of grids: ``[B, h * w]`` labels, each cell the smallest
    flat index in its component (as :func:`fgsearch.regions.auto._label`).

    A step gives every run of linked cells along a row, then along a column, its smallest label
    (one ``scatter_reduce`` each: a whole run at once, not one cell per step), then jumps labels
    twice (a cell takes its label's label). About ten operations a step; the result is tested
    for convergence every :data:`LABEL_STEPS` steps."""
    import torch

    b, h, w = right.shape[0], down.shape[1] + 1, right.shape[2] + 1
    big = h * w
    rows = _run_ids(right, b, h, w)
    cols = _run_ids(down.transpose(1, 2), b, w, h).reshape(b, w, h).transpose(1, 2).reshape(-1)
    lab = torch.arange(h * w, device=right.device).repeat(b)
    while True:
        before = lab
        for _ in range(LABEL_STEPS):
            for ids in (rows, cols):
                least = torch.full_like(lab, big).scatter_reduce_(0, ids, lab, "amin")
                lab = least[ids]
            flat = lab.reshape(b, h * w)
            flat = torch.gather(flat, 1, flat)
            lab = torch.gather(flat, 1, flat).reshape(-1)
        if torch.equal(lab, before):  # a host sync every LABEL_STEPS steps
            return lab.reshape(b, h * w)


def _run_ids(links: Tensor, b: int, n: int, m: int) -> Tensor:
    """``links[b, i, j]`` joins cell j to j + 1 along the last axis of ``[b, n, m]`` -> the id of
    each cell's run of joined cells, flat ``[b * n * m]`` (runs never cross a row)."""
    import torch

    starts = torch.ones((b, n, m), dtype=torch.bool, device=links.device)
    starts[:, :, 1:] = ~links
    return starts.reshape(-1).cumsum(0) - 1


def _keep_rows(member: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """The valid segments of each image first, in order, padded to the batch's largest count."""
    import torch

    keep = int(valid.sum(dim=1).max()) if valid.numel() else 0  # a host sync: the padded width
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :keep]
    valid = torch.gather(valid, 1, order)
    member = torch.gather(member, 1, order[:, :, None].expand(-1, -1, member.shape[2])) & valid[:, :, None]
    return member, valid


def _repeated(member: Tensor, valid: Tensor) -> Tensor:
    """``[B, S]``: valid segments with the same cells as an earlier valid one."""
    import torch

    fm = member.to(torch.float64)
    n = fm.sum(dim=-1)
    inter = fm @ fm.transpose(1, 2)  # exact small integers
    same = (inter == n[:, :, None]) & (inter == n[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    segs = member.shape[1]
    earlier = torch.ones((segs, segs), dtype=torch.bool, device=member.device).tril(-1)
    return (same & earlier).any(dim=-1)


def _contrast(a: Tensor, fm: Tensor, n: Tensor, total: int) -> Tensor:
    """Mean similarity inside each segment minus its mean similarity to the rest (computed in
    float64 from the float32 sums, rounded to float32)."""
    import torch

    a = a.to(torch.float64)
    inside_sum = (a * fm).sum(dim=-1)
    pairs = torch.clamp_min(n * (n - 1), 1.0)
    inside_mean = torch.where(n > 1, (inside_sum - n) / pairs, torch.ones_like(n))
    across = (a * (1.0 - fm)).sum(dim=-1) / torch.clamp_min(n * (total - n), 1.0)
    return (inside_mean - across).to(torch.float32)


@lru_cache(maxsize=64)
def _upsample_on(n: int, factor: int, device: str) -> Tensor:
    """:func:`upsample_matrix` as a float64 tensor on ``device`` (copied there once per shape)."""
    import torch

    return torch.from_numpy(upsample_matrix(n, factor)).to(device)


def _extent(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``[..., 4]`` first column, first row, last column, last row holding a true value; any."""
    import torch

    rows, cols = mask.any(dim=-1), mask.any(dim=-2)
    n, m = rows.shape[-1], cols.shape[-1]
    y0 = rows.to(torch.uint8).argmax(dim=-1)
    y1 = n - 1 - rows.flip(-1).to(torch.uint8).argmax(dim=-1)
    x0 = cols.to(torch.uint8).argmax(dim=-1)
    x1 = m - 1 - cols.flip(-1).to(torch.uint8).argmax(dim=-1)
    return torch.stack([x0, y0, x1, y1], dim=-1), rows.any(dim=-1)


def _refine_boxes(
    seg_sim: Tensor, member: Tensor, n: Tensor, h: int, w: int, factor: int = 4, level: float = 0.5
) -> Tensor:
    """Boxes ``[B, S, 4]`` (float64) of segments at sub-cell precision (see the numpy form)."""
    import torch

    b, smax, total = member.shape
    f64 = torch.float64
    fm = member.to(f64)
    size = n.to(f64)
    ext, _ = _extent(member.reshape(b, smax, h, w))
    cell = _scaled(ext.to(f64), w, h)
    sim = seg_sim.to(f64) / torch.clamp_min(size, 1.0)[..., None]
    out_n = total - size
    hi = (sim * fm).sum(dim=-1) / torch.clamp_min(size, 1.0)
    lo = (sim * (1.0 - fm)).sum(dim=-1) / torch.clamp_min(out_n, 1.0)
    ok = (out_n > 0) & (hi - lo >= 1e-6)
    t = (sim - lo[..., None]) / torch.where(ok, hi - lo, torch.ones_like(hi))[..., None]
    dev = str(member.device)
    up = _upsample_on(h, factor, dev) @ t.reshape(b, smax, h, w) @ _upsample_on(w, factor, dev).T
    ys = torch.arange(h * factor, device=member.device) // factor
    xs = torch.arange(w * factor, device=member.device) // factor
    win_y = (ys >= ext[..., 1:2] - 1) & (ys <= ext[..., 3:4] + 1)
    win_x = (xs >= ext[..., 0:1] - 1) & (xs <= ext[..., 2:3] + 1)
    above = (up > level) & win_y[..., :, None] & win_x[..., None, :]
    fine, found = _extent(above)
    fine_box = _scaled(fine.to(f64), w * factor, h * factor)
    return torch.where((ok & found)[..., None], fine_box, cell)


def _scaled(ext: Tensor, w: int, h: int) -> Tensor:
    """Inclusive cell extents ``x0, y0, x1, y1`` -> normalised box edges (as the numpy form:
    ``(ext + [0, 0, 1, 1]) / [w, h, w, h]``), without copying constants to the device."""
    import torch

    return torch.stack([ext[..., 0] / w, ext[..., 1] / h, (ext[..., 2] + 1) / w, (ext[..., 3] + 1) / h], dim=-1)


def _suppress(boxes: Tensor, scores: Tensor, valid: Tensor, iou: float, limit: int) -> tuple[Tensor, Tensor]:
    """Greedy non-maximum suppression for ``[B, S, 4]`` (see the numpy form): per image, the
    indices of the kept boxes first (best score first, ties in order) and how many are kept,
    without reading anything back."""
    import torch

    b, smax, _ = boxes.shape
    order = torch.argsort(torch.where(valid, -scores, torch.full_like(scores, float("inf"))), dim=1, stable=True)
    bx = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
    ok = torch.gather(valid, 1, order)
    area = torch.clamp_min(bx[..., 2] - bx[..., 0], 0) * torch.clamp_min(bx[..., 3] - bx[..., 1], 0)
    lt = torch.maximum(bx[:, :, None, :2], bx[:, None, :, :2])
    rb = torch.minimum(bx[:, :, None, 2:], bx[:, None, :, 2:])
    wh = torch.clamp_min(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, :, None] + area[:, None, :] - inter
    ious = torch.where(union > 0, inter / torch.clamp_min(union, 1e-12), torch.zeros_like(union))
    over = ious > iou
    # Greedy NMS keeps, in order, the first candidate not yet suppressed, so ``limit`` rounds of
    # "take the first alive candidate, kill it and what it overlaps" give exactly the numpy loop's
    # choice in ``limit`` rounds (not one per candidate: fewer kernels on a GPU, no read-back).
    kept = torch.zeros((b, smax), dtype=torch.bool, device=boxes.device)
    alive = ok.clone()
    rows = torch.arange(b, device=boxes.device)
    pos = torch.arange(smax, device=boxes.device)
    for _ in range(min(limit, smax)):
        has = alive.any(dim=1)
        first = alive.to(torch.uint8).argmax(dim=1)  # the first alive candidate (0 when none is)
        sel = (pos[None, :] == first[:, None]) & has[:, None]
        kept |= sel
        alive &= ~sel & ~(over[rows, first] & has[:, None])
    count = kept.sum(dim=1)
    # kept positions first, in score order (a stable sort of "not kept")
    first = torch.argsort((~kept).to(torch.uint8), dim=1, stable=True)
    return torch.gather(order, 1, first), count
