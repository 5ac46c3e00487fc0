"""Region vectors by RoIAlign over dense maps of any shapes (one convention for every family).

Boxes are NORMALISED ``x1, y1, x2, y2`` in ``[0, 1]`` of the image. A box becomes feature-map units
by multiplying with the map's (w, h, w, h); RoIAlign runs with a 1x1 output, adaptive sampling
(``sampling_ratio=-1``) and ``aligned=True`` (half-pixel shift), as both FG-CLIP references do.
For FG-CLIP 2 this equals the reference's ``(x1 / W) * w`` mapping of boxes in original pixels.

On a GPU the boxes usually are already on the maps' device (the ``auto`` proposer ran there:
:mod:`fgsearch.regions.auto_torch`); nothing here copies from the host or waits for the device
(the scale is applied with host numbers, the per-image counts are shapes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fgsearch.errors import InputError


def roi_pool(maps: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
    """``maps[i]`` ``[h_i, w_i, P]``, ``boxes[i]`` ``[K_i, 4]`` normalised -> float32 ``[sum K_i, P]``.

    Maps of the same shape are pooled in one ``roi_align`` call; the rows come back in image order,
    then box order.
    """
    from torchvision.ops import roi_align

    if len(boxes) != len(maps):
        raise InputError(f"got box lists for {len(boxes)} images but {len(maps)} images")
    if not maps:
        return torch.zeros((0, 0), dtype=torch.float32)
    ref = maps[0]
    p = ref.shape[-1]
    fm_boxes = []
    for m, bx in zip(maps, boxes, strict=True):
        h, w = int(m.shape[0]), int(m.shape[1])
        b = torch.as_tensor(bx, dtype=torch.float32, device=ref.device).reshape(-1, 4)
        fm_boxes.append(torch.stack([b[:, 0] * w, b[:, 1] * h, b[:, 2] * w, b[:, 3] * h], dim=1))
    counts = [len(b) for b in fm_boxes]
    if sum(counts) == 0:
        return ref.new_zeros((0, p), dtype=torch.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        if counts[i]:
            groups.setdefault((int(m.shape[0]), int(m.shape[1])), []).append(i)
    parts: dict[int, Tensor] = {}
    for idx in groups.values():
        fmap = torch.stack([maps[i] for i in idx]).permute(0, 3, 1, 2).float()
        out = roi_align(
            fmap, [fm_boxes[i] for i in idx], output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )[:, :, 0, 0]
        for i, chunk in zip(idx, out.split([counts[i] for i in idx]), strict=True):
            parts[i] = chunk
    return torch.cat([parts[i] for i in sorted(parts)])
