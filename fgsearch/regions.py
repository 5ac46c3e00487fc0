"""Region proposers: which boxes of an image get their own vector.

* ``grid``: fixed multi-scale, overlapping windows (halves, thirds, centre), no model needed.
* ``auto`` (default): class-agnostic proposals from the image's OWN dense feature map, no extra
  weights. Neighbouring patches are joined when their vectors agree (cosine similarity above a
  threshold); several thresholds, taken from the image's own similarity distribution, give
  segments at several scales. Each segment's bounding box is scored by how much it stands out
  (mean similarity inside minus mean similarity across its border), boxes are deduplicated by
  IoU and the best ``max_regions`` are kept.
* ``none``: global vectors only.
* ``sidecar``: boxes supplied by the user (COCO instances JSON, or ``<image>.json`` beside each
  image), see :func:`read_sidecar`.

All boxes use :mod:`fgsearch.boxes`' convention: normalised x1, y1, x2, y2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgsearch.boxes import Box, iou_matrix, nms
from fgsearch.errors import DataError, InputError

PROPOSERS = ("auto", "grid", "none", "sidecar")


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


def auto_boxes(dense: np.ndarray, settings: RegionSettings | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def _xywh(b: Sequence[float], width: int, height: int) -> Box:
    x, y, w, h = (float(v) for v in b)
    return Box.from_xywh_pixels(x, y, w, h, width, height)


class SidecarBoxes:
    """User-supplied boxes: a COCO instances JSON, or ``<image>.json`` files beside the images.

    Per-image files hold ``{"boxes": [[x1, y1, x2, y2], ...]}`` normalised, or
    ``{"boxes_xywh_pixels": [[x, y, w, h], ...]}`` in pixels of the displayed image.
    COCO files are matched by ``file_name`` relative to the indexed folder (or by base name).
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.by_name: dict[str, list[list[float]]] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        if spec != "per-image":
            self._load_coco(Path(spec))

    def _load_coco(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            images = {im["id"]: im for im in data["images"]}
            for ann in data.get("annotations", []):
                im = images[ann["image_id"]]
                name = str(im["file_name"])
                self.by_name.setdefault(name, []).append([float(v) for v in ann["bbox"]])
                self.sizes[name] = (int(im["width"]), int(im["height"]))
        except FileNotFoundError as e:
            raise DataError(f"sidecar file {path} does not exist; pass a COCO instances JSON or 'per-image'") from e
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"sidecar {path} is not a COCO instances JSON (images + annotations): {e}") from e

    def boxes_for(self, image_path: str, root: str | None, width: int, height: int) -> list[Box]:
        if self.spec == "per-image":
            return self._per_image(image_path, width, height)
        rel = os.path.relpath(image_path, root) if root else os.path.basename(image_path)
        for key in (rel, rel.replace(os.sep, "/"), os.path.basename(image_path)):
            if key in self.by_name:
                w0, h0 = self.sizes.get(key, (width, height))
                return [_xywh(b, w0, h0) for b in self.by_name[key] if b[2] > 0 and b[3] > 0]
        return []

    @staticmethod
    def _per_image(image_path: str, width: int, height: int) -> list[Box]:
        for cand in (image_path + ".json", os.path.splitext(image_path)[0] + ".json"):
            if os.path.exists(cand):
                try:
                    data = json.loads(Path(cand).read_text())
                    if "boxes" in data:
                        return [Box.clipped(*b) for b in data["boxes"]]
                    return [_xywh(b, width, height) for b in data["boxes_xywh_pixels"]]
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(
                        f'sidecar {cand} is malformed ({e}); expected {{"boxes": [[x1,y1,x2,y2], ...]}}'
                    ) from e
        return []


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


__all__ = ["PROPOSERS", "RegionSettings", "SidecarBoxes", "auto_boxes", "grid_boxes", "iou_matrix", "propose"]
