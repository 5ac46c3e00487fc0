"""Region proposers: which boxes of an image get their own vector.

* ``grid``: fixed multi-scale, overlapping windows (halves, thirds, centre), no model needed.
* ``auto`` (default): class-agnostic proposals from the image's OWN dense feature map, no extra
  weights. Segments come from two sources: cells grown from salient seeds (patches unlike most of
  the image), and connected components of the neighbour-similarity graph at several thresholds
  taken from the image's own similarity distribution (segments at several scales). Each segment
  is scored by how much it stands out (mean similarity inside minus mean similarity to the rest),
  boxed at sub-cell precision, deduplicated by IoU, and the best ``max_regions`` are kept. A whole
  batch is proposed at once with tensor operations on the model's device
  (:func:`auto_boxes_batch`).
* ``none``: global vectors only.
* ``sidecar``: boxes supplied by the user (COCO instances JSON, or ``<image>.json`` beside each
  image), see :class:`SidecarBoxes`.

All boxes use :mod:`fgsearch.boxes`' convention: normalised x1, y1, x2, y2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.boxes import Box, iou_matrix
from fgsearch.errors import DataError, InputError

if TYPE_CHECKING:
    import torch

PROPOSERS = ("auto", "grid", "none", "sidecar")
SIDECAR_MAX_BYTES = 16 << 20  # an <image>.json of boxes; bigger is not a sidecar (or is /dev/zero)
COCO_MAX_BYTES = 4 << 30  # COCO 2017's train instances file is 450 MB


@dataclass(frozen=True)
class RegionSettings:
    """How regions are proposed; stored in the library so every image is treated alike."""

    proposer: str = "auto"
    max_regions: int = 16
    iou_threshold: float = 0.6
    min_cells: int = 2  # smallest segment (in dense-map cells) that becomes a proposal
    sidecar: str | None = None  # COCO JSON path, or "per-image" for <image>.json files
    thresholds: tuple[float, ...] = field(default=(0.5, 0.7, 0.85))  # similarity quantiles for 'auto'

    def __post_init__(self) -> None:
        if self.proposer not in PROPOSERS:
            raise InputError(f"unknown region proposer {self.proposer!r}; choose one of {', '.join(PROPOSERS)}")
        if self.max_regions < 0:
            raise InputError(f"--max-regions must be >= 0, got {self.max_regions}")
        if self.proposer == "sidecar" and not self.sidecar:
            raise InputError("--regions sidecar needs --sidecar PATH (COCO JSON) or --sidecar per-image")

    @property
    def needs_dense(self) -> bool:
        return self.proposer != "none" and self.max_regions > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "proposer": self.proposer,
            "max_regions": self.max_regions,
            "iou_threshold": self.iou_threshold,
            "min_cells": self.min_cells,
            "sidecar": self.sidecar,
            "thresholds": list(self.thresholds),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RegionSettings:
        return cls(
            proposer=str(d.get("proposer", "auto")),
            max_regions=int(d.get("max_regions", 16)),
            iou_threshold=float(d.get("iou_threshold", 0.6)),
            min_cells=int(d.get("min_cells", 2)),
            sidecar=d.get("sidecar") or None,
            thresholds=tuple(float(x) for x in d.get("thresholds", (0.5, 0.7, 0.85))),
        )


def grid_boxes(max_regions: int = 16) -> list[Box]:
    """Multi-scale overlapping windows, coarse to fine: 2x2 halves, centre, 3x3 thirds, then
    half-size windows with quarter strides."""
    out: list[Box] = []
    for i in range(2):
        for j in range(2):
            out.append(Box(j / 2, i / 2, (j + 1) / 2, (i + 1) / 2))
    out.append(Box(0.25, 0.25, 0.75, 0.75))
    for i in range(3):
        for j in range(3):
            out.append(Box(j / 3, i / 3, (j + 1) / 3, (i + 1) / 3))
    for fi in (0.0, 0.25, 0.5):
        for fj in (0.0, 0.25, 0.5):
            b = Box(fj, fi, fj + 0.5, fi + 0.5)
            if b not in out:
                out.append(b)
    return out[:max_regions]


def _label(right: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Connected components of a batch of h x w grids, all at once.

    ``right[b, y, x]`` links cell (y, x) to (y, x + 1) and ``down[b, y, x]`` links it to (y + 1, x).
    Returns ``[B, h * w]`` labels: each cell gets the smallest flat index in its component. Labels
    spread along links as minima, with pointer jumping (a cell takes its label's label), until
    nothing changes."""
    import torch

    b, h, w = right.shape[0], down.shape[1] + 1, right.shape[2] + 1
    lab = torch.arange(h * w, device=right.device).view(1, h, w).expand(b, h, w).clone()
    big = h * w
    while True:
        cur = lab.clone()
        lab[:, :, :-1] = torch.minimum(lab[:, :, :-1], torch.where(right, cur[:, :, 1:], big))
        lab[:, :, 1:] = torch.minimum(lab[:, :, 1:], torch.where(right, cur[:, :, :-1], big))
        lab[:, :-1] = torch.minimum(lab[:, :-1], torch.where(down, cur[:, 1:], big))
        lab[:, 1:] = torch.minimum(lab[:, 1:], torch.where(down, cur[:, :-1], big))
        flat = lab.view(b, h * w)
        flat = flat.gather(1, flat)
        flat = flat.gather(1, flat)
        lab = flat.view(b, h, w)
        if torch.equal(lab, cur):
            return flat


def _upsample_matrix(n: int, factor: int) -> np.ndarray:
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


def _extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``[..., n, m]`` boolean masks: ``[..., 4]`` first column, first row, last column, last
    row that hold a true value, and whether any does."""
    import torch

    rows, cols = mask.any(dim=-1), mask.any(dim=-2)
    n, m = rows.shape[-1], cols.shape[-1]
    ri, ci = rows.to(torch.uint8), cols.to(torch.uint8)
    y0, y1 = ri.argmax(dim=-1), n - 1 - ri.flip(-1).argmax(dim=-1)
    x0, x1 = ci.argmax(dim=-1), m - 1 - ci.flip(-1).argmax(dim=-1)
    return torch.stack([x0, y0, x1, y1], dim=-1), rows.any(dim=-1)


def _keep_rows(member: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the valid segments ``member[b, s]`` (``valid[b, s]``) of each image, in order, padded
    with empty invalid rows to the batch's largest count."""
    import torch

    keep = int(valid.sum(dim=1).max()) if valid.numel() else 0
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, :keep]  # valid first
    valid = valid.gather(1, order)
    member = member.gather(1, order[:, :, None].expand(*order.shape, member.shape[2])) & valid[:, :, None]
    return member, valid


def auto_boxes_batch(
    dense: torch.Tensor, settings: RegionSettings | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Proposals for a batch of dense maps ``[B, h, w, P]`` on their own device.

    Returns, per image, boxes ``[K, 4]`` (normalised x1, y1, x2, y2, best first) and their scores
    ``[K]``. Two sources of segments: cells grown from salient seeds (cells unlike most of the
    image: the seed's connected component among cells closer to it than to the image's median
    similarity), and connected components of the neighbour-similarity graph keeping several
    fractions of the most similar links. Each distinct segment is scored by contrast (mean
    similarity inside minus mean similarity to the rest) and boxed at sub-cell precision; greedy
    IoU suppression keeps the best ``max_regions``. Every step is a whole-batch tensor operation,
    so it runs on the GPU beside the model; ``tests/reference_regions.py`` holds the same
    algorithm as plain loops over one image, and the tests check that both agree."""
    import torch

    s = settings or RegionSettings()
    if dense.device.type not in ("cpu", "cuda"):  # e.g. Apple MPS: no float64, not every op; use the CPU
        return [(bx.to(dense.device), sc.to(dense.device)) for bx, sc in auto_boxes_batch(dense.cpu(), s)]
    b, h, w, _ = dense.shape
    total = h * w
    dev = dense.device
    wide = torch.float64  # thresholds and boxes are computed in float64, as the reference does
    empty = [(dense.new_zeros((0, 4), dtype=torch.float32), dense.new_zeros((0,), dtype=torch.float32))] * b
    if total < 2 or b == 0 or s.max_regions == 0:
        return empty
    f = dense.float().reshape(b, total, -1)
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = f @ f.transpose(1, 2)  # [B, T, T]

    # 1. segments grown from salient seeds
    saliency = 1.0 - (sim.sum(dim=-1) - 1.0) / (total - 1)
    k = min(max(2 * s.max_regions, 8), total)
    seeds = torch.sort(-saliency, dim=1, stable=True).indices[:, :k]  # [B, k]
    rows = sim.gather(1, seeds[:, :, None].expand(b, k, total))  # [B, k, T]
    lo = torch.quantile(rows.to(wide), 0.5, dim=-1, keepdim=True)
    inside = (rows.to(wide) - lo) / (1.0 - lo).clamp_min(1e-6) > 0.5
    inside.scatter_(2, seeds[:, :, None], True)
    g = inside.view(b * k, h, w)
    lab = _label(g[:, :, :-1] & g[:, :, 1:], g[:, :-1] & g[:, 1:]).view(b, k, total)
    parts = [lab == lab.gather(2, seeds[:, :, None])]

    # 2. connected components of the neighbour graph at several link thresholds
    cells = torch.arange(total, device=dev).view(h, w)
    right = sim[:, cells[:, :-1].reshape(-1), cells[:, 1:].reshape(-1)].view(b, h, w - 1)
    down = sim[:, cells[:-1].reshape(-1), cells[1:].reshape(-1)].view(b, h - 1, w)
    edges = torch.cat([right.reshape(b, -1), down.reshape(b, -1)], dim=1)
    if edges.shape[1] and s.thresholds:
        q = 1.0 - torch.tensor(s.thresholds, dtype=wide, device=dev)
        ts = torch.quantile(edges.to(wide), q, dim=1).T[:, :, None, None]  # [B, Q, 1, 1]
        nq = ts.shape[1]
        rl = (right.to(wide)[:, None] >= ts).reshape(b * nq, h, w - 1)
        dl = (down.to(wide)[:, None] >= ts).reshape(b * nq, h - 1, w)
        comp = _label(rl, dl).view(b, nq, 1, total)
        # one row per possible label (a cell index) and threshold; unused labels are empty rows
        parts.append((comp == cells.view(1, 1, total, 1)).view(b, nq * total, total))

    member = torch.cat(parts, dim=1)  # [B, S, T] in the reference's order
    n = member.sum(dim=-1)
    valid = (n >= max(s.min_cells, 1)) & (n <= 0.9 * total)
    member, valid = _keep_rows(member, valid)
    if member.shape[1] == 0:
        return empty

    # 3. drop repeated segments (same cells as an earlier valid one)
    fm = member.to(torch.float32)
    n = fm.sum(dim=-1)
    inter = fm @ fm.transpose(1, 2)  # [B, S, S] cells in common (exact small integers)
    same = (inter == n[:, :, None]) & (inter == n[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    segs = member.shape[1]
    earlier = torch.ones(segs, segs, dtype=torch.bool, device=dev).tril(-1)
    member, valid = _keep_rows(member, valid & ~(same & earlier).any(dim=-1))
    fm = member.to(torch.float32)
    n = fm.sum(dim=-1)

    # 4. contrast scores
    a = fm @ sim  # [B, S, T]: per segment, each cell's summed similarity to the segment's cells
    inside_sum = (a * fm).sum(dim=-1)
    pairs = (n * (n - 1)).clamp_min(1.0)
    inside_mean = torch.where(n > 1, (inside_sum - n) / pairs, torch.ones_like(n))
    across = (a * (1.0 - fm)).sum(dim=-1) / (n * (total - n)).clamp_min(1.0)
    scores = inside_mean - across

    # 5. boxes at sub-cell precision
    boxes = _refine_boxes(a, member, n, h, w, wide).float()  # boxes are float32 from here on, as stored

    # 6. greedy IoU suppression, best score first
    keep_lists = _suppress(boxes.to(wide), scores, valid, s.iou_threshold, s.max_regions)
    out = []
    for i in range(b):
        idx = keep_lists[i]
        out.append((boxes[i, idx], scores[i, idx].float()))
    return out


def _refine_boxes(
    seg_sim: torch.Tensor,
    member: torch.Tensor,
    n: torch.Tensor,
    h: int,
    w: int,
    wide: Any,
    factor: int = 4,
    level: float = 0.5,
) -> torch.Tensor:
    """Boxes ``[B, S, 4]`` of segments at sub-cell precision.

    Each cell's similarity to a segment's mean vector (``seg_sim[b, s, c]`` sums cell c's
    similarities to the segment's cells; divided by the segment's size it is c's similarity to
    the segment's mean vector) is rescaled so the segment is ~1 and the rest ~0; partly covered
    cells fall in between. The map is upsampled bilinearly and the box is the extent of the part
    above ``level``, searched within one cell around the segment; a segment whose map has no
    contrast keeps its cell box."""
    import torch

    b, smax, total = member.shape
    dev = member.device
    fm = member.to(wide)
    size = n.to(wide)
    ext, _ = _extent(member.view(b, smax, h, w))
    scale = torch.tensor([w, h, w, h], dtype=wide, device=dev)
    cell = (ext + torch.tensor([0, 0, 1, 1], device=dev)).to(wide) / scale
    sim = seg_sim.to(wide) / size.clamp_min(1.0)[..., None]
    out_n = total - size
    hi = (sim * fm).sum(dim=-1) / size.clamp_min(1.0)
    lo = (sim * (1.0 - fm)).sum(dim=-1) / out_n.clamp_min(1.0)
    ok = (out_n > 0) & (hi - lo >= 1e-6)
    t = (sim - lo[..., None]) / torch.where(ok, hi - lo, torch.ones_like(hi))[..., None]
    uh = torch.from_numpy(_upsample_matrix(h, factor)).to(device=dev, dtype=wide)
    uw = torch.from_numpy(_upsample_matrix(w, factor)).to(device=dev, dtype=wide)
    up = uh @ t.view(b, smax, h, w) @ uw.T  # [B, S, h*f, w*f]
    ys = torch.arange(h * factor, device=dev) // factor
    xs = torch.arange(w * factor, device=dev) // factor
    win_y = (ys >= ext[..., 1:2] - 1) & (ys <= ext[..., 3:4] + 1)  # [B, S, h*f]
    win_x = (xs >= ext[..., 0:1] - 1) & (xs <= ext[..., 2:3] + 1)
    above = (up > level) & win_y[..., :, None] & win_x[..., None, :]
    fine, found = _extent(above)
    fscale = torch.tensor([w * factor, h * factor, w * factor, h * factor], dtype=wide, device=dev)
    fine_box = (fine + torch.tensor([0, 0, 1, 1], device=dev)).to(wide) / fscale
    return torch.where((ok & found)[..., None], fine_box, cell)


def _suppress(
    boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, iou: float, limit: int
) -> list[torch.Tensor]:
    """Greedy non-maximum suppression for a batch ``[B, S, 4]``: per image, the indices kept, best
    score first (ties in order), none overlapping a better kept box by more than ``iou``."""
    import torch

    b, smax, _ = boxes.shape
    dev = boxes.device
    order = torch.sort(torch.where(valid, -scores, torch.full_like(scores, float("inf"))), dim=1, stable=True).indices
    bx = boxes.gather(1, order[..., None].expand(b, smax, 4))
    ok = valid.gather(1, order)
    area = (bx[..., 2] - bx[..., 0]).clamp_min(0) * (bx[..., 3] - bx[..., 1]).clamp_min(0)
    lt = torch.maximum(bx[:, :, None, :2], bx[:, None, :, :2])
    rb = torch.minimum(bx[:, :, None, 2:], bx[:, None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, :, None] + area[:, None, :] - inter
    ious = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))
    kept = torch.zeros(b, smax, dtype=torch.bool, device=dev)
    count = torch.zeros(b, dtype=torch.long, device=dev)
    for i in range(min(smax, int(ok.sum(dim=1).max()))):
        take = ok[:, i] & (count < limit) & ~((ious[:, i] > iou) & kept).any(dim=-1)
        kept[:, i] = take
        count += take.long()
    return [order[j][kept[j]] for j in range(b)]


def auto_boxes(dense: np.ndarray, settings: RegionSettings | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Proposals from one image's dense map ``[h, w, P]`` (numpy) -> (boxes ``[K, 4]``, scores
    ``[K]``), best first. See :func:`auto_boxes_batch`."""
    import torch

    boxes, scores = auto_boxes_batch(torch.from_numpy(np.ascontiguousarray(dense, np.float32))[None], settings)[0]
    return boxes.numpy(), scores.numpy()


def _xywh(b: Sequence[float], width: int, height: int) -> Box:
    x, y, w, h = (float(v) for v in b)
    return Box.from_xywh_pixels(x, y, w, h, width, height)


@dataclass
class SidecarMatch:
    """The boxes a sidecar gives one image: ``source`` names the sidecar file they came from
    (None: no sidecar mentions the image), ``skipped`` says why each box left out was left out
    (an inverted or empty box drops that box, never the image)."""

    boxes: list[Box] = field(default_factory=list)
    source: str | None = None
    skipped: list[str] = field(default_factory=list)

    def add(self, raw: Sequence[Any], make: Any) -> None:
        """Build each box with ``make(raw_box)``; a box that is not a box is skipped with its reason."""
        for i, b in enumerate(raw):
            try:
                self.boxes.append(make(b))
            except InputError as e:
                self.skipped.append(f"sidecar {self.source}: box {i + 1} skipped: {e}")
            except (ValueError, TypeError):
                self.skipped.append(f"sidecar {self.source}: box {i + 1} skipped: {b!r} is not four numbers")


class SidecarBoxes:
    """User-supplied boxes: a COCO instances JSON, or ``<image>.json`` files beside the images.

    Per-image files hold ``{"boxes": [[x1, y1, x2, y2], ...]}`` normalised, or
    ``{"boxes_xywh_pixels": [[x, y, w, h], ...]}`` in pixels of the displayed image.
    COCO files are matched by ``file_name`` relative to the indexed folder (or by base name).
    Every file is read as a regular file of bounded size (a FIFO or ``/dev/zero`` is an error).
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.by_name: dict[str, list[list[float]]] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        if spec != "per-image":
            self._load_coco(Path(spec))

    def _load_coco(self, path: Path) -> None:
        from fgsearch.decode import UnsafeFileError, read_small_file

        try:
            data = json.loads(read_small_file(path, COCO_MAX_BYTES))
            images = {im["id"]: im for im in data["images"]}
            for ann in data.get("annotations", []):
                im = images[ann["image_id"]]
                name = str(im["file_name"])
                self.by_name.setdefault(name, []).append([float(v) for v in ann["bbox"]])
                self.sizes[name] = (int(im["width"]), int(im["height"]))
        except FileNotFoundError as e:
            raise DataError(f"sidecar file {path} does not exist; pass a COCO instances JSON or 'per-image'") from e
        except (UnsafeFileError, OSError) as e:
            raise DataError(f"sidecar {path} cannot be read ({e}); pass a COCO instances JSON file") from e
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"sidecar {path} is not a COCO instances JSON (images + annotations): {e}") from e

    def boxes_for(self, image_path: str, root: str | None, width: int, height: int) -> list[Box]:
        return self.match(image_path, root, width, height).boxes

    def match(self, image_path: str, root: str | None, width: int, height: int) -> SidecarMatch:
        """The boxes for the image at ``image_path`` (displayed size ``width`` x ``height``)."""
        if self.spec == "per-image":
            return self._per_image(image_path, width, height)
        rel = os.path.relpath(image_path, root) if root else os.path.basename(image_path)
        for key in (rel, rel.replace(os.sep, "/"), os.path.basename(image_path)):
            if key in self.by_name:
                out = SidecarMatch(source=self.spec)
                w0, h0 = self.sizes.get(key, (width, height))
                if w0 <= 0 or h0 <= 0:
                    n = len(self.by_name[key])
                    out.skipped.append(
                        f"sidecar {self.spec}: image {key!r} has width {w0} and height {h0}; "
                        f"its {n} box(es) skipped (fix its entry in the COCO file)"
                    )
                    return out
                out.add(self.by_name[key], partial(_xywh, width=w0, height=h0))
                return out
        return SidecarMatch()

    @staticmethod
    def _per_image(image_path: str, width: int, height: int) -> SidecarMatch:
        from fgsearch.decode import UnsafeFileError, read_small_file

        for cand in (image_path + ".json", os.path.splitext(image_path)[0] + ".json"):
            if os.path.lexists(cand):
                out = SidecarMatch(source=cand)
                try:
                    data = json.loads(read_small_file(cand, SIDECAR_MAX_BYTES))
                    if "boxes" in data:
                        out.add(data["boxes"], lambda b: Box.clipped(*b))
                    else:
                        out.add(data["boxes_xywh_pixels"], lambda b: _xywh(b, width, height))
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(
                        f'sidecar {cand} is malformed ({e}); expected {{"boxes": [[x1,y1,x2,y2], ...]}}'
                    ) from e
                except (UnsafeFileError, OSError) as e:
                    raise DataError(f"sidecar {cand} cannot be read ({e}); make it a small JSON file") from e
                return out
        return SidecarMatch()


def propose(
    settings: RegionSettings, dense: np.ndarray | None, sidecar: Sequence[Box] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes + scores for one image under ``settings`` (dense map needed for 'auto')."""
    if settings.proposer == "none" or settings.max_regions == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    if settings.proposer == "grid":
        boxes = np.array([b.as_tuple() for b in grid_boxes(settings.max_regions)], np.float32)
        return boxes, np.zeros(len(boxes), np.float32)
    if settings.proposer == "sidecar":
        boxes = np.array([b.as_tuple() for b in (sidecar or [])][: settings.max_regions], np.float32).reshape(-1, 4)
        return boxes, np.zeros(len(boxes), np.float32)
    if dense is None:
        raise InputError("the 'auto' region proposer needs the dense feature map")
    return auto_boxes(dense, settings)


__all__ = [
    "PROPOSERS",
    "RegionSettings",
    "SidecarBoxes",
    "SidecarMatch",
    "auto_boxes",
    "auto_boxes_batch",
    "grid_boxes",
    "iou_matrix",
    "propose",
]
