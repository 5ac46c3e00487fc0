"""Image preprocessing exactly as FG-CLIP's authors do it, for every Pillow mode.

The reference pipeline is ``Image.open(p).convert("RGB").resize((S, S))`` (bicubic, aspect ratio
not kept, no crop: the whole frame stays visible, which matters for region boxes), then
``(uint8 / 255 - mean) / std``. We add two things the reference lacks: EXIF orientation is applied
first (a phone photo is embedded the way it is shown), and modes that ``convert("RGB")`` would
clip or reject (16-bit and 32-bit integer, float) are rescaled to 8 bits first. Alpha is dropped
the way ``convert("RGB")`` drops it, so RGBA/LA/PA inputs match the reference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from fgsearch.errors import ImageError
from fgsearch.model.batch import ImageBatch, ImageItem

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTransform:
    """Square resize + normalisation, parameterised by the checkpoint (never by constants)."""

    image_size: tuple[int, int]  # (height, width) the model expects
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    patch_size: int | None = None  # for the dense grid of :meth:`item`; None: unknown (grid 0x0)

    @property
    def grid(self) -> tuple[int, int]:
        if not self.patch_size:
            return (0, 0)
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    def resize(self, image: Image.Image) -> Image.Image:
        """RGB image -> model-size RGB image (bicubic, whole frame, aspect not kept)."""
        h, w = self.image_size
        return image.resize((w, h), Image.Resampling.BICUBIC)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """Any Pillow image -> float32 ``[3, H, W]`` normalised model input."""
        rgb = self.resize(to_rgb(image))
        arr = np.asarray(rgb, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def item(self, image: Image.Image) -> ImageItem:
        return ImageItem(pixels=self.to_array(image), shape=self.grid)

    def collate(self, items: Sequence[ImageItem]) -> ImageBatch:
        if not items:
            return ImageBatch(pixels=self.batch([]), shapes=np.zeros((0, 2), np.int64))
        return ImageBatch.stack(items)

    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images for the model: ``[B, 3, H, W]``."""
        return self.batch(images)

    def as_batch(self, pixels: Any) -> ImageBatch:
        """A ``[B, 3, H, W]`` array or tensor as a batch (every image has the same grid)."""
        return ImageBatch(pixels=pixels, shapes=np.tile(np.asarray(self.grid, np.int64), (len(pixels), 1)))

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """A list of Pillow images -> float32 ``[B, 3, H, W]``."""
        if not images:
            h, w = self.image_size
            return np.zeros((0, 3, h, w), np.float32)
        return np.stack([self.to_array(im) for im in images])


def _wide_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float single-channel image -> mode L, keeping the tonal range."""
    arr = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        arr = arr / 257.0
    elif image.mode == "F" and arr.size and np.nanmax(arr) <= 1.0 and np.nanmin(arr) >= 0.0:
        arr = arr * 255.0
    elif arr.size and np.nanmax(arr) > 255.0:
        hi = 65535.0 if np.nanmax(arr) <= 65535.0 and np.nanmin(arr) >= 0 else float(np.nanmax(arr))
        lo = 0.0 if hi == 65535.0 else float(np.nanmin(arr))
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
    arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, *, exif: bool = True) -> Image.Image:
    """Return an 8-bit RGB view of ``image`` after EXIF orientation, whatever its mode."""
    if exif:
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as e:  # a broken EXIF block must not lose the picture
            logger.debug("ignoring unreadable EXIF orientation: %s", e)
    mode = image.mode
    try:
        if mode == "RGB":
            return image
        if mode in ("I", "F") or mode.startswith("I;16"):
            return _wide_to_8bit(image).convert("RGB")
        if mode == "P" and "transparency" in image.info:
            return image.convert("RGBA").convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"cannot convert a {mode} image to RGB: {e}") from e
