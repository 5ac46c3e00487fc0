"""check_parity.py adapter for FG-CLIP 2, through fgsearch's PUBLIC model API (Encoder + family).

python tests/fixtures/oracle2/check_parity.py tests/oracle2_adapter.py:load
"""

from __future__ import annotations

import numpy as np
import torch

from fgsearch.model import ImageBatch, TextPath, TorchEncoder, load_model, stretch_short_positions

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


class FGSearchAdapter2:
    def __init__(self, checkpoint_dir: str) -> None:
        model, spec = load_model(checkpoint_dir, device="cpu")
        self.encoder = TorchEncoder(model, spec, device="cpu", precision="fp32")
        self.family = self.encoder.family
        self.model = self.encoder.model
        self.cfg = model.config

    def _batch(self, pv: np.ndarray, mask: np.ndarray, shapes: np.ndarray) -> ImageBatch:
        return ImageBatch(pixels=pv, shapes=shapes, mask=mask).to("cpu")

    def image_features(self, pv: np.ndarray, mask: np.ndarray, shapes: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.family.encode_image(self.model, self._batch(pv, mask, shapes))

    def dense_features(self, pv: np.ndarray, mask: np.ndarray, shapes: np.ndarray) -> list[torch.Tensor]:
        with torch.inference_mode():
            _, maps = self.family.encode_image_and_dense(self.model, self._batch(pv, mask, shapes))
        return maps  # each image's real [h, w, D] map

    def region_features(
        self, pv: np.ndarray, mask: np.ndarray, shapes: np.ndarray, image_sizes: np.ndarray, boxes: list[np.ndarray]
    ) -> torch.Tensor:
        # fgsearch's one box convention: normalised x1, y1, x2, y2 (original pixels / original size)
        norm = [
            b.astype(np.float64) / np.array([w, h, w, h], np.float64)
            for b, (h, w) in zip(boxes, image_sizes, strict=True)
        ]
        with torch.inference_mode():
            _, maps = self.family.encode_image_and_dense(self.model, self._batch(pv, mask, shapes))
            return self.family.encode_regions(self.model, maps, [torch.from_numpy(b).float() for b in norm])

    def text_features(self, ids: np.ndarray, walk: str, attention_mask: np.ndarray | None = None) -> torch.Tensor:
        with torch.inference_mode():
            mask = None if attention_mask is None else torch.from_numpy(attention_mask)
            return self.model.encode_text(torch.from_numpy(ids), TextPath(walk), attention_mask=mask)

    def preprocess(self, images: list, max_num_patches: int | None = None) -> ImageBatch:
        b = self.encoder.transform.batch(images, max_num_patches)
        return {"pixel_values": b.pixels, "pixel_attention_mask": b.mask, "spatial_shapes": b.shapes}

    def tokenize(self, texts: list[str], walk: str) -> torch.Tensor:
        return self.encoder.tokenizer(texts, TextPath(walk), warn=False)

    def similarity_logits(self, image: np.ndarray, text: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.similarity_logits(torch.from_numpy(image), torch.from_numpy(text))

    def resize_position_embedding(self, table: np.ndarray) -> torch.Tensor:
        return stretch_short_positions(torch.from_numpy(table), keep_len=self.cfg.text.keep_len)


def load(checkpoint_dir: str) -> FGSearchAdapter2:
    return FGSearchAdapter2(checkpoint_dir)
