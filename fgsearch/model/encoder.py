"""Inference wrapper: device choice, batching, mixed precision and L2-normalised numpy outputs.

This is what indexing, query and evaluation use. The model is put in eval mode and run under
``torch.inference_mode``; on CUDA the towers run in bf16 autocast (the authors saw fp16 NaNs),
region pooling always runs in float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.errors import InputError
from fgsearch.model.fgclip import TextPath

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from fgsearch.model.fgclip import FGCLIP
    from fgsearch.model.registry import ModelSpec

logger = logging.getLogger(__name__)


def resolve_device(device: str | Any = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda was requested but no CUDA GPU is available; use --device cpu")
    return dev


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32, copy=False)


@dataclass
class EncodedImages:
    """Per image: a global vector ``image[i]`` and a ``[K_i, P]`` array of region vectors."""

    image: np.ndarray
    regions: list[np.ndarray]


class Encoder:
    """A loaded model ready for inference. ``Encoder.load("fg-clip-base")`` downloads on first use."""

    def __init__(self, model: FGCLIP, spec: ModelSpec, device: str | Any = "auto", precision: str = "auto") -> None:
        import torch

        from fgsearch.model.tokenizer import Tokenizer

        self.device = resolve_device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.spec = spec
        self.transform = spec.transform
        self.tokenizer = Tokenizer(short_length=spec.short_length, long_length=spec.long_length)
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("bf16", "fp32"):
            raise InputError(f"precision must be auto, bf16 or fp32, got {precision!r}")
        self.precision = precision
        self._torch = torch

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] = "fg-clip-base",
        device: str | Any = "auto",
        precision: str = "auto",
        download: bool = True,
    ) -> Encoder:
        from fgsearch.model.loading import load_model

        net, spec = load_model(model, device="cpu", download=download)
        return cls(net, spec, device=device, precision=precision)

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    @contextlib.contextmanager
    def _ctx(self) -> Iterator[None]:
        torch = self._torch
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    yield
            else:
                yield

    # ---- images ----------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.transform.batch(images)

    def encode_pixels(
        self, pixel_values: np.ndarray | torch.Tensor, boxes: Sequence[np.ndarray] | None = None, normalize: bool = True
    ) -> EncodedImages:
        """Preprocessed ``[B, 3, H, W]`` -> global + region vectors from one forward pass."""
        torch = self._torch
        pv = torch.as_tensor(pixel_values).to(self.device, non_blocking=True)
        with self._ctx():
            if boxes is None:
                image = self.model.encode_image(pv).float()
                regions = image.new_zeros((0, image.shape[-1]))
                counts = [0] * len(pv)
            else:
                if len(boxes) != len(pv):
                    raise InputError(f"got box lists for {len(boxes)} images but {len(pv)} images")
                tb = [torch.as_tensor(np.asarray(b, np.float32).reshape(-1, 4)) for b in boxes]
                out = self.model.encode_image_and_regions(pv, tb)
                image, regions = out.image.float(), out.regions.float()
                counts = [len(b) for b in tb]
        img = image.cpu().numpy()
        reg = regions.cpu().numpy()
        if normalize:
            img, reg = _normalize(img), _normalize(reg)
        split = np.split(reg, np.cumsum(counts)[:-1]) if counts else []
        return EncodedImages(image=img, regions=list(split))

    def encode_proposed(
        self,
        pixel_values: np.ndarray | torch.Tensor,
        propose: Callable[[torch.Tensor], Sequence[np.ndarray | torch.Tensor]],
        normalize: bool = True,
    ) -> tuple[EncodedImages, list[np.ndarray]]:
        """One forward pass where the boxes come from the images' own dense maps.

        ``propose(dense)`` gets the batch's dense maps ``[B, h, w, P]`` (float32, on the model's
        device) and returns each image's boxes ``[K_i, 4]`` (normalised x1, y1, x2, y2; numpy or
        tensors on any device). Returns the vectors and the boxes used (numpy).
        """
        torch = self._torch
        pv = torch.as_tensor(pixel_values).to(self.device, non_blocking=True)
        m = self.model
        with self._ctx():
            cls, dense = m.vision_model.last_layer(m.vision_model.trunk(pv), True, True)
            assert cls is not None and dense is not None
            image = m.visual_projection(cls).float()
            dmap = m._dense_grid(m.visual_projection(dense)).float()
        with torch.inference_mode():
            proposed = propose(dmap)
            if len(proposed) != len(dmap):
                raise InputError(f"the proposer returned box lists for {len(proposed)} images, not {len(dmap)}")
            tb = [torch.as_tensor(b, dtype=torch.float32).to(self.device).reshape(-1, 4) for b in proposed]
            regions = m.encode_regions(dmap, tb)
        img = image.cpu().numpy()
        reg = regions.cpu().numpy()
        boxes = [b.cpu().numpy() for b in tb]
        if normalize:
            img, reg = _normalize(img), _normalize(reg)
        counts = [len(b) for b in boxes]
        return EncodedImages(image=img, regions=list(np.split(reg, np.cumsum(counts)[:-1]))), boxes

    def encode_images(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[np.ndarray] | None = None,
        batch_size: int = 32,
        normalize: bool = True,
    ) -> EncodedImages:
        """Pillow images (any mode) -> normalised global vectors and per-image region vectors."""
        if boxes is not None and len(boxes) != len(images):
            raise InputError(f"got box lists for {len(boxes)} images but {len(images)} images")
        imgs: list[np.ndarray] = []
        regs: list[np.ndarray] = []
        for s in range(0, len(images), batch_size):
            pv = self.preprocess(images[s : s + batch_size])
            out = self.encode_pixels(pv, None if boxes is None else boxes[s : s + batch_size], normalize)
            imgs.append(out.image)
            regs.extend(out.regions)
        image = np.concatenate(imgs) if imgs else np.zeros((0, self.dim), np.float32)
        return EncodedImages(image=image, regions=regs)

    # ---- text ------------------------------------------------------------------------------
    def text_path(self, text: str) -> TextPath:
        """The documented short/long rule (see :meth:`Tokenizer.choose_path`)."""
        return self.tokenizer.choose_path(text)

    def encode_texts(
        self, texts: Sequence[str], path: TextPath | str | None = None, batch_size: int = 64, normalize: bool = True
    ) -> np.ndarray:
        """Texts -> ``[N, P]`` vectors. ``path=None`` applies the rule per text; otherwise forced."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        paths = [TextPath(path) if path is not None else self.text_path(t) for t in texts]
        for p in (TextPath.SHORT, TextPath.LONG):
            idx = [i for i, q in enumerate(paths) if q is p]
            if not idx:
                continue
            # similar lengths together: each batch runs only up to its longest text
            idx.sort(key=lambda i: self.tokenizer.count(texts[i]))
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                ids = self.tokenizer([texts[i] for i in chunk], p).to(self.device)
                with self._ctx():
                    feats = self.model.encode_text(ids, p).float().cpu().numpy()
                out[chunk] = feats
        return _normalize(out) if normalize else out
