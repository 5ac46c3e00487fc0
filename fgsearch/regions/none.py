"""The ``none`` proposer: global vectors only, no region vectors and no dense map."""

from __future__ import annotations

from fgsearch.regions.base import ImageBoxes, RegionSettings, StaticProposer, no_boxes


class NoProposer(StaticProposer):
    """No boxes for any image."""

    name = "none"

    def __init__(self, settings: RegionSettings) -> None:
        super().__init__(settings)
        self.wants_regions = False

    def before(self, path: str, root: str | None, width: int, height: int) -> ImageBoxes:
        return ImageBoxes(no_boxes())
