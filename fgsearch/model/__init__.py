"""The FG-CLIP model layer: architecture, checkpoints, tokenizer, preprocessing, inference."""

from fgsearch.model.config import FGCLIPConfig, TextConfig, VisionConfig
from fgsearch.model.convert import stretch_positions
from fgsearch.model.encoder import EncodedImages, Encoder, resolve_device
from fgsearch.model.fgclip import FGCLIP, ImageFeatures, TextPath
from fgsearch.model.loading import (
    checkpoint_fingerprint,
    convert_openai_clip,
    is_cached,
    load_model,
    resolve_spec,
    save_model,
)
from fgsearch.model.preprocess import ImageTransform, to_rgb
from fgsearch.model.registry import REGISTRY, ModelSpec
from fgsearch.model.tokenizer import TextTruncatedWarning, Tokenizer

__all__ = [
    "FGCLIP",
    "REGISTRY",
    "EncodedImages",
    "Encoder",
    "FGCLIPConfig",
    "ImageFeatures",
    "ImageTransform",
    "ModelSpec",
    "TextConfig",
    "TextPath",
    "TextTruncatedWarning",
    "Tokenizer",
    "VisionConfig",
    "checkpoint_fingerprint",
    "convert_openai_clip",
    "is_cached",
    "load_model",
    "resolve_device",
    "resolve_spec",
    "save_model",
    "stretch_positions",
    "to_rgb",
]
