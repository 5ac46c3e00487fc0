"""Held-out evaluation during training: retrieval R@1, hard-negative and region->text accuracy."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fgsearch.trainer.config import TrainConfig
    from fgsearch.trainer.data import DataSource, Sample

logger = logging.getLogger(__name__)


def heldout_samples(cfg: TrainConfig, source: DataSource) -> list[Sample]:
    """The held-out split next to the training data (``jsonfiles/heldout.json``), capped at ``eval_limit``."""
    from pathlib import Path

    from fgsearch.errors import DataError
    from fgsearch.trainer.data import ReadStats, resolve_data

    root = source.image_root if source.kind == "finehard" else None
    if root is None or not (Path(root) / "jsonfiles" / "heldout.json").exists():
        logger.info("no held-out split (jsonfiles/heldout.json) next to the data: periodic evaluation is off")
        return []
    try:
        held = resolve_data(str(root), None, split="heldout")
    except DataError:
        return []
    out: list[Sample] = []
    for s in held.iter_samples(ReadStats()):
        out.append(s)
        if len(out) >= cfg.eval_limit:
            break
    return out


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def evaluate_heldout(
    model: Any,
    samples: list[Any],
    transform: Any,
    tokenizer: Any,
    device: Any,
    batch_size: int = 64,
    family: str = "fgclip",
    region_walk: str = "short",
) -> dict[str, float]:
    """t2i/i2t R@1 (long captions), hard-negative accuracy (region vs its short expression and
    negatives) and region->text accuracy (each region against every region text of the split)."""
    import torch

    with torch.inference_mode():
        img, reg, cap = _encode_samples(model, samples, transform, tokenizer, device, batch_size, family)
        rtexts, hards = _region_texts(samples)
        uniq = sorted(set(rtexts))
        uniq_vec = _encode_texts(model, tokenizer, uniq, region_walk, device)
        hard_vec = _encode_texts(model, tokenizer, [t for h in hards for t in h], region_walk, device)
    sim = img @ cap.T
    n = len(samples)
    metrics = {
        "t2i_r1": float(np.mean(sim.argmax(axis=0) == np.arange(n))),
        "i2t_r1": float(np.mean(sim.argmax(axis=1) == np.arange(n))),
    }
    if len(reg):
        index = {t: i for i, t in enumerate(uniq)}
        target = np.array([index[t] for t in rtexts])
        metrics["region_text_acc"] = float(np.mean((reg @ uniq_vec.T).argmax(axis=1) == target))
        hardneg = _hardneg_accuracy(reg, hards, hard_vec)
        if hardneg is not None:
            metrics["hardneg_acc"] = hardneg
    return {k: round(v, 4) for k, v in metrics.items()}


def _encode_samples(
    model: Any, samples: list[Any], transform: Any, tokenizer: Any, device: Any, batch_size: int, family: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised image, region (every box of every sample, in order) and long-caption vectors."""
    import torch
    from PIL import Image

    from fgsearch.model import TextPath, to_rgb
    from fgsearch.trainer.losses import image_features

    imgs, regs, caps = [], [], []
    for s0 in range(0, len(samples), batch_size):
        chunk = samples[s0 : s0 + batch_size]
        items = []
        for s in chunk:
            with Image.open(s.image) as im:
                im.load()
                items.append(transform.item(to_rgb(im)))
        batch = transform.collate(items)
        image, regions = image_features(
            model,
            {
                "family": family,
                "pixel_values": torch.from_numpy(batch.pixels).to(device),
                "pixel_mask": None if batch.mask is None else torch.from_numpy(batch.mask).to(device),
                "spatial_shapes": torch.from_numpy(batch.shapes),
                "boxes": [torch.tensor(s.boxes, dtype=torch.float32).reshape(-1, 4).to(device) for s in chunk],
            },
        )
        imgs.append(image.float().cpu().numpy())
        regs.append(regions.float().cpu().numpy())
        ids = tokenizer([s.caption for s in chunk], TextPath.LONG, warn=False).to(device)
        caps.append(model.encode_text(ids, TextPath.LONG).float().cpu().numpy())
    img, cap = _norm(np.concatenate(imgs)), _norm(np.concatenate(caps))
    reg = _norm(np.concatenate(regs)) if regs else np.zeros((0, img.shape[1]), np.float32)
    return img, reg, cap


def _region_texts(samples: list[Any]) -> tuple[list[str], list[list[str]]]:
    """Each region's short expression, and its hard-negative group (the expression first, then its
    negatives; empty where the region has none)."""
    rtexts: list[str] = []
    hards: list[list[str]] = []
    for s in samples:
        for j, se in enumerate(s.region_short):
            rtexts.append(se)
            hards.append([se, *s.negatives[j]] if s.negatives[j] else [])
    return rtexts, hards


def _encode_texts(model: Any, tokenizer: Any, texts: list[str], walk: str, device: Any) -> np.ndarray:
    """Normalised text vectors on ``walk``, 256 texts per pass; ``(0, 1)`` for no texts."""
    from fgsearch.model import TextPath

    if not texts:
        return np.zeros((0, 1), np.float32)
    parts = []
    for i in range(0, len(texts), 256):
        ids = tokenizer(texts[i : i + 256], TextPath(walk), warn=False).to(device)
        parts.append(model.encode_text(ids, TextPath(walk)).float().cpu().numpy())
    return _norm(np.concatenate(parts))


def _hardneg_accuracy(reg: np.ndarray, hards: list[list[str]], hard_vec: np.ndarray) -> float | None:
    """How often a region scores its own expression above every negative; None without negatives."""
    correct, total, pos = 0, 0, 0
    for r, h in zip(reg, hards, strict=True):
        if h:
            scores = hard_vec[pos : pos + len(h)] @ r
            correct += int(scores[0] > scores[1:].max())
            total += 1
            pos += len(h)
    return correct / total if total else None
