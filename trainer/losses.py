"""FG-CLIP's three losses as pure functions of features and (log-space) temperatures.

* global: symmetric InfoNCE of images against long captions plus images against short captions;
* region (weight 0.1 in the total): symmetric InfoNCE of region vectors against their texts over
  every valid box of the (global) batch, with ``logit_scale_finegraind``;
* hard negatives (weight 0.5): per box, cross-entropy over [positive, negatives...] with
  ``logit_scale_hardneg``.

FG-CLIP 2 checkpoints train with the same three terms and two differences: the global term is
SigLIP's pairwise sigmoid loss with the model's ``logit_scale`` and ``logit_bias`` (the calibration
its scores are read with), and the region and hard-negative terms use ``logit_scale`` (the model has
no separate temperatures); region texts and hard negatives go through its box walk. The paper's
other stage-2 terms are not implemented.

Features are L2-normalised here. Under ``torch.distributed`` the contrastive losses gather
features from every rank WITH gradients (each rank scores its own rows against all columns);
with world size 1 nothing is gathered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

REGION_WEIGHT = 0.1
HARDNEG_WEIGHT = 0.5


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients (identity at world size 1).

    Ranks may hold different numbers of rows (regions): rows are padded to the largest count for
    the collective and the padding is removed afterwards."""
    _, world = _dist()
    if world == 1:
        return x
    import torch.distributed as dist

    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    m = max(counts)
    padded = torch.cat([x, x.new_zeros((m - x.shape[0], *x.shape[1:]))]) if x.shape[0] < m else x
    parts = cast(Tensor, _GatherRows.apply(padded)).split(m)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 with gradients: the backward pass sums each rank's gradient for the
    rows it holds (all-reduce, then this rank's slice). torch.distributed.nn's all_gather does the
    same but its backward left a gloo thread that aborted the process at exit now and then."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        import torch.distributed as dist

        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def _offset(local_n: int) -> int:
    """Index of this rank's first row in the gathered tensor."""
    rank, world = _dist()
    if world == 1:
        return 0
    import torch.distributed as dist

    n = torch.tensor([local_n])
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    return int(sum(int(s.item()) for s in sizes[:rank]))


def symmetric_infonce(a: Tensor, b: Tensor, logit_scale: Tensor) -> Tensor:
    """Mean of a->b and b->a cross-entropy; row i of ``a`` matches row i of ``b``. Local rows are
    scored against the gathered columns of the other side."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    ga, gb = gather_with_grad(a), gather_with_grad(b)
    scale = logit_scale.float().exp()
    labels = torch.arange(a.shape[0], device=a.device) + _offset(a.shape[0])
    return (F.cross_entropy(scale * a @ gb.T, labels) + F.cross_entropy(scale * b @ ga.T, labels)) / 2


def global_loss(image: Tensor, long_text: Tensor, short_text: Tensor, logit_scale: Tensor) -> Tensor:
    return symmetric_infonce(image, long_text, logit_scale) + symmetric_infonce(image, short_text, logit_scale)


def sigmoid_pair_loss(a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor) -> Tensor:
    """SigLIP's loss: every (a_i, b_j) pair is a binary decision, positive when i == j, with logits
    ``exp(logit_scale) * cos + logit_bias``; summed over the gathered columns, averaged over rows."""
    a = F.normalize(a.float(), dim=-1)
    gb = gather_with_grad(F.normalize(b.float(), dim=-1))
    logits = logit_scale.float().exp() * a @ gb.T + logit_bias.float()
    sign = -torch.ones_like(logits)
    rows = torch.arange(a.shape[0], device=a.device)
    sign[rows, rows + _offset(a.shape[0])] = 1.0
    return -F.logsigmoid(sign * logits).sum() / max(1, a.shape[0])


def sigmoid_global_loss(
    image: Tensor, long_text: Tensor, short_text: Tensor, logit_scale: Tensor, logit_bias: Tensor
) -> Tensor:
    """FG-CLIP 2's global term: images against long captions plus images against short captions."""
    return sigmoid_pair_loss(image, long_text, logit_scale, logit_bias) + sigmoid_pair_loss(
        image, short_text, logit_scale, logit_bias
    )


def region_loss(regions: Tensor, texts: Tensor, logit_scale: Tensor) -> Tensor:
    return symmetric_infonce(regions, texts, logit_scale)


def hardneg_loss(regions: Tensor, texts: Tensor, logit_scale: Tensor) -> Tensor:
    """``regions [M, P]``, ``texts [M, K, P]`` with the positive at k=0 -> mean cross-entropy."""
    r = F.normalize(regions.float(), dim=-1)
    t = F.normalize(texts.float(), dim=-1)
    logits = logit_scale.float().exp() * torch.einsum("mp,mkp->mk", r, t)
    return F.cross_entropy(logits, torch.zeros(r.shape[0], dtype=torch.long, device=r.device))


@dataclass
class LossParts:
    total: Tensor
    global_: float
    region: float
    hardneg: float


def total_loss(
    model: torch.nn.Module,
    batch: dict,
    losses: tuple[str, ...] = ("global", "region", "hardneg"),
    ddp: torch.nn.Module | None = None,
    weights: tuple[float, float] = (REGION_WEIGHT, HARDNEG_WEIGHT),
) -> LossParts:
    """Forward ``model`` (FG-CLIP or FG-CLIP 2; through its DDP wrapper when given) and combine the
    enabled losses."""
    m: Any = model
    out = ddp(batch) if ddp is not None else forward_features(m, batch)
    zero = out["image"].new_zeros(())
    sigmoid = batch.get("family") == "fgclip2"  # FG-CLIP 2: sigmoid global loss, one temperature
    g = zero
    if "global" in losses:
        g = (
            sigmoid_global_loss(out["image"], out["long"], out["short"], m.logit_scale, m.logit_bias)
            if sigmoid
            else global_loss(out["image"], out["long"], out["short"], m.logit_scale)
        )
    r = zero
    has_regions = _any_rows(out["regions"].shape[0])
    if "region" in losses and has_regions:
        r = region_loss(out["regions"], out["region_text"], m.logit_scale if sigmoid else m.logit_scale_finegraind)
    h = zero
    if "hardneg" in losses and out.get("hard_text") is not None and out["hard_text"].shape[0]:
        scale = m.logit_scale if sigmoid else m.logit_scale_hardneg
        h = hardneg_loss(out["regions"][batch["hard_index"]], out["hard_text"], scale)
    total = g + weights[0] * r + weights[1] * h
    return LossParts(total, float(g.detach()), float(r.detach()), float(h.detach()))


def _any_rows(local: int) -> bool:
    _, world = _dist()
    if world == 1:
        return local > 0
    import torch.distributed as dist

    t = torch.tensor([local])
    dist.all_reduce(t)
    return int(t.item()) > 0


def image_features(model: torch.nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """Global ``[B, P]`` and region ``[sum K_i, P]`` vectors from one pass, through the model's family."""
    from fgsearch.model import ImageBatch, get_family

    fam = get_family(batch.get("family", "fgclip"))
    images = ImageBatch(pixels=batch["pixel_values"], shapes=batch["spatial_shapes"], mask=batch.get("pixel_mask"))
    image, maps = fam.encode_image_and_dense(model, images)
    return image, fam.encode_regions(model, maps, batch["boxes"])


def forward_features(model: torch.nn.Module, batch: dict) -> dict[str, Tensor]:
    """Every feature the losses need, from one pass per tower input."""
    from fgsearch.model import TextPath

    image, regions = image_features(model, batch)
    walk = batch.get("region_walk", TextPath.SHORT)
    # every family's model has encode_text(ids, path); nn.Module's own typing cannot say so
    encode_text = cast("Callable[[Tensor, TextPath], Tensor]", model.encode_text)
    out = {
        "image": image,
        "regions": regions,
        "long": encode_text(batch["long_ids"], TextPath.LONG),
        "short": encode_text(batch["short_ids"], TextPath.SHORT),
    }
    p = image.shape[-1]
    out["region_text"] = (
        encode_text(batch["region_ids"], walk) if batch.get("region_ids") is not None else image.new_zeros((0, p))
    )
    if batch.get("hard_ids") is not None:
        k = batch["hard_k"]
        out["hard_text"] = encode_text(batch["hard_ids"], walk).reshape(-1, k, p)
    return out


class FeatureModule(torch.nn.Module):
    """Wraps FGCLIP so DistributedDataParallel sees one forward for all features."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, batch: dict) -> dict[str, Tensor]:
        return forward_features(self.inner, batch)
