"""FG-CLIP 2's NaFlex image preprocessing, exactly as its ``Fgclip2ImageProcessor`` does it.

1. Patch budget M: with the dynamic budget (the reference's default) an image of n = (H // p) *
   (W // p) patches at its ORIGINAL size gets the bucket 1024 if n > 784, 784 if n > 576, 576 if
   n > 256, 256 if n > 128, else 128; a batch uses the largest. Otherwise M = ``max_num_patches``.
2. Size: the largest scale whose ``ceil(side * scale / p) * p`` sides (at least p) fit M patches,
   found by the reference's binary search (kept step for step: its rounding is the contract).
3. Pillow bilinear resize of the 8-bit RGB image; ``x / 255``; ``(x - mean) / std`` in float32.
4. Patches in row-major order, each flattened (row, column, channel); zero rows up to the padded
   length; mask 1 for real patches; spatial shape (h, w) = the patch grid.

fgsearch embeds every image with ITS OWN budget (what ``proc([image])`` gives), so an image's vector
never depends on the other images of its batch; :meth:`NaFlexTransform.batch` keeps the
reference's batch rule for parity checks. Padding to any longer length does not change a vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fgsearch.errors import InputError
from fgsearch.model.batch import ImageBatch, ImageItem
from fgsearch.model.preprocess import to_rgb

# (more than this many patches at the original size, budget) from the largest down; else the last budget
BUCKETS: tuple[tuple[int, int], ...] = ((784, 1024), (576, 784), (256, 576), (128, 256))
SMALLEST_BUCKET = 128


def dynamic_budget(height: int, width: int, patch: int) -> int:
    """The reference's patch budget for one image of the given ORIGINAL size."""
    n = (height // patch) * (width // patch)
    for above, budget in BUCKETS:
        if n > above:
            return budget
    return SMALLEST_BUCKET


def naflex_size(height: int, width: int, patch: int, budget: int, eps: float = 1e-5) -> tuple[int, int]:
    """Resized (height, width), multiples of ``patch`` with at most ``budget`` patches."""

    def scaled(side: int, scale: float) -> int:
        return max(patch, math.ceil(side * scale / patch) * patch)

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        if (scaled(height, mid) // patch) * (scaled(width, mid) // patch) <= budget:
            lo = mid
        else:
            hi = mid
    return scaled(height, lo), scaled(width, lo)


@dataclass(frozen=True)
class NaFlexTransform:
    """Aspect-preserving patch preprocessing, parameterised by the checkpoint's processor config."""

    patch_size: int = 16
    max_patches: int = 256  # the budget when ``dynamic`` is off
    dynamic: bool = True
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def image_size(self) -> None:
        """No fixed input size (decoders must not draft-shrink for a target size)."""
        return None

    def budget(self, image: Image.Image) -> int:
        return dynamic_budget(image.height, image.width, self.patch_size) if self.dynamic else self.max_patches

    def item(self, image: Image.Image, budget: int | None = None) -> ImageItem:
        """One image (any Pillow mode) -> its patches ``[h*w, 3*p*p]`` and grid ``(h, w)``."""
        rgb = to_rgb(image)
        p = self.patch_size
        m = self.budget(rgb) if budget is None else budget
        hh, ww = naflex_size(rgb.height, rgb.width, p, m)
        arr = np.asarray(rgb.resize((ww, hh), Image.Resampling.BILINEAR), dtype=np.uint8)
        x: np.ndarray = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        h, w = hh // p, ww // p
        patches = x.reshape(h, p, w, p, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, p * p * 3)
        return ImageItem(pixels=np.ascontiguousarray(patches, dtype=np.float32), shape=(h, w), budget=m)

    def to_array(self, image: Image.Image) -> ImageItem:
        return self.item(image)

    def collate(self, items: Sequence[ImageItem], length: int | None = None) -> ImageBatch:
        """Pad items to one ``[B, length, 3*p*p]`` batch (default: the longest item) with masks."""
        return ImageBatch.pad(items, length, self.patch_size**2 * 3)

    def prepare(self, images: Sequence[Image.Image]) -> ImageBatch:
        """Images for the model, each with its own budget (what fgsearch embeds)."""
        return self.collate([self.item(im) for im in images])

    def as_batch(self, pixels: object) -> ImageBatch:
        raise InputError("an FG-CLIP 2 model takes an ImageBatch (patches, mask, shapes); use its transform")

    def batch(self, images: Sequence[Image.Image], max_num_patches: int | None = None) -> ImageBatch:
        """The reference's batch call: one budget for all (the largest bucket, or ``max_num_patches``)."""
        if not images:
            return self.collate([], 0)
        rgb = [to_rgb(im) for im in images]
        if max_num_patches is not None:
            m = int(max_num_patches)
        elif self.dynamic:
            m = max(self.budget(im) for im in rgb)
        else:
            m = self.max_patches
        if m < 1:
            raise InputError(f"max_num_patches must be >= 1, got {m}")
        return self.collate([self.item(im, m) for im in rgb], m)
