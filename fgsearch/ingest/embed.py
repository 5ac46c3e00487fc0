"""Embed stage of an index run: one batched forward pass, with region proposals.

:func:`embed_batch` is pure: prepared images in, vectors and boxes out. It reads no catalog and
writes nothing, so a runner may call it wherever the model lives (a thread, a process, a worker
machine) and hand the result to the one writer (:mod:`fgsearch.ingest.commit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fgsearch.ingest.prepare import Prepared
    from fgsearch.model import Encoder
    from fgsearch.regions import Proposer


@dataclass(frozen=True)
class Embedded:
    """A batch's vectors: ``images[i]`` is image i's global vector, ``regions[i]`` its region
    vectors, one per row of ``boxes[i]`` (normalised x1, y1, x2, y2)."""

    images: np.ndarray  # [B, D]
    regions: list[np.ndarray]  # B x [n_i, D]
    boxes: list[np.ndarray]  # B x [n_i, 4]


def embed_batch(encoder: Encoder, proposer: Proposer, batch: Sequence[Prepared]) -> Embedded:
    """The forward pass for a batch of prepared images (of any mix of shapes: the family's
    transform pads and masks them). The proposer's boxes come from the dense maps (``auto``: all
    images of one dense-map shape at once) or were found in the prepare stage (grid, sidecar)."""
    return embed_pixels(encoder, proposer, encoder.transform.collate([p.pixels for p in batch]), batch)


def embed_pixels(
    encoder: Encoder, proposer: Proposer, pixels: Any, batch: Sequence[Prepared], on_device: bool | None = None
) -> Embedded:
    """:func:`embed_batch` for a batch already collated (or staged on the device:
    :mod:`fgsearch.ingest.device`); ``pixels`` holds the images of ``batch`` in order.

    ``on_device`` (default: the encoder runs on an accelerator): proposals from the dense maps
    where the model ran, for a proposer and an encoder that can (``auto``, the torch runtime)."""
    # hasattr, not isinstance(DeviceProposer): a wrapper (the pipeline's timing) forwards the method
    can = proposer.uses_dense and hasattr(proposer, "after_tensors") and hasattr(encoder, "encode_proposed_on_device")
    if can and (encoder.on_accelerator if on_device is None else on_device):
        out, boxes = encoder.encode_proposed_on_device(pixels, proposer.after_tensors)  # type: ignore[attr-defined]
    elif proposer.uses_dense:
        out, boxes = encoder.encode_proposed(pixels, proposer.after)
    elif proposer.wants_regions:
        boxes = [np.asarray(p.boxes.boxes if p.boxes is not None else (), np.float32).reshape(-1, 4) for p in batch]
        out = encoder.encode_pixels(pixels, boxes)
    else:
        out = encoder.encode_pixels(pixels, None)
        boxes = [np.zeros((0, 4), np.float32) for _ in batch]
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
    return Embedded(out.image, list(out.regions), boxes)
