"""The ``grid`` proposer: fixed multi-scale, overlapping windows, the same for every image; no model."""

from __future__ import annotations

import numpy as np

from fgsearch.boxes import Box, boxes_array
from fgsearch.regions.base import ImageBoxes, RegionSettings, StaticProposer, no_boxes


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


class GridProposer(StaticProposer):
    """The first ``max_regions`` windows of :func:`grid_boxes` for every image."""

    name = "grid"

    def __init__(self, settings: RegionSettings) -> None:
        super().__init__(settings)
        boxes = boxes_array(grid_boxes(settings.max_regions)) if self.wants_regions else no_boxes()
        self._boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self._boxes.flags.writeable = False  # shared by every image

    def before(self, path: str, root: str | None, width: int, height: int) -> ImageBoxes:
        return ImageBoxes(self._boxes)
