"""check_parity.py adapter: the oracle's interface implemented through fgsearch's PUBLIC model API.

python tests/fixtures/oracle/check_parity.py tests/oracle_adapter.py:load
"""

from __future__ import annotations

import numpy as np
import torch

from fgsearch.model import TextPath, TorchEncoder, load_model, stretch_positions


class FGSearchAdapter:
    def __init__(self, checkpoint_dir: str) -> None:
        self.model, self.spec = load_model(checkpoint_dir, device="cpu")
        self.encoder = TorchEncoder(self.model, self.spec, device="cpu")

    def image_features(self, pixel_values: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.encode_image(torch.from_numpy(pixel_values))

    def dense_features(self, pixel_values: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            dense = self.model.encode_dense(torch.from_numpy(pixel_values))
        return dense.flatten(1, 2)  # [B, h*w, P], row-major

    def region_features(self, pixel_values: np.ndarray, boxes: list[np.ndarray]) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model.encode_image_and_regions(
                torch.from_numpy(pixel_values), [torch.from_numpy(b) for b in boxes]
            )
        return out.regions

    def text_features(self, ids: np.ndarray, long: bool) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.encode_text(torch.from_numpy(ids), TextPath.LONG if long else TextPath.SHORT)

    def preprocess(self, images: list) -> np.ndarray:
        return self.encoder.transform.batch(images)

    def tokenize(self, texts: list[str], long: bool) -> torch.Tensor:
        return self.encoder.tokenizer(texts, TextPath.LONG if long else TextPath.SHORT, warn=False)

    def resize_position_embedding(self, table: np.ndarray) -> torch.Tensor:
        return stretch_positions(torch.from_numpy(table))


def load(checkpoint_dir: str) -> FGSearchAdapter:
    return FGSearchAdapter(checkpoint_dir)
