"""The model layer: families (FG-CLIP, FG-CLIP 2), checkpoints, tokenizers, preprocessing, inference."""

from fgsearch.model.batch import ImageBatch, ImageItem
from fgsearch.model.config import FGCLIPConfig, TextConfig, VisionConfig
from fgsearch.model.convert import stretch_positions
from fgsearch.model.encoder import EncodedImages, Encoder, resolve_device
from fgsearch.model.family import FAMILIES, ModelFamily, ScoreCalibration, family_for_config, get_family
from fgsearch.model.fgclip import FGCLIP, ImageFeatures, TextPath
from fgsearch.model.fgclip2 import FGCLIP2, FGCLIP2Config
from fgsearch.model.loading import (
    checkpoint_fingerprint,
    convert_openai_clip,
    is_cached,
    load_model,
    resolve_spec,
    save_model,
)
from fgsearch.model.naflex import NaFlexTransform
from fgsearch.model.preprocess import ImageTransform, to_rgb
from fgsearch.model.registry import REGISTRY, ModelSpec
from fgsearch.model.tokenizer import TextTruncatedWarning, Tokenizer

__all__ = [
    "FAMILIES",
    "FGCLIP",
    "FGCLIP2",
    "REGISTRY",
    "EncodedImages",
    "Encoder",
    "FGCLIP2Config",
    "FGCLIPConfig",
    "ImageBatch",
    "ImageFeatures",
    "ImageItem",
    "ImageTransform",
    "ModelFamily",
    "ModelSpec",
    "NaFlexTransform",
    "ScoreCalibration",
    "TextConfig",
    "TextPath",
    "TextTruncatedWarning",
    "Tokenizer",
    "VisionConfig",
    "checkpoint_fingerprint",
    "convert_openai_clip",
    "family_for_config",
    "get_family",
    "is_cached",
    "load_model",
    "resolve_device",
    "resolve_spec",
    "save_model",
    "stretch_positions",
    "to_rgb",
]
