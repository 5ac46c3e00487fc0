"""The ``sidecar`` proposer: boxes supplied by the user, as a COCO instances JSON or as an
``<image>.json`` file beside each image (see :class:`SidecarBoxes`).

Boxes that are not boxes are skipped with their reason (never the image); the reasons and a
sidecar that names none of the new images are reported once at the end of a run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fgsearch.boxes import Box, boxes_array
from fgsearch.errors import DataError, InputError
from fgsearch.regions.base import SIDECAR_NEEDED, ImageBoxes, RegionSettings, StaticProposer

logger = logging.getLogger(__name__)

SIDECAR_MAX_BYTES = 16 << 20  # an <image>.json of boxes; bigger is not a sidecar (or is /dev/zero)
COCO_MAX_BYTES = 4 << 30  # COCO 2017's train instances file is 450 MB
LISTED_SKIPS = 10  # skipped boxes named one by one in the run's warnings


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


class SidecarProposer(StaticProposer):
    """Each image's sidecar boxes, at most ``max_regions`` of them, in the sidecar's order."""

    name = "sidecar"

    def __init__(self, settings: RegionSettings) -> None:
        super().__init__(settings)
        if not settings.sidecar:
            raise InputError(SIDECAR_NEEDED, field="sidecar")
        self.spec = settings.sidecar
        self.sidecar = SidecarBoxes(settings.sidecar)  # a COCO file is read (and checked) here

    def before(self, path: str, root: str | None, width: int, height: int) -> ImageBoxes:
        match = self.sidecar.match(path, root, width, height)
        for reason in match.skipped:
            logger.info("%s", reason)
        boxes = boxes_array(match.boxes)[: self.settings.max_regions]
        return ImageBoxes(boxes, source=match.source, skipped=tuple(match.skipped))

    def run_warnings(self, seen: Sequence[ImageBoxes]) -> list[str]:
        """The first skipped boxes (and how many in all); a sidecar that matched no new image."""
        skipped = [reason for s in seen for reason in s.skipped]
        out = skipped[:LISTED_SKIPS]
        if len(skipped) > LISTED_SKIPS:
            out.append(f"... {len(skipped)} sidecar boxes skipped in all")
        if seen and not any(s.source is not None for s in seen):
            where = (
                "no IMAGE.json file beside any image" if self.spec == "per-image" else f"{self.spec} names none of them"
            )
            out.append(f"--regions sidecar: {where}; the {len(seen)} new images have no region vectors")
        return out
