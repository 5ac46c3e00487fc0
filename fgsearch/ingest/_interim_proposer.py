"""TEMPORARY (replaced by fgsearch.regions' proposer registry when it lands)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fgsearch.regions import RegionSettings


@dataclass(frozen=True)
class ImageBoxes:
    boxes: np.ndarray
    source: str | None = None
    skipped: tuple[str, ...] = ()


class _Proposer:
    def __init__(self, settings: RegionSettings) -> None:
        from fgsearch.regions import SidecarBoxes

        self.settings = settings
        self.name = settings.proposer
        self.uses_dense = settings.needs_dense and settings.proposer == "auto"
        self.wants_regions = settings.needs_dense
        self.sidecar = SidecarBoxes(settings.sidecar) if settings.proposer == "sidecar" and settings.sidecar else None

    def before(self, path: str, root: str | None, width: int, height: int) -> ImageBoxes:
        from fgsearch.boxes import boxes_array
        from fgsearch.regions import propose

        if self.sidecar is None:
            return ImageBoxes(propose(self.settings, None)[0])
        m = self.sidecar.match(path, root, width, height)
        return ImageBoxes(boxes_array(m.boxes)[: self.settings.max_regions], m.source, tuple(m.skipped))

    def after(self, dense: Any) -> list[np.ndarray]:
        from fgsearch.regions import auto_boxes_batch

        return [b for b, _ in auto_boxes_batch(dense, self.settings)]

    def run_warnings(self, seen: Any) -> list[str]:
        if self.sidecar is None:
            return []
        from fgsearch.ingest._interim_notes import SidecarNotes

        notes = SidecarNotes()
        for s in seen:
            notes.note(s)
        return notes.warnings(self.settings.sidecar or "")


def make_proposer(settings: RegionSettings) -> Any:
    return _Proposer(settings)
