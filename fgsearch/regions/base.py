"""Region settings, the proposer protocol and the proposer registry.

A proposer decides which boxes of an image get their own vector. It works in two places of the
ingest pipeline: :meth:`Proposer.before` runs in the prepare stage (worker threads, one image, its
displayed size known) and :meth:`Proposer.after` runs after the forward pass on the images' dense
maps (numpy ``[h, w, D]``), for proposers that look at features (``uses_dense``); one that is
also a :class:`DeviceProposer` gets the maps as tensors on the model's device when the model runs
on one (``--pipeline device``, a GPU). All boxes use
:mod:`fgsearch.boxes`' convention: normalised x1, y1, x2, y2.

Proposers are registered by name (:func:`register_proposer`, entry-point group
``fgsearch.proposers``); built-ins: ``auto``, ``grid``, ``none``, ``sidecar``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fgsearch.errors import InputError
from fgsearch.plugins import Registry

SIDECAR_NEEDED = "{proposer} sidecar needs {sidecar} PATH (a COCO JSON) or {sidecar} per-image"

BUILTIN_PROPOSERS = {
    "auto": "fgsearch.regions.auto:AutoProposer",
    "grid": "fgsearch.regions.grid:GridProposer",
    "none": "fgsearch.regions.none:NoProposer",
    "sidecar": "fgsearch.regions.sidecar:SidecarProposer",
}
PROPOSER_REGISTRY: Registry[Callable[[RegionSettings], Proposer]] = Registry(
    "fgsearch.proposers",
    BUILTIN_PROPOSERS,
    error=InputError,
    unknown="unknown region proposer {name!r}; choose one of {known}",
)


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
        if self.proposer not in PROPOSER_REGISTRY:
            known = ", ".join(PROPOSER_REGISTRY.names())
            raise InputError(f"unknown region proposer {self.proposer!r}; choose one of {known}")
        if self.max_regions < 0:
            raise InputError("{max_regions} must be >= 0, got {got}", field="max_regions", got=self.max_regions)
        if self.proposer == "sidecar" and not self.sidecar:
            raise InputError(SIDECAR_NEEDED, field="sidecar")

    @property
    def needs_dense(self) -> bool:
        """Whether any region vector is made (not ``none``, ``max_regions`` above 0)."""
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


def no_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


@dataclass(frozen=True)
class ImageBoxes:
    """What a proposer knows of one image before the forward pass."""

    boxes: np.ndarray  # float32 [n, 4] normalised x1, y1, x2, y2, at most settings.max_regions; may be empty
    source: str | None = None  # sidecar: where they came from (None: the sidecar named no boxes for it)
    skipped: tuple[str, ...] = ()  # sidecar: boxes it gave that were skipped, with the reason


@runtime_checkable
class Proposer(Protocol):
    """Which boxes of each image get a region vector."""

    name: str
    settings: RegionSettings
    uses_dense: bool  # True: boxes come from the dense map (after); False: from before()
    wants_regions: bool  # False: no region vectors, no dense map needed

    def before(self, path: str, root: str | None, width: int, height: int) -> ImageBoxes:
        """Boxes known before the forward pass (prepare stage, worker threads: thread-safe)."""
        ...

    def after(self, dense: list[np.ndarray]) -> list[np.ndarray]:
        """For ``uses_dense``: boxes per image from its ``[h, w, D]`` float32 dense map."""
        ...

    def run_warnings(self, seen: Sequence[ImageBoxes]) -> list[str]:
        """Warnings at the end of a run over the new images' ``before`` results (names no image)."""
        ...


@runtime_checkable
class DeviceProposer(Protocol):
    """A proposer that can also propose from dense maps where the model ran (torch tensors on
    its device), so that the maps need not be copied to the host (``auto``)."""

    def after_tensors(self, dense: list[Any]) -> list[Any]:
        """:meth:`Proposer.after` on ``[h, w, D]`` float32 tensors: box tensors on their device."""
        ...


class StaticProposer:
    """Shared parts of proposers whose boxes are known before the forward pass."""

    name = "static"
    uses_dense = False

    def __init__(self, settings: RegionSettings) -> None:
        self.settings = settings
        self.wants_regions = settings.needs_dense

    def after(self, dense: list[np.ndarray]) -> list[np.ndarray]:
        raise InputError(f"the {self.name!r} region proposer does not propose from dense maps")

    def run_warnings(self, seen: Sequence[ImageBoxes]) -> list[str]:
        return []


def register_proposer(name: str, factory: Callable[[RegionSettings], Proposer], *, replace: bool = False) -> None:
    """Make ``RegionSettings(proposer=name)`` build its proposer with ``factory(settings)``."""
    PROPOSER_REGISTRY.register(name, factory, replace=replace)


def proposer_names() -> list[str]:
    return PROPOSER_REGISTRY.names()


def make_proposer(settings: RegionSettings) -> Proposer:
    """The proposer for ``settings``; a sidecar file that is missing or malformed fails here."""
    return PROPOSER_REGISTRY.get(settings.proposer)(settings)
