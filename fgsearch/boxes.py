"""Boxes: ONE coordinate convention everywhere in fgsearch.

A :class:`Box` is ``(x1, y1, x2, y2)`` NORMALISED to the image: x runs left to right over the
width, y top to bottom over the height, both in ``[0, 1]``, with ``x1 < x2`` and ``y1 < y2``.
The image meant is the one as displayed (after EXIF orientation). Pixel boxes and COCO
``[x, y, w, h]`` boxes are converted at the boundary with the constructors below.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fgsearch.errors import InputError


@dataclass(frozen=True, order=True)
class Box:
    """Normalised ``x1, y1, x2, y2`` in ``[0, 1]`` of the displayed image."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        vals = (self.x1, self.y1, self.x2, self.y2)
        if not all(np.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in vals):
            raise InputError(f"box {vals} must hold normalised coordinates in [0, 1] (x1, y1, x2, y2)")
        if not (self.x1 < self.x2 and self.y1 < self.y2):
            raise InputError(f"box {vals} is empty or inverted: need x1 < x2 and y1 < y2 (normalised x1,y1,x2,y2)")

    FULL: ClassVar[Box]  # the whole image, set below

    @classmethod
    def parse(cls, text: str) -> Box:
        """``"x1,y1,x2,y2"`` (normalised) -> Box."""
        return cls.coerce(text)

    @classmethod
    def coerce(cls, value: Box | str | Sequence[float]) -> Box:
        """A Box, ``"x1,y1,x2,y2"`` or four numbers (normalised) -> Box."""
        if isinstance(value, Box):
            return value
        items = value.replace(" ", "").split(",") if isinstance(value, str) else value
        try:
            parts = [float(v) for v in items]
        except (TypeError, ValueError) as e:
            raise InputError(f"box {value!r} must be four numbers x1,y1,x2,y2 in [0, 1]") from e
        if len(parts) != 4:
            raise InputError(f"box {value!r} must be four numbers x1,y1,x2,y2 in [0, 1]")
        return cls(*parts)

    @classmethod
    def from_pixels(cls, x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Box:
        """Pixel corners of a ``width x height`` image -> Box (clipped to the image)."""
        return cls.clipped(x1 / width, y1 / height, x2 / width, y2 / height)

    @classmethod
    def from_xywh_pixels(cls, x: float, y: float, w: float, h: float, width: int, height: int) -> Box:
        """COCO-style ``[x, y, w, h]`` in pixels -> Box."""
        return cls.from_pixels(x, y, x + w, y + h, width, height)

    @classmethod
    def clipped(cls, x1: float, y1: float, x2: float, y2: float) -> Box:
        c = [min(max(float(v), 0.0), 1.0) for v in (x1, y1, x2, y2)]
        return cls(*c)

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        return (round(self.x1 * width), round(self.y1 * height), round(self.x2 * width), round(self.y2 * height))

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


Box.FULL = Box(0.0, 0.0, 1.0, 1.0)


def boxes_array(boxes: Iterable[Box]) -> np.ndarray:
    """Boxes -> float32 ``[K, 4]`` (normalised x1, y1, x2, y2)."""
    arr = np.array([b.as_tuple() for b in boxes], dtype=np.float32)
    return arr.reshape(-1, 4)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` x1,y1,x2,y2 arrays."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: Sequence[float] | np.ndarray, iou: float, limit: int | None = None) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep: list[int] = []
    if len(order) == 0:
        return keep
    ious = iou_matrix(boxes, boxes)
    for i in order:
        if all(ious[i, j] <= iou for j in keep):
            keep.append(int(i))
            if limit is not None and len(keep) >= limit:
                break
    return keep
