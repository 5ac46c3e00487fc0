"""What preprocessing hands the model: one image (:class:`ImageItem`) or a batch (:class:`ImageBatch`).

A fixed-size family (FG-CLIP) fills ``pixels [B, 3, H, W]`` and leaves ``mask`` None; a
variable-resolution family (FG-CLIP 2, NaFlex) fills ``pixels [B, M, 3*p*p]`` padded with zero rows
and ``mask [B, M]`` (1 = real patch). ``shapes [B, 2]`` is every image's dense grid ``(h, w)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ImageItem:
    """One preprocessed image: model input array, its dense grid (h, w) and the patch budget used."""

    pixels: np.ndarray
    shape: tuple[int, int]
    budget: int = 0

    @property
    def patches(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class ImageBatch:
    """Model input for a batch of images (numpy, or torch tensors after :meth:`to`)."""

    pixels: Any
    shapes: np.ndarray  # int64 [B, 2]: (h, w)
    mask: Any = None  # int32 [B, M] or None

    def __len__(self) -> int:
        return len(self.pixels)

    def to(self, device: Any) -> ImageBatch:
        import torch

        pv = torch.as_tensor(self.pixels).to(device, non_blocking=True)
        mask = None if self.mask is None else torch.as_tensor(self.mask).to(device, non_blocking=True)
        return ImageBatch(pixels=pv, shapes=np.asarray(self.shapes, np.int64), mask=mask)

    @classmethod
    def stack(cls, items: Sequence[ImageItem]) -> ImageBatch:
        """Fixed-size items -> ``[B, ...]`` with no mask."""
        shapes = np.asarray([it.shape for it in items], np.int64).reshape(-1, 2)
        return cls(pixels=np.stack([it.pixels for it in items]), shapes=shapes)

    @classmethod
    def pad(cls, items: Sequence[ImageItem], length: int | None, row: int) -> ImageBatch:
        """Patch items -> ``[B, length, row]`` zero-padded, with a 1/0 int32 mask."""
        n = max((it.patches for it in items), default=0)
        length = n if length is None else int(length)
        if length < n:
            raise ValueError(f"cannot pad {n} patches into {length} rows")
        pv = np.zeros((len(items), length, row), np.float32)
        mask = np.zeros((len(items), length), np.int32)
        for i, it in enumerate(items):
            pv[i, : it.patches] = it.pixels
            mask[i, : it.patches] = 1
        shapes = np.asarray([it.shape for it in items], np.int64).reshape(-1, 2)
        return cls(pixels=pv, shapes=shapes, mask=mask)
