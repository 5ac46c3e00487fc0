"""The model layer: the encoder protocol and its runtimes, families (FG-CLIP, FG-CLIP 2),
checkpoints, tokenizers, preprocessing."""

from fgsearch.model.batch import ImageBatch, ImageItem
from fgsearch.model.config import FGCLIPConfig, TextConfig, VisionConfig
from fgsearch.model.convert import stretch_positions
from fgsearch.model.encoder import TorchEncoder, resolve_device
from fgsearch.model.families import ModelFamily, family_for_config, family_names, get_family, register_family
from fgsearch.model.fgclip import FGCLIP, ImageFeatures
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
from fgsearch.model.protocol import EncodedImages, Encoder, ImagePreprocessor, ScoreCalibration, TextPath
from fgsearch.model.registry import REGISTRY, ModelSpec
from fgsearch.model.runtime import load_encoder, register_runtime, runtime_names
from fgsearch.model.tokenizer import TextTruncatedWarning, Tokenizer

__all__ = [
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
    "ImagePreprocessor",
    "ImageTransform",
    "ModelFamily",
    "ModelSpec",
    "NaFlexTransform",
    "ScoreCalibration",
    "TextConfig",
    "TextPath",
    "TextTruncatedWarning",
    "Tokenizer",
    "TorchEncoder",
    "VisionConfig",
    "checkpoint_fingerprint",
    "convert_openai_clip",
    "family_for_config",
    "family_names",
    "get_family",
    "is_cached",
    "load_encoder",
    "load_model",
    "register_family",
    "register_runtime",
    "resolve_device",
    "resolve_spec",
    "runtime_names",
    "save_model",
    "stretch_positions",
    "to_rgb",
]
