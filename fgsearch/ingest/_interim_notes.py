"""TEMPORARY."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("fgsearch.ingest")


@dataclass
class SidecarNotes:
    """What the sidecar said over a run: boxes it gave that were skipped, and whether it
    mentioned any image at all (a sidecar that matches nothing is a mistake worth a warning)."""

    images: int = 0
    matched: int = 0
    skipped: list[str] = field(default_factory=list)

    def note(self, match: Any) -> None:
        self.images += 1
        self.matched += match.source is not None
        self.skipped.extend(match.skipped)
        for reason in match.skipped:
            logger.info("%s", reason)

    def warnings(self, spec: str, listed: int = 10) -> list[str]:
        out = self.skipped[:listed]
        if len(self.skipped) > listed:
            out.append(f"... {len(self.skipped)} sidecar boxes skipped in all")
        if self.images and not self.matched:
            where = "no IMAGE.json file beside any image" if spec == "per-image" else f"{spec} names none of them"
            out.append(f"--regions sidecar: {where}; the {self.images} new images have no region vectors")
        return out
