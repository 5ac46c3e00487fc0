"""FG-CLIP (v1): CLIP ViT towers, fixed square input, short (77) and long (248) text walks, cosine
scores. Modules: :mod:`fgsearch.model.fgclip`; tokenizer: :mod:`fgsearch.model.tokenizer`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgsearch.model.families.base import ModelFamily
from fgsearch.model.files import FGSEARCH_META

if TYPE_CHECKING:
    import torch

    from fgsearch.model.batch import ImageBatch
    from fgsearch.model.config import FGCLIPConfig
    from fgsearch.model.registry import ModelSpec

logger = logging.getLogger(__name__)


class FGCLIPFamily(ModelFamily):
    """FG-CLIP (v1): CLIP ViT towers, fixed square input, short (77) and long (248) text paths."""

    name = "fgclip"
    model_types = ("clip", "fgclip")
    walks = ("short", "long")
    description = "FG-CLIP (CLIP ViT, fixed square input, 77/248 tokens, English)"

    def read_config(self, raw: dict[str, Any]) -> Any:
        from fgsearch.model.config import FGCLIPConfig

        return FGCLIPConfig.from_hf_dict(raw)

    def build(self, cfg: Any) -> torch.nn.Module:
        from fgsearch.model.fgclip import FGCLIP

        return FGCLIP(cfg)

    def resolve_spec(self, path: Path, spec: ModelSpec, cfg: Any) -> ModelSpec:
        return clip_preprocessing(path, spec, cfg)

    def sizes(self, cfg: Any) -> str:
        v, t = cfg.vision, cfg.text
        return (
            f"ViT {v.num_hidden_layers}x{v.hidden_size} /{v.patch_size} at {v.image_size[0]}x{v.image_size[1]}, "
            f"text {t.num_hidden_layers}x{t.hidden_size}, {cfg.projection_dim}-d"
        )

    def transform(self, spec: ModelSpec) -> Any:
        return spec.transform

    def tokenizer(self, spec: ModelSpec) -> Any:
        from fgsearch.model.tokenizer import Tokenizer

        return Tokenizer(short_length=spec.short_length, long_length=spec.long_length)

    def embed_dim(self, model: torch.nn.Module) -> int:
        m: Any = model
        return int(m.config.projection_dim)

    def encode_image(self, model: torch.nn.Module, batch: ImageBatch) -> torch.Tensor:
        m: Any = model
        return m.encode_image(batch.pixels)

    def encode_image_and_dense(self, model: torch.nn.Module, batch: ImageBatch) -> tuple[torch.Tensor, list[Any]]:
        m: Any = model
        cls, dense = m.vision_model.last_layer(m.vision_model.trunk(batch.pixels), True, True)
        return m.visual_projection(cls), list(m._dense_grid(m.visual_projection(dense)))


def clip_preprocessing(path: Path, spec: ModelSpec, cfg: FGCLIPConfig) -> ModelSpec:
    """FG-CLIP (v1): fill the spec's preprocessing from the checkpoint (our fgsearch.json, else the HF
    processor config)."""
    changes: dict[str, Any] = {}
    meta = path / FGSEARCH_META
    proc = path / "preprocessor_config.json"
    src: dict[str, Any] = {}
    if meta.exists():
        src = json.loads(meta.read_text()).get("preprocess", {})
    elif proc.exists():
        try:
            src = json.loads(proc.read_text())
        except ValueError:
            src = {}
    if "image_mean" in src and "image_std" in src:
        changes["mean"] = tuple(float(x) for x in src["image_mean"])
        changes["std"] = tuple(float(x) for x in src["image_std"])
    if spec.image_size is not None and tuple(spec.image_size) != tuple(cfg.vision.image_size):
        logger.warning(
            "model %s: registry image size %s differs from the checkpoint's %s; using the checkpoint's",
            spec.name,
            spec.image_size,
            cfg.vision.image_size,
        )
    changes["image_size"] = tuple(cfg.vision.image_size)
    changes["patch_size"] = cfg.vision.patch_size
    changes["short_length"] = cfg.text.max_position_embeddings
    changes["long_length"] = cfg.text.long_positions
    return spec.resolved(**changes)
