"""Region proposers: which boxes of an image get their own vector.

* ``auto`` (default, :mod:`.auto`): class-agnostic proposals from the image's own dense feature map.
* ``grid`` (:mod:`.grid`): fixed multi-scale, overlapping windows, no model needed.
* ``none`` (:mod:`.none`): global vectors only.
* ``sidecar`` (:mod:`.sidecar`): boxes supplied by the user (COCO instances JSON, or
  ``<image>.json`` beside each image).

Each is one module plus one registration (:func:`register_proposer`, entry-point group
``fgsearch.proposers``); :func:`make_proposer` builds the one a :class:`RegionSettings` names.
All boxes use :mod:`fgsearch.boxes`' convention: normalised x1, y1, x2, y2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fgsearch.boxes import Box, boxes_array, iou_matrix
from fgsearch.errors import InputError
from fgsearch.regions.auto import AutoProposer, auto_boxes, auto_boxes_batch
from fgsearch.regions.base import (
    ImageBoxes,
    Proposer,
    RegionSettings,
    make_proposer,
    proposer_names,
    register_proposer,
)
from fgsearch.regions.grid import GridProposer, grid_boxes
from fgsearch.regions.none import NoProposer
from fgsearch.regions.sidecar import SIDECAR_MAX_BYTES, SidecarBoxes, SidecarMatch, SidecarProposer


def propose(
    settings: RegionSettings, dense: np.ndarray | None, sidecar: Sequence[Box] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes + scores for one image under ``settings`` (dense map needed for 'auto').

    The one-image form that ``fgsearch.ingest`` uses until it builds a :class:`Proposer` with
    :func:`make_proposer`; it follows the same rules (zero scores for boxes known in advance)."""
    if not settings.needs_dense:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    if settings.proposer == "grid":
        boxes = boxes_array(grid_boxes(settings.max_regions))
    elif settings.proposer == "sidecar":
        boxes = boxes_array(sidecar or [])[: settings.max_regions]
    elif settings.proposer == "auto":
        if dense is None:
            raise InputError("the 'auto' region proposer needs the dense feature map")
        return auto_boxes(dense, settings)
    else:
        raise InputError(f"propose() knows the built-in proposers only; use make_proposer for {settings.proposer!r}")
    return boxes, np.zeros(len(boxes), np.float32)


__all__ = [
    "SIDECAR_MAX_BYTES",
    "AutoProposer",
    "GridProposer",
    "ImageBoxes",
    "NoProposer",
    "Proposer",
    "RegionSettings",
    "SidecarBoxes",
    "SidecarMatch",
    "SidecarProposer",
    "auto_boxes",
    "auto_boxes_batch",
    "grid_boxes",
    "iou_matrix",
    "make_proposer",
    "propose",
    "proposer_names",
    "register_proposer",
]
